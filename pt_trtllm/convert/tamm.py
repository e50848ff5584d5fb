"""Apple tamm 0.2.0 HF checkpoints (`model_type: tamm_causal_lm`) of `AFMParallelTrackMoEConfig`
models: the whole PT-MoE architecture (dense and sparse layers, local RoPE and global NoPE
attention, dispatch/combine/pre-residual/post norms).

tamm facts this relies on (tamm/models/afm_text/afm_pt_moe.py, tamm/layers/*):
- its config JSON omits fields left at their defaults: `TAMM_DEFAULTS` below are 0.2.0's;
- `num_heads`/`num_kv_heads`/`dense_feed_forward_hidden_dim` are PER TRACK; head_dim =
  attention_hidden_dim / num_heads;
- vectorized weights are [tracks, in, out]; the fused qkv output is [q heads | k heads | v heads],
  head-major; SwiGLU is silu(linear_0) * linear_1;
- RoPE rotates adjacent pairs (gptj); QK-norm always runs after RoPE, weightless when
  `scale_qk_norm` is false; norms are plain RMSNorm computed in float32;
- local attention (`local_rope`, or its alias `local`) sees `local_attention_window_size` past
  positions besides its own (distance <= W); `global_nope` layers have no RoPE and no window, keep
  QK-norm, and keep the `qkv_transform` weight names;
- a sparse layer per track: router [T, H, E] -> float32 -> cap * tanh(x / cap) -> softmax -> top-k
  -> renormalized; experts' linear_0 (gate), linear_1 (up) [T, E, H, f], output [T, E, f, H];
  `num_experts`, `num_experts_per_token` and `sparse_feed_forward_hidden_dim` are per track;
- pre_residual_norm / post_norm: tamm's NormalizedResidualConnection, post(h + pre_residual(out));
- the LM head is tied to the embedding; tamm has no maximum length: `max_position_embeddings` comes
  from the converter (default max(4096, W + 1)).
"""

from __future__ import annotations

from pathlib import Path

from ..config import PTConfig
from ..formats import CheckpointError
from .recipes import Ones, Take

TAMM_TYPE = "module_configs:AFMParallelTrackMoEConfig"
TAMM_DEFAULTS = {
    "vocab_size": 153600, "num_tracks": 8, "num_layers_per_track": 48, "num_layers_per_track_per_sync_point": 4,
    "hidden_dim": 2048, "attention_hidden_dim": 512, "dense_feed_forward_hidden_dim": 5888, "num_heads": 4,
    "num_kv_heads": None, "rope_theta": 500000.0,
    "attention_layer_pattern": ["local_rope", "local_rope", "local_rope", "global_nope"],
    "local_attention_window_size": 4096, "feed_forward_layer_pattern": ["dense", "sparse"],
    "pre_norm": "rms_norm", "post_norm": None, "pre_residual_norm": None, "tracks_dispatch_norm": None,
    "tracks_combine_norm": None, "scale_qk_norm": True, "norm_eps": 1e-5, "tracks_combine_op": "mean",
    "sparse_feed_forward_hidden_dim": 2944, "num_experts": 40, "num_experts_per_token": 2,
    "experts_router_logits_cap": 50.0,
}
ATTENTION = {"local_rope": "local_rope", "local": "local_rope", "global_nope": "global_nope"}
PREFIX = "transformer.tamm_model."


