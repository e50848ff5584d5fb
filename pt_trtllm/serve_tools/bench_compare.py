"""Block vs sublayer under the same serving load: start scripts/serve.py with each schedule on the
same checkpoint (`mpiexec -n T`, loopback, free ports), run the serving benchmark (bench.py) against
it, stop it, read the server's statistics (its --stats_json), and put the results side by side
(markdown, JSON, PNG)."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..formats import read_rank_config
from ..measure import machine
from .bench import ROWS, parse_args as bench_args, run_benchmark
from .launcher import ServerProcess

SERVER_STATS = ("communicator", "device", "sequences", "steps", "decoded_tokens", "prefilled_tokens", "max_running",
                "ms_per_step", "forward_share", "measured_merges_per_forward", "other_collectives_per_step")
"""The fields of the server's statistics (serve/stats.py) each run records."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serving benchmark of the block and sublayer schedules, side by side")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--engine_dir", help="per-rank checkpoint")
    src.add_argument("--preset", help="make a random fp32 model of this preset (e.g. bench-tiny), seed 0")
    p.add_argument("--ranks", type=int, help="mpiexec -n (default: the checkpoint's num_tracks)")
    p.add_argument("--schedules", default="block,sublayer")
    p.add_argument("--rounds", type=int, default=1, help="repeat the pair, alternating the order; medians reported")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank (CPU)")
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--max_batch_size", type=int, default=16)
    p.add_argument("--max_seq_len", type=int)
    p.add_argument("--num_requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--request_rate", type=float, default=math.inf)
    p.add_argument("--input_len", type=int, default=128)
    p.add_argument("--output_len", type=int, default=64)
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default="docs/serving")
    p.add_argument("--label", default="serving-schedules")
    return p.parse_args(argv)


def read_server_stats(stats_path: Path, log: Path) -> dict:
    """The statistics a server wrote at exit (--stats_json); RuntimeError if it wrote none."""
    if not stats_path.is_file():
        raise RuntimeError(f"the server wrote no statistics to {stats_path} (its log: {log})")
    return json.loads(stats_path.read_text())


def run(args) -> dict:
    schedules = args.schedules.split(",")
    before = machine()  # the load average before this benchmark adds its own
    work = Path(tempfile.mkdtemp(prefix="pt-serve-bench-"))
    if args.engine_dir:
        ckpt = Path(args.engine_dir)
    else:
        from ..convert.random_checkpoint import write_random_checkpoint

        ckpt = write_random_checkpoint(work / "ckpt", args.preset, seed=0)
    ranks = args.ranks or read_rank_config(ckpt)[0].num_tracks
    server_args = ["--threads", str(args.threads), "--max_batch_size", str(args.max_batch_size)]
    if args.device:
        server_args += ["--device", args.device]
    if args.max_seq_len:
        server_args += ["--max_seq_len", str(args.max_seq_len)]
    runs = {s: [] for s in schedules}
    for r in range(args.rounds):
        order = schedules if r % 2 == 0 else schedules[::-1]
        for schedule in order:
            log, stats_path = work / f"server-{schedule}-{r}.log", work / f"server-{schedule}-{r}.json"
            server = ServerProcess(ckpt, ranks, server_args + ["--schedule", schedule, "--stats_json", str(stats_path)],
                                   log_path=log)
            with server:
                b = bench_args(["--url", server.grpc if args.protocol == "grpc" else server.http,
                                "--protocol", args.protocol, "--num_requests", str(args.num_requests),
                                "--concurrency", str(args.concurrency), "--request_rate", str(args.request_rate),
                                "--input_len", str(args.input_len), "--output_len", str(args.output_len),
                                "--warmup", str(args.warmup), "--seed", str(args.seed)])
                result = run_benchmark(b)
            stats = read_server_stats(stats_path, log)
            result["server"] = {"schedule": schedule, "ranks": ranks, "merges_per_forward": stats["merges_per_forward"],
                                "args": server_args + ["--schedule", schedule], **{k: stats[k] for k in SERVER_STATS}}
            result.pop("requests")
            runs[schedule].append(result)
            m = result["metrics"]
            print(f"[round {r}] {schedule}: TTFT p50 {m['ttft_ms']['p50']:.1f} ms, TPOT p50 {m['tpot_ms']['p50']:.2f} "
                  f"ms, {m['output_throughput']:.0f} output tok/s, {m['failed']} failed", flush=True)
    return {"schedules": schedules, "checkpoint": str(ckpt if args.engine_dir else f"--preset {args.preset}"),
            "ranks": ranks, "threads_per_rank": args.threads, "machine": before, "runs": runs,
            "median": {s: _median(runs[s]) for s in schedules}}


