#!/usr/bin/env python3
"""Self-test of the TensorRT-LLM engine path, for a machine with TensorRT-LLM 1.2.1 (docs/trtllm.md).

  python scripts/trtllm_selftest.py [--dry_run] [--work_dir DIR] [--output_json FILE]

For each case of CASES (tiny random bf16 PT models with and without QK-norm, with and without track
norms, each merge implementation, the block and sublayer schedules, and a one-track model):
converts it to a per-rank checkpoint, builds its engines with scripts/build.py, counts the merge
nodes of rank 0's network (pt_trtllm.trtllm.nodes: AllReduce plugin layers, or PTTrackMerge layers
for merge_impl pt_plugin; L/D under block, 2L under sublayer, 0 with one track), runs the engines
with scripts/run.py (`mpirun -n T` for T ranks; a case needing more GPUs than the machine has is
reported as not run, and so is a pt_plugin case where libpt_trtllm_plugins.so cannot be found), and
compares them with the PyTorch model:
- greedy tokens: the fp32 PyTorch model's, up to the first step where the two differ, which must be
  a near tie of the fp32 model (its top two logits closer than the tolerance: bf16 may pick either);
- prefill logits: max |engine - fp32 model| <= TOLERANCE_FACTOR x (max |bf16 PyTorch - fp32 model|)
  + TOLERANCE_FLOOR, i.e. the engine is about as close to fp32 as PyTorch in the same dtype;
- decode speed: the engines' time per output token, and what the in-graph QK-norm path costs
  against the plugin's fused RoPE (QK-norm cases over the same cases without it).
Prints one line per case and, last, one summary line (it starts with SUMMARY) to paste into a bug
report; --output_json writes every number.

--dry_run does everything that needs no TensorRT-LLM (it runs in CI): the PyTorch references of every
case (fp32 and bf16 prefill logits, the tolerance, fp32 greedy tokens), the conversion and the
engine-support check of each checkpoint, and the summary. Exit status: 0 all passed (or dry run
done), 1 a check failed, 2 a one-line error (e.g. the full test without TensorRT-LLM).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


from pt_trtllm import plugin_lib
from pt_trtllm.convert.random_checkpoint import random_model
from pt_trtllm.convert.writer import convert
from pt_trtllm.formats import read_rank_config
from pt_trtllm.schedule import merges_per_forward
from pt_trtllm.trtllm.support import PLUGIN_MERGE_IMPLS, check_supported

REPO = Path(__file__).resolve().parent.parent
INSTALL_HINT = ("the self-test needs TensorRT-LLM 1.2.1 with TensorRT 10.x and a GPU (NVIDIA's tensorrt_llm==1.2.1 "
                "wheel or container, docs/trtllm.md); --dry_run runs the part that needs neither")
BASE = dict(vocab_size=256, hidden_size=128, num_tracks=2, num_hidden_layers=4, block_depth=2, num_attention_heads=8,
            num_key_value_heads=4, head_dim=32, intermediate_size=512, max_position_embeddings=256)
"""Overrides of the `tiny` preset shared by every case: T=2, L=4, D=2, H=128, d=32, GQA 4/2 per track."""
QK = {"qk_norm": True, "rope_style": "gptj"}
ONE_TRACK = {"num_tracks": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 256}
PROMPTS = [[5, 17, 33, 2, 99, 100, 7, 64], [200, 3, 3, 250, 11, 64, 1, 9]]
MAX_OUTPUT_LEN = 8
TOLERANCE_FACTOR, TOLERANCE_FLOOR = 3.0, 0.02
SUMMARY = "SUMMARY pt_trtllm-selftest"


@dataclass
class Case:
    name: str
    overrides: dict
    schedule: str
    merge_impl: str
    speed_baseline: str | None = None
    """For a QK-norm case: the case without QK-norm it is timed against."""


CASES = [
    Case("plain-block-allreduce", {}, "block", "allreduce"),
    Case("plain-block-fused", {}, "block", "allreduce_fused_norm"),
    Case("plain-sublayer-allreduce", {"combine_op": "residual_sum"}, "sublayer", "allreduce"),
    Case("plain-sublayer-fused", {"combine_op": "residual_sum"}, "sublayer", "allreduce_fused_norm"),
    Case("qknorm-block-allreduce", QK, "block", "allreduce", "plain-block-allreduce"),
    Case("qknorm-block-fused", QK, "block", "allreduce_fused_norm", "plain-block-fused"),
    Case("qknorm-sublayer-allreduce", {**QK, "combine_op": "residual_sum"}, "sublayer", "allreduce",
         "plain-sublayer-allreduce"),
    Case("qknorm-sublayer-fused", {**QK, "combine_op": "residual_sum"}, "sublayer", "allreduce_fused_norm",
         "plain-sublayer-fused"),
    Case("qknorm-tracknorms-block-fused", {**QK, "track_dispatch_norm": True, "track_combine_norm": True}, "block",
         "allreduce_fused_norm"),
    Case("onetrack-qknorm-fused", {**QK, **ONE_TRACK}, "block", "allreduce_fused_norm"),
    Case("plain-block-plugin", {}, "block", "pt_plugin"),
    Case("qknorm-sublayer-plugin", {**QK, "combine_op": "residual_sum"}, "sublayer", "pt_plugin"),
    Case("qknorm-tracknorms-block-plugin", {**QK, "track_dispatch_norm": True, "track_combine_norm": True}, "block",
         "pt_plugin"),
]


@dataclass
class Result:
    case: Case
    tracks: int
    tolerance: float
    greedy_tokens: list
    checks: dict = field(default_factory=dict)
    """name -> True/False (passed) for every check that ran."""
    numbers: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(self.checks.values())


# ---- the PyTorch references ----------------------------------------------------------------------
def make_model(case: Case, seed: int):
    """The case's random fp32 PTForCausalLM; norm weights ~ 1 + 0.1 randn (so a misplaced norm shows)."""
    model = random_model("tiny", seed, **{**BASE, **case.overrides})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
    return model


