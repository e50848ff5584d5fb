"""The TensorRT-LLM side of the per-rank checkpoint contract (pt-spec section 5), checked against
the converter's output without TensorRT-LLM: the config.json translation (every field, the totals
TensorRT-LLM divides by tp_size, head_size, rotary settings, mapping) and the names and shapes that
TensorRT-LLM's layers declare for rank t, derived here from that config.json by TensorRT-LLM's own
sizing rules (tensorrt_llm/layers/{attention,linear,mlp,embedding,normalization}.py of 1.2.x:
ColumnLinear keeps out/tp rows, RowLinear in/tp columns, Attention has heads/tp query heads and
ceil(kv_heads/tp) KV heads of head_size, Embedding and RmsNorm are full size at tp_size=1).
"""

from __future__ import annotations

import json
import math

import pytest
from safetensors import safe_open

from pt_trtllm import PTConfig
from pt_trtllm.convert.writer import convert
from pt_trtllm.formats import (
    check_rank_config,
    padded_vocab_size,
    rank_config,
    rank_layout,
)

VARIANTS = {
    "tiny": {},
    "gptj-norms-tied": {"rope_style": "gptj", "track_dispatch_norm": True, "track_combine_norm": True,
                        "tie_word_embeddings": True, "eos_token_id": 2},
    "odd-vocab-residual-sum": {"vocab_size": 511, "combine_op": "residual_sum", "merge_schedule": "sublayer",
                               "block_depth": 1},
    "four-tracks": {"num_tracks": 4, "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 510},
    "qk-norm-gptj": {"qk_norm": True, "rope_style": "gptj"},
}


@pytest.fixture(params=sorted(VARIANTS))
def converted(request, pt_checkpoint_factory, tmp_path):
    """(PTConfig, per-rank checkpoint dir) of a random PT model converted to float16."""
    src = pt_checkpoint_factory("tiny", **VARIANTS[request.param])
    dst = tmp_path / "ckpt"
    source = convert(src, dst, dtype="float16", progress=False)
    return source.config, dst


def trtllm_declared_layout(data: dict) -> dict[str, tuple[int, ...]]:
    """The tensors PTForCausalLM (pt_trtllm/trtllm/model.py) declares for every rank, computed from the
    TensorRT-LLM fields of config.json the way TensorRT-LLM sizes its layers at tp_size = T with no
    tp_group. The LM head is the stored one: the network pads its rows when loading (tested apart)."""
    tp = data["mapping"]["tp_size"]
    H, d, L = data["hidden_size"], data["head_size"], data["num_hidden_layers"]
    heads, kv_heads = data["num_attention_heads"] // tp, math.ceil(data["num_key_value_heads"] / tp)
    ffn = data["intermediate_size"]
    out = {"transformer.vocab_embedding.weight": (data["vocab_size"], H)}
    for layer in range(L):
        p = f"transformer.layers.{layer}."
        out[p + "input_layernorm.weight"] = (H,)
        out[p + "attention.qkv.weight"] = (tp * (heads + 2 * kv_heads) * d // tp, H)  # ColumnLinear
        out[p + "attention.dense.weight"] = (H, tp * heads * d // tp)  # RowLinear
        if data["qk_norm"]:  # the QK-norm attention's RmsNorm(head_size) of q and of k
            out[p + "attention.q_layernorm.weight"] = (d,)
            out[p + "attention.k_layernorm.weight"] = (d,)
        out[p + "post_layernorm.weight"] = (H,)
        out[p + "mlp.fc.weight"] = (ffn // tp, H)
        out[p + "mlp.gate.weight"] = (ffn // tp, H)
        out[p + "mlp.proj.weight"] = (H, ffn // tp)
    blocks = L // data["block_depth"]
    for kind in ("dispatch_norms", "combine_norms"):
        if data[f"track_{kind[:-6]}_norm"]:
            out.update({f"transformer.{kind}.{b}.weight": (H,) for b in range(blocks)})
    out["transformer.ln_f.weight"] = (H,)
    out["lm_head.weight"] = (data["vocab_size"], H)
    return out


def test_config_json_is_the_translation_of_every_pt_field(converted):
    cfg, ckpt = converted
    data = json.loads((ckpt / "config.json").read_text())
    assert data == rank_config(cfg, "float16")
    T = cfg.num_tracks
    # TensorRT-LLM's fields: totals it divides by tp_size = T, one track per rank
    assert data["architecture"] == "PTForCausalLM" and data["dtype"] == "float16"
    assert data["mapping"] == {"world_size": T, "tp_size": T, "pp_size": 1}
    assert data["num_attention_heads"] // data["mapping"]["tp_size"] == cfg.heads_per_track
    assert data["num_key_value_heads"] // data["mapping"]["tp_size"] == cfg.kv_heads_per_track
    assert data["intermediate_size"] // data["mapping"]["tp_size"] == cfg.ffn_per_track
    assert data["head_size"] == cfg.head_dim  # explicit: hidden_size // heads would be wrong
    assert data["hidden_size"] == cfg.hidden_size and data["num_hidden_layers"] == cfg.num_hidden_layers
    assert data["vocab_size"] == cfg.vocab_size and data["max_position_embeddings"] == cfg.max_position_embeddings
    assert data["hidden_act"] == "silu" and data["norm_epsilon"] == cfg.rms_norm_eps
    assert data["position_embedding_type"] == {"neox": "rope_gpt_neox", "gptj": "rope_gptj"}[cfg.rope_style]
    assert data["rotary_base"] == cfg.rope_theta
    assert data["quantization"] == {"quant_algo": None, "kv_cache_quant_algo": None}
    assert data["merge_impl"] == "allreduce"  # how a served rank merges: the one unfused all-reduce
    # and every PT field under its spec name; the network definition reads them back
    assert check_rank_config(data).pt_dict() == cfg.pt_dict()


def test_rank_files_hold_exactly_what_the_network_declares(converted):
    cfg, ckpt = converted
    data = json.loads((ckpt / "config.json").read_text())
    for rank in range(cfg.num_tracks):
        with safe_open(ckpt / f"rank{rank}.safetensors", "pt") as f:
            stored = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
        assert stored == trtllm_declared_layout(data) == rank_layout(cfg, rank), f"rank {rank}"


def test_padded_vocab_is_the_runtime_logits_width():
    # the runtime's vocabSizePadded(world) = ceil(V / world) * world, with world = T
    for vocab, tracks, padded in ((512, 2, 512), (511, 2, 512), (510, 4, 512), (509, 1, 509)):
        cfg = PTConfig.from_preset("tiny", vocab_size=vocab, num_tracks=tracks, num_attention_heads=8,
                                   num_key_value_heads=4)
        assert padded_vocab_size(cfg) == padded


@pytest.mark.parametrize("key, value, named", [
    ("head_size", 8, "head_size"),
    ("hidden_act", "gelu", "hidden_act"),
    ("architecture", "LlamaForCausalLM", "architecture"),
    ("mapping", {"world_size": 2, "tp_size": 1, "pp_size": 2}, "mapping"),
    ("quantization", {"quant_algo": "FP8", "kv_cache_quant_algo": None}, "quantization"),
    ("position_embedding_type", "rope_gptj", "position_embedding_type"),
    ("rotary_base", 500000.0, "rotary_base"),
    ("norm_epsilon", 1e-6, "norm_epsilon"),
    ("merge_impl", "fused", "merge_impl"),
])
def test_a_config_whose_trtllm_fields_contradict_its_pt_fields_is_refused(key, value, named):
    data = rank_config(PTConfig.from_preset("tiny"), "float16")
    data[key] = value
    with pytest.raises(ValueError, match=named):
        check_rank_config(data)


def test_a_config_without_the_pt_fields_is_refused():
    data = rank_config(PTConfig.from_preset("tiny"), "float16")
    del data["block_depth"]
    with pytest.raises(ValueError, match="block_depth"):
        check_rank_config(data)
