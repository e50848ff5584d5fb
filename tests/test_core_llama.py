"""Parity with transformers' LlamaForCausalLM (pt-spec section 3, 'The sublayer schedule'): a dense
Llama converted to T tracks (--num_tracks T) and run under the sublayer schedule IS the dense model
(tensor parallelism), for logits and for greedy generate(); the block schedule is a different
(approximate, "PT-ified") model, which proves the schedule switch is live."""

import pytest
import torch

from helpers import convert_ok, edit_config, make_llama_checkpoint, max_diff, random_ids, report
from pt_trtllm import PTForCausalLM

TOL = 1e-4
NEW_TOKENS = 12


def _llama_and_pt(tmp_path, T: int, tied: bool, **overrides):
    src, llama = make_llama_checkpoint(tmp_path / "llama", seed=10 * T + tied, tie_word_embeddings=tied, **overrides)
    dst = convert_ok(src, tmp_path / "pt", "--output_format", "hf", "--num_tracks", T)
    return llama, PTForCausalLM.from_pretrained(dst).eval()


@pytest.mark.parametrize("T", [1, 2, 4])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_llama_split_into_tracks_matches_llama_under_sublayer(tmp_path, T, tied):
    """Llama (8 query heads, 4 KV heads: GQA; explicit head_dim 8 != H/heads) split into T tracks:
    the converted config is residual_sum + sublayer with the Llama's sizes and token ids; its
    default schedule (sublayer, also when asked for by name) gives Llama's logits (<= 1e-4) and
    the same greedy continuation from generate(), which is not degenerate (> 1 distinct token)."""
    llama, pt = _llama_and_pt(tmp_path, T, tied)
    cfg, lc = pt.config, llama.config
    assert (cfg.combine_op, cfg.merge_schedule, cfg.block_depth, cfg.num_tracks) == ("residual_sum", "sublayer", 1, T)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size) == (
        lc.num_attention_heads, lc.num_key_value_heads, lc.head_dim, lc.intermediate_size)
    assert (cfg.rope_theta, cfg.rms_norm_eps, cfg.rope_style, cfg.tie_word_embeddings) == (
        lc.rope_theta, lc.rms_norm_eps, "neox", tied)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (lc.bos_token_id, lc.eos_token_id, lc.pad_token_id)

    ids = random_ids(cfg.vocab_size, (2, 20), seed=T)
    with torch.no_grad():
        want = llama(ids).logits
        got = pt(ids, use_cache=False).logits
        got_named = pt(ids, use_cache=False, schedule="sublayer").logits
    diff = max_diff(got, want)
    line = report(f"llama parity T={T} {'tied' if tied else 'untied'} (sublayer)", diff)
    assert diff <= TOL, line
    assert torch.equal(got, got_named), "schedule='sublayer' differs from the converted model's default"

    prompt = ids[:1, :6]
    gen = dict(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0)
    want_tokens = llama.generate(prompt, **gen)[0, 6:].tolist()
    got_tokens = pt.generate(prompt, **gen)[0, 6:].tolist()
    print(f"  greedy llama {want_tokens}\n  greedy pt    {got_tokens}")
    assert got_tokens == want_tokens
    assert len(set(want_tokens)) > 1, f"degenerate random model: greedy continuation {want_tokens}"


@pytest.mark.parametrize("T", [2, 4])
def test_block_schedule_of_a_split_llama_is_a_different_model(tmp_path, T):
    """For T > 1 the block schedule (merge every D=1 layer instead of every sublayer) gives clearly
    different logits from Llama: the schedule argument really changes the computation."""
    llama, pt = _llama_and_pt(tmp_path, T, tied=False)
    ids = random_ids(pt.config.vocab_size, (1, 16), seed=5)
    with torch.no_grad():
        want = llama(ids).logits
        sub = pt(ids, use_cache=False, schedule="sublayer").logits
        block = pt(ids, use_cache=False, schedule="block").logits
    d_sub, d_block = max_diff(sub, want), max_diff(block, want)
    report(f"llama T={T}: sublayer vs llama", d_sub)
    report(f"llama T={T}: block vs llama (expected large)", d_block)
    assert d_sub <= TOL and d_block > 1e-2, (d_sub, d_block)


def test_block_schedule_of_a_one_track_llama_is_the_llama(tmp_path):
    """With T = 1 and D = 1, a block merge (residual_sum of one track) is a no-op, so block equals
    sublayer equals Llama: a control for the test above."""
    llama, pt = _llama_and_pt(tmp_path, 1, tied=False)
    ids = random_ids(pt.config.vocab_size, (1, 16), seed=6)
    with torch.no_grad():
        diff = max_diff(pt(ids, use_cache=False, schedule="block").logits, llama(ids).logits)
    assert diff <= TOL, report("llama T=1 block", diff)


def test_rope_theta_is_read_from_rope_parameters(tmp_path):
    """A Llama config.json that keeps rope_theta inside `rope_parameters` (newer transformers) is
    converted with that theta (pt-spec section 7), and still matches Llama."""
    src, llama = make_llama_checkpoint(tmp_path / "llama", seed=3, rope_theta=777.0)
    edit_config(src, rope_theta=..., rope_parameters={"rope_type": "default", "rope_theta": 777.0})
    dst = convert_ok(src, tmp_path / "pt", "--output_format", "hf", "--num_tracks", 2)
    pt = PTForCausalLM.from_pretrained(dst).eval()
    assert pt.config.rope_theta == 777.0
    ids = random_ids(pt.config.vocab_size, (1, 24), seed=7)
    with torch.no_grad():
        diff = max_diff(pt(ids, use_cache=False).logits, llama(ids).logits)
    assert diff <= TOL, report("llama rope_parameters theta", diff)


def test_block_depth_option_sets_block_depth_of_a_llama(tmp_path):
    """--block_depth D sets the converted Llama's block depth (the sublayer result is unchanged)."""
    src, llama = make_llama_checkpoint(tmp_path / "llama", seed=4, num_hidden_layers=4)
    dst = convert_ok(src, tmp_path / "pt", "--output_format", "hf", "--num_tracks", 2, "--block_depth", 2)
    pt = PTForCausalLM.from_pretrained(dst).eval()
    assert pt.config.block_depth == 2
    ids = random_ids(pt.config.vocab_size, (1, 10), seed=8)
    with torch.no_grad():
        diff = max_diff(pt(ids, use_cache=False).logits, llama(ids).logits)
    assert diff <= TOL, report("llama D=2 sublayer", diff)
