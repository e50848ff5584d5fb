"""Load one rank of a per-rank checkpoint (pt-spec section 5) into a one-track `PTModel`.

Rank t reads only config.json and rank{t}.safetensors. Every tensor's name and shape is checked
against `formats.rank_layout`; the fused qkv and [gate; up] weights are used as they are (the
q/k/v, gate and up parameters are views of them).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from ..config import PTConfig
from ..dtypes import DTYPES
from ..formats import CheckpointError, concat_dim, hf_layout, rank_layout, rank_sources, read_rank_config
from ..modeling import MLP, PTModel, Rotary

def _param_name(hf_name: str) -> str:
    """Section 4 name of this rank's track -> parameter of a one-track PTModel."""
    name = hf_name.removeprefix("model.")
    if name.startswith("tracks."):
        _, _, rest = name.split(".", 2)
        name = f"tracks.0.{rest}"
    return name


def load_rank(engine_dir: str | Path, rank: int, merge: torch.nn.Module, device: torch.device,
              dtype: torch.dtype | None = None) -> tuple[PTModel, torch.Tensor, PTConfig]:
    """The one-track model of `rank` (fused for inference), its LM head weight, and the config."""
    cfg, raw = read_rank_config(engine_dir)
    path = Path(engine_dir) / f"rank{rank}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path} not found (the checkpoint has {cfg.num_tracks} ranks)")
    dtype = dtype or DTYPES[raw["dtype"]]
    expected = rank_layout(cfg, rank)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names = set(f.keys())
            problems = [f"missing {n} {list(s)}" for n, s in expected.items() if n not in names]
            problems += [f"unexpected {n}" for n in sorted(names - set(expected))]
            problems += [f"{n} has shape {f.get_slice(n).get_shape()}, expected {list(expected[n])}"
                         for n in expected if n in names and tuple(f.get_slice(n).get_shape()) != expected[n]]
            if problems:
                raise CheckpointError([f"{path}: {p}" for p in problems])
            tensors = {n: f.get_tensor(n).to(device=device, dtype=dtype) for n in expected}
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a reader failure means a corrupt file
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None

    with torch.device("meta"):
        model = PTModel(cfg, num_local_tracks=1, merge=merge)
    model.to_empty(device=device)
    model.rotary = Rotary(cfg.head_dim, cfg.rope_theta, cfg.rope_style).to(device)  # not in the file
    params = dict(model.named_parameters())
    hf_shapes = hf_layout(cfg)
    for name, srcs in rank_sources(cfg, rank).items():
        if name == "lm_head.weight":
            continue
        dim = concat_dim(name, len(srcs))
        parts = tensors[name].split([hf_shapes[s][dim] for s in srcs], dim=dim)
        for src, part in zip(srcs, parts):
            params[_param_name(src)].data = part
    for i, layer in enumerate(model.tracks[0].layers):
        layer.self_attn.qkv_weight = tensors[f"transformer.layers.{i}.attention.qkv.weight"]  # q/k/v: views
        if isinstance(layer.mlp, MLP):
            layer.mlp.fuse()
    model.eval().requires_grad_(False)
    return model, tensors["lm_head.weight"], cfg
