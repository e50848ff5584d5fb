"""Serving parts without a server: the in-flight batching scheduler on a one-track engine
(in-process), the step plan's wire format, request validation, incremental detokenization and
the environment PyTriton's tritonserver gets."""

from __future__ import annotations

import os
import random
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_pt_model
from pt_trtllm.convert.writer import convert
from pt_trtllm.runtime.comm import Communicator
from pt_trtllm.runtime.engine import TrackEngine
from pt_trtllm.runtime.sampling import SamplingParams
from pt_trtllm.serve.detok import IncrementalDetokenizer
from pt_trtllm.serve.plan import PlanChannel, StepPlan
from pt_trtllm.serve.requests import Limits, RequestError, parse_request
from pt_trtllm.serve.scheduler import Scheduler, Sequence

ONE_TRACK = dict(num_tracks=1, num_attention_heads=4, num_key_value_heads=2, intermediate_size=256)


@pytest.fixture(scope="module")
def one_track(tmp_path_factory):
    """A random one-track model (so T=1: no MPI) and its per-rank checkpoint."""
    model = make_pt_model("tiny", seed=5, **ONE_TRACK)
    root = tmp_path_factory.mktemp("one_track")
    model.save_pretrained(root / "hf")
    convert(root / "hf", root / "ckpt", progress=False)
    return model, root / "ckpt"


