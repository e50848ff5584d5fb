"""The track-parallel runtime under `mpiexec -n 2` and `-n 3` (subprocesses): the same tokens as the
single-process model, logits within 1e-4 (fp32), L/D or 2L merges per forward pass and no other
collective inside it, QK-norm with gptj RoPE and residual_sum on the fused path, batched prompts of
different lengths, sampling (temperature applied, every rank holding rank 0's tokens, seeded and
unseeded), EOS, and every error path."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REPO, make_pt_model
from pt_trtllm.convert.writer import convert

RUN = str(REPO / "scripts" / "run.py")
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
PROMPTS = [[5, 17, 33, 2, 99, 100, 7], [400, 3, 3, 250, 11, 64, 1]]
T3 = dict(num_tracks=3, num_attention_heads=6, num_key_value_heads=3, intermediate_size=384)
# QK-norm (learned weights, after gptj RoPE, as tamm) and the residual_sum merge, on the runtime's
# fused qkv path; its LM head is scaled up so that the next token is clear at low temperature
QK = dict(qk_norm=True, rope_style="gptj", combine_op="residual_sum")
PEAK = 8.0


def mpirun(n: int, ckpt: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [MPIEXEC, "-n", str(n), sys.executable, RUN, "--engine_dir", str(ckpt), "--device", "cpu", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def ids_arg(prompts) -> str:
    return ";".join(",".join(map(str, p)) for p in prompts)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Random fp32 PT models (T=2 tiny, T=3 tiny variant, T=2 QK-norm variant with its LM head
    scaled by PEAK) and their per-rank checkpoints."""
    out = {}
    for name, overrides in (("t2", {}), ("t3", T3), ("t2q", QK)):
        model = make_pt_model("tiny", seed=1, **overrides)
        if name == "t2q":
            with torch.no_grad():
                model.lm_head.weight.mul_(PEAK)
        hf = tmp_path_factory.mktemp(f"{name}_hf")
        model.save_pretrained(hf)
        ckpt = tmp_path_factory.mktemp(name) / "ckpt"
        convert(hf, ckpt, progress=False)
        out[name] = (model, ckpt)
    return out


