"""generate() on PTForCausalLM: greedy and sampling work, the KV-cache path equals recomputing
everything without a cache, left-padded batches give each prompt's own greedy tokens, and the
schedule can be chosen per generate() call."""

import pytest
import torch

from helpers import make_pt_model, max_diff, random_ids, report

TOL = 1e-4
NEW = 10

# (A tied model with a dispatch norm is degenerate with random weights whatever the embedding
# scale: the dispatch norm rescales the embedding to unit RMS, so the output is the input token.)
VARIANTS = {
    "tiny_mean_block": dict(),
    "sum_qknorm_gptj_dispatch_combine": dict(combine_op="sum", qk_norm=True, rope_style="gptj",
                                             track_dispatch_norm=True, track_combine_norm=True),
    "residual_sum_sublayer_D1_tied": dict(combine_op="residual_sum", merge_schedule="sublayer", block_depth=1,
                                          tie_word_embeddings=True),
}


def _model(variant, seed=0):
    return make_pt_model("tiny", seed=seed, pad_token_id=0, bos_token_id=1, eos_token_id=None, **VARIANTS[variant])


@torch.no_grad()
def _greedy_without_cache(model, prompt, new, schedule=None):
    """Reference decoding: every step recomputes the whole sequence (no KV cache)."""
    ids, logits = prompt, []
    for _ in range(new):
        step = model(ids, use_cache=False, schedule=schedule).logits[:, -1]
        logits.append(step)
        ids = torch.cat([ids, step.argmax(-1, keepdim=True)], dim=1)
    return ids[:, prompt.shape[1]:], torch.stack(logits, 1)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_generate_with_kv_cache_equals_recomputation(variant):
    """Greedy generate() (dynamic KV cache: one prefill then 1-token decode steps) gives the same
    tokens and per-step logits (<= 1e-4) as recomputing the full sequence at every step; the
    continuation is not degenerate; use_cache=False generate gives the same tokens."""
    model = _model(variant)
    prompt = random_ids(model.config.vocab_size, (1, 7), seed=2)
    out = model.generate(prompt, max_new_tokens=NEW, do_sample=False, output_logits=True,
                         return_dict_in_generate=True)
    tokens = out.sequences[:, prompt.shape[1]:]
    ref_tokens, ref_logits = _greedy_without_cache(model, prompt, NEW)
    diff = max_diff(torch.stack(out.logits, 1), ref_logits)
    line = report(f"generate KV cache vs recompute [{variant}]", diff)
    assert tokens.tolist() == ref_tokens.tolist()
    assert diff <= TOL, line
    assert len(set(tokens[0].tolist())) > 1, f"degenerate model: {tokens.tolist()}"
    no_cache = model.generate(prompt, max_new_tokens=NEW, do_sample=False, use_cache=False)
    assert no_cache[:, prompt.shape[1]:].tolist() == tokens.tolist()


def test_chunked_prefill_with_cache_equals_one_pass():
    """Feeding a prompt in two chunks through the cache (the second chunk of several tokens sees
    the cached past through an explicit mask) gives the one-pass logits."""
    from transformers.cache_utils import DynamicCache

    model = _model("sum_qknorm_gptj_dispatch_combine")
    ids = random_ids(model.config.vocab_size, (2, 12), seed=4)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = DynamicCache()
        first = model(ids[:, :5], past_key_values=cache, use_cache=True).logits
        second = model(ids[:, 5:], past_key_values=cache, use_cache=True).logits
    diff = max_diff(torch.cat([first, second], 1), full)
    assert diff <= TOL, report("chunked prefill vs one pass", diff)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_left_padded_batch_gives_each_prompts_own_greedy_tokens(variant):
    """A batch of prompts of lengths 3, 8 and 5, left-padded with pad_token_id and an
    attention_mask, gives for each row the greedy tokens (and step logits) of that prompt alone."""
    model = _model(variant, seed=1)
    prompts = [random_ids(model.config.vocab_size, (n,), seed=10 + n) for n in (3, 8, 5)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, output_logits=True,
                         return_dict_in_generate=True)
    batch_logits = torch.stack(out.logits, 1)
    worst = 0.0
    for i, p in enumerate(prompts):
        alone = model.generate(p[None], max_new_tokens=NEW, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
        assert out.sequences[i, width:].tolist() == alone.sequences[0, len(p):].tolist(), f"prompt {i}"
        worst = max(worst, max_diff(batch_logits[i], torch.stack(alone.logits, 1)[0]))
    assert worst <= TOL, report(f"left-padded batch vs alone [{variant}]", worst)
    report(f"left-padded batch vs alone [{variant}]", worst)


@pytest.mark.parametrize("variant", ["tiny_mean_block", "sum_qknorm_gptj_dispatch_combine"])
def test_left_padded_forward_derives_positions_from_the_attention_mask(variant):
    """A plain forward of a left-padded batch with only an attention_mask (no position_ids) gives,
    at every real token, the logits of that prompt run alone: positions restart at 0 after the
    padding. (With learned QK-norm weights after RoPE, absolute positions matter, not only offsets.)"""
    model = _model(variant, seed=6)
    lengths = (4, 9)
    prompts = [random_ids(model.config.vocab_size, (n,), seed=20 + n) for n in lengths]
    ids = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, 9 - len(p):], mask[i, 9 - len(p):] = p, 1
    with torch.no_grad():
        batch = model(ids, attention_mask=mask, use_cache=False).logits
        worst = max(max_diff(batch[i, 9 - len(p):], model(p[None], use_cache=False).logits[0])
                    for i, p in enumerate(prompts))
    assert worst <= TOL, report(f"left-padded forward vs alone [{variant}]", worst)


