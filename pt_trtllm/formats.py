"""The two checkpoint layouts of pt-spec sections 4 and 5, as plain Python: tensor names and
shapes, and the per-rank `config.json` (written and read here, once). Shared by the converter, the
runtime's loader, scripts/build.py and the TensorRT-LLM network definition (which declares exactly
these weights for rank t).
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import OPTIONAL_PT_FIELDS, PT_FIELDS, PTConfig
from .dtypes import DTYPES
from .merge import DEFAULT_MERGE_IMPL, check_merge_impl

Shape = tuple[int, ...]


class CheckpointError(ValueError):
    """A problem with a source or destination checkpoint; the message lists every problem found."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            super().__init__(self.problems[0])
        else:
            super().__init__(f"{len(self.problems)} problems: " + "; ".join(self.problems))


def read_json(path: str | Path, missing: str = "") -> dict:
    """A config.json as a dict; CheckpointError "<path> not found<missing>" or "<path>: invalid JSON"."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"{path} not found{missing}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not readable ({e.__class__.__name__})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return data


POSITION_EMBEDDING_TYPES = {"neox": "rope_gpt_neox", "gptj": "rope_gptj"}


def _layer_shapes(cfg: PTConfig, layer: int) -> dict[str, Shape]:
    """Shapes of one layer of one track, HF names relative to `layers.{layer}.`."""
    H, d, h, g, f = cfg.hidden_size, cfg.head_dim, cfg.heads_per_track, cfg.kv_heads_per_track, cfg.ffn_per_track
    shapes = {
        "input_layernorm.weight": (H,),
        "self_attn.q_proj.weight": (h * d, H),
        "self_attn.k_proj.weight": (g * d, H),
        "self_attn.v_proj.weight": (g * d, H),
        "self_attn.o_proj.weight": (H, h * d),
        "post_attention_layernorm.weight": (H,),
    }
    if cfg.is_sparse(layer):  # per track: E experts of width fe, [out, in] per expert
        E, fe = cfg.num_experts, cfg.moe_intermediate_size
        shapes.update({"mlp.router.weight": (E, H), "mlp.experts.gate_proj": (E, fe, H),
                       "mlp.experts.up_proj": (E, fe, H), "mlp.experts.down_proj": (E, H, fe)})
    else:
        shapes.update({"mlp.gate_proj.weight": (f, H), "mlp.up_proj.weight": (f, H), "mlp.down_proj.weight": (H, f)})
    if cfg.qk_norm:
        shapes["self_attn.q_norm.weight"] = (d,)
        shapes["self_attn.k_norm.weight"] = (d,)
    for norm, enabled in (("pre_residual_norm", cfg.pre_residual_norm), ("post_norm", cfg.post_norm)):
        if enabled:
            shapes[f"attn_{norm}.weight"] = (H,)
            shapes[f"mlp_{norm}.weight"] = (H,)
    return shapes


def hf_track_layout(cfg: PTConfig, track: int) -> dict[str, Shape]:
    """Section 4 names and shapes of one track's tensors."""
    out = {f"model.tracks.{track}.layers.{layer}.{name}": shape
           for layer in range(cfg.num_hidden_layers) for name, shape in _layer_shapes(cfg, layer).items()}
    for kind, enabled in (("dispatch_norms", cfg.track_dispatch_norm), ("combine_norms", cfg.track_combine_norm)):
        if enabled:
            out.update({f"model.tracks.{track}.{kind}.{b}.weight": (cfg.hidden_size,) for b in range(cfg.num_blocks)})
    return out


def hf_shared_layout(cfg: PTConfig) -> dict[str, Shape]:
    """Section 4 names and shapes of the tensors all tracks share."""
    out = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.hidden_size), "model.norm.weight": (cfg.hidden_size,)}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (cfg.vocab_size, cfg.hidden_size)
    return out


def hf_layout(cfg: PTConfig) -> dict[str, Shape]:
    """Every tensor of the HF PT checkpoint (pt-spec section 4)."""
    out = hf_shared_layout(cfg)
    for t in range(cfg.num_tracks):
        out.update(hf_track_layout(cfg, t))
    return out


