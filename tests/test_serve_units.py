"""Serving parts without a server: the in-flight batching scheduler on a one-track engine
(in-process), its sampling generators and statistics, the step plan's wire format, request
validation, incremental detokenization and the environment PyTriton's tritonserver gets."""

from __future__ import annotations

import json
import os
import random
import signal
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
from pt_trtllm.serve.requests import Limits, RequestError, SequenceSpec, build_sequences
from pt_trtllm.serve.scheduler import Scheduler, Sequence
from pt_trtllm.serve.stats import COUNTERS, stopped_line
from pt_trtllm.serve.triton_requests import parse_triton_request
from pt_trtllm.serve_tools.bench_compare import SERVER_STATS

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
    return Sequence(SequenceSpec(prompt, n, params, frozenset(eos)), Sink())


def reference_sampling(model, prompt, n, temperature, top_k, top_p, seed, device="cpu") -> list[int]:
    """Seeded sampling computed apart from the runtime's sampler, as documented: the last-token logits
    of the HF model's full forward pass over the sequence so far, divided by the temperature; the
    top_k largest kept; of those, the most likely tokens kept until the probability before the next
    one reaches top_p; then torch.multinomial over their softmax ([1, V] on `device`) with one
    generator on `device` seeded with `seed` as given."""
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = list(prompt)
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].float() / temperature
        if top_k:
            logits[logits < logits.topk(top_k).values.min()] = float("-inf")
        probs = logits.softmax(-1)
        order = probs.argsort(descending=True)
        before = torch.cumsum(probs[order], 0) - probs[order]
        logits[order[before >= top_p]] = float("-inf")
        probs = logits.softmax(-1).to(device)
        ids.append(int(torch.multinomial(probs[None], 1, generator=generator)))
    return ids[len(prompt):]


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
    moves, step, steps_run = 0, 0, 0
    while step < 200 and any(s.sink.reason is None for s in all_seqs):
        if step in arrivals:
            sched.submit(arrivals[step])
        sched._collect(block=False)
        if sched.running or sched.waiting:
            moves += len(sched._moves)
            sched.step()
            steps_run += 1
        step += 1
    assert all(s.sink.reason == "length" for s in all_seqs)
    stats = sched.stats.snapshot()
    assert stats["max_running"] == 4, stats  # requests did run together
    assert moves > 0, "no sequence was ever moved into a freed slot"
    for s in all_seqs:
        assert s.sink.ids == greedy(model, s.spec.prompt, s.spec.max_tokens), s.spec
    assert stats["sequences"] == 12 and stats["failed"] == 0 and stats["steps"] == steps_run
    assert stats["decoded_tokens"] == sum(s.spec.max_tokens - 1 for s in all_seqs)
    assert stats["prefilled_tokens"] == sum(len(s.spec.prompt) for s in all_seqs)


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
    sampled = [seq(prompt, 10, params=SamplingParams(1.0, 50, 0.9, 7)) for _ in range(2)]
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
    assert sched.stats.snapshot()["failed"] == 3  # queued, long and busy (late never reached the scheduler)


