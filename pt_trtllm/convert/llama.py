"""Dense HF Llama checkpoints split into T tracks: track t is tensor-parallel shard t (a contiguous
slice of the query heads, KV heads and FFN columns; norms replicated), `combine_op = residual_sum`,
`merge_schedule = sublayer`. Under the sublayer schedule the PT model equals the dense one."""

from __future__ import annotations

from pathlib import Path

from ..config import PTConfig
from .recipes import Take
from ..formats import CheckpointError


def llama_config(raw: dict, path: Path, num_tracks: int, block_depth: int) -> PTConfig:
    """The PTConfig of a Llama config.json split into `num_tracks` tracks. Llama features outside
    pt-spec are refused by name, all in one error."""
    problems = []
    heads = raw.get("num_attention_heads")
    rope = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type")) or rope.get("rope_type", "default")
    if rope_type != "default":
        problems.append(f"rope scaling ({rope_type!r}) is not supported")
    for field in ("attention_bias", "mlp_bias"):
        if raw.get(field):
            problems.append(f"{field}=true is not supported (pt-spec has no biases)")
    if raw.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={raw['hidden_act']!r} is not supported (only silu)")
    for field in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"):
        if field not in raw:
            problems.append(f"config.json lacks {field}")
    if problems:
        raise CheckpointError([f"{path} (llama): {p}" for p in problems])
    head_dim = raw.get("head_dim") or raw["hidden_size"] // heads
    theta = raw.get("rope_theta", rope.get("rope_theta", 10000.0))
    try:
        return PTConfig(
            vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"], num_tracks=num_tracks,
            num_hidden_layers=raw["num_hidden_layers"], block_depth=block_depth, num_attention_heads=heads,
            num_key_value_heads=raw.get("num_key_value_heads") or heads, head_dim=head_dim,
            intermediate_size=raw["intermediate_size"], rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            max_position_embeddings=raw.get("max_position_embeddings", 2048), rope_theta=float(theta),
            rope_style="neox", qk_norm=False, combine_op="residual_sum", merge_schedule="sublayer",
            tie_word_embeddings=raw.get("tie_word_embeddings", False), bos_token_id=raw.get("bos_token_id"),
            eos_token_id=raw.get("eos_token_id"), pad_token_id=raw.get("pad_token_id"))
    except ValueError as e:
        raise CheckpointError(f"{path} (llama split into {num_tracks} tracks): {e}") from None


def llama_name_map(cfg: PTConfig) -> tuple[dict, dict]:
    """Section 4 name -> Take (a row or column slice of a Llama tensor), and the Llama shapes."""
    H, d = cfg.hidden_size, cfg.head_dim
    hd, gd, f = cfg.heads_per_track * d, cfg.kv_heads_per_track * d, cfg.ffn_per_track
    T = cfg.num_tracks
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, H), "model.norm.weight": (H,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, H)
    name_map = {name: Take(name) for name in shapes}
    all_cols = slice(None)
    for layer in range(cfg.num_hidden_layers):
        src = f"model.layers.{layer}."  # the source layer
        shapes.update({
            src + "input_layernorm.weight": (H,), src + "post_attention_layernorm.weight": (H,),
            src + "self_attn.q_proj.weight": (T * hd, H), src + "self_attn.k_proj.weight": (T * gd, H),
            src + "self_attn.v_proj.weight": (T * gd, H), src + "self_attn.o_proj.weight": (H, T * hd),
            src + "mlp.gate_proj.weight": (T * f, H), src + "mlp.up_proj.weight": (T * f, H),
            src + "mlp.down_proj.weight": (H, T * f),
        })
        for t in range(T):
            dst = f"model.tracks.{t}.layers.{layer}."  # the section 4 layer of track t
            rows_q, rows_kv, rows_f = slice(t * hd, (t + 1) * hd), slice(t * gd, (t + 1) * gd), slice(t * f, (t + 1) * f)
            name_map.update({
                dst + "input_layernorm.weight": Take(src + "input_layernorm.weight"),
                dst + "self_attn.q_proj.weight": Take(src + "self_attn.q_proj.weight", rows_q),
                dst + "self_attn.k_proj.weight": Take(src + "self_attn.k_proj.weight", rows_kv),
                dst + "self_attn.v_proj.weight": Take(src + "self_attn.v_proj.weight", rows_kv),
                dst + "self_attn.o_proj.weight": Take(src + "self_attn.o_proj.weight", (all_cols, rows_q)),
                dst + "post_attention_layernorm.weight": Take(src + "post_attention_layernorm.weight"),
                dst + "mlp.gate_proj.weight": Take(src + "mlp.gate_proj.weight", rows_f),
                dst + "mlp.up_proj.weight": Take(src + "mlp.up_proj.weight", rows_f),
                dst + "mlp.down_proj.weight": Take(src + "mlp.down_proj.weight", (all_cols, rows_f)),
            })
    return name_map, shapes
