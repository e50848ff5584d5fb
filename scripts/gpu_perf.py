#!/usr/bin/env python3
"""Per-track step times for the latency model (scripts/latency_model.py --steps), run on ONE GPU by
`scripts/gpu_check.sh --stage perf` (a CPU run with a tiny preset checks the script itself).

One track of --preset (random bf16 weights, q|k|v and gate|up fused as the runtime serves them), on
the `none` schedule (one GPU has no peer to merge with: this is the track's own compute):
- decode: one step per batch size in --batches at each context in --contexts, the KV cache sized to
  exactly that context (so a CUDA-graph step reads the weights once and `context` cached tokens per
  sequence), for each mode in --modes (cuda_graph; compile_cuda_graph only at batch 1: minutes of
  compiling). Next to each: the bound, (weight bytes + KV bytes read) / the measured read bandwidth,
  the weights of a mixture-of-experts preset counting only the routed experts (weight_bytes);
  with --profile, the top operations of a batch-1 step by self time on the device (torch.profiler);
  with --serve_cache N (CUDA), the same step in a cache of N positions as a server sizes it, over the
  whole cache (the previous decode path) and with --kv_buckets (graphs per 256-position bucket);
- prefill: one prompt of each length in --prefill_tokens, eager (the runtime never captures prefill),
  with max_position_embeddings raised to fit the longest (said in the JSON), and the achieved TFLOP/s
  (pt_trtllm.latency_model.prefill_flops).
Writes one JSON (--out) in the schema latency_model.py reads: gpu, torch, cuda, read_bandwidth_TBps,
decode [{preset, batch, context, <mode>_step_ms, bound_ms}], prefill [{preset, tokens, eager_ms}].
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pt_trtllm import PTConfig  # noqa: E402
from pt_trtllm.cli import write_atomic  # noqa: E402
from pt_trtllm.latency_model import kv_bytes_per_token, prefill_flops  # noqa: E402
from pt_trtllm.merge import AllReduceMerge  # noqa: E402
from pt_trtllm.modeling import Experts, PTModel  # noqa: E402
from pt_trtllm.runtime.comm import Communicator  # noqa: E402
from pt_trtllm.runtime.engine import TrackEngine  # noqa: E402

MODES = {"cuda_graph": (True, False), "eager": (False, False), "compile_cuda_graph": (True, True)}


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def read_bandwidth(device: torch.device) -> float:
    """Bytes per second this device reads (a large sum: reads once, writes almost nothing)."""
    x = torch.empty(2 * 1024**3 if device.type == "cuda" else 64 * 1024**2, dtype=torch.uint8,
                    device=device).view(torch.float32).normal_()
    for _ in range(3):
        x.sum()
    sync(device)
    start = time.perf_counter()
    for _ in range(20):
        x.sum()
    sync(device)
    return 20 * x.numel() * 4 / (time.perf_counter() - start)


def one_track(cfg: PTConfig, device: torch.device, dtype: torch.dtype):
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with device:
        model = PTModel(cfg, num_local_tracks=1, merge=AllReduceMerge(cfg.combine_op, cfg.num_tracks, Communicator(0, 1)))
        for p in model.parameters():
            torch.nn.init.normal_(p, std=p.shape[-1] ** -0.5)
        lm_head = torch.randn(cfg.vocab_size, cfg.hidden_size) * cfg.hidden_size**-0.5
    torch.set_default_dtype(previous)
    model.fuse()
    model.eval().requires_grad_(False)
    return model, lm_head


def weight_bytes(model: PTModel, lm_head: torch.Tensor, batch: int) -> int:
    """The weight bytes one decode step of `batch` tokens must read: the track's layers, the final
    norm and the LM head; of each mixture of experts only the routed experts, at most
    min(E, batch x top_k) of them (the most a step can touch: a bound, not what routing picks)."""
    def nbytes(params) -> int:
        return sum(p.numel() * p.element_size() for p in params)

    total = nbytes(model.tracks.parameters()) + model.norm.weight.nbytes + nbytes([lm_head])
    top_k = model.config.num_experts_per_token or 0
    for m in model.modules():
        if isinstance(m, Experts):
            every = nbytes(m.parameters())
            total += every * min(m.num_experts, batch * top_k) // m.num_experts - every
    return total


def timed(fn, device: torch.device, repeats: int) -> float:
    for _ in range(3):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) * 1e3 / repeats


def top_kernels(fn, device: torch.device, steps: int = 5, top: int = 15) -> list[dict]:
    """torch.profiler over `steps` steps: the `top` operations by self time on the device (the CPU
    on a CPU run), per step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        sync(device)
    on_device = device.type == "cuda"
    rows = [e for e in prof.key_averages() if (e.self_device_time_total if on_device else e.self_cpu_time_total) > 0]
    rows.sort(key=lambda e: e.self_device_time_total if on_device else e.self_cpu_time_total, reverse=True)
    return [{"name": e.key[:120], "calls_per_step": e.count / steps,
             "self_us_per_step": (e.self_device_time_total if on_device else e.self_cpu_time_total) / steps}
            for e in rows[:top]]


