"""Parity with Apple's tamm 0.2.0 (the only public PT implementation, pt-spec preamble): tiny random
tamm PT models saved as tamm HF checkpoints, converted to the HF PT format by the converter and run
by this project, give the same logits as tamm's own HF model."""

import pytest
import torch

from helpers import TAMM_TINY, assert_logits_close, convert_ok, convert_refused, make_tamm_checkpoint, random_ids
from pt_trtllm import PTForCausalLM

TOL = 1e-4

# id -> tamm overrides. Mean and sum combine, with and without dispatch/combine norms (each alone
# and both), learned and weightless QK-norm, GQA (g < h), MHA (g = h), MQA (g = 1), T = 2 and 3.
CASES = {
    "mean_gqa_learned_qknorm": dict(tracks_combine_op="mean", scale_qk_norm=True),
    "sum_gqa_weightless_qknorm_T3": dict(tracks_combine_op="sum", scale_qk_norm=False, num_tracks=3),
    "mean_dispatch_and_combine_norms_mha": dict(tracks_combine_op="mean", tracks_dispatch_norm="rms_norm",
                                                tracks_combine_norm="rms_norm", num_kv_heads=4),
    "sum_dispatch_and_combine_norms_weightless_qknorm_mqa_T3": dict(
        tracks_combine_op="sum", tracks_dispatch_norm="rms_norm", tracks_combine_norm="rms_norm",
        scale_qk_norm=False, num_kv_heads=1, num_tracks=3),
    "mean_dispatch_norm_only": dict(tracks_combine_op="mean", tracks_dispatch_norm="rms_norm"),
    "sum_combine_norm_only_D1": dict(tracks_combine_op="sum", tracks_combine_norm="rms_norm",
                                     num_layers_per_track_per_sync_point=1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tamm_model_converted_to_hf_matches_tamm_logits(tmp_path, case):
    """A random tamm PT model converted to the HF PT format gives tamm's logits (<= 1e-4) on a
    batch of 2 prompts of W + 1 tokens (W = tamm's local attention window), and the converted
    config says what the tamm model is (T, L, D, combine, norms, gptj, tied, local RoPE attention
    of window W, max_position_embeddings max(4096, W + 1): tamm has none)."""
    overrides = CASES[case]
    src, tamm_model = make_tamm_checkpoint(tmp_path / "tamm", seed=len(case), **overrides)
    dst = convert_ok(src, tmp_path / "pt", output_format="hf")
    model = PTForCausalLM.from_pretrained(dst).eval()
    cfg = model.config

    tc = {**TAMM_TINY, **overrides}  # (tamm's config.json omits fields left at their defaults)
    T = tc["num_tracks"]
    assert (cfg.num_tracks, cfg.num_hidden_layers, cfg.block_depth) == (
        T, tc["num_layers_per_track"], tc["num_layers_per_track_per_sync_point"])
    assert cfg.combine_op == overrides["tracks_combine_op"] and cfg.merge_schedule == "block"
    assert cfg.track_dispatch_norm == ("tracks_dispatch_norm" in overrides)
    assert cfg.track_combine_norm == ("tracks_combine_norm" in overrides)
    assert cfg.rope_style == "gptj" and cfg.qk_norm and cfg.tie_word_embeddings
    assert cfg.num_attention_heads == T * tc["num_heads"] and cfg.num_key_value_heads == T * tc["num_kv_heads"]
    W = tc["local_attention_window_size"]
    assert (cfg.attention_layer_pattern, cfg.attention_window) == (["local_rope"], W)
    assert cfg.max_position_embeddings == max(4096, W + 1)

    ids = random_ids(cfg.vocab_size, (2, W + 1), seed=1)
    with torch.no_grad():
        want = tamm_model(ids).logits.float()
        got = model(ids, use_cache=False).logits
    assert_logits_close(got, want, TOL, f"tamm parity [{case}] (|logits| up to {want.abs().max():.1f})")
    assert want.std() > 1.0, "degenerate random tamm model (flat logits)"


def test_tamm_features_outside_the_spec_are_refused_all_at_once(tmp_path):
    """A tamm model using pre_scale_rms_norm for its pre-norm, post-norm, pre-residual norm and
    track dispatch and combine norms (pt-spec has plain RMSNorms only) is refused with ONE one-line
    error naming every one of these fields, and no output directory (nor temporary directory) left
    behind."""
    fields = ("pre_norm", "post_norm", "pre_residual_norm", "tracks_dispatch_norm", "tracks_combine_norm")
    src, _ = make_tamm_checkpoint(tmp_path / "tamm", **dict.fromkeys(fields, "pre_scale_rms_norm"))
    err = convert_refused(src, tmp_path / "out", output_format="hf")
    for field in fields:
        assert f"{field}='pre_scale_rms_norm' is not supported" in err, f"{field} not named in {err!r}"