def test_cancelled_sequences_free_their_slots_at_the_next_step(one_track):
    """Cancelling a running sequence (mid-step, as a front's thread does) and a waiting one: the next
    step boundary finishes both ("cancelled"), the running one after at most the one step in
    progress (`cancel_lag_steps`), its slot goes to the last running sequence, and the others
    still give their greedy tokens; the counters and gauges follow."""
    model, ckpt = one_track
    engine = TrackEngine(ckpt, Communicator(0, 1), torch.device("cpu"), max_batch=3, max_len=128)
    sched = Scheduler(engine, PlanChannel(engine.comm, 3), "block")
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    seqs = [seq(p, 12) for p in prompts]  # 3 slots: the 4th waits
    sched.submit(seqs)
    sched._collect(block=False)
    sched.step()
    sched.step()
    assert sched.stats.snapshot()["running"] == 3 and sched.stats.snapshot()["active_sequences"] == 4
    sched.cancel([seqs[0], seqs[3]])  # the 1st is running in slot 0, the 4th waits
    sched.cancel([seqs[0]], "stop string")  # a second cancel changes nothing
    for _ in range(30):
        sched._collect(block=False)
        sched.drop_cancelled()
        if sched.running or sched.waiting:
            sched.step()
    assert seqs[0].sink.reason == "cancelled" and len(seqs[0].sink.ids) == 2
    assert seqs[3].sink.reason == "cancelled" and seqs[3].sink.ids == []
    for s in seqs[1:3]:
        assert s.sink.reason == "length" and s.sink.ids == greedy(model, s.spec.prompt, 12)
    s = sched.stats.snapshot()
    assert (s["cancelled"], s["stop_strings"], s["cancel_lag_steps"], s["failed"]) == (2, 0, 0, 0)
    assert (s["running"], s["active_sequences"]) == (0, 0)
    late = seq([5, 6, 7], 12)
    sched.submit([late])
    sched._collect(block=False)
    sched.step()
    sched.cancel([late], "stop string")
    sched.step()  # a step that was already planned when the cancel came
    sched.drop_cancelled()
    assert late.sink.reason == "cancelled" and len(late.sink.ids) == 2
    s = sched.stats.snapshot()
    assert (s["cancelled"], s["stop_strings"], s["cancel_lag_steps"]) == (2, 1, 1)