def decode_points(args, cfg, model, lm_head, bandwidth, device) -> list[dict]:
    comm, points = Communicator(0, 1), []
    for context in args.contexts:
        for batch in args.batches:
            weights = weight_bytes(model, lm_head, batch)
            kv = context * batch * kv_bytes_per_token(cfg) * lm_head.element_size() // 2
            point = {"preset": args.preset, "batch": batch, "context": context, "schedule": "none",
                     "weights_read_GB": weights / 1e9, "kv_read_GB": kv / 1e9, "bound_ms": 1e3 * (weights + kv) / bandwidth}
            for mode in args.modes:
                if mode == "compile_cuda_graph" and batch != 1:
                    continue
                graphs, compiled = MODES[mode]
                engine = TrackEngine.from_model(model, lm_head, comm, device, max_batch=batch, max_len=context + 1,
                                                cuda_graphs=graphs and device.type == "cuda", compile=compiled)
                point["cache_positions"] = engine.max_len  # the cache every step reads (masked past the context)
                tokens = torch.ones(batch, dtype=torch.long, device=device)
                positions = torch.full((batch,), context, dtype=torch.long, device=device)
                point[f"{mode}_step_ms"] = timed(lambda: engine.decode(tokens, positions, "none"), device, args.repeats)
                point[f"{mode}_vs_bound"] = point[f"{mode}_step_ms"] / point["bound_ms"]
                if args.profile and batch == 1:
                    point[f"{mode}_top_kernels"] = top_kernels(lambda: engine.decode(tokens, positions, "none"), device)
                engine = None  # free its cache before the next one
            if device.type == "cuda" and args.serve_cache > context + 1:
                point.update(serve_cache_steps(args, model, lm_head, device, batch, context))
            print(json.dumps(point), flush=True)
            points.append(point)
    return points


def serve_cache_steps(args, model, lm_head, device, batch: int, context: int) -> dict:
    """The same step in a cache of args.serve_cache positions, as a server sizes it: CUDA graphs
    over the whole cache (the previous path) and per 256-position bucket (--kv_buckets)."""
    out, N = {}, args.serve_cache
    for name, buckets in (("cuda_graph", False), ("kv_buckets", True)):
        engine = TrackEngine.from_model(model, lm_head, Communicator(0, 1), device, max_batch=batch, max_len=N,
                                        kv_buckets=buckets)
        tokens = torch.ones(batch, dtype=torch.long, device=device)
        positions = torch.full((batch,), context, dtype=torch.long, device=device)
        out[f"cache{N}_{name}_step_ms"] = timed(lambda: engine.decode(tokens, positions, "none", context), device,
                                                args.repeats)
        engine = None  # free its cache before the next one
    return out


def prefill_points(args, cfg, model, lm_head, device) -> list[dict]:
    comm, points = Communicator(0, 1), []
    for tokens in args.prefill_tokens:
        engine = TrackEngine.from_model(model, lm_head, comm, device, max_batch=1, max_len=tokens, cuda_graphs=False)
        prompt = [[1 + (i * 31) % (cfg.vocab_size - 1) for i in range(tokens)]]
        ms = timed(lambda: engine.prefill(prompt, [0], "none"), device, max(1, args.repeats // 10))
        point = {"preset": args.preset, "tokens": tokens, "schedule": "none", "eager_ms": ms,
                 "achieved_TFLOPs": prefill_flops(cfg, tokens) / (ms * 1e9)}
        print(json.dumps(point), flush=True)
        points.append(point)
        engine = None  # free its cache before the next one
    return points


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="pt-30b-d8")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--batches", type=ints, default=[1, 8, 64, 256])
    p.add_argument("--contexts", type=ints, default=[1024])
    p.add_argument("--prefill_tokens", type=ints, default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--modes", type=lambda s: s.split(","), default=["cuda_graph", "compile_cuda_graph"])
    p.add_argument("--repeats", type=int, default=30, help="timed decode steps per point (prefill: a tenth)")
    p.add_argument("--serve_cache", type=int, default=4096,
                   help="CUDA: also time each decode point in a cache of this many positions, over the whole cache "
                        "and with --kv_buckets (0: skip)")
    p.add_argument("--profile", action="store_true",
                   help="also record the top operations of a batch-1 decode step of each mode (torch.profiler)")
    p.add_argument("--out", required=True, help="the JSON to write, e.g. docs/results/perf-h200.json")
    args = p.parse_args(argv)
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        p.error(f"unknown --modes {unknown} (known: {', '.join(MODES)})")
    if args.device == "cpu" and args.modes != ["eager"]:
        p.error("--device cpu measures --modes eager only (CUDA graphs and their compiled form need a GPU)")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: torch sees no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    try:
        cfg = PTConfig.from_preset(args.preset)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    longest = max(args.contexts + args.prefill_tokens + ([args.serve_cache] if args.device == "cuda" else [])) + 1
    raised = longest > cfg.max_position_embeddings
    if raised:
        cfg = PTConfig.from_preset(args.preset, max_position_embeddings=longest)
    started = time.perf_counter()
    bandwidth = read_bandwidth(device)
    report = {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "dtype": args.dtype,
              "read_bandwidth_TBps": bandwidth / 1e12, "preset": args.preset,
              "max_position_embeddings": cfg.max_position_embeddings,
              "notes": ["one track, schedule none (one GPU: no merges); random weights; the cache of each decode point "
                        "is sized to its context and left unfilled (a step reads it whole either way)"]
              + ([f"max_position_embeddings raised to {longest} for the longest point"] if raised else [])}
    print(json.dumps(report), flush=True)
    model, lm_head = one_track(cfg, device, getattr(torch, args.dtype))
    report["decode"] = decode_points(args, cfg, model, lm_head, bandwidth, device)
    report["prefill"] = prefill_points(args, cfg, model, lm_head, device)
    report["seconds"] = time.perf_counter() - started
    write_atomic(args.out, (json.dumps(report, indent=2) + "\n").encode())
    print(f"wrote {args.out} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