def tamm_config(raw: dict, path: Path, max_position_embeddings: int | None = None) -> tuple[PTConfig, dict]:
    """The PTConfig of a tamm HF config.json, and tamm's full config (defaults filled in).
    Features outside pt-spec are refused, all of them in one error."""
    tc = raw.get("tamm_config")
    if not isinstance(tc, dict):
        raise CheckpointError(f"{path}/config.json: model_type tamm_causal_lm without a tamm_config object")
    if tc.get("__tamm_type__") != TAMM_TYPE:
        raise CheckpointError(f"{path}/config.json: tamm model {tc.get('__tamm_type__')!r} is not a parallel-track "
                              f"model ({TAMM_TYPE})")
    c = {**TAMM_DEFAULTS, **tc}
    problems = []
    if any(p not in ATTENTION for p in c["attention_layer_pattern"]):
        problems.append(f"attention_layer_pattern={list(c['attention_layer_pattern'])} has types other than "
                        f"{sorted(ATTENTION)}")
    if any(p not in ("dense", "sparse") for p in c["feed_forward_layer_pattern"]):
        problems.append(f"feed_forward_layer_pattern={list(c['feed_forward_layer_pattern'])} has types other than "
                        "'dense' and 'sparse'")
    for field in ("post_norm", "pre_residual_norm"):
        if c[field] not in ("rms_norm", None):
            problems.append(f"{field}={c[field]!r} is not supported (only plain 'rms_norm' or null)")
    for field in ("pre_norm", "tracks_dispatch_norm", "tracks_combine_norm"):
        allowed = ("rms_norm",) if field == "pre_norm" else ("rms_norm", None)
        if c[field] not in allowed:
            problems.append(f"{field}={c[field]!r} is not supported (only plain 'rms_norm')")
    if c["tracks_combine_op"].lower() not in ("mean", "sum"):
        problems.append(f"tracks_combine_op={c['tracks_combine_op']!r} is not supported (mean or sum)")
    if c["attention_hidden_dim"] % c["num_heads"]:
        problems.append(f"attention_hidden_dim={c['attention_hidden_dim']} not divisible by num_heads={c['num_heads']}")
    if problems:
        raise CheckpointError([f"{path} (tamm): {p}" for p in problems])
    T = c["num_tracks"]
    kv_heads = c["num_kv_heads"] or c["num_heads"]
    window = c["local_attention_window_size"]
    sparse = "sparse" in c["feed_forward_layer_pattern"]
    try:
        cfg = PTConfig(
            vocab_size=c["vocab_size"], hidden_size=c["hidden_dim"], num_tracks=T,
            num_hidden_layers=c["num_layers_per_track"], block_depth=c["num_layers_per_track_per_sync_point"],
            num_attention_heads=T * c["num_heads"], num_key_value_heads=T * kv_heads,
            head_dim=c["attention_hidden_dim"] // c["num_heads"],
            intermediate_size=T * c["dense_feed_forward_hidden_dim"], rms_norm_eps=c["norm_eps"],
            max_position_embeddings=max_position_embeddings or max(4096, window + 1), rope_theta=float(c["rope_theta"]),
            rope_style="gptj", qk_norm=True, combine_op=c["tracks_combine_op"].lower(),
            track_dispatch_norm=c["tracks_dispatch_norm"] is not None,
            track_combine_norm=c["tracks_combine_norm"] is not None, merge_schedule="block",
            tie_word_embeddings=True, bos_token_id=raw.get("bos_token_id"), eos_token_id=raw.get("eos_token_id"),
            pad_token_id=raw.get("pad_token_id"),
            attention_layer_pattern=[ATTENTION[p] for p in c["attention_layer_pattern"]], attention_window=window,
            feed_forward_layer_pattern=list(c["feed_forward_layer_pattern"]),
            num_experts=c["num_experts"] if sparse else 0,
            num_experts_per_token=c["num_experts_per_token"] if sparse else 0,
            moe_intermediate_size=c["sparse_feed_forward_hidden_dim"] if sparse else 0,
            router_logits_cap=c["experts_router_logits_cap"] if sparse else None,
            pre_residual_norm=c["pre_residual_norm"] is not None, post_norm=c["post_norm"] is not None)
    except ValueError as e:
        raise CheckpointError(f"{path} (tamm): {e}") from None
    return cfg, c


