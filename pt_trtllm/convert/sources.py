"""Source checkpoints a conversion reads: this project's HF PT format, Apple tamm PT models, and
dense Llama models split into tracks. Each source is a PTConfig plus a name map: for every
pt-spec section 4 tensor, which source tensor (and which part of it) it comes from. Every source
tensor's name and shape is checked against the config before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import PT_FIELDS, PTConfig
from ..dtypes import DTYPES, SAFETENSORS_DTYPES
from ..formats import CheckpointError, hf_layout, read_json
from .recipes import Ones, Take
from .safetensors_dir import SafetensorsDir
from .tamm import tamm_config, tamm_name_map
from .llama import llama_config, llama_name_map


class Source:
    """A source checkpoint: `config` (a PTConfig) and `tensor(name)` for every section 4 name."""

    def __init__(self, path: Path, kind: str, config: PTConfig, name_map: dict, source_shapes: dict,
                 ignored: set[str] = frozenset()):
        self.path, self.kind, self.config = path, kind, config
        self.name_map = name_map
        self.files = SafetensorsDir(path)
        self.dtype = self._dtype()
        self._check(source_shapes, ignored)

    def _dtype(self) -> torch.dtype:
        found = {self.files.dtype(k) for k in self.files.keys()}
        bad = found - set(SAFETENSORS_DTYPES)
        if bad:
            raise CheckpointError(f"{self.path}: unsupported tensor dtypes {sorted(bad)} (need F32, F16 or BF16)")
        return DTYPES[SAFETENSORS_DTYPES[self.files.dtype(self.files.keys()[0])]]

    def _check(self, expected: dict[str, tuple], ignored: set[str]) -> None:
        """Every expected source tensor present with its shape, nothing unexpected: all problems at once."""
        problems = []
        present = set(self.files.keys())
        for key, shape in expected.items():
            if key not in present:
                problems.append(f"missing tensor {key} (expected shape {list(shape)})")
            elif self.files.shape(key) != tuple(shape):
                problems.append(f"tensor {key} has shape {list(self.files.shape(key))}, expected {list(shape)}")
        for key in sorted(present - set(expected) - set(ignored)):
            problems.append(f"unexpected tensor {key} {list(self.files.shape(key))}")
        if problems:
            raise CheckpointError([f"{self.path} ({self.kind}): {p}" for p in problems])

    def tensor(self, name: str) -> torch.Tensor:
        """One pt-spec section 4 tensor, reading only the part of the source tensor it needs."""
        recipe = self.name_map[name]
        if isinstance(recipe, Ones):
            return torch.ones(recipe.n, dtype=self.dtype)
        t = self.files.get(recipe.key, recipe.index)
        return t.transpose(-1, -2).contiguous() if recipe.transpose else t


def open_source(model_dir: str | Path, num_tracks: int | None = None, block_depth: int | None = None,
                max_position_embeddings: int | None = None) -> Source:
    """Detect the kind of `model_dir` from its config.json and open it as a Source."""
    path = Path(model_dir)
    if not path.is_dir():
        raise CheckpointError(f"--model_dir {path}: not a directory")
    raw = read_json(path / "config.json", ": a source needs a config.json")
    model_type, archs = raw.get("model_type"), raw.get("architectures") or []
    if model_type == PTConfig.model_type:
        try:
            cfg = PTConfig(**{k: raw[k] for k in PT_FIELDS if k in raw})
        except ValueError as e:
            raise CheckpointError(f"{path}/config.json: {e}") from None
        _check_same(cfg, num_tracks, block_depth, "PT")
        name_map = {name: Take(name) for name in hf_layout(cfg)}
        ignored = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
        return Source(path, "pt", cfg, name_map, hf_layout(cfg), ignored)
    if max_position_embeddings is not None and model_type != "tamm_causal_lm":
        raise CheckpointError("--max_position_embeddings applies to tamm sources only (the others have "
                              "max_position_embeddings in their config.json)")
    if model_type == "tamm_causal_lm":
        cfg, tamm = tamm_config(raw, path, max_position_embeddings)
        _check_same(cfg, num_tracks, block_depth, "tamm")
        name_map, shapes = tamm_name_map(cfg, tamm)
        return Source(path, "tamm", cfg, name_map, shapes, {"transformer.tamm_model.output_transform.weight"})
    if model_type == "llama" or "LlamaForCausalLM" in archs:
        if num_tracks is None:
            raise CheckpointError("a dense Llama source needs --num_tracks T (it must divide heads, KV heads "
                                  "and FFN width)")
        cfg = llama_config(raw, path, num_tracks, block_depth or 1)
        name_map, shapes = llama_name_map(cfg)
        ignored = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
        return Source(path, "llama", cfg, name_map, shapes, ignored)
    raise CheckpointError(f"{path}/config.json: unsupported source (model_type={model_type!r}, architectures="
                          f"{archs}); supported: parallel_track, tamm_causal_lm, LlamaForCausalLM")


def _check_same(cfg: PTConfig, num_tracks: int | None, block_depth: int | None, kind: str) -> None:
    problems = []
    if num_tracks is not None and num_tracks != cfg.num_tracks:
        problems.append(f"--num_tracks {num_tracks} differs from the {kind} source's num_tracks={cfg.num_tracks}")
    if block_depth is not None and block_depth != cfg.block_depth:
        problems.append(f"--block_depth {block_depth} differs from the {kind} source's block_depth="
                        f"{cfg.block_depth} (a PT model's block depth is part of its weights)")
    if problems:
        raise CheckpointError(problems)
