#!/usr/bin/env python3
"""Predict 8-GPU TTFT/TPOT/throughput of PT (`block`) and TP (`sublayer`) from one GPU's per-track step times.

  python scripts/latency_model.py            # the paper's 30B tables (8xH100) from the committed H200 results

Prints the model next to the paper's TensorRT-LLM Tables 6 and 7, then what the paper did not measure. The model
and its rules are in pt_trtllm/latency_model.py; every input is a measurement (--steps) or a published figure
(--published), and the output says which.
"""

import argparse
from pathlib import Path

from pt_trtllm.config import PTConfig
from pt_trtllm.latency_model import (
    DEFAULT_MEASURED_CONTEXT, STEP_MODES, LatencyModel, kv_bytes_per_token, load_json)

ROOT = Path(__file__).resolve().parent.parent
PAPER_PRESETS = "pt-30b-d2,pt-30b-d4,pt-30b-d8"
T16_PRESET = "pt-58b-t16-d8"


def cell(pred: float, paper: float) -> str:
    return f"{pred:.2f} / {paper:.2f} ({100 * (pred - paper) / paper:+.0f}%)"


def table(title: str, rows: dict, predict) -> None:
    """rows: label -> the paper's [dense, D=2, D=4, D=8]; predict(label) -> the model's four values."""
    print(f"\n{title}\n")
    print("| row | dense = sublayer: model / paper (err) | D=2 | D=4 | D=8 | PT/dense model | PT/dense paper "
          "| dense - D=8, model / paper |")
    print("|---|---|---|---|---|---|---|---|")
    for label, paper in rows.items():
        pred = predict(label)
        cells = " | ".join(cell(p, q) for p, q in zip(pred, paper))
        ratios = " ".join(f"{p / pred[0]:.3f}" for p in pred[1:])
        paper_ratios = " ".join(f"{q / paper[0]:.3f}" for q in paper[1:])
        print(f"| {label} | {cells} | {ratios} | {paper_ratios} | {pred[0] - pred[3]:.2f} / {paper[0] - paper[3]:.2f} |")


def context_of(label: str) -> int:
    """The mean context of a TPOT row "in/out": the prompt plus half the output."""
    inp, out = (int(x) for x in label.split("/"))
    return inp + out // 2


def sources(model: LatencyModel, published: dict, steps_path: str, mode: str) -> None:
    m, cfg = model.measured, model.cfg
    path = Path(steps_path).resolve()
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    ctx = sorted({c for _, c in m.decode.values()})
    print(f"Inputs (M = measurement, P = published figure, F = first-principles estimate):\n"
          f"- M per-track decode step, mode {mode}: {shown} ({m.gpu}), preset {m.source_preset}, "
          f"batch {sorted(m.decode)}: " + ", ".join(f"b{b} {s:.3f} ms" for b, (s, _) in sorted(m.decode.items()))
          + f"; measured context {ctx} tokens"
          + (" (not in the JSON: scripts/gpu_check.py's 64-token prompts)" if ctx == [DEFAULT_MEASURED_CONTEXT] else ""))
    print(f"- P scaling rule, decode: step x {m.gpu} HBM / target HBM = x {model.src['hbm_TBps']}/"
          f"{model.dst['hbm_TBps']} ({model.src['source']}; {model.dst['source']})")
    print(f"- F decode context: + (context - measured context) x {kv_bytes_per_token(cfg)} KV bytes/token/track "
          f"/ target HBM")
    if m.prefill:
        print(f"- M prefill: {sorted(m.prefill)} tokens, scaled by the dense bf16 peak ratio")
    print(f"- F prefill where not measured ({'all lengths' if not m.prefill else 'other lengths'}): one track's "
          f"FLOPs / {model.dst['bf16_dense_TFLOPs']} TFLOP/s dense bf16 peak (100% of peak: a lower bound; no "
          f"prefill time was ever measured{'' if not m.prefill else ' at those lengths'})")
    for name, t in (("decode", model.decode_ar), ("prefill", model.prefill_ar)):
        srcs = sorted({r["source"] for r in published["allreduce"] if r["backend"] == t.backend
                       and r["gpus"] == t.gpus})
        print(f"- P {name} all-reduce: {t.backend}, {t.gpus} GPUs, {t.sizes[0]}-{t.sizes[-1]} B: "
              + "; ".join(srcs))
        if t.busbw_GBps:
            bw = [r["source"] for r in published["busbw_GBps"] if r["backend"] == t.backend and r["gpus"] == t.gpus]
            print(f"  above {t.sizes[-1]} B: + extra bytes x 2(N-1)/N / {t.busbw_GBps} GB/s busbw ({bw[0]})")
    print("- P paper: " + published["paper"]["source"])
    print("Assumptions: the paper's dense model is `sublayer` (TP, 2L all-reduces) on the PT preset's weights, with "
          "the same all-reduce backend as PT (the paper discloses neither its dense shape nor its backend); each GPU "
          "runs one track and both schedules read the same per-GPU bytes (the measured step includes the full LM "
          "head on every GPU; a vocab-parallel head would shorten both columns alike); H100 means SXM; the paper's "
          "units are ms; the 63488 rows ignore the preset's 8192-position limit. No parameter is fitted to the "
          "paper.")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default=str(ROOT / "docs/results/gpu_check-h200.json"),
                   help="per-track step times (scripts/gpu_check.py JSON)")
    p.add_argument("--published", default=str(ROOT / "docs/results/latency_inputs.json"),
                   help="published all-reduce latencies, GPU specs and the paper's tables")
    p.add_argument("--presets", default=PAPER_PRESETS, help="the PT presets of the D=2, 4, 8 columns")
    p.add_argument("--gpus", type=int, default=None, help="N (must equal the presets' T; default T)")
    p.add_argument("--target", default="H100")
    p.add_argument("--mode", default="compile_cuda_graph", choices=STEP_MODES)
    p.add_argument("--allreduce", default="nccl", help="decode all-reduce backend of the main tables")
    args = p.parse_args(argv)
    try:
        run(args)
    except (ValueError, KeyError) as e:
        raise SystemExit(f"latency_model.py: error: {e}") from None