def tamm_name_map(cfg: PTConfig, c: dict) -> tuple[dict, dict]:
    """Section 4 name -> Take/Ones from the tamm state dict, and the expected tamm tensor shapes."""
    T, H, D, d = cfg.num_tracks, cfg.hidden_size, cfg.block_depth, cfg.head_dim
    hd, gd, f = cfg.heads_per_track * d, cfg.kv_heads_per_track * d, cfg.ffn_per_track
    shapes = {PREFIX + "embedding.weight": (cfg.vocab_size, H), PREFIX + "output_norm.weight": (H,)}
    name_map = {"model.embed_tokens.weight": Take(PREFIX + "embedding.weight"),
                "model.norm.weight": Take(PREFIX + "output_norm.weight")}
    for layer in range(cfg.num_hidden_layers):
        src = f"{PREFIX}layers.segment_{layer // D}.layer_{layer % D}."  # the source layer
        layer_shapes = {
            "attention.norm.weight": (T, H), "attention.qkv_transform.fused_linear.weight": (T, H, hd + 2 * gd),
            "attention.output_transform.weight": (T, hd, H), "feed_forward.norm.weight": (T, H),
        }
        if cfg.is_sparse(layer):  # per track: router [H, E], experts [E, H, fe] (gate, up), [E, fe, H] (down)
            E, fe = cfg.num_experts, cfg.moe_intermediate_size
            ffn = {"mlp.router.weight": ("feed_forward.router.input_transform.weight", (T, H, E)),
                   "mlp.experts.gate_proj": ("feed_forward.experts.hidden_transform.linear_0.weight", (T, E, H, fe)),
                   "mlp.experts.up_proj": ("feed_forward.experts.hidden_transform.linear_1.weight", (T, E, H, fe)),
                   "mlp.experts.down_proj": ("feed_forward.experts.output_transform.weight", (T, E, fe, H))}
        else:
            ffn = {"mlp.gate_proj.weight": ("feed_forward.hidden_transform.linear_0.weight", (T, H, f)),
                   "mlp.up_proj.weight": ("feed_forward.hidden_transform.linear_1.weight", (T, H, f)),
                   "mlp.down_proj.weight": ("feed_forward.output_transform.weight", (T, f, H))}
        norms = {}  # section 4 name -> tamm name of the residual connections' norms
        for kind, part in (("attn", "attention"), ("mlp", "feed_forward")):
            for norm, enabled in (("pre_residual_norm", cfg.pre_residual_norm), ("post_norm", cfg.post_norm)):
                if enabled:
                    norms[f"{kind}_{norm}.weight"] = f"{part}.residual_connection.{norm}.weight"
        layer_shapes.update({name: shape for name, shape in ffn.values()})
        layer_shapes.update({name: (T, H) for name in norms.values()})
        if c["scale_qk_norm"]:
            layer_shapes.update({"attention.qk_norm.query_norm.weight": (T, d),
                                 "attention.qk_norm.key_norm.weight": (T, d)})
        shapes.update({src + k: v for k, v in layer_shapes.items()})
        qkv = src + "attention.qkv_transform.fused_linear.weight"
        for t in range(T):
            dst = f"model.tracks.{t}.layers.{layer}."  # the section 4 layer of track t
            name_map.update({
                dst + "input_layernorm.weight": Take(src + "attention.norm.weight", t),
                dst + "self_attn.q_proj.weight": Take(qkv, (t, slice(None), slice(0, hd)), transpose=True),
                dst + "self_attn.k_proj.weight": Take(qkv, (t, slice(None), slice(hd, hd + gd)), transpose=True),
                dst + "self_attn.v_proj.weight": Take(qkv, (t, slice(None), slice(hd + gd, hd + 2 * gd)), transpose=True),
                dst + "self_attn.o_proj.weight": Take(src + "attention.output_transform.weight", t, transpose=True),
                dst + "self_attn.q_norm.weight": (Take(src + "attention.qk_norm.query_norm.weight", t)
                                                if c["scale_qk_norm"] else Ones(d)),
                dst + "self_attn.k_norm.weight": (Take(src + "attention.qk_norm.key_norm.weight", t)
                                                if c["scale_qk_norm"] else Ones(d)),
                dst + "post_attention_layernorm.weight": Take(src + "feed_forward.norm.weight", t),
            })
            # tamm's [.., in, out] -> torch's [.., out, in] (the last two dims swapped)
            name_map.update({dst + name: Take(src + key, t, transpose=True) for name, (key, _) in ffn.items()})
            name_map.update({dst + name: Take(src + key, t) for name, key in norms.items()})
    for b in range(cfg.num_blocks):
        for kind, enabled, part in (("dispatch_norms", cfg.track_dispatch_norm, "input_transform"),
                                    ("combine_norms", cfg.track_combine_norm, "output_transform")):
            if enabled:
                key = f"{PREFIX}layers.segment_{b}.{part}.norm.weight"
                shapes[key] = (T, H)
                name_map.update({f"model.tracks.{t}.{kind}.{b}.weight": Take(key, t) for t in range(T)})
    return name_map, shapes
