#!/usr/bin/env python3
"""Decode cost of sparse (mixture-of-experts) layers against dense ones: one track of a PT-MoE preset
and of its dense twin (the same model with every layer dense), side by side in one run.

  python scripts/bench_moe.py [--preset tiny-moe] [--batch_sizes 1,8] [--context 128] [--steps 30]
      [--repeats 5] [--threads 1] [--output_md F]

Each model is one track as a rank holds it (random weights, fp32, CPU), run by TrackEngine with a
one-rank communicator, so its merges are no-ops: this times the track's own work. For every batch
size the two models alternate for `--repeats` rounds; a round times `--steps` decode steps after a
prefill of `--context` tokens. Reported: median ms per decode step, and the extra cost of one sparse
layer, (sparse - dense) / the number of sparse layers.
"""

import argparse
import statistics
import sys
import time

import torch

from pt_trtllm import PTConfig
from pt_trtllm.cli import write_atomic
from pt_trtllm.measure import machine_line
from pt_trtllm.modeling import PTModel
from pt_trtllm.runtime.comm import Communicator
from pt_trtllm.runtime.engine import TrackEngine


def one_track(cfg: PTConfig) -> TrackEngine:
    torch.manual_seed(0)
    model = PTModel(cfg, num_local_tracks=1)
    with torch.no_grad():
        for p in model.parameters():  # std ~ 1/sqrt(fan_in); norms 1
            p.normal_(0.0, p.shape[-1] ** -0.5) if p.dim() > 1 else p.fill_(1.0)
    model.fuse()
    model.eval().requires_grad_(False)
    lm_head = torch.randn(cfg.vocab_size, cfg.hidden_size) * cfg.hidden_size**-0.5
    comm = Communicator(0, 1)
    comm.world_size = cfg.num_tracks  # one rank's share: merges are no-ops on a one-rank communicator
    return TrackEngine.from_model(model, lm_head, comm, torch.device("cpu"), max_batch=64,
                                  max_len=cfg.max_position_embeddings)


def decode_ms(engine: TrackEngine, batch: int, context: int, steps: int) -> float:
    prompts = [[1 + (i * 31 + b) % 500 for i in range(context)] for b in range(batch)]
    engine.prefill(prompts, list(range(batch)), "block")
    tokens = torch.ones(batch, dtype=torch.long)
    start = time.perf_counter()
    for step in range(steps):
        engine.decode(tokens, torch.full((batch,), context + step), "block")
    return 1e3 * (time.perf_counter() - start) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny-moe")
    p.add_argument("--batch_sizes", default="1,8")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output_md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        sparse_cfg = PTConfig.from_preset(args.preset)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_sparse = sum(sparse_cfg.is_sparse(layer) for layer in range(sparse_cfg.num_hidden_layers))
    if not n_sparse:
        print(f"error: preset {args.preset} has no sparse layers", file=sys.stderr)
        return 2
    dense_cfg = PTConfig.from_preset(args.preset, feed_forward_layer_pattern=["dense"])
    engines = {"sparse": one_track(sparse_cfg), "dense": one_track(dense_cfg)}
    c = sparse_cfg
    lines = [f"# Decode: sparse vs dense layers, one track of `{args.preset}`", "",
             f"{machine_line()}; {args.threads} torch thread(s); fp32; torch {torch.__version__}; context "
             f"{args.context} tokens, {args.steps} decode steps per round, median of {args.repeats} rounds "
             f"(models alternating). {n_sparse} of {c.num_hidden_layers} layers sparse ({c.num_experts} experts, "
             f"top-{c.num_experts_per_token}, width {c.moe_intermediate_size}); the dense twin has "
             f"SwiGLU width {c.ffn_per_track} in every layer.", "",
             "| batch | dense twin ms/step | PT-MoE ms/step | extra ms per sparse layer |", "|---|---|---|---|"]
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        times = {name: [] for name in engines}
        for _ in range(args.repeats):
            for name, engine in engines.items():
                times[name].append(decode_ms(engine, batch, args.context, args.steps))
        dense, sparse = statistics.median(times["dense"]), statistics.median(times["sparse"])
        lines.append(f"| {batch} | {dense:.2f} | {sparse:.2f} | {(sparse - dense) / n_sparse:+.3f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output_md:
        write_atomic(args.output_md, text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