def _median(results: list[dict]) -> dict:
    ms = [r["metrics"] for r in results]
    out = {}
    for key in ("request_throughput", "output_throughput", "total_token_throughput", "completed", "failed"):
        out[key] = float(np.median([m[key] for m in ms]))
    for _, key in ROWS:
        out[key] = {q: float(np.median([m[key][q] for m in ms])) for q in ("mean", "p50", "p90", "p99")}
    server = results[0]["server"]
    out["merges_per_forward"] = server.get("merges_per_forward")
    decoded = [r["server"].get("decoded_tokens", 0) / max(1, r["server"].get("steps", 1)) for r in results]
    out["mean_decode_batch"] = float(np.median(decoded))
    out["measured_merges_per_forward"] = server.get("measured_merges_per_forward")
    out["ms_per_step"] = float(np.median([r["server"].get("ms_per_step", 0.0) for r in results]))
    return out


def markdown(summary: dict, command: str) -> str:
    s = summary["schedules"]
    med = summary["median"]
    ratio = len(s) == 2
    head = "| metric | " + " | ".join(s) + (f" | {s[1]} / {s[0]} |" if ratio else " |")
    lines = [head, "|---|" + "---:|" * (len(s) + ratio)]

    def row(name, values, fmt):
        cells = [fmt.format(v) for v in values]
        if ratio:
            cells.append(f"{values[1] / values[0]:.2f}x" if values[0] else "n/a")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    for name, key in ROWS:
        for q in ("mean", "p50", "p90", "p99"):
            row(f"{name} {q} (ms)", [med[x][key][q] for x in s], "{:.2f}")
    row("requests/s", [med[x]["request_throughput"] for x in s], "{:.2f}")
    row("output tokens/s", [med[x]["output_throughput"] for x in s], "{:.1f}")
    row("total tokens/s", [med[x]["total_token_throughput"] for x in s], "{:.1f}")
    lines.append("| failed requests | " + " | ".join(f"{med[x]['failed']:.0f}" for x in s) + (" | |" if ratio else " |"))
    lines.append("| merges per forward pass | " + " | ".join(str(med[x]["merges_per_forward"]) for x in s)
                 + (" | |" if ratio else " |"))
    lines.append("| merges per forward pass, counted by the server | "
                 + " | ".join(f"{med[x]['measured_merges_per_forward']:g}" if med[x]["measured_merges_per_forward"]
                              is not None else "n/a" for x in s) + (" | |" if ratio else " |"))
    row("server step time (ms)", [med[x]["ms_per_step"] for x in s], "{:.2f}")
    lines.append("| mean decode batch (server) | " + " | ".join(f"{med[x]['mean_decode_batch']:.1f}" for x in s)
                 + (" | |" if ratio else " |"))
    cfg = summary["runs"][s[0]][0]["config"]
    mach = summary["machine"]
    server = summary["runs"][s[0]][0]["server"]
    return "\n".join([
        f"Serving benchmark, {summary['checkpoint']}, {summary['ranks']} ranks: {cfg['num_requests']} requests, "
        f"concurrency {cfg['concurrency']}, request rate {cfg['request_rate']}, input {cfg['input_len']} / output "
        f"{cfg['output_len']} tokens, {cfg['protocol']} streaming; medians of {len(summary['runs'][s[0]])} round(s).",
        "", *lines, "",
        f"Machine: {mach['cpu']}, {mach['cores']} cores; {summary['ranks']} ranks of 1 process each, "
        f"{summary['threads_per_rank']} torch thread(s) per rank, communicator {server.get('communicator', '?')}, "
        f"device {server.get('device', '?')}; the Triton server (PyTriton), its stubs and the load generator share "
        f"the same cores. Load average (1/5/15 min) before the benchmark: "
        f"{' / '.join(f'{x:.2f}' for x in mach['loadavg_at_start'])}.",
        "", f"Command: `{command}`", ""])


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, med = summary["schedules"], summary["median"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, (name, key) in zip(axes, ROWS[:3]):
        qs = ("p50", "p90", "p99")
        x = np.arange(len(qs))
        for i, sched in enumerate(s):
            ax.bar(x + i * 0.8 / len(s), [med[sched][key][q] for q in qs], 0.8 / len(s), label=sched)
        ax.set_xticks(x + 0.4 - 0.4 / len(s), qs)
        ax.set_title(f"{name} (ms)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    axes[3].bar(s, [med[x]["output_throughput"] for x in s], color=[f"C{i}" for i in range(len(s))])
    axes[3].set_title("output tokens/s")
    axes[3].grid(axis="y", alpha=0.3)
    fig.suptitle(f"PT serving: {' vs '.join(s)} ({summary['checkpoint']}, {summary['ranks']} ranks)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python scripts/bench_serving_schedules.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    summary = run(args)
    summary["command"] = command
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.label}.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown(summary, command)
    (out / f"{args.label}.md").write_text(table)
    plot(summary, out / f"{args.label}.png")
    print(table)
    print(f"written: {out / args.label}.json, .md, .png")
    return 0 if all(summary["median"][s]["failed"] == 0 for s in summary["schedules"]) else 1
