"""The engine in one process (T=1, no MPI): the same tokens and logits as PTForCausalLM, eager and
torch.compile'd decode steps, and the request limits."""

from __future__ import annotations

import re

import pytest
import torch

from helpers import make_pt_model
from pt_trtllm.convert.writer import convert
from pt_trtllm.runtime.comm import Communicator
from pt_trtllm.runtime.engine import TrackEngine
from pt_trtllm.runtime.sampling import SamplingParams

T1 = dict(num_tracks=1, num_attention_heads=4, num_key_value_heads=2, intermediate_size=256, qk_norm=True)


def test_compiled_decode_gives_the_eager_tokens(tmp_path):
    """torch.compile'd decode steps (which attend to the whole cache, masked) give the eager
    engine's greedy tokens, and both give PTForCausalLM's prefill logits and tokens."""
    model = make_pt_model("tiny", seed=3, **T1)
    model.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "ckpt", progress=False)
    prompts = [[3, 14, 15, 92, 65], [35, 89, 79, 32, 38]]
    runs = {}
    for compiled in (False, True):
        engine = TrackEngine(tmp_path / "ckpt", Communicator(0, 1), torch.device("cpu"), max_batch=2, max_len=32,
                             compile=compiled)
        runs[compiled] = engine.generate(prompts, 10, SamplingParams(), prefill_logits=True)
    with torch.no_grad():
        ref_logits = model(torch.tensor(prompts)).logits
        ref_tokens = model.generate(torch.tensor(prompts), max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert (runs[False].prefill_logits - ref_logits).abs().max() <= 1e-4
    assert runs[False].output_ids == ref_tokens[:, 5:].tolist()
    assert runs[True].output_ids == runs[False].output_ids


@pytest.fixture(scope="module")
def small_engine() -> TrackEngine:
    """An engine of a random one-track model (512-token vocabulary): max_batch 2, max_len 32."""
    model = make_pt_model("tiny", seed=0, **{k: v for k, v in T1.items() if k != "qk_norm"})
    return TrackEngine.from_model(model.model, model.lm_head.weight, Communicator(0, 1), torch.device("cpu"),
                                  max_batch=2, max_len=32)


@pytest.mark.parametrize("prompts, max_output_len, message", [
    ([[1] * 24, [2]], 8, None),  # 2 prompts, 24 = 32 - 8 tokens
    ([[0, 511]], 30, None),  # ids 0 and V - 1, 2 = 32 - 30 tokens
    ([[1] * 25], 8, "prompt 0 has 25 tokens; with max_output_len=8 the limit is 24"),
    ([[1], [2], [3]], 8, "3 prompts exceed the maximum batch size 2"),
    ([[1, 512]], 8, "outside [0, 512)"),
    ([[-1]], 8, "outside [0, 512)"),
    ([[1]], 0, "max_output_len must be >= 1"),
    ([[1], []], 8, "prompt 1 is empty"),
])
def test_check_request_refuses_exactly_past_each_limit(small_engine, prompts, max_output_len, message):
    """An engine of max_batch 2 and max_len 32 on a 512-token vocabulary accepts a batch at every
    limit (prompt + output = 32 positions, 2 prompts, ids 0 and 511) and refuses one step past each
    with a message naming it."""
    if message is None:
        small_engine.check_request(prompts, max_output_len)
    else:
        with pytest.raises(ValueError, match=re.escape(message)):
            small_engine.check_request(prompts, max_output_len)


def test_kv_buckets_round_up_to_256_positions_within_the_cache():
    """--kv_buckets: a decode graph attends to the next multiple of 256 cache positions past the
    batch's longest sequence, never past max_len."""
    model = make_pt_model("tiny", seed=0, max_position_embeddings=1024,
                          **{k: v for k, v in T1.items() if k != "qk_norm"})
    engine = TrackEngine.from_model(model.model, model.lm_head.weight, Communicator(0, 1), torch.device("cpu"),
                                    max_batch=1, max_len=600)
    assert [engine.kv_bucket(n) for n in (1, 256, 257, 512, 513, 600)] == [256, 256, 512, 512, 600, 600]


def test_decode_steps_over_a_bucket_of_garbage_give_the_exact_length_tokens(tmp_path, monkeypatch):
    """A bucketed decode graph runs the same step as the eager one but attends to kv_bucket(n)
    cache positions, past every sequence's own: with garbage in all of them (as a graph capture
    leaves at the bucket's last position), greedy tokens and logits equal those of steps over
    exactly max(positions) + 1 positions."""
    model = make_pt_model("tiny", seed=5, max_position_embeddings=1024, **T1)
    engine = TrackEngine.from_model(model.model, model.lm_head.weight, Communicator(0, 1), torch.device("cpu"),
                                    max_batch=2, max_len=600)
    assert engine.kv_bucket(8) == 256 and engine.max_len == 600
    prompts = [[3, 14, 15, 92, 65, 35, 89], [79, 32, 38]]
    exact = engine.generate(prompts, 12, SamplingParams())
    step_logits = {}
    exact_decode = engine._decode

    def bucketed(tokens, positions, schedule, kv_len):
        assert kv_len == int(positions.max()) + 1  # the eager path's exact length
        logits = exact_decode(tokens, positions, schedule, engine.kv_bucket(kv_len))
        step_logits.setdefault("bucketed", []).append(logits)
        return logits

    for k, v in zip(engine.cache.k, engine.cache.v):
        k.normal_(std=50.0)
        v.normal_(std=50.0)
    monkeypatch.setattr(engine, "_decode_fn", bucketed)
    got = engine.generate(prompts, 12, SamplingParams())
    assert len(step_logits["bucketed"]) == 11
    assert got.output_ids == exact.output_ids
    monkeypatch.setattr(engine, "_decode_fn", exact_decode)
    reference = []
    monkeypatch.setattr(engine, "_decode_fn", lambda *a: reference.append(exact_decode(*a)) or reference[-1])
    engine.generate(prompts, 12, SamplingParams())
    assert max((a - b).abs().max().item() for a, b in zip(step_logits["bucketed"], reference)) <= 1e-5
