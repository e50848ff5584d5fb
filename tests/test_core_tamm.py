"""Parity with Apple's tamm 0.2.0 (the only public PT implementation, pt-spec preamble): tiny random
tamm PT models saved as tamm HF checkpoints, converted by scripts/convert_checkpoint.py
--output_format hf and run by this project, give the same logits as tamm's own HF model."""

import pytest
import torch

from helpers import CONVERT_SCRIPT, TAMM_TINY, convert_ok, leftovers, make_tamm_checkpoint, max_diff, random_ids, report, run_script
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
    """A random tamm PT model converted with --output_format hf gives tamm's logits (<= 1e-4) on a
    batch of 2 prompts as long as the converted max_position_embeddings (the attention window +
    1), and the converted config says what the tamm model is (T, L, D, combine, norms, gptj, tied)."""
    overrides = CASES[case]
    src, tamm_model = make_tamm_checkpoint(tmp_path / "tamm", seed=len(case), **overrides)
    dst = convert_ok(src, tmp_path / "pt", "--output_format", "hf")
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
    assert cfg.max_position_embeddings == tc["local_attention_window_size"] + 1

    ids = random_ids(cfg.vocab_size, (2, cfg.max_position_embeddings), seed=1)
    with torch.no_grad():
        want = tamm_model(ids).logits.float()
        got = model(ids, use_cache=False).logits
    diff = max_diff(got, want)
    line = report(f"tamm parity [{case}] (|logits| up to {want.abs().max():.1f})", diff)
    assert diff <= TOL, line
    assert want.std() > 1.0, "degenerate random tamm model (flat logits)"


def test_tamm_features_outside_the_spec_are_refused_all_at_once(tmp_path):
    """A tamm model using MoE 'sparse' layers, 'global_nope' attention, post_norm,
    pre_residual_norm and a non-rms_norm pre_norm is refused by the converter's command line with
    ONE error naming every one of these features, a nonzero exit, and no output directory (nor
    temporary directory) left behind."""
    src, _ = make_tamm_checkpoint(
        tmp_path / "tamm", feed_forward_layer_pattern=("dense", "sparse"),
        attention_layer_pattern=("local_rope", "global_nope"), post_norm="rms_norm", pre_residual_norm="rms_norm",
        pre_norm="pre_scale_rms_norm", num_experts=2, num_experts_per_token=1, sparse_feed_forward_hidden_dim=16)
    out = tmp_path / "out"
    result = run_script(CONVERT_SCRIPT, "--model_dir", src, "--output_dir", out, "--output_format", "hf")
    print(result.stderr)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for needle in ("sparse", "global_nope", "post_norm", "pre_residual_norm", "pre_norm='pre_scale_rms_norm'"):
        assert needle in errors[0], f"{needle!r} not named in {errors[0]!r}"
    assert not out.exists() and not leftovers(tmp_path, "out")