# rank-file name -> the HF names (of track t, relative to its layers.{layer}.) it is made of, in order.
# TensorRT-LLM's GatedMLP names are swapped against HF's: its `fc` is HF's gate_proj (the input of
# the activation) and its `gate` is HF's up_proj (the multiplier); see docs/pt-spec.md section 5.
# Its MOE layer fuses both into `fc` [E, 2 fe, H] with the up projection FIRST.
RANK_LAYER_SOURCES = {
    "input_layernorm.weight": ("input_layernorm.weight",),
    "attention.qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "attention.dense.weight": ("self_attn.o_proj.weight",),
    "attention.q_layernorm.weight": ("self_attn.q_norm.weight",),
    "attention.k_layernorm.weight": ("self_attn.k_norm.weight",),
    "post_layernorm.weight": ("post_attention_layernorm.weight",),
    "mlp.fc.weight": ("mlp.gate_proj.weight",),
    "mlp.gate.weight": ("mlp.up_proj.weight",),
    "mlp.proj.weight": ("mlp.down_proj.weight",),
    "attn_pre_residual_norm.weight": ("attn_pre_residual_norm.weight",),
    "attn_post_norm.weight": ("attn_post_norm.weight",),
    "mlp_pre_residual_norm.weight": ("mlp_pre_residual_norm.weight",),
    "mlp_post_norm.weight": ("mlp_post_norm.weight",),
}
RANK_SPARSE_SOURCES = {  # a sparse layer's feed-forward instead of the dense mlp.fc/gate/proj
    "mlp.router.weight": ("mlp.router.weight",),
    "mlp.fc.weight": ("mlp.experts.up_proj", "mlp.experts.gate_proj"),
    "mlp.proj.weight": ("mlp.experts.down_proj",),
}


def concat_dim(rank_name: str, num_sources: int) -> int:
    """The dimension along which a rank tensor's several sources are concatenated: 1 for an MoE
    `mlp.fc.weight` ([E, up rows + gate rows, H]), 0 otherwise."""
    return 1 if num_sources > 1 and rank_name.endswith("mlp.fc.weight") else 0


def rank_sources(cfg: PTConfig, rank: int) -> dict[str, tuple[str, ...]]:
    """Section 5 name of every tensor in rank{rank}.safetensors -> the section 4 tensors it is
    made of (concatenated along `concat_dim` when there are several)."""
    out = {"transformer.vocab_embedding.weight": ("model.embed_tokens.weight",)}
    track_names = hf_track_layout(cfg, rank)
    for layer in range(cfg.num_hidden_layers):
        table = {**RANK_LAYER_SOURCES, **RANK_SPARSE_SOURCES} if cfg.is_sparse(layer) else RANK_LAYER_SOURCES
        for name, parts in table.items():
            srcs = tuple(f"model.tracks.{rank}.layers.{layer}.{p}" for p in parts)
            if all(s in track_names for s in srcs):
                out[f"transformer.layers.{layer}.{name}"] = srcs
    for kind, enabled in (("dispatch_norms", cfg.track_dispatch_norm), ("combine_norms", cfg.track_combine_norm)):
        if enabled:
            for b in range(cfg.num_blocks):
                out[f"transformer.{kind}.{b}.weight"] = (f"model.tracks.{rank}.{kind}.{b}.weight",)
    out["transformer.ln_f.weight"] = ("model.norm.weight",)
    # replicated and unpadded; written even when tied (TensorRT-LLM's lm_head is its own weight)
    out["lm_head.weight"] = ("model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight",)
    return out


def rank_layout(cfg: PTConfig, rank: int) -> dict[str, Shape]:
    """Every tensor of rank{rank}.safetensors and its shape (pt-spec section 5)."""
    hf = hf_layout(cfg)
    out = {}
    for name, srcs in rank_sources(cfg, rank).items():
        shapes = [hf[s] for s in srcs]
        dim = concat_dim(name, len(srcs))
        shape = list(shapes[0])
        shape[dim] = sum(s[dim] for s in shapes)
        out[name] = tuple(shape)
    return out


