"""Parity with transformers' LlamaForCausalLM (pt-spec section 3, 'The sublayer schedule'): a dense
Llama converted to T tracks and run under the sublayer schedule IS the dense model (tensor
parallelism), for logits and for greedy generate(); the block schedule is a different (approximate,
"PT-ified") model, which proves the schedule switch is live."""

import pytest
import torch

from helpers import assert_logits_close, convert_ok, edit_config, make_llama_checkpoint, max_diff, random_ids, report
from pt_trtllm import PTForCausalLM

TOL = 1e-4
NEW_TOKENS = 12


def _llama_and_pt(tmp_path, T: int, seed: int, llama_overrides: dict | None = None, config_edits: dict | None = None,
                  **options):
    """A random Llama (with `llama_overrides`, then `config_edits` to its config.json) and its
    conversion to T tracks in the HF PT format (converter `options`), loaded."""
    src, llama = make_llama_checkpoint(tmp_path / "llama", seed=seed, **(llama_overrides or {}))
    if config_edits:
        edit_config(src, **config_edits)
    dst = convert_ok(src, tmp_path / "pt", output_format="hf", num_tracks=T, **options)
    return llama, PTForCausalLM.from_pretrained(dst).eval()


@pytest.mark.parametrize("T", [1, 2, 4])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_llama_split_into_tracks_matches_llama_under_sublayer(tmp_path, T, tied):
    """Llama (8 query heads, 4 KV heads: GQA; explicit head_dim 8 != H/heads) split into T tracks:
    the converted config is residual_sum + sublayer with the Llama's sizes and token ids; its
    default schedule (sublayer, also when asked for by name) gives Llama's logits (<= 1e-4) and
    the same greedy continuation from generate(), which is not degenerate (> 1 distinct token)."""
    llama, pt = _llama_and_pt(tmp_path, T, 10 * T + tied, dict(tie_word_embeddings=tied))
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
    assert_logits_close(got, want, TOL, f"llama parity T={T} {'tied' if tied else 'untied'} (sublayer)")
    assert torch.equal(got, got_named), "schedule='sublayer' differs from the converted model's default"

    prompt = ids[:1, :6]
    gen = dict(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0)
    want_tokens = llama.generate(prompt, **gen)[0, 6:].tolist()
    got_tokens = pt.generate(prompt, **gen)[0, 6:].tolist()
    print(f"  greedy llama {want_tokens}\n  greedy pt    {got_tokens}")
    assert got_tokens == want_tokens
    assert len(set(want_tokens)) > 1, f"degenerate random model: greedy continuation {want_tokens}"


@pytest.mark.parametrize("T, ids_seed", [(1, 6), (2, 5), (4, 5)])
def test_block_schedule_of_a_split_llama_is_a_different_model(tmp_path, T, ids_seed):
    """For T > 1 the block schedule (merge every D=1 layer instead of every sublayer) gives clearly
    different logits (> 1e-2) from Llama, while sublayer gives Llama's: the schedule argument
    really changes the computation. With T = 1 (the control) a block merge (residual_sum of one
    track) is a no-op, so block equals Llama too (<= 1e-4)."""
    llama, pt = _llama_and_pt(tmp_path, T, 10 * T)
    ids = random_ids(pt.config.vocab_size, (1, 16), seed=ids_seed)
    with torch.no_grad():
        want = llama(ids).logits
        sub = pt(ids, use_cache=False, schedule="sublayer").logits
        block = pt(ids, use_cache=False, schedule="block").logits
    assert_logits_close(sub, want, TOL, f"llama T={T}: sublayer vs llama")
    if T == 1:
        assert_logits_close(block, want, TOL, "llama T=1: block vs llama")
    else:
        d_block = max_diff(block, want)
        report(f"llama T={T}: block vs llama (expected large)", d_block)
        assert d_block > 1e-2, d_block


# (case id, Llama overrides, config.json edits, converter options, expected PT config fields, ids seed, length)
VARIANTS = [
    ("rope_theta_in_rope_parameters", dict(rope_theta=777.0),
     dict(rope_theta=..., rope_parameters={"rope_type": "default", "rope_theta": 777.0}), {},
     dict(rope_theta=777.0), 3, 7, 24),
    ("block_depth_option", dict(num_hidden_layers=4), {}, dict(block_depth=2), dict(block_depth=2), 4, 8, 10),
]


@pytest.mark.parametrize("case, overrides, edits, options, fields, seed, ids_seed, length", VARIANTS,
                         ids=[v[0] for v in VARIANTS])
def test_llama_config_variants_convert_and_still_match(tmp_path, case, overrides, edits, options, fields, seed,
                                                       ids_seed, length):
    """A Llama config.json that keeps rope_theta inside `rope_parameters` (newer transformers) is
    converted with that theta (pt-spec section 7); the block_depth option sets the converted
    model's block depth. Either way the converted model (2 tracks, sublayer) still gives Llama's
    logits (<= 1e-4)."""
    llama, pt = _llama_and_pt(tmp_path, 2, seed, overrides, edits, **options)
    assert {k: getattr(pt.config, k) for k in fields} == fields
    ids = random_ids(pt.config.vocab_size, (1, length), seed=ids_seed)
    with torch.no_grad():
        got, want = pt(ids, use_cache=False).logits, llama(ids).logits
    assert_logits_close(got, want, TOL, f"llama {case} (sublayer)")
