#!/usr/bin/env python3
"""GPU checks of libpt_trtllm_plugins.so (plugins/), run by `scripts/gpu_check.sh --stage plugins`.

  kernels   one process: every combine form x norm case x dtype x tokens {1, 7, 64, 512, 4096} x
            H {576, 2048, 4096, 5120, 6144}, on the one-shot and the NCCL transport at T = 1, against
            a torch reference of pt-spec section 3 written here (max |got - ref| / max(1, max |ref|):
            fp32 2e-5, fp16 1e-2, bf16 4e-2);
  oneshot   under `mpiexec -n T` on ONE GPU (processes time-slice: correctness only): the one-shot
            transport's merge equals the torch merge of every rank's inputs (each rank draws all T
            inputs from the same seeds), and every rank holds the same bits;
  latency   one process, T = 1, bf16, H = 4096: us per merge call (median, p99; CUDA graphs of 20
            merges, 50 replays) of the library (one-shot and NCCL transports) against the unfused
            torch ops (a 1-rank torch NCCL all-reduce, the residual add, F.rms_norm). T = 1 measures
            the fusion and the launch count, NOT the transport between GPUs;
  compare   the `--comm pt_plugin` runtime run against the CPU mpi4py run of the same checkpoint
            (run.py JSON and logits files): the same greedy tokens, logits within 1e-3 (fp32).
Each writes <out>/plugins_<what>[_T<n>].json and prints one line per result; exit 1 on a failure.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pt_trtllm.runtime.plugin_comm import (  # noqa: E402
    DTYPES, IPC_HANDLE_BYTES, TRANSPORTS, UNIQUE_ID_BYTES, _Config, _library, _Norms, _Outputs)

FORMS = {  # name: (combine_op, residual_form flag)
    "mean": ("mean", 0), "sum": ("sum", 0), "mean_residual_form": ("mean", 1), "sum_residual_form": ("sum", 1),
    "residual_sum": ("residual_sum", 0)}
COMBINE = {"mean": 0, "sum": 1, "residual_sum": 2}
TOLERANCE = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}
CUDA = torch.device("cuda", 0)


def rms(v: torch.Tensor, w: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    return F.rms_norm(v.float(), w.shape, w.float(), eps).to(dtype)


def reference(form: str, hs: list[torch.Tensor], x: torch.Tensor, w: dict, eps: float) -> list[torch.Tensor]:
    """pt-spec section 3 in torch, rounding to the dtype where a model would hold a tensor."""
    combine_op, residual_form = FORMS[form]
    T, dtype = len(hs), x.dtype
    qs = []
    for h in hs:
        hc = rms(h, w["combine"], eps, dtype).float() if "combine" in w else h.float()
        if combine_op == "residual_sum":
            q = hc - x.float()
        elif residual_form:
            q = (hc - x.float()) / T if combine_op == "mean" else hc - x.float() / T
        else:
            q = hc
        qs.append(q.to(dtype))
    r = torch.stack([q.float() for q in qs]).sum(0).to(dtype).float()
    if combine_op == "residual_sum" or residual_form:
        merged = (x.float() + r).to(dtype)
    else:
        merged = (r / T if combine_op == "mean" else r).to(dtype)
    outs = [merged]
    if "dispatch" in w:
        outs.append(rms(merged, w["dispatch"], eps, dtype))
    if "next" in w:
        outs.append(rms(outs[-1], w["next"], eps, dtype))
    return outs


class Context:
    """One pt_merge_context through ctypes (plugins/include/pt_merge.h)."""

    def __init__(self, lib, rank, T, dtype, form, hidden, max_tokens, transport, unique_id, gather=None):
        self.lib = lib
        combine_op, flags = FORMS[form]
        self.id_buffer = ctypes.create_string_buffer(unique_id, UNIQUE_ID_BYTES)
        config = _Config(rank, T, 0, ctypes.cast(self.id_buffer, ctypes.c_char_p), DTYPES[dtype], COMBINE[combine_op],
                         flags, hidden, max_tokens, TRANSPORTS[transport], 0)
        self.ctx = ctypes.c_void_p()
        self.check(lib.pt_merge_create(ctypes.byref(config), ctypes.byref(self.ctx)))
        if transport != "nccl":
            handle = ctypes.create_string_buffer(IPC_HANDLE_BYTES)
            self.check(lib.pt_merge_ipc_handle(self.ctx, handle))
            handles = b"".join(gather(handle.raw)) if gather else handle.raw
            self.check(lib.pt_merge_connect(self.ctx, handles))

    def check(self, status: int) -> None:
        if status != 0:
            raise RuntimeError(self.lib.pt_merge_last_error().decode())

    def run(self, h, x, w: dict, eps: float) -> list[torch.Tensor]:
        outs = [torch.empty_like(h) for _ in range(1 + ("dispatch" in w) + ("next" in w))]
        ptr = {k: v.data_ptr() for k, v in w.items()}
        norms = _Norms(ptr.get("combine", 0), eps, ptr.get("dispatch", 0), eps, ptr.get("next", 0), eps)
        i_next = 1 + ("dispatch" in w)
        outputs = _Outputs(outs[0].data_ptr(), outs[1].data_ptr() if "dispatch" in w else 0,
                           outs[i_next].data_ptr() if "next" in w else 0)
        self.check(self.lib.pt_merge_run(self.ctx, h.data_ptr(), x.data_ptr(), h.shape[0], ctypes.byref(norms),
                                         ctypes.byref(outputs), torch.cuda.current_stream().cuda_stream))
        return outs

    def close(self, barrier=None) -> None:
        """pt_merge.h's teardown: disconnect, every rank past it (`barrier`), destroy."""
        self.check(self.lib.pt_merge_disconnect(self.ctx))
        if barrier:
            barrier()
        self.check(self.lib.pt_merge_destroy(self.ctx))