def reference(model, prompts, schedule, max_new):
    """Single-process logits of the prompts and greedy tokens of each prompt run alone."""
    with torch.no_grad():
        logits = model(torch.tensor(prompts), schedule=schedule).logits.numpy()
        tokens = [model.generate(torch.tensor([p]), max_new_tokens=max_new, do_sample=False, schedule=schedule,
                                 eos_token_id=None, pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    return logits, tokens


def run_json(ranks: int, ckpt: Path, tmp_path: Path, *args: str) -> dict:
    """Run scripts/run.py on `ranks` ranks; its --output_json record, after checking that it exited
    0 and that every rank reported the digest of the same generated ids."""
    out = tmp_path / "out.json"
    r = mpirun(ranks, ckpt, *args, "--output_json", str(out))
    assert r.returncode == 0, r.stderr
    record = json.loads(out.read_text())
    assert len(record["rank_digests"]) == ranks and len(set(record["rank_digests"])) == 1, record["rank_digests"]
    out.unlink()
    return record


@pytest.mark.parametrize("name,ranks,schedule", [("t2", 2, "block"), ("t2", 2, "sublayer"),
                                                 ("t3", 3, "block"), ("t3", 3, "sublayer")])
def test_mpi_matches_single_process_model(models, tmp_path, name, ranks, schedule):
    """T ranks, one track each, give the single-process model's greedy tokens and its prefill
    logits within 1e-4, with exactly L/D (block) or 2L (sublayer) merges per forward pass, no other
    collective inside a forward pass and one token broadcast per generated token."""
    model, ckpt = models[name]
    cfg = model.config
    r = mpirun(ranks, ckpt, "--input_ids", ids_arg(PROMPTS), "--max_output_len", "12", "--schedule", schedule,
               "--output_json", str(tmp_path / "out.json"), "--output_logits", str(tmp_path / "logits.npy"))
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    ref_logits, ref_tokens = reference(model, PROMPTS, schedule, 12)
    logits = np.load(tmp_path / "logits.npy")
    diff = float(np.abs(logits - ref_logits).max())
    print(f"{name} {schedule}: max |logit diff| = {diff:.2e}")
    assert logits.shape == (2, 7, cfg.vocab_size) and logits.dtype == np.float32
    assert diff <= 1e-4, diff
    assert out["output_ids"] == ref_tokens
    assert all(len(set(t)) > 3 for t in ref_tokens), "degenerate random model"
    expected = cfg.num_hidden_layers // cfg.block_depth if schedule == "block" else 2 * cfg.num_hidden_layers
    assert out["merges_per_forward"] == expected
    assert out["other_collectives_per_forward"] == 0
    assert out["other_collectives_per_step"] == 1
    assert out["schedule"] == schedule and out["world_size"] == ranks and out["communicator"] == "mpi4py"
    assert len(out["rank_digests"]) == ranks and len(set(out["rank_digests"])) == 1, out["rank_digests"]


def test_qk_norm_model_matches_single_process_model(models, tmp_path):
    """A QK-norm model (learned q/k norms after gptj RoPE, residual_sum merges) on 2 ranks, where the
    runtime uses its fused qkv path: PTForCausalLM's prefill logits within 1e-4 and its greedy
    tokens, with L/D merges per forward pass."""
    model, ckpt = models["t2q"]
    cfg = model.config
    assert cfg.qk_norm and cfg.rope_style == "gptj" and cfg.combine_op == "residual_sum"
    out = run_json(2, ckpt, tmp_path, "--input_ids", ids_arg(PROMPTS), "--max_output_len", "12",
                   "--output_logits", str(tmp_path / "logits.npy"))
    ref_logits, ref_tokens = reference(model, PROMPTS, "block", 12)
    diff = float(np.abs(np.load(tmp_path / "logits.npy") - ref_logits).max())
    print(f"t2q block: max |logit diff| = {diff:.2e} (|logits| up to {np.abs(ref_logits).max():.1f})")
    assert diff <= 1e-4, diff
    assert out["output_ids"] == ref_tokens
    assert all(len(set(t)) > 3 for t in ref_tokens), "degenerate random model"
    assert out["merges_per_forward"] == cfg.num_hidden_layers // cfg.block_depth


def test_none_schedule_is_labelled_not_a_model_output(models, tmp_path):
    """`none` never merges (0 merges per forward) and says wherever it prints that its tokens are
    not a model output."""
    _, ckpt = models["t2"]
    r = mpirun(2, ckpt, "--input_ids", "1,2,3", "--max_output_len", "4", "--schedule", "none",
               "--output_json", str(tmp_path / "out.json"))
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["merges_per_forward"] == 0
    assert "NOT a model output" in r.stdout and "NOT a model output" in out["note"]


def test_batch_of_different_lengths_equals_each_prompt_alone(models, tmp_path):
    """Prompts of different lengths in one batch give the tokens each prompt gives alone."""
    model, ckpt = models["t2"]
    prompts = [[7, 8, 9], [300, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [42]]
    r = mpirun(2, ckpt, "--input_ids", ids_arg(prompts), "--max_output_len", "10",
               "--output_json", str(tmp_path / "out.json"))
    assert r.returncode == 0, r.stderr
    _, alone = reference(model, [prompts[0]], "block", 10)
    alone += reference(model, [prompts[1]], "block", 10)[1] + reference(model, [prompts[2]], "block", 10)[1]
    assert json.loads((tmp_path / "out.json").read_text())["output_ids"] == alone


def test_generation_stops_at_eos_and_includes_it(models, tmp_path):
    """With --end_id set to the 4th greedy token, output_ids end with it after 4 tokens."""
    model, ckpt = models["t2"]
    _, (tokens,) = reference(model, [PROMPTS[0]], "block", 10)
    eos = tokens[3]
    assert eos not in tokens[:3]
    r = mpirun(2, ckpt, "--input_ids", ids_arg(PROMPTS[:1]), "--max_output_len", "10", "--end_id", str(eos),
               "--output_json", str(tmp_path / "out.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out.json").read_text())["output_ids"] == [tokens[:4]]


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(models, tmp_path):
    """Sampling (temperature 1, top_k 50, top_p 0.95) with the same seed gives the same tokens twice;
    a different seed other tokens; both differ from the single-process model's greedy tokens; on
    every run both ranks hold the same tokens (rank digests agree)."""
    model, ckpt = models["t2"]
    outs = []
    for seed in (3, 3, 4):
        outs.append(run_json(2, ckpt, tmp_path, "--input_ids", "1,2,3", "--max_output_len", "16", "--temperature",
                             "1.0", "--top_k", "50", "--top_p", "0.95", "--seed", str(seed))["output_ids"])
    _, greedy = reference(model, [[1, 2, 3]], "block", 16)
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]
    assert outs[0] != greedy and outs[2] != greedy


def test_unseeded_sampling_ranks_hold_rank_0s_tokens(models, tmp_path):
    """Unseeded sampling on 3 ranks: every rank reports the digest of the same generated ids (so
    the ranks use rank 0's broadcast tokens, not tokens each drew itself), and the run exits 0."""
    _, ckpt = models["t3"]
    out = run_json(3, ckpt, tmp_path, "--input_ids", "1,2,3;9,8,7", "--max_output_len", "16", "--temperature", "1.0")
    assert [len(t) for t in out["output_ids"]] == [16, 16]


def peaked_prompt(model, new: int, cold: float, hot: float, bound: float = 1e-6):
    """A prompt on which `model`'s greedy continuation of `new` tokens is (nearly) certain when
    sampling at temperature `cold` and (nearly) impossible at `hot`, from the model's own logits
    (no sampler involved): P(cold sample != greedy) <= sum over steps of 1 - p_cold(greedy token),
    P(hot sample == greedy) = product over steps of p_hot(greedy token); both <= `bound`.
    Returns (prompt, greedy tokens, the two probabilities)."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        prompt = torch.randint(3, model.config.vocab_size, (1, 6), generator=gen)
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0,
                                 output_logits=True, return_dict_in_generate=True)
        logits = torch.stack(out.logits, 1)[0].double()  # [new, V]
        greedy = out.sequences[0, 6:]
        p_cold = (logits / cold).softmax(-1).gather(-1, greedy[:, None])[:, 0]
        p_hot = (logits / hot).log_softmax(-1).gather(-1, greedy[:, None])[:, 0]
        deviate, stay = float((1 - p_cold).sum()), math.exp(float(p_hot.sum()))
        if deviate <= bound and stay <= bound and len(set(greedy.tolist())) > 3:
            return prompt[0].tolist(), greedy.tolist(), deviate, stay
    pytest.fail(f"no prompt of this random model is peaked enough at temperature {cold} (scale its LM head)")


def test_temperature_far_from_one_is_applied(models, tmp_path):
    """Seeded sampling at temperature 0.02 gives the single-process model's greedy tokens, and at
    5.0 with the same seed it does not (each is certain up to 1e-6, computed from the model's
    logits). A sampler that ignored the temperature would draw the same tokens in both runs, so it
    fails one of the two. Both ranks hold the same tokens."""
    model, ckpt = models["t2q"]
    prompt, greedy, deviate, stay = peaked_prompt(model, 10, 0.02, 5.0)
    print(f"prompt {prompt}: P(t=0.02 != greedy) <= {deviate:.1e}, P(t=5 == greedy) = {stay:.1e}")
    args = ("--input_ids", ids_arg([prompt]), "--max_output_len", "10", "--seed", "11", "--temperature")
    cold = run_json(2, ckpt, tmp_path, *args, "0.02")["output_ids"]
    hot = run_json(2, ckpt, tmp_path, *args, "5.0")["output_ids"]
    assert cold == [greedy]
    assert hot != [greedy] and len(hot[0]) == 10


def test_wrong_world_size_fails_on_every_rank(models):
    """mpirun -n 3 on a 2-track checkpoint: every rank prints the error and the run exits != 0."""
    _, ckpt = models["t2"]
    r = mpirun(3, ckpt, "--input_ids", "1,2,3", "--max_output_len", "4")
    assert r.returncode != 0
    assert r.stderr.count("needs exactly 2 ranks") == 3, r.stderr


@pytest.mark.parametrize("args,message", [
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--top_p", "0"], "top_p must be in (0, 1]"),
    (["--top_k", "-2"], "top_k must be >= 0"),
    (["--input_ids", "1,2;"], "prompt 1 is empty"),
    (["--input_ids", ",".join(["1"] * 250)], "prompt 0 has 250 tokens"),
    (["--input_ids", "1,99999"], "outside [0, 512)"),
])
def test_bad_requests_fail_cleanly(models, args, message):
    """Bad sampling parameters, an empty prompt, a prompt longer than max_position_embeddings -
    max_output_len and out-of-vocabulary ids: a one-line error naming the problem, exit != 0."""
    _, ckpt = models["t2"]
    base = {"--input_ids": "1,2,3", "--max_output_len": "8"}
    flags = dict(base)
    flags.update(dict(zip(args[::2], args[1::2])))
    r = mpirun(2, ckpt, *[x for kv in flags.items() for x in kv])
    assert r.returncode == 2, r.stderr
    assert message in r.stderr, r.stderr


@pytest.mark.parametrize("args,message", [
    (["--comm", "pt_plugin", "--device", "cpu"], "error: --comm pt_plugin needs --device cuda"),
    (["--comm", "nccl", "--device", "cpu"], "error: --comm nccl needs --device cuda"),
    (["--comm", "pt_plugin", "--device", "cuda"], "error: --device cuda: torch sees no CUDA device"),
])
def test_a_communicator_the_device_cannot_use_fails_on_every_rank(models, args, message):
    """--comm pt_plugin or nccl on the CPU, and CUDA where torch sees none: each rank prints the one
    line and the run exits 2 before loading anything."""
    if torch.cuda.is_available() and "cuda" in args:
        pytest.skip("this machine has a CUDA device")
    _, ckpt = models["t2"]
    r = mpirun(2, ckpt, "--input_ids", "1,2,3", "--max_output_len", "4", *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [message] * 2, r.stderr


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_missing_or_corrupt_rank_file_fails_on_every_rank(models, tmp_path, damage):
    """A missing or truncated rank1.safetensors: both ranks report it (rank 0 names rank 1), exit != 0."""
    _, ckpt = models["t2"]
    broken = tmp_path / "ckpt"
    broken.mkdir()
    for f in ckpt.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    if damage == "missing":
        (broken / "rank1.safetensors").unlink()
    else:
        data = (broken / "rank1.safetensors").read_bytes()
        (broken / "rank1.safetensors").write_bytes(data[: len(data) // 2])
    r = mpirun(2, broken, "--input_ids", "1,2,3", "--max_output_len", "4")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("rank1.safetensors") == 2, r.stderr
    assert "rank 1: " in r.stderr


def _rank_pid(rank: int) -> int | None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if RUN.encode() in cmd and f"PMI_RANK={rank}".encode() in env:
            return int(pid)
    return None


def test_killed_rank_takes_the_others_down_within_30s(tmp_path):
    """SIGKILL one rank in the middle of a long generation: the run ends (exit != 0) within 30 s."""
    model = make_pt_model("tiny", seed=2, max_position_embeddings=16384)
    model.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "ckpt", progress=False)
    cmd = [MPIEXEC, "-n", "2", sys.executable, RUN, "--engine_dir", str(tmp_path / "ckpt"), "--device", "cpu",
           "--input_ids", "1,2,3", "--max_output_len", "16000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        pid = None
        while pid is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            pid = _rank_pid(1)
        assert pid is not None, "rank 1 never started"
        time.sleep(5)  # loaded and generating
        assert proc.poll() is None, "finished before the kill: make the generation longer"
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=30)
        print(f"run ended {time.monotonic() - killed:.1f} s after the kill, exit {proc.returncode}")
        assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