def greedy(model, prompt, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


class Sink:
    def __init__(self):
        self.ids, self.reason, self.error = [], None, None

    def tokens(self, ids):
        assert self.reason is None, "tokens after finish"
        self.ids.extend(ids)

    def finish(self, reason, error=None):
        self.reason, self.error = reason, error


def seq(prompt, n, eos=frozenset(), params=SamplingParams()):
    return Sequence(prompt, n, params, frozenset(eos), Sink())


def test_requests_join_a_running_batch_and_match_each_prompt_alone(one_track):
    """Sequences submitted between steps join the running batch at the next step (in-flight
    batching), finish at different steps (so running sequences move into freed slots), and each
    gives the greedy tokens of its prompt run alone."""
    model, ckpt = one_track
    engine = TrackEngine(ckpt, Communicator(0, 1), torch.device("cpu"), max_batch=4, max_len=128)
    sched = Scheduler(engine, PlanChannel(engine.comm, 4), "block")
    rng = random.Random(0)
    arrivals = {}  # step -> sequences submitted before it
    for i in range(12):
        prompt = [rng.randrange(3, 512) for _ in range(rng.randint(1, 20))]
        arrivals.setdefault(rng.randint(0, 25), []).append(seq(prompt, rng.randint(1, 14)))
    all_seqs = [s for group in arrivals.values() for s in group]
    moves, step = 0, 0
    while step < 200 and any(s.sink.reason is None for s in all_seqs):
        if step in arrivals:
            sched.submit(arrivals[step])
        sched._collect(block=False)
        if sched.running or sched.waiting:
            moves += len(sched._moves)
            sched.step()
        step += 1
    assert all(s.sink.reason == "length" for s in all_seqs)
    assert sched.stats["max_running"] == 4, sched.stats  # requests did run together
    assert moves > 0, "no sequence was ever moved into a freed slot"
    for s in all_seqs:
        assert s.sink.ids == greedy(model, s.prompt, s.max_tokens), (s.prompt, s.max_tokens)


def test_eos_sampling_and_shutdown(one_track):
    """EOS ends a sequence (included); seeded sampling is reproducible; stop() fails waiting
    requests and, after the drain timeout, running ones, with an error naming the shutdown."""
    model, ckpt = one_track
    engine = TrackEngine(ckpt, Communicator(0, 1), torch.device("cpu"), max_batch=2, max_len=128)
    sched = Scheduler(engine, PlanChannel(engine.comm, 2), "block")
    prompt = [5, 6, 7]
    ref = greedy(model, prompt, 8)
    eos = ref[3]
    assert eos not in ref[:3]
    a = seq(prompt, 8, eos={eos})
    sampled = [Sequence(prompt, 10, SamplingParams(1.0, 50, 0.9, 7), frozenset(), Sink(),
                        torch.Generator().manual_seed(7)) for _ in range(2)]
    sched.submit([a, *sampled])
    for _ in range(30):
        sched._collect(block=False)
        if sched.running or sched.waiting:
            sched.step()
    assert a.sink.ids == ref[:4] and a.sink.reason == "stop"
    assert sampled[0].sink.ids == sampled[1].sink.ids and sampled[0].sink.ids != ref[:10]

    long, queued = seq(prompt, 100), seq(prompt, 100)
    busy = [seq(prompt, 100)]
    sched.submit([long, *busy, queued])  # 2 slots: `queued` waits
    sched._collect(block=False)
    sched.step()
    sched.stop(drain_timeout=0.0)
    sched.run()
    assert queued.sink.error == "the server is shutting down" and queued.sink.ids == []
    assert long.sink.reason == "error" and "shut down before this request finished" in long.sink.error
    late = seq(prompt, 3)
    sched.submit([late])
    assert late.sink.error == "the server is shutting down"


def test_step_plan_round_trips():
    comm = Communicator(0, 1)
    channel = PlanChannel(comm, max_batch=4)
    plan = StepPlan([(3, 0, 17), (2, 1, 5)], [2, 3], [[1, 2, 3], [9]], [4, 5], [20, 6])
    header, tokens = channel.encode(plan)
    assert header.shape == (channel.size,) and tokens.tolist() == [1, 2, 3, 9]
    assert channel.decode(header, tokens) == plan
    assert channel.decode(*channel.encode(StepPlan(stop=True))).stop
    with pytest.raises(ValueError, match="exceeds the maximum batch size 4"):
        channel.encode(StepPlan(decode_tokens=[1] * 5, decode_positions=[0] * 5))


LIMITS = Limits(vocab_size=512, max_seq_len=64, max_output_len=32, eos_ids=frozenset({2}))


def ids(*rows):
    return np.array(rows, dtype=np.int32)


def col(value, dtype):
    return np.array([[value]], dtype=dtype)


@pytest.mark.parametrize("inputs,message", [
    ({"max_tokens": col(4, np.int32)}, "the request has no prompt: send input_ids"),
    ({"input_ids": ids([1, 2]), "text_input": col(b"hi", object), "max_tokens": col(4, np.int32)},
     "send either text_input or input_ids, not both"),
    ({"input_ids": ids([1, 2])}, "missing input max_tokens"),
    ({"input_ids": np.zeros((1, 0), np.int32), "max_tokens": col(4, np.int32)}, "input_ids is empty"),
    ({"input_ids": ids([1, 600]), "max_tokens": col(4, np.int32)}, "input_ids has token ids outside [0, 512): [600]"),
    ({"input_ids": ids([1, 2]), "max_tokens": col(0, np.int32)}, "max_tokens must be >= 1, got 0"),
    ({"input_ids": ids([1, 2]), "max_tokens": col(-3, np.int32)}, "max_tokens must be >= 1, got -3"),
    ({"input_ids": ids([1, 2]), "max_tokens": col(33, np.int32)}, "max_tokens=33 exceeds this server's limit of 32"),
    ({"input_ids": ids(list(range(40))), "max_tokens": col(30, np.int32)},
     "the prompt has 40 tokens; with max_tokens=30 it may have at most 34"),
    ({"input_ids": ids([1, 2]), "max_tokens": col(4, np.int32), "temperature": col(-1, np.float32)},
     "temperature must be >= 0, got -1.0"),
    ({"input_ids": ids([1, 2]), "max_tokens": col(4, np.int32), "temperature": col(np.nan, np.float32)},
     "temperature must be >= 0, got nan"),
    ({"input_ids": ids([1, 2]), "max_tokens": col(4, np.int32), "top_p": col(0, np.float32)},
     "top_p must be in (0, 1], got 0.0"),
    ({"input_ids": ids([1, 2]), "max_tokens": col(4, np.int32), "top_p": col(1.5, np.float32)},
     "top_p must be in (0, 1], got 1.5"),
    ({"input_ids": ids([1, 2]), "max_tokens": col(4, np.int32), "top_k": col(-1, np.int32)},
     "top_k must be >= 0, got -1"),
    ({"input_ids": ids([1, 2]), "max_tokens": col(4, np.int32), "end_id": col(512, np.int32)},
     "end_id=512 is outside [0, 512)"),
    ({"input_ids": ids([1, 2]), "max_tokens": col(4, np.int32), "input_lengths": col(3, np.int32)},
     "input_lengths=3 is outside [1, 2]"),
    ({"text_input": col(b"hi", object), "max_tokens": col(4, np.int32)}, "this server has no tokenizer"),
])
def test_malformed_requests_are_refused_by_name(inputs, message):
    with pytest.raises(RequestError) as e:
        parse_request(inputs, None, LIMITS)
    assert message in str(e.value)


def test_request_rows_and_defaults():
    """A [2, S] request with input_lengths gives two prompts; defaults are greedy with the
    server's end ids; end_id -1 disables EOS."""
    specs = parse_request({"input_ids": ids([5, 6, 7], [8, 9, 0]), "input_lengths": np.array([[3], [2]], np.int32),
                           "max_tokens": np.array([[4], [5]], np.int32),
                           "end_id": np.array([[-1], [7]], np.int32)}, None, LIMITS)
    assert [s.prompt for s in specs] == [[5, 6, 7], [8, 9]]
    assert [s.max_tokens for s in specs] == [4, 5]
    assert specs[0].eos_ids == frozenset() and specs[1].eos_ids == frozenset({7})
    assert specs[0].params == SamplingParams()
    (spec,) = parse_request({"input_ids": ids([5]), "max_tokens": col(4, np.int32)}, None, LIMITS)
    assert spec.eos_ids == frozenset({2})


def test_text_requests_and_incremental_detokenization(smollm2_dir):
    """Text is encoded with the server's tokenizer (empty text refused); streamed deltas, even
    split inside multi-byte characters, add up to the full decode."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    limits = Limits(tok.vocab_size, 256, 64, frozenset())
    (spec,) = parse_request({"text_input": col("Grüße, 世界".encode(), object), "max_tokens": col(4, np.int32)},
                            tok, limits)
    assert spec.prompt == tok.encode("Grüße, 世界")
    with pytest.raises(RequestError, match="text_input is empty"):
        parse_request({"text_input": col(b"", object), "max_tokens": col(4, np.int32)}, tok, limits)
    with pytest.raises(RequestError, match=r"tokenizer gave ids outside the model's vocabulary \[0, 512\)"):
        parse_request({"text_input": col("Grüße".encode(), object), "max_tokens": col(4, np.int32)}, tok,
                      Limits(512, 256, 64, frozenset()))
    with pytest.raises(RequestError, match="text_input is not valid UTF-8"):
        parse_request({"text_input": col(b"\xff\xfe", object), "max_tokens": col(4, np.int32)}, tok, limits)
    text = "Hello world! Grüße aus Köln 🌍 — 世界你好.\n  spaced   out"
    token_ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.add([t]) for t in token_ids] + [detok.finish()]
    assert "".join(deltas) == tok.decode(token_ids, skip_special_tokens=True)
    assert not any("\ufffd" in d for d in deltas)


def test_pytriton_environment(tmp_path, monkeypatch):
    """tritonserver's stub finds this interpreter's libpython first on LD_LIBRARY_PATH (through a
    directory holding only that library), PyTriton's shared-memory tensor store is off, and
    numpy >= 2 is refused with the fix."""
    from pt_trtllm.serve import triton_app

    monkeypatch.setenv("LD_LIBRARY_PATH", "/somewhere")
    notes = triton_app.prepare_environment(tmp_path)
    assert os.environ["PYTRITON_NO_TENSORSTORE"] == "1"
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        first = Path(os.environ["LD_LIBRARY_PATH"].split(os.pathsep)[0])
        assert [p.name for p in first.iterdir()] == [sysconfig.get_config_var("INSTSONAME")]
        lib = Path(sysconfig.get_config_var("LIBDIR")) / sysconfig.get_config_var("INSTSONAME")
        assert (first / lib.name).resolve() == lib.resolve()
        assert os.environ["LD_LIBRARY_PATH"].endswith(os.pathsep + "/somewhere")
    assert notes
    monkeypatch.setattr(triton_app.np, "__version__", "2.0.1")
    with pytest.raises(RuntimeError, match="needs numpy < 2"):
        triton_app.prepare_environment(tmp_path)