def test_dead_servers_workspaces_are_removed_live_ones_kept(tmp_path, monkeypatch):
    """A workspace whose lock no process holds (its server died) is removed with the shared memory
    segments it recorded; one whose lock is held (a live server), and a directory without a lock
    file, are left alone."""
    from pt_trtllm.serve import workspace

    monkeypatch.setattr(workspace.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(workspace, "SHM", tmp_path / "shm")
    (tmp_path / "shm").mkdir()
    live, dead = workspace.Workspace(), workspace.Workspace()
    dead.record_shm_prefix("pytrtion999999-dead")
    for name in ("pytrtion999999-dead0", "pytrtion999999-dead1", "pytrtion1-other"):
        (tmp_path / "shm" / name).write_text("")
    dead._lock.close()  # what the kernel does when its process dies
    foreign = tmp_path / "pt_serve_foreign"
    foreign.mkdir()
    notes = workspace.clean_dead_workspaces(tmp_path)
    assert notes == [f"removed {dead.path} (its server is dead) and 2 shared memory segments of its stubs"]
    assert not dead.path.exists() and live.path.is_dir() and foreign.is_dir()
    assert [p.name for p in (tmp_path / "shm").iterdir()] == ["pytrtion1-other"]
    live.remove()
    assert not live.path.exists() and workspace.clean_dead_workspaces(tmp_path) == []


def test_ranks_die_with_their_launcher(monkeypatch):
    """Under an MPI launcher a rank asks for SIGTERM when its parent dies; started by hand, not."""
    import subprocess
    import sys

    from pt_trtllm.serve import signals as module

    code = ("import ctypes, importlib.util; "  # signals.py alone: the package would import torch
            f"spec = importlib.util.spec_from_file_location('signals', {module.__file__!r}); "
            "signals = importlib.util.module_from_spec(spec); spec.loader.exec_module(signals); "
            "set = signals.die_with_parent(); libc = ctypes.CDLL(None); sig = ctypes.c_int(); "
            "libc.prctl(2, ctypes.byref(sig)); print(set, sig.value)")  # 2: PR_GET_PDEATHSIG
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")}
    by_hand = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    launched = subprocess.run([sys.executable, "-c", code], env={**env, "PMI_RANK": "0"}, capture_output=True,
                              text=True, timeout=60)
    assert by_hand.stdout.split() == ["False", "0"], by_hand.stderr
    assert launched.stdout.split() == ["True", str(int(signal.SIGTERM))], launched.stderr


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_sampling_generators_live_on_the_logits_device_seeded_as_given(one_track, device):
    """Each admitted sequence samples with `SamplingParams.generator(engine.device)`: a generator on
    the device of the logits, seeded with the request's seed as given (2**64 - 1 included), none
    without a seed; its tokens are the documented sampling's with that generator, at temperatures
    near 0 (then they are the greedy ones), 1 and far above 1, and with a top_p that keeps a few
    tokens."""
    model, ckpt = one_track
    engine = TrackEngine(ckpt, Communicator(0, 1), torch.device(device), max_batch=4, max_len=128,
                         cuda_graphs=False)
    sched = Scheduler(engine, PlanChannel(engine.comm, 4), "block")
    prompt = [5, 6, 7]
    cases = [(1.0, 50, 0.9, 3), (5.0, 0, 1.0, 2**64 - 1), (0.001, 0, 1.0, 11), (0.3, 0, 0.5, 21)]
    seeded = [seq(prompt, 8, params=SamplingParams(*c)) for c in cases]
    unseeded = seq(prompt, 8, params=SamplingParams(1.0))
    sched.submit([*seeded, unseeded])
    for _ in range(20):
        sched._collect(block=False)
        if sched.running or sched.waiting:
            sched.step()
    assert all(s.sink.reason == "length" for s in [*seeded, unseeded])
    for s, (temperature, top_k, top_p, seed) in zip(seeded, cases):
        assert s.generator.device == engine.device == torch.device(device)
        assert s.generator.initial_seed() == seed
        assert s.sink.ids == reference_sampling(model, prompt, 8, temperature, top_k, top_p, seed, device), seed
    assert unseeded.generator is None
    assert seeded[2].sink.ids == greedy(model, prompt, 8)  # top-2 logit gaps >= 0.02: at 0.001 all mass on the top
    assert seeded[1].sink.ids != greedy(model, prompt, 8)


def test_statistics_document_and_exit_line(one_track):
    """The statistics have every counter of COUNTERS, the run's facts, the collectives, the ratios
    of the exit line and every field the benchmark comparison records; the exit line reads them."""
    _, ckpt = one_track
    engine = TrackEngine(ckpt, Communicator(0, 1), torch.device("cpu"), max_batch=2, max_len=64)
    sched = Scheduler(engine, PlanChannel(engine.comm, 2), "block")
    sched.stats.add(sequences=3, steps=4, forward_passes=5, step_s=0.02, forward_s=0.015, cancelled=1)
    sched.stats.raise_to(max_running=2)
    sched.stats.raise_to(max_running=1)
    engine.comm.calls["merge"] += 10
    engine.comm.calls["other"] += 6
    s = sched.stats.snapshot()
    assert set(COUNTERS) | set(SERVER_STATS) <= set(s)
    assert s["state"] == "serving" and s["stopped_by"] is None and s["uptime_s"] >= 0
    assert (s["schedule"], s["ranks"], s["communicator"], s["device"]) == ("block", 1, "none", "cpu")
    assert (s["merges_per_forward"], s["max_batch_size"], s["max_seq_len"]) == (2, 2, 64)
    assert (s["sequences"], s["steps"], s["max_running"], s["merges"], s["other_collectives"]) == (3, 4, 2, 10, 6)
    assert s["ms_per_step"] == pytest.approx(5.0) and s["forward_share"] == pytest.approx(0.75)
    assert s["measured_merges_per_forward"] == 2 and s["other_collectives_per_step"] == 1.5
    sched.stats.stopped_by = "SIGTERM"
    s = json.loads(sched.stats.to_json())
    assert s["state"] == "stopped"
    assert stopped_line(s) == ("stopped (SIGTERM): 3 sequences, 4 steps, 0 decoded tokens, 0 prefilled tokens, at "
                               "most 2 running at once, 0 failed, 1 cancelled; 5.00 ms per step, 75% of it in forward "
                               "passes; 2 merges per forward pass, 1.50 other collectives per step")


def test_step_plan_round_trips():
    comm = Communicator(0, 1)
    channel = PlanChannel(comm, max_batch=4)
    plan = StepPlan([(3, 0, 17), (2, 1, 5)], [2, 3], [[1, 2, 3], [9]], [4, 5], [20, 6])
    header, tokens = channel.encode(plan)
    assert header.shape == (channel.size,) == (5 + 7 * 4,) and header.dtype == np.int64
    assert tokens.tolist() == [1, 2, 3, 9]
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
        parse_triton_request(inputs, None, LIMITS)
    assert message in str(e.value)


def test_request_rows_and_defaults():
    """A [2, S] request with input_lengths gives two prompts; defaults are greedy with the
    server's end ids; end_id -1 disables EOS."""
    specs = parse_triton_request({"input_ids": ids([5, 6, 7], [8, 9, 0]), "input_lengths": np.array([[3], [2]], np.int32),
                           "max_tokens": np.array([[4], [5]], np.int32),
                           "end_id": np.array([[-1], [7]], np.int32)}, None, LIMITS)
    assert [s.prompt for s in specs] == [[5, 6, 7], [8, 9]]
    assert [s.max_tokens for s in specs] == [4, 5]
    assert specs[0].eos_ids == frozenset() and specs[1].eos_ids == frozenset({7})
    assert specs[0].params == SamplingParams()
    (spec,) = parse_triton_request({"input_ids": ids([5]), "max_tokens": col(4, np.int32)}, None, LIMITS)
    assert spec.eos_ids == frozenset({2})


def test_build_sequences_without_a_protocol():
    """build_sequences takes plain values: absent sampling values are the defaults, end ids None /
    -1 / an id, and the problems of a batched request name their row."""
    specs = build_sequences([[5, 6], [7]], [3, 4], [{"temperature": 0.5, "seed": 9}, {}], [None, -1], LIMITS)
    assert specs == [SequenceSpec([5, 6], 3, SamplingParams(0.5, 0, 1.0, 9), frozenset({2})),
                     SequenceSpec([7], 4, SamplingParams(), frozenset())]
    for args, message in [(([[5], [6]], [4, 0], [{}, {}], [None, None]), "max_tokens[1] must be >= 1, got 0"),
                          (([[5], [6]], [4, 4], [{}, {"top_p": 0.0}], [None, None]), "row 1: top_p must be in (0, 1]"),
                          (([[5], [6]], [4, 4], [{}, {}], [None, 600]), "end_id[1]=600 is outside [0, 512)"),
                          (([[5]], [4], [{"temperature": float("nan")}], [None]), "temperature must be >= 0, got nan")]:
        with pytest.raises(RequestError) as e:
            build_sequences(*args, LIMITS)
        assert message in str(e.value)


def test_text_requests_and_incremental_detokenization(smollm2_dir):
    """Text is encoded with the server's tokenizer (empty text refused); streamed deltas, even
    split inside multi-byte characters, add up to the full decode."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    limits = Limits(tok.vocab_size, 256, 64, frozenset())
    (spec,) = parse_triton_request({"text_input": col("Grüße, 世界".encode(), object), "max_tokens": col(4, np.int32)},
                            tok, limits)
    assert spec.prompt == tok.encode("Grüße, 世界")
    with pytest.raises(RequestError, match="text_input is empty"):
        parse_triton_request({"text_input": col(b"", object), "max_tokens": col(4, np.int32)}, tok, limits)
    with pytest.raises(RequestError, match=r"tokenizer gave ids outside the model's vocabulary \[0, 512\)"):
        parse_triton_request({"text_input": col("Grüße".encode(), object), "max_tokens": col(4, np.int32)}, tok,
                      Limits(512, 256, 64, frozenset()))
    with pytest.raises(RequestError, match="text_input is not valid UTF-8"):
        parse_triton_request({"text_input": col(b"\xff\xfe", object), "max_tokens": col(4, np.int32)}, tok, limits)
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
    from pt_trtllm.serve import pytriton_env

    monkeypatch.setenv("LD_LIBRARY_PATH", "/somewhere")
    notes = pytriton_env.prepare_environment(tmp_path)
    assert os.environ["PYTRITON_NO_TENSORSTORE"] == "1"
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        first = Path(os.environ["LD_LIBRARY_PATH"].split(os.pathsep)[0])
        assert [p.name for p in first.iterdir()] == [sysconfig.get_config_var("INSTSONAME")]
        lib = Path(sysconfig.get_config_var("LIBDIR")) / sysconfig.get_config_var("INSTSONAME")
        assert (first / lib.name).resolve() == lib.resolve()
        assert os.environ["LD_LIBRARY_PATH"].endswith(os.pathsep + "/somewhere")
    assert notes
    monkeypatch.setattr(pytriton_env.np, "__version__", "2.0.1")
    with pytest.raises(RuntimeError, match="needs numpy < 2"):
        pytriton_env.prepare_environment(tmp_path)
