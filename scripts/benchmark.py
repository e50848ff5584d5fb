#!/usr/bin/env python3
"""Benchmark PT (block schedule) against tensor parallelism (sublayer schedule, same weights and
kernels) and the no-merge upper bound (none), on T ranks, in one run.

  mpirun -n T python scripts/benchmark.py (--engine_dir CKPT | --preset bench-tiny)
      [--batch_sizes 1,4] [--input_lens 64,256] [--output_lens 32] [--schedules block,sublayer,none]
      [--repeats 7] [--warmup 2] [--threads 1] [--output_json F] [--output_md F]
  python scripts/benchmark.py --engine_dir CKPT_T1 --hf_model_dir HF_LLAMA   # decode vs HF generate()

For every grid point the schedules run interleaved (their order rotates each repeat); warm-up
repeats are dropped; TTFT, TPOT and output tokens/s are reported as median and p90 of the repeats,
with the run-to-run spread (p90 - p10) / median. Timings are rank 0's wall clock (the ranks run in
lock step). EOS is ignored so that every run generates exactly output_len tokens.
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time
from datetime import datetime, timezone

import numpy as np
import torch

from pt_trtllm.cli import write_atomic
from pt_trtllm.measure import machine_line, summary
from pt_trtllm.runtime.launch import setup, start_on_all_ranks
from pt_trtllm.runtime.sampling import SamplingParams


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--engine_dir", help="per-rank checkpoint")
    src.add_argument("--preset", help="make a random fp32 model of this preset on the fly (e.g. bench-tiny)")
    p.add_argument("--batch_sizes", type=ints, default=[1, 4])
    p.add_argument("--input_lens", type=ints, default=[64, 256])
    p.add_argument("--output_lens", type=ints, default=[32])
    p.add_argument("--schedules", default="block,sublayer,none")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank (CPU)")
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--compile", action="store_true", help="torch.compile the decode steps (merges stay eager)")
    p.add_argument("--hf_model_dir", help="T=1 only: also time transformers' generate() on this HF model")
    p.add_argument("--output_json")
    p.add_argument("--output_md")
    return p.parse_args(argv)


def make_preset_checkpoint(name: str, comm) -> str:
    """Rank 0 writes a random fp32 model of the preset as a per-rank checkpoint; all get its path."""
    path = None
    if comm.rank == 0:
        from pt_trtllm.convert.random_checkpoint import write_random_checkpoint

        path = str(write_random_checkpoint(os.path.join(tempfile.mkdtemp(prefix="pt-bench-"), "ckpt"), name))
    return comm.MPI.COMM_WORLD.bcast(path, root=0) if comm.world_size > 1 else path


def run_grid(engine, args, schedules) -> list[dict]:
    rng = random.Random(0)
    rows = []
    for batch in args.batch_sizes:
        for in_len in args.input_lens:
            for out_len in args.output_lens:
                prompts = [[rng.randrange(engine.cfg.vocab_size) for _ in range(in_len)] for _ in range(batch)]
                samples = {s: [] for s in schedules}
                for rep in range(args.warmup + args.repeats):
                    order = schedules[rep % len(schedules):] + schedules[: rep % len(schedules)]
                    for s in order:
                        gen = engine.generate(prompts, out_len, SamplingParams(), s, eos_ids=set())
                        if rep >= args.warmup:
                            samples[s].append(gen.timings)
                for s in schedules:
                    t = samples[s]
                    rows.append({"batch": batch, "input_len": in_len, "output_len": out_len, "schedule": s,
                                 "merges_per_forward": engine.expected_merges(s),
                                 "ttft_ms": summary([x["ttft_ms"] for x in t]),
                                 "tpot_ms": summary([x["tpot_ms"] for x in t]),
                                 "output_tokens_per_s": summary([x["output_tokens_per_s"] for x in t])})
                if engine.comm.rank == 0:
                    print(f"batch {batch} in {in_len} out {out_len}: " + ", ".join(
                        f"{r['schedule']} TTFT {r['ttft_ms']['median']:.2f} ms TPOT {r['tpot_ms']['median']:.2f} ms"
                        for r in rows[-len(schedules):]), flush=True)
    return rows


def hf_decode_comparison(engine, args) -> dict:
    """Decode ms/token of this runtime and of transformers' generate() on the same weights, same
    threads, same greedy tokens (prefill time subtracted on both sides)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(args.hf_model_dir, torch_dtype=torch.float32).eval()
    rng = random.Random(1)
    in_len, n = args.input_lens[0], args.output_lens[0]
    prompt = [rng.randrange(engine.cfg.vocab_size) for _ in range(in_len)]
    ids = torch.tensor([prompt])
    ours, theirs, tokens_equal = [], [], True
    for rep in range(args.warmup + args.repeats):
        gen = engine.generate([prompt], n, SamplingParams(), eos_ids=set())
        with torch.inference_mode():
            t0 = time.perf_counter()
            hf.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=0)
            t1 = time.perf_counter()
            out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
            t2 = time.perf_counter()
        tokens_equal &= out[0, in_len:].tolist() == gen.output_ids[0]
        if rep >= args.warmup:
            ours.append(gen.timings["tpot_ms"])
            theirs.append(((t2 - t1) - (t1 - t0)) * 1e3 / (n - 1))
    # a decode step reads every track matrix and the LM head once (of the embedding, one row)
    weights = sum(p.numel() * p.element_size() for p in engine.model.tracks.parameters() if p.ndim == 2)
    weights += engine.lm_head.numel() * engine.lm_head.element_size()
    return {"input_len": in_len, "output_len": n, "pt_trtllm_tpot_ms": summary(ours), "hf_generate_tpot_ms": summary(theirs),
            "speedup": float(np.median(theirs) / np.median(ours)), "same_greedy_tokens": tokens_equal,
            "weight_bytes_per_token": weights}