@torch.no_grad()
def greedy(model, prompts, steps: int, schedule: str) -> list[list[int]]:
    """Greedy tokens of the prompts (of equal length, one batch), with the KV cache."""
    out = model(torch.tensor(prompts), use_cache=True, schedule=schedule)
    tokens = [out.logits[:, -1].argmax(-1)]
    for _ in range(steps - 1):
        out = model(tokens[-1][:, None], past_key_values=out.past_key_values, use_cache=True, schedule=schedule)
        tokens.append(out.logits[:, -1].argmax(-1))
    return torch.stack(tokens, dim=1).tolist()


def references(case: Case, seed: int, work: Path) -> tuple[object, Result]:
    """The fp32 model, and the case's references: prefill logits in fp32 and bf16 (their distance
    sets the tolerance) and the fp32 greedy tokens; plus the conversion and support check."""
    model = make_model(case, seed)
    with torch.no_grad():
        fp32 = model(torch.tensor(PROMPTS), use_cache=False, schedule=case.schedule).logits
        bf16 = make_model(case, seed).to(torch.bfloat16)(torch.tensor(PROMPTS), use_cache=False,
                                                         schedule=case.schedule).logits.float()
    floor = float((bf16 - fp32).abs().max())
    result = Result(case, model.config.num_tracks, TOLERANCE_FACTOR * floor + TOLERANCE_FLOOR,
                    greedy(model, PROMPTS, MAX_OUTPUT_LEN, case.schedule))
    result.numbers.update(bf16_logit_diff=floor, tolerance=result.tolerance)
    hf, ckpt = work / case.name / "hf", work / case.name / "ckpt"
    model.save_pretrained(hf)
    convert(hf, ckpt, dtype="bfloat16", progress=False)
    cfg, _ = read_rank_config(ckpt, "--checkpoint_dir")
    check_supported(cfg, case.schedule, case.merge_impl)
    result.checks["converts"] = True
    return model, result


