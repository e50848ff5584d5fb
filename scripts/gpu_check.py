#!/usr/bin/env python3
"""GPU check of the PyTorch runtime on ONE NVIDIA GPU (run by scripts/gpu_check.sh).

1. parity: a small random model, T=1, fp32: prefill logits and greedy tokens on CUDA (CUDA-graph
   decode) against the same checkpoint on the CPU (<= 1e-3), and CUDA-graph decode against eager;
2. NCCL inside a CUDA graph: a 1-rank process group, an all-reduce captured and replayed (one GPU
   cannot run two NCCL ranks, so the 2-rank path is NOT executed here);
3. speed: bf16 decode steps (CUDA graphs, and eager for comparison) at a small size and for one track
   of the 30B preset, against the time to read that track's weights once from GPU memory at the
   bandwidth measured on this GPU. One GPU holds one track and has no peer to merge with, so the 30B
   track runs the `none` schedule (no merges): its per-GPU compute, not the model's output.
Writes gpu_check.json and gpu_check.md to --out.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pt_trtllm import PTConfig, PTForCausalLM  # noqa: E402
from pt_trtllm.convert.writer import convert  # noqa: E402
from pt_trtllm.merge import AllReduceMerge  # noqa: E402
from pt_trtllm.modeling import PTModel  # noqa: E402
from pt_trtllm.runtime.comm import Communicator, NCCLComm  # noqa: E402
from pt_trtllm.runtime.engine import TrackEngine  # noqa: E402
from pt_trtllm.runtime.sampling import SamplingParams  # noqa: E402

CUDA = torch.device("cuda", 0)


def parity(tmp: Path) -> dict:
    cfg = PTConfig.from_preset("tiny", num_tracks=1, num_attention_heads=4, num_key_value_heads=2,
                               intermediate_size=256, qk_norm=True)
    torch.manual_seed(0)
    PTForCausalLM(cfg).save_pretrained(tmp / "hf")
    convert(tmp / "hf", tmp / "ckpt", progress=False)
    prompts = [[(7 * i + 3) % cfg.vocab_size for i in range(40)], [(11 * i + 5) % cfg.vocab_size for i in range(40)]]
    runs = {}
    for name, device, graphs in (("cpu", torch.device("cpu"), False), ("cuda_graph", CUDA, True),
                                 ("cuda_eager", CUDA, False)):
        comm = Communicator(0, 1) if device.type == "cpu" else NCCLComm(None, device)
        engine = TrackEngine(tmp / "ckpt", comm, device, max_batch=2, max_len=80, cuda_graphs=graphs)
        runs[name] = engine.generate(prompts, 32, SamplingParams(), prefill_logits=True)
    diff = (runs["cuda_graph"].prefill_logits.cpu() - runs["cpu"].prefill_logits).abs().max().item()
    out = {"max_abs_logit_diff_cuda_vs_cpu": diff,
           "greedy_tokens_equal_cuda_graph_vs_cpu": runs["cuda_graph"].output_ids == runs["cpu"].output_ids,
           "greedy_tokens_equal_cuda_graph_vs_eager": runs["cuda_graph"].output_ids == runs["cuda_eager"].output_ids,
           "merges_per_forward": runs["cuda_graph"].merges_per_forward}
    out["ok"] = diff <= 1e-3 and out["greedy_tokens_equal_cuda_graph_vs_cpu"] and \
        out["greedy_tokens_equal_cuda_graph_vs_eager"]
    return out


def nccl_in_graph() -> dict:
    import torch.distributed as dist

    store = dist.HashStore()
    dist.init_process_group("nccl", store=store, rank=0, world_size=1, device_id=CUDA)
    x = torch.full((1024,), 2.0, device=CUDA)
    dist.all_reduce(x)  # eager first: creates the communicator
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dist.all_reduce(x)
    x.fill_(3.0)
    graph.replay()
    torch.cuda.synchronize()
    ok = bool((x == 3.0).all())
    dist.destroy_process_group()
    return {"ok": ok, "note": "1-rank NCCL group: an all-reduce captured in a CUDA graph and replayed"}


def read_bandwidth() -> float:
    """Bytes per second this GPU reads (a large sum, which reads once and writes almost nothing)."""
    x = torch.empty(2 * 1024**3, dtype=torch.uint8, device=CUDA).view(torch.float32).normal_()
    for _ in range(3):
        x.sum()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        x.sum()
    end.record()
    torch.cuda.synchronize()
    return 20 * x.numel() * 4 / (start.elapsed_time(end) / 1e3)


MODES = {"cuda_graph": (True, False), "eager": (False, False), "compile_cuda_graph": (True, True)}


def decode_speed(cfg: PTConfig, schedule: str, label: str, bandwidth: float, batch: int, max_len: int,
                 modes: list[str]) -> dict:
    torch.manual_seed(0)
    comm = NCCLComm(None, CUDA)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with CUDA:
        model = PTModel(cfg, num_local_tracks=1, merge=AllReduceMerge(cfg.combine_op, cfg.num_tracks, comm))
        lm_head = torch.randn(cfg.vocab_size, cfg.hidden_size) * cfg.hidden_size**-0.5
    torch.set_default_dtype(previous)
    model.fuse()
    model.eval().requires_grad_(False)
    read = sum(p.numel() * p.element_size() for p in model.tracks.parameters()) + model.norm.weight.nbytes
    read += lm_head.numel() * lm_head.element_size()
    result = {"model": label, "schedule": schedule, "batch": batch, "weights_read_per_step_GB": read / 1e9,
              "bound_ms": 1e3 * read / bandwidth}
    for mode in modes:
        graphs, compiled = MODES[mode]
        t_setup = time.perf_counter()
        engine = TrackEngine.from_model(model, lm_head, comm, CUDA, max_batch=batch, max_len=max_len,
                                        cuda_graphs=graphs, compile=compiled)
        prompts = [[1 + (i * 31 + b) % 1000 for i in range(64)] for b in range(batch)]
        engine.prefill(prompts, list(range(batch)), schedule)
        tokens = torch.ones(batch, dtype=torch.long, device=CUDA)
        positions = torch.full((batch,), 64, dtype=torch.long, device=CUDA)
        for _ in range(5):
            engine.decode(tokens, positions, schedule)
        torch.cuda.synchronize()
        result[f"{mode}_setup_s"] = time.perf_counter() - t_setup
        steps = 50
        t0 = time.perf_counter()
        for _ in range(steps):
            engine.decode(tokens, positions, schedule)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1e3 / steps
        result[f"{mode}_step_ms"] = ms
        result[f"{mode}_vs_bound"] = ms / result["bound_ms"]
        del engine
    del model, lm_head
    torch.cuda.empty_cache()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".", help="directory for gpu_check.json and gpu_check.md")
    p.add_argument("--skip_30b", action="store_true", help="only the small model")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile'd decode steps in CUDA graphs at batch 1 (minutes of compiling)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device visible to torch", file=sys.stderr)
        return 2
    started = time.perf_counter()
    report = {"gpu": torch.cuda.get_device_name(CUDA), "torch": torch.__version__,
              "cuda": torch.version.cuda, "nccl": ".".join(map(str, torch.cuda.nccl.version()))}
    print(json.dumps(report), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        report["parity_fp32"] = parity(Path(tmp))
    print("parity:", json.dumps(report["parity_fp32"]), flush=True)
    report["nccl_in_cuda_graph"] = nccl_in_graph()
    print("nccl:", json.dumps(report["nccl_in_cuda_graph"]), flush=True)
    bandwidth = read_bandwidth()
    report["read_bandwidth_TBps"] = bandwidth / 1e12
    print(f"read bandwidth {bandwidth / 1e12:.2f} TB/s", flush=True)
    small = PTConfig.from_preset("bench-tiny", vocab_size=32000, hidden_size=2048, num_attention_heads=32,
                                 num_key_value_heads=8, head_dim=64, intermediate_size=11264)
    modes = ["cuda_graph", "eager"]
    extra = ["compile_cuda_graph"] if args.compile else []
    report["decode"] = [decode_speed(small, "none", "one track of a small model (H=2048, 8 layers, 16 heads "
                                     "/ 4 KV heads per track)", bandwidth, b, 1024, modes + extra * (b == 1))
                        for b in (1, 8)]
    if not args.skip_30b:
        big = PTConfig.from_preset("pt-30b-d8")
        report["decode"] += [decode_speed(big, "none", "one track of pt-30b-d8 (none schedule: 1 GPU)", bandwidth, b,
                                          1024, modes + extra * (b == 1)) for b in (1, 8)]
    for r in report["decode"]:
        print(json.dumps(r), flush=True)
    report["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"GPU check: {report['gpu']}, torch {report['torch']}, CUDA {report['cuda']}, NCCL {report['nccl']}", "",
             f"- fp32 parity CUDA vs CPU: max |logit diff| {report['parity_fp32']['max_abs_logit_diff_cuda_vs_cpu']:.2e}, "
             f"greedy tokens equal: {report['parity_fp32']['greedy_tokens_equal_cuda_graph_vs_cpu']} "
             f"(CUDA graph vs eager: {report['parity_fp32']['greedy_tokens_equal_cuda_graph_vs_eager']})",
             f"- NCCL all-reduce captured in a CUDA graph (1 rank): {report['nccl_in_cuda_graph']['ok']}",
             f"- measured read bandwidth: {report['read_bandwidth_TBps']:.2f} TB/s", "",
             "| model | schedule | batch | weights read/step | bound | CUDA graph step (x bound) | "
             "compile + CUDA graph step (x bound) | eager step |", "|---|---|---|---|---|---|---|---|"]
    for r in report["decode"]:
        compiled = (f"{r['compile_cuda_graph_step_ms']:.3f} ms ({r['compile_cuda_graph_vs_bound']:.2f}x)"
                    if "compile_cuda_graph_step_ms" in r else "not run")
        lines.append(f"| {r['model']} | {r['schedule']} | {r['batch']} | {r['weights_read_per_step_GB']:.2f} GB | "
                     f"{r['bound_ms']:.3f} ms | {r['cuda_graph_step_ms']:.3f} ms ({r['cuda_graph_vs_bound']:.2f}x) | "
                     f"{compiled} | {r['eager_step_ms']:.3f} ms |")
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    ok = report["parity_fp32"]["ok"] and report["nccl_in_cuda_graph"]["ok"]
    print(f"{'PASS' if ok else 'FAIL'} in {report['seconds']:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