def run(args) -> None:
    steps, published = load_json(args.steps, "--steps"), load_json(args.published, "--published")
    presets = args.presets.split(",")
    if len(presets) != 3:
        raise ValueError(f"--presets needs the three presets of the D=2, 4, 8 columns, got {len(presets)}")

    def models(allreduce: str) -> list[LatencyModel]:
        gpus = args.gpus or _t(presets[0])
        return [LatencyModel(name, gpus, steps, published, args.target, args.mode, allreduce) for name in presets]

    main_models = models(args.allreduce)
    sources(main_models[-1], published, args.steps, args.mode)
    paper, n = published["paper"], main_models[0].cfg.num_tracks

    def ttft(ms):
        return lambda label: [ms[-1].ttft_ms("sublayer", int(label))] + [m.ttft_ms("block", int(label)) for m in ms]

    def tpot(ms):
        return lambda label: ([ms[-1].tpot_ms("sublayer", context_of(label))]
                              + [m.tpot_ms("block", context_of(label)) for m in ms])

    where = f"{n}x{args.target}, all-reduce {args.allreduce} (decode) / {main_models[0].prefill_ar.backend} (prefill)"
    table(f"TTFT, batch 1, ms ({where}; prefill from FLOPs/peak unless measured) vs the paper's Table 6",
          paper["ttft_ms"], ttft(main_models))
    table(f"TPOT, batch 1, ms ({where}; context = input + output/2) vs the paper's Table 7",
          paper["tpot_ms"], tpot(main_models))

    print("\nNot measured by the paper (predictions only):")
    optional(lambda: table(
        f"TPOT, batch 1, ms, PT vs TP with a one-shot all-reduce ({n}x{args.target}; TTFT unchanged: the one-shot "
        "figures stop at 2 MB, prefill stays on NCCL) -- the paper's column beside it for scale",
        paper["tpot_ms"], tpot(models("oneshot"))))
    optional(lambda: throughput_rows(steps, published, presets, args))
    optional(lambda: two_nodes(steps, published, args))
    print("- NCCL with CUDA graphs: published only at 2 GPUs (NVIDIA/nccl #1259, ~6 us); no 8- or 16-GPU figure is "
          "cited, so no prediction is made for it.")
    print("- Throughput at the paper's max batch 256 (Table 5): not predicted; no step was measured at batch > 8.")


def optional(section) -> None:
    """A prediction beyond the paper's tables: printed, or one line saying which input it lacks."""
    try:
        section()
    except ValueError as e:
        print(f"- skipped: {e}")


def throughput_rows(steps, published, presets, args) -> None:
    print(f"\nThroughput, output tok/s at a fixed batch, context 1024, {args.target}, all-reduce {args.allreduce}:\n")
    print("| batch (step mode) | sublayer | D=2 | D=4 | D=8 |")
    print("|---|---|---|---|---|")
    for mode in ("compile_cuda_graph", "cuda_graph"):
        try:
            ms = [LatencyModel(name, _t(name), steps, published, args.target, mode, args.allreduce)
                  for name in presets]
        except ValueError:
            continue  # no step measured in this mode
        for batch in sorted(ms[0].measured.decode):
            vals = [ms[-1].throughput("sublayer", 1024, batch)] + [m.throughput("block", 1024, batch) for m in ms]
            print(f"| {batch} ({mode}) | " + " | ".join(f"{v:.0f}" for v in vals) + " |")


def _t(name: str) -> int:
    return PTConfig.from_preset(name).num_tracks


def two_nodes(steps, published, args) -> None:
    m = LatencyModel(T16_PRESET, 16, steps, published, args.target, args.mode, "nccl")
    t = m.decode_ar
    print(f"\n{T16_PRESET} on 16 {args.target} over two nodes (one track per GPU; per-track step of "
          f"{m.measured.source_preset}, same track shape), NCCL {t.sizes[0]}-{t.sizes[-1]} B from NVIDIA/nccl #1244 "
          f"(2 x 8 H20, IB NDR; larger messages add bytes / {t.busbw_GBps} GB/s, the NDR port spec):\n")
    print("| quantity | sublayer (TP16, 96 all-reduces) | block D=8 (6 merges) | PT/TP |")
    print("|---|---|---|---|")
    for label in ("1024/128", "4096/128", "16384/128"):
        a, b = m.tpot_ms("sublayer", context_of(label)), m.tpot_ms("block", context_of(label))
        print(f"| TPOT {label}, ms | {a:.2f} | {b:.2f} | {b / a:.3f} |")
    for tokens in (1024, 4096, 16384):
        a, b = m.ttft_ms("sublayer", tokens), m.ttft_ms("block", tokens)
        print(f"| TTFT {tokens} (FLOPs/peak), ms | {a:.2f} | {b:.2f} | {b / a:.3f} |")


if __name__ == "__main__":
    main()