def unique_id(lib) -> bytes:
    """A new NCCL unique id (a 1-rank communicator needs one too)."""
    uid = ctypes.create_string_buffer(UNIQUE_ID_BYTES)
    if lib.pt_merge_get_unique_id(uid) != 0:
        raise RuntimeError(lib.pt_merge_last_error().decode())
    return uid.raw


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.float() - ref.float()).abs().max() / max(1.0, ref.float().abs().max().item())).item()


def inputs(seed: int, T: int, tokens: int, hidden: int, dtype, norms: tuple[str, ...]):
    g = torch.Generator(device=CUDA).manual_seed(seed)
    draw = lambda *s: torch.randn(*s, generator=g, device=CUDA)  # noqa: E731
    hs = [draw(tokens, hidden).to(dtype) for _ in range(T)]
    x = draw(tokens, hidden).to(dtype)
    w = {n: (1 + 0.1 * draw(hidden)).to(dtype) for n in norms}
    return hs, x, w


def kernels(args) -> dict:
    lib, results, worst = _library(), [], {}
    for transport in ("oneshot", "nccl"):
        for dtype, form, hidden in itertools.product(DTYPES, FORMS, (576, 2048, 4096, 5120, 6144)):
            ctx = Context(lib, 0, 1, dtype, form, hidden, 4096, transport, unique_id(lib) if transport == "nccl" else b"")
            for tokens, k in itertools.product((1, 7, 64, 512, 4096), range(8)):
                norms = tuple(n for i, n in enumerate(("combine", "dispatch", "next")) if k >> i & 1)
                hs, x, w = inputs(tokens * 31 + k, 1, tokens, hidden, dtype, norms)
                got, ref = ctx.run(hs[0], x, w, 1e-6), reference(form, hs, x, w, 1e-6)
                e = max(error(a, b) for a, b in zip(got, ref))
                key = f"{transport}/{str(dtype)[6:]}"
                worst[key] = max(worst.get(key, 0.0), e)
                if e > TOLERANCE[dtype]:
                    results.append({"transport": transport, "dtype": str(dtype), "form": form, "H": hidden,
                                    "tokens": tokens, "norms": norms, "error": e})
            ctx.close()
    print("kernels: worst error per transport/dtype", json.dumps(worst), "failures", len(results), flush=True)
    return {"worst_error": worst, "tolerance": {str(k): v for k, v in TOLERANCE.items()}, "failures": results[:50],
            "ok": not results}