def markdown(header: dict, rows: list[dict], hf: dict | None) -> str:
    title = "decode vs transformers generate()" if hf else "PT (block) vs TP (sublayer) vs no merges (none)"
    lines = [f"# Benchmark: {title}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "Median of the repeats (p90 in brackets); spread = (p90 - p10) / median of TPOT. "
              "`none` never merges: a timing-only upper bound, NOT a model output.", "",
              "| batch | in | out | schedule | merges/fwd | TTFT ms | TPOT ms | TPOT spread | out tok/s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['input_len']} | {r['output_len']} | {r['schedule']} | "
                     f"{r['merges_per_forward']} | {r['ttft_ms']['median']:.2f} ({r['ttft_ms']['p90']:.2f}) | "
                     f"{r['tpot_ms']['median']:.3f} ({r['tpot_ms']['p90']:.3f}) | {100 * r['tpot_ms']['spread']:.1f}% | "
                     f"{r['output_tokens_per_s']['median']:.1f} |")
    goals = goal_rows(rows)
    if goals:
        lines += ["", "## Goals", "", "PT/TP <= 0.85 (goal); PT/none <= 1.03 (stretch).", "",
                  "| batch | in | out | TTFT PT/TP | TPOT PT/TP | TTFT PT/none | TPOT PT/none | goal met | stretch met |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for g in goals:
            lines.append(f"| {g['batch']} | {g['input_len']} | {g['output_len']} | {g['ttft_pt_over_tp']:.3f} | "
                         f"{g['tpot_pt_over_tp']:.3f} | {g.get('ttft_pt_over_none', float('nan')):.3f} | "
                         f"{g.get('tpot_pt_over_none', float('nan')):.3f} | {'yes' if g['goal_met'] else 'no'} | "
                         f"{'yes' if g.get('stretch_met') else 'no'} |")
    if hf:
        lines += ["", "## Decode vs transformers generate() (T=1, same weights, same threads)", "",
                  "| in | out | pt_trtllm TPOT ms | HF generate TPOT ms | speedup | same greedy tokens | "
                  "weights read per token |", "|---|---|---|---|---|---|---|",
                  f"| {hf['input_len']} | {hf['output_len']} | {hf['pt_trtllm_tpot_ms']['median']:.1f} | "
                  f"{hf['hf_generate_tpot_ms']['median']:.1f} | {hf['speedup']:.2f}x | {hf['same_greedy_tokens']} | "
                  f"{hf['weight_bytes_per_token'] / 1e6:.0f} MB |"]
    return "\n".join(lines) + "\n"


def goal_rows(rows: list[dict]) -> list[dict]:
    by = {(r["batch"], r["input_len"], r["output_len"], r["schedule"]): r for r in rows}
    out = []
    for (b, i, o, s), r in by.items():
        tp, none = by.get((b, i, o, "sublayer")), by.get((b, i, o, "none"))
        if s != "block" or tp is None:
            continue
        g = {"batch": b, "input_len": i, "output_len": o,
             "ttft_pt_over_tp": r["ttft_ms"]["median"] / tp["ttft_ms"]["median"],
             "tpot_pt_over_tp": r["tpot_ms"]["median"] / tp["tpot_ms"]["median"]}
        g["goal_met"] = g["ttft_pt_over_tp"] <= 0.85 and g["tpot_pt_over_tp"] <= 0.85
        if none is not None:
            g["ttft_pt_over_none"] = r["ttft_ms"]["median"] / none["ttft_ms"]["median"]
            g["tpot_pt_over_none"] = r["tpot_ms"]["median"] / none["tpot_ms"]["median"]
            g["stretch_met"] = g["ttft_pt_over_none"] <= 1.03 and g["tpot_pt_over_none"] <= 1.03
        out.append(g)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    device, comm = setup(args.device, args.threads)
    schedules = args.schedules.split(",")

    def start():
        from pt_trtllm.runtime.engine import TrackEngine

        ckpt = args.engine_dir or make_preset_checkpoint(args.preset, comm)
        engine = TrackEngine(ckpt, comm, device, max_batch=max(args.batch_sizes),
                             max_len=max(args.input_lens) + max(args.output_lens), compile=args.compile)
        if args.hf_model_dir and comm.world_size != 1:
            raise ValueError("--hf_model_dir compares at T=1: run without mpirun on a 1-track checkpoint")
        if engine.cfg.merge_schedule == "sublayer" and "block" in schedules and comm.rank == 0:
            print("note: this checkpoint was made for the sublayer schedule; block is the approximate "
                  "'PT-ified' model (timings are still comparable)")
        return engine

    engine = start_on_all_ranks(comm, start)
    rows = run_grid(engine, args, schedules)
    hf = hf_decode_comparison(engine, args) if args.hf_model_dir else None
    if comm.rank != 0:
        return 0
    cfg = engine.cfg
    header = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_line(),
              "device": str(device), "world size (ranks = tracks)": comm.world_size,
              "threads per rank": torch.get_num_threads() if device.type == "cpu" else "n/a",
              "dtype": str(engine.dtype).removeprefix("torch."), "communicator": comm.name,
              "decode steps": "torch.compile'd (merges eager between graphs)" if args.compile else "eager",
              "model": args.preset or args.engine_dir,
              "shape": f"V={cfg.vocab_size} H={cfg.hidden_size} T={cfg.num_tracks} L={cfg.num_hidden_layers} "
                       f"D={cfg.block_depth} heads={cfg.num_attention_heads} kv={cfg.num_key_value_heads} "
                       f"d={cfg.head_dim} f/track={cfg.ffn_per_track}",
              "merges per forward": {s: engine.expected_merges(s) for s in schedules},
              "repeats": f"{args.repeats} (+{args.warmup} warm-up dropped), schedules interleaved",
              "torch": torch.__version__,
              "command": (f"mpiexec -n {comm.world_size} " if comm.world_size > 1 else "")
              + " ".join(["python", "scripts/" + os.path.basename(sys.argv[0])] + sys.argv[1:])}
    md = markdown(header, rows, hf)
    print(md)
    record = {"header": header, "rows": rows, "goals": goal_rows(rows), "hf_comparison": hf}
    if args.output_json:
        write_atomic(args.output_json, json.dumps(record, indent=2).encode())
    if args.output_md:
        write_atomic(args.output_md, md.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