def rank_config(cfg: PTConfig, dtype: str, merge_impl: str = DEFAULT_MERGE_IMPL) -> dict:
    """The per-rank checkpoint's config.json (pt-spec section 5): TensorRT-LLM's fields, whose
    totals TensorRT-LLM divides by tp_size = T (one track per rank), every PT field, and
    `merge_impl` (how a served rank merges; pt_trtllm.merge.MERGE_IMPLS)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {tuple(DTYPES)}")
    check_merge_impl(merge_impl)
    T = cfg.num_tracks
    out = {
        "architecture": "PTForCausalLM",
        "dtype": dtype,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "intermediate_size": cfg.intermediate_size,
        "head_size": cfg.head_dim,
        "hidden_act": "silu",
        "norm_epsilon": cfg.rms_norm_eps,
        "position_embedding_type": POSITION_EMBEDDING_TYPES[cfg.rope_style],
        "rotary_base": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "mapping": {"world_size": T, "tp_size": T, "pp_size": 1},
        "quantization": {"quant_algo": None, "kv_cache_quant_algo": None},
        "merge_impl": merge_impl,
    }
    for name in PT_FIELDS:
        out.setdefault(name, getattr(cfg, name))
    return out


def config_from_rank_config(data: dict) -> PTConfig:
    """Rebuild the PTConfig from a per-rank config.json (its PT fields; OPTIONAL_PT_FIELDS may be
    absent: a checkpoint written before they existed)."""
    missing = [name for name in PT_FIELDS if name not in data and name not in OPTIONAL_PT_FIELDS]
    if missing:
        raise ValueError(f"per-rank config.json lacks the PT fields {missing}")
    return PTConfig(**{name: data[name] for name in PT_FIELDS if name in data})


def padded_vocab_size(cfg: PTConfig) -> int:
    """Rows of the LM head in a TensorRT-LLM engine: the vocabulary rounded up to a multiple of T,
    the logits width the TensorRT-LLM runtime expects of a T-rank engine. The rank files store the
    unpadded [V, H] head; the network definition pads it with zero rows when it loads them."""
    T = cfg.num_tracks
    return -(-cfg.vocab_size // T) * T


def check_rank_config(data: dict) -> PTConfig:
    """The PTConfig of a per-rank config.json (or of a TensorRT-LLM config dict carrying the same
    fields), after checking that every TensorRT-LLM field agrees with the PT fields: ValueError
    naming the first field that does not (an edited head_size, a quantized checkpoint, a mapping
    that is not one track per rank, ...)."""
    cfg = config_from_rank_config(data)
    merge_impl_of(data)
    for key, want in rank_config(cfg, data.get("dtype")).items():
        if key == "merge_impl" or (key in OPTIONAL_PT_FIELDS and key not in data):  # optional
            continue
        have = data.get(key)
        if isinstance(want, dict):
            have = {k: have.get(k) for k in want} if isinstance(have, dict) else have
        if have != want:
            raise ValueError(f"config.json field {key}={have!r} disagrees with the PT fields, which give {want!r}")
    return cfg


def merge_impl_of(data: dict) -> str:
    """The `merge_impl` of a per-rank or engine config.json (the default when a checkpoint written
    before the field existed lacks it); ValueError for an unknown one."""
    return check_merge_impl(data.get("merge_impl", DEFAULT_MERGE_IMPL))


def read_rank_config(checkpoint_dir: str | Path, flag: str = "--engine_dir") -> tuple[PTConfig, dict]:
    """The PTConfig of a per-rank checkpoint and its config.json as read; CheckpointError naming the
    problem (no config.json, invalid JSON, not a PT checkpoint, fields that disagree)."""
    path = Path(checkpoint_dir) / "config.json"
    raw = read_json(path, f" (is {flag} a per-rank checkpoint?)")
    if raw.get("architecture") != "PTForCausalLM":
        raise CheckpointError(f"{path}: architecture {raw.get('architecture')!r} is not PTForCausalLM: convert it "
                              "with scripts/convert_checkpoint.py first")
    try:
        return check_rank_config(raw), raw
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