# ---- the engines -------------------------------------------------------------------------------
def run(cmd: list[str], timeout: float = 1800, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", **(extra_env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, check=False)


def rendezvous_env(case: Case, folder: Path) -> dict:
    """The rendezvous variables PTTrackMerge reads (docs/trtllm.md): a job id unique to this run of
    the case, and a directory its ranks share."""
    return {"PT_TRTLLM_JOB_ID": f"pt-selftest-{os.getpid()}-{case.name}", "PT_TRTLLM_RENDEZVOUS_DIR": str(folder)}


def tie(model, prompt: list[int], tokens: list[int], step: int, schedule: str, tolerance: float) -> bool:
    """Whether the fp32 model's top two logits after prompt + tokens[:step] are within tolerance."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens[:step]]), use_cache=False, schedule=schedule).logits[0, -1]
    top = logits.topk(2).values
    return float(top[0] - top[1]) <= tolerance


def engine_checks(model, result: Result, work: Path, gpus: int) -> None:
    """Build, count, run and compare the case's engines (the full self-test)."""
    case, folder = result.case, work / result.case.name
    ckpt, engines = folder / "ckpt", folder / "engines"
    if case.merge_impl in PLUGIN_MERGE_IMPLS:
        try:
            plugin_lib.library_path()
        except plugin_lib.PluginLibraryError as e:
            result.notes.append(f"not run: {e}")
            return
    start = time.perf_counter()
    built = run([sys.executable, str(REPO / "scripts" / "build.py"), "--checkpoint_dir", str(ckpt), "--output_dir",
                 str(engines), "--schedule", case.schedule, "--merge_impl", case.merge_impl, "--gather_context_logits",
                 "--max_batch_size", "2", "--max_input_len", "16", "--max_seq_len", "32",
                 "--output_timing_cache", str(folder / "model.cache")])
    result.numbers["build_s"] = time.perf_counter() - start
    result.checks["builds"] = built.returncode == 0
    if built.returncode:
        result.notes.append("build: " + built.stderr.strip().splitlines()[-1] if built.stderr.strip() else "build failed")
        return
    cfg = model.config
    expected = merges_per_forward(case.schedule, cfg.num_hidden_layers, cfg.block_depth) if cfg.num_tracks > 1 else 0
    # rank 0's network, built in this process by TensorRT-LLM's builder.build (dry run: no engine)
    from pt_trtllm.trtllm.nodes import CollectiveNodes, network_collective_nodes

    nodes = network_collective_nodes(ckpt, case.schedule, case.merge_impl)
    result.numbers.update(allreduce_layers=nodes.allreduce, pt_track_merge_layers=nodes.pt_track_merge,
                          allgather_layers=nodes.allgather, expected_merge_nodes=expected)
    result.checks["merge_nodes"] = nodes == CollectiveNodes.expected(case.merge_impl, expected)
    if gpus < result.tracks:
        result.notes.append(f"not run: needs {result.tracks} GPUs, this machine has {gpus}")
        return
    ids = ";".join(",".join(map(str, p)) for p in PROMPTS)
    launcher = [] if result.tracks == 1 else [shutil.which("mpirun") or "mpirun", "-n", str(result.tracks)]
    ran = run([*launcher, sys.executable, str(REPO / "scripts" / "run.py"), "--engine_dir", str(engines),
               "--input_ids", ids, "--max_output_len", str(MAX_OUTPUT_LEN), "--output_json", str(folder / "out.json"),
               "--output_logits", str(folder / "logits.npy")], extra_env=rendezvous_env(case, folder))
    result.checks["runs"] = ran.returncode == 0
    if ran.returncode:
        result.notes.append("run: " + (ran.stderr.strip().splitlines() or ["failed"])[-1])
        return
    out = json.loads((folder / "out.json").read_text())
    with torch.no_grad():
        fp32 = model(torch.tensor(PROMPTS), use_cache=False, schedule=case.schedule).logits.numpy()
    diff = float(np.abs(np.load(folder / "logits.npy") - fp32).max())
    result.numbers.update(logit_diff=diff, tpot_ms=out["timings"]["tpot_ms"])
    result.checks["logits"] = diff <= result.tolerance
    tokens_ok = True
    for prompt, got, want in zip(PROMPTS, out["output_ids"], result.greedy_tokens, strict=True):
        step = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
        if step is None and len(got) == len(want):
            continue
        near = step is not None and tie(model, prompt, want, step, case.schedule, result.tolerance)
        result.notes.append(f"tokens differ from step {step}" + (" (a near tie: accepted)" if near else ""))
        tokens_ok = tokens_ok and near
    result.checks["tokens"] = tokens_ok


# ---- reporting ---------------------------------------------------------------------------------
def versions() -> dict:
    try:
        import tensorrt_llm

        trtllm = tensorrt_llm.__version__
    except ImportError:
        trtllm = "absent"
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"tensorrt_llm": trtllm, "torch": torch.__version__, "python": platform.python_version(),
            "gpus": f"{len(gpus)}x{gpus[0]}" if gpus else "0"}