def oneshot(args) -> dict:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, T = comm.Get_rank(), comm.Get_size()
    lib, failures, digests = _library(), [], []

    def check(case: dict, got: list[torch.Tensor], ref: list[torch.Tensor], dtype) -> None:
        e = max(error(a, b) for a, b in zip(got, ref))
        digests.append([digest(o) for o in got])
        if e > TOLERANCE[dtype]:
            failures.append({**case, "dtype": str(dtype), "error": e})

    for dtype, form in itertools.product(DTYPES, FORMS):
        for hidden in (576, 4096):
            ctx = Context(lib, rank, T, dtype, form, hidden, 512, "oneshot", b"", gather=comm.allgather)
            for tokens, norms in ((1, ("next",)), (64, ("combine", "dispatch", "next")), (512, ("next",))):
                hs, x, w = inputs(tokens + hidden, T, tokens, hidden, dtype, norms)
                got = ctx.run(hs[rank], x, w, 1e-6)
                torch.cuda.synchronize()
                check({"form": form, "H": hidden, "tokens": tokens, "norms": norms}, got, reference(form, hs, x, w, 1e-6),
                      dtype)
            ctx.close(comm.Barrier)
    # back to back, no host synchronization between merges (the parity buffers and the epoch counter
    # at work), then the same merges captured in a CUDA graph and replayed several times
    dtype, form, hidden = torch.bfloat16, "residual_sum", 576
    ctx = Context(lib, rank, T, dtype, form, hidden, 64, "oneshot", b"", gather=comm.allgather)
    cases = [inputs(1000 + i, T, 1 + i % 64, hidden, dtype, ("next",)) for i in range(200)]
    outs = [ctx.run(hs[rank], x, w, 1e-6) for hs, x, w in cases]
    torch.cuda.synchronize()
    for i, ((hs, x, w), got) in enumerate(zip(cases, outs)):
        check({"pipelined": i}, got, reference(form, hs, x, w, 1e-6), dtype)
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        captured = [ctx.run(hs[rank], x, w, 1e-6) for hs, x, w in cases[:20]]
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    for i, ((hs, x, w), got) in enumerate(zip(cases[:20], captured)):
        check({"graph_replayed": i}, got, reference(form, hs, x, w, 1e-6), dtype)
    ctx.close(comm.Barrier)
    same_bits = len({json.dumps(d) for d in comm.allgather(digests)}) == 1
    all_failures = [f for fs in comm.allgather(failures) for f in fs]
    out = {"T": T, "rank": rank, "checks": len(digests), "same_on_every_rank": same_bits, "failures": all_failures[:50],
           "ok": same_bits and not all_failures}
    if rank == 0:
        print(f"oneshot T={T}:", json.dumps(out), flush=True)
    return out


def latency(args) -> dict:
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=CUDA)
    lib, hidden, dtype, eps, per_graph, replays = _library(), 4096, torch.bfloat16, 1e-6, 20, 50
    rows = []
    for tokens in (1, 8, 64, 256):
        hs, x, w = inputs(tokens, 1, tokens, hidden, dtype, ("next",))
        h = hs[0]
        ctxs = {t: Context(lib, 0, 1, dtype, "residual_sum", hidden, 256, t, unique_id(lib)) for t in ("oneshot", "nccl")}

        def unfused():
            delta = h - x
            dist.all_reduce(delta)
            merged = x + delta
            return merged, F.rms_norm(merged.float(), w["next"].shape, w["next"].float(), eps).to(dtype)

        row = {"tokens": tokens}
        for name, fn in (("unfused_torch", unfused), ("library_oneshot", lambda: ctxs["oneshot"].run(h, x, w, eps)),
                         ("library_nccl", lambda: ctxs["nccl"].run(h, x, w, eps))):
            row[name] = time_graph(fn, per_graph, replays)
        for c in ctxs.values():
            c.close()
        rows.append(row)
        print("latency:", json.dumps(row), flush=True)
    dist.destroy_process_group()
    return {"what": f"us per merge call at T = 1 (bf16, H = {hidden}, residual_sum with the next RMSNorm): the fused "
                    "kernels vs the unfused torch ops, CUDA graphs of 20 merges; NOT all-reduce latency between GPUs",
            "rows": rows, "ok": True}


def time_graph(fn, per_graph: int, replays: int) -> dict:
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for _ in range(per_graph):
            fn()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / per_graph)
    return {"median_us": float(np.median(times)), "p99_us": float(np.percentile(times, 99))}


def compare(args) -> dict:
    cpu, gpu = (json.loads(Path(p).read_text()) for p in (args.cpu_json, args.gpu_json))
    diff = float(np.abs(np.load(args.cpu_logits) - np.load(args.gpu_logits)).max())
    out = {"T": cpu["world_size"], "tokens_equal": cpu["output_ids"] == gpu["output_ids"],
           "max_abs_logit_diff": diff, "gpu_communicator": gpu["communicator"], "ok": False}
    out["ok"] = out["tokens_equal"] and diff <= 1e-3 and gpu["communicator"] == "pt_plugin"
    print("runtime --comm pt_plugin vs cpu:", json.dumps(out), flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("kernels", "oneshot", "latency", "compare"))
    p.add_argument("--out", default=".")
    for name in ("cpu_json", "gpu_json", "cpu_logits", "gpu_logits"):
        p.add_argument(f"--{name}")
    args = p.parse_args()
    if args.what != "compare":
        torch.cuda.set_device(CUDA)
    result = globals()[args.what](args)
    rank_suffix = f"_T{result['T']}" if "T" in result else ""
    if result.get("rank", 0) == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"plugins_{args.what}{rank_suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