def test_sampling_is_seeded_and_respects_top_k_and_temperature():
    """do_sample with top_k and temperature: the same seed gives the same tokens, other seeds give
    other tokens, every sampled token is among the top_k of the model's (no-cache) logits at that
    step, and the processed scores are the logits / temperature on exactly top_k entries."""
    model = _model("tiny_mean_block", seed=3)
    prompt = random_ids(model.config.vocab_size, (1, 6), seed=5)
    kw = dict(max_new_tokens=NEW, do_sample=True, top_k=8, temperature=1.7, output_scores=True,
              return_dict_in_generate=True)

    def sample(seed):
        torch.manual_seed(seed)
        return model.generate(prompt, **kw)

    a, b = sample(0), sample(0)
    assert torch.equal(a.sequences, b.sequences)
    others = {tuple(sample(s).sequences[0].tolist()) for s in (1, 2, 3)}
    assert len(others | {tuple(a.sequences[0].tolist())}) > 1, "sampling ignores the seed"
    greedy = model.generate(prompt, max_new_tokens=NEW, do_sample=False)
    assert any(not torch.equal(greedy, model.generate(prompt, **kw).sequences) for _ in range(3))

    seq = a.sequences
    with torch.no_grad():
        logits = model(seq, use_cache=False).logits[0, prompt.shape[1] - 1:-1]  # the step logits
    for step, (row, score) in enumerate(zip(logits, a.scores)):
        token = seq[0, prompt.shape[1] + step].item()
        assert token in row.topk(8).indices.tolist(), f"step {step}: token {token} outside top_k"
        kept = torch.isfinite(score[0])
        assert kept.sum() == 8
        assert max_diff(score[0][kept], row[kept] / 1.7) <= TOL


@pytest.mark.parametrize("schedule", ["block", "sublayer"])
def test_generate_takes_the_schedule_argument(schedule):
    """model.generate(..., schedule=S) decodes with schedule S (equal to recomputation under S)."""
    model = _model("tiny_mean_block", seed=4)
    prompt = random_ids(model.config.vocab_size, (1, 5), seed=6)
    got = model.generate(prompt, max_new_tokens=NEW, do_sample=False, schedule=schedule)[:, 5:]
    ref, _ = _greedy_without_cache(model, prompt, NEW, schedule=schedule)
    assert got.tolist() == ref.tolist()


def test_schedules_differ_and_sublayer_is_refused_with_track_norms():
    """block and sublayer are different computations for a PT model; the sublayer schedule is
    refused for a model with dispatch/combine norms (they belong to track blocks)."""
    model = _model("tiny_mean_block", seed=5)
    ids = random_ids(model.config.vocab_size, (1, 8), seed=7)
    with torch.no_grad():
        diff = max_diff(model(ids, use_cache=False, schedule="block").logits,
                        model(ids, use_cache=False, schedule="sublayer").logits)
    assert diff > 1e-2, report("block vs sublayer (expected large)", diff)
    normed = _model("sum_qknorm_gptj_dispatch_combine")
    with pytest.raises(ValueError, match="sublayer"):
        normed(ids, use_cache=False, schedule="sublayer")