def qk_norm_cost(results: dict[str, Result]) -> float | None:
    """Mean relative decode-time cost of the QK-norm cases over their baselines, or None (not timed)."""
    ratios = [r.numbers["tpot_ms"] / results[r.case.speed_baseline].numbers["tpot_ms"] - 1
              for r in results.values() if r.case.speed_baseline
              and r.numbers.get("tpot_ms") and results[r.case.speed_baseline].numbers.get("tpot_ms")]
    return sum(ratios) / len(ratios) if ratios else None


def summary_line(results: dict[str, Result], dry_run: bool, info: dict) -> str:
    rs = list(results.values())
    checks = {name for r in rs for name in r.checks}
    counts = " ".join(f"{name}={sum(r.checks.get(name, False) for r in rs)}/{sum(name in r.checks for r in rs)}"
                      for name in ("converts", "builds", "merge_nodes", "runs", "tokens", "logits")
                      if name in checks)
    verdict = "DRY_RUN" if dry_run else ("PASS" if all(r.passed for r in rs) else "FAIL")
    diffs = [r.numbers["logit_diff"] for r in rs if "logit_diff" in r.numbers]
    cost = qk_norm_cost(results)
    parts = [f"result={verdict}", f"cases={len(rs)}", counts,
             f"bf16_floor_max={max(r.numbers['bf16_logit_diff'] for r in rs):.3g}"]
    if diffs:
        parts.append(f"logit_diff_max={max(diffs):.3g}")
    if cost is not None:
        parts.append(f"qk_norm_decode_cost={100 * cost:+.1f}%")
    parts += [f"{k}={v}" for k, v in info.items()]
    return SUMMARY + " " + " ".join(parts)


def case_line(r: Result) -> str:
    checks = " ".join(f"{k}={'ok' if v else 'FAIL'}" for k, v in r.checks.items())
    numbers = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.numbers.items())
    return f"{r.case.name}: {checks} {numbers}" + (f" ({'; '.join(r.notes)})" if r.notes else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry_run", action="store_true", help="only what needs no TensorRT-LLM (the PyTorch references)")
    p.add_argument("--work_dir", help="where checkpoints and engines go (default: a temporary directory)")
    p.add_argument("--output_json", help="write every case's checks and numbers here")
    args = p.parse_args(argv)
    if not args.dry_run:
        try:
            import tensorrt_llm  # noqa: F401
        except ImportError:
            print(f"error: {INSTALL_HINT}", file=sys.stderr)
            return 2
        if not torch.cuda.is_available():
            print(f"error: no GPU visible; {INSTALL_HINT}", file=sys.stderr)
            return 2
    info = versions()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the references are tiny: one thread, no intra-op synchronization
    try:
        with tempfile.TemporaryDirectory(prefix="pt-selftest-") as tmp:
            work = Path(args.work_dir or tmp)
            results = {}
            for seed, case in enumerate(CASES, start=1):
                model, result = references(case, seed, work)
                if not args.dry_run:
                    engine_checks(model, result, work, torch.cuda.device_count())
                results[case.name] = result
                print(case_line(result), flush=True)
    finally:
        torch.set_num_threads(threads)
    line = summary_line(results, args.dry_run, info)
    if args.output_json:
        record = {"summary": line, "versions": info, "cases": {
            name: {"checks": r.checks, "numbers": r.numbers, "notes": r.notes, "schedule": r.case.schedule,
                   "merge_impl": r.case.merge_impl, "overrides": r.case.overrides} for name, r in results.items()}}
        Path(args.output_json).write_text(json.dumps(record, indent=2) + "\n")
    print(line)
    return 0 if args.dry_run or all(r.passed for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
