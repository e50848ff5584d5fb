"""A serving load generator in the style of `vllm bench serve`, for the `pt_stream` model.

Requests arrive all at once (`--request_rate inf`, the default) or as a Poisson process (gamma with
`--burstiness`, 1 = Poisson) and are sent with at most `--concurrency` in flight. Prompts are
random token ids of `--input_len` (+- `--range_ratio`) or come from `--dataset`; every request asks
for `--output_len` tokens and, unless `--use_eos`, ignores EOS (end_id -1) so it gets them all.
Streaming (gRPC bidirectional streams, or HTTP `generate_stream` server-sent events) times each
response: TTFT (first response), ITL (between responses), TPOT ((E2E - TTFT) / (tokens - 1)), E2E.
Reported: mean, median, p90, p99 of each; request, output-token and total-token throughput;
failures. Written as JSON, a markdown table and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..measure import machine, summary
from ..serve.triton_protocol import STREAM_MODEL
from .client import generate_body, http_error, parse_sse, request_inputs, triton_inputs


@dataclass
class RequestSpec:
    prompt_ids: list[int] | None
    prompt_text: str | None
    prompt_len: int
    output_len: int


@dataclass
class RequestResult:
    ok: bool
    prompt_len: int
    output_tokens: int = 0
    start: float = 0.0
    ttft: float = 0.0
    e2el: float = 0.0
    itl: list[float] = field(default_factory=list)
    error: str | None = None
    last: float = 0.0

    def arrived(self, now: float, n: int) -> None:
        """n tokens arrived at `now`: the first ones set TTFT, later ones add an inter-token latency."""
        if self.output_tokens == 0:
            self.ttft = now - self.start
        else:
            self.itl.append(now - self.last)
        self.last = now
        self.output_tokens += n

    def finish(self) -> "RequestResult":
        self.e2el = self.last - self.start
        self.ok = self.output_tokens > 0
        if not self.ok:
            self.error = "no tokens received"
        return self


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serving benchmark of a PT model behind Triton (model pt_stream)")
    p.add_argument("--url", default="127.0.0.1:8001", help="host:port of --protocol (default gRPC 127.0.0.1:8001)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc",
                   help="gRPC streaming, or HTTP generate_stream (server-sent events)")
    p.add_argument("--num_requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, help="most requests in flight (default: no limit)")
    p.add_argument("--request_rate", type=float, default=math.inf, help="requests/s (default inf: all at once)")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the arrivals (1 = Poisson)")
    p.add_argument("--input_len", type=int, default=128)
    p.add_argument("--output_len", type=int, default=64)
    p.add_argument("--range_ratio", type=float, default=0.0,
                   help="random lengths uniform in [len*(1-r), len*(1+r)] (default 0: fixed)")
    p.add_argument("--vocab_size", type=int, default=500, help="random prompt ids are drawn from [3, vocab_size)")
    p.add_argument("--dataset", help="JSONL of {\"prompt\": text[, \"output_len\": n]} or a ShareGPT JSON "
                                     "(text prompts: the server needs --tokenizer_dir)")
    p.add_argument("--use_eos", action="store_true", help="let requests stop at EOS (default: exactly output_len)")
    p.add_argument("--warmup", type=int, default=2, help="requests sent first and not measured")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--output_dir", default=".", help="where <label>.json, .md and .png go")
    p.add_argument("--label", default="bench_serving", help="file name stem and title")
    p.add_argument("--no_plot", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


# ---- prompts ----------------------------------------------------------------------------------------------
def make_requests(args, rng: random.Random) -> list[RequestSpec]:
    n = args.num_requests + args.warmup
    if args.dataset:
        return _dataset_requests(args, rng, n)

    def length(base):
        lo, hi = max(1, int(base * (1 - args.range_ratio))), max(1, int(base * (1 + args.range_ratio)))
        return rng.randint(lo, hi)

    out = []
    for _ in range(n):
        prompt_len, output_len = length(args.input_len), length(args.output_len)
        ids = [rng.randrange(3, args.vocab_size) for _ in range(prompt_len)]
        out.append(RequestSpec(ids, None, prompt_len, output_len))
    return out


def _dataset_requests(args, rng: random.Random, n: int) -> list[RequestSpec]:
    path = Path(args.dataset)
    text = path.read_text()
    items = []
    if path.suffix == ".jsonl":
        for line in text.splitlines():
            if line.strip():
                row = json.loads(line)
                items.append((row["prompt"], row.get("output_len", args.output_len)))
    else:  # ShareGPT: [{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}, ...]
        for row in json.loads(text):
            turns = row.get("conversations") or row.get("conversation") or []
            if len(turns) >= 2:
                items.append((turns[0]["value"], args.output_len))
    if not items:
        raise ValueError(f"--dataset {path}: no prompts found")
    rng.shuffle(items)
    return [RequestSpec(None, items[i % len(items)][0], len(items[i % len(items)][0].split()),
                        int(items[i % len(items)][1])) for i in range(n)]


def _inputs(spec: RequestSpec, use_eos: bool) -> dict[str, np.ndarray]:
    return request_inputs(spec.prompt_text, spec.prompt_ids, spec.output_len, end_id=None if use_eos else -1)


# ---- one streamed request -----------------------------------------------------------------------------------
async def _grpc_request(client, spec: RequestSpec, args) -> RequestResult:
    import tritonclient.grpc.aio as grpcclient

    tensors = triton_inputs(grpcclient, _inputs(spec, args.use_eos))

    async def requests():
        yield {"model_name": STREAM_MODEL, "inputs": tensors}

    result = RequestResult(False, spec.prompt_len, start=time.perf_counter())
    result.last = result.start
    async for response, error in client.stream_infer(requests(), stream_timeout=args.timeout):
        now = time.perf_counter()
        if error is not None:
            result.error = str(error)
            return result
        ids = response.as_numpy("output_ids")
        if ids is not None and ids.size:
            result.arrived(now, ids.size)
    return result.finish()


async def _http_request(session, spec: RequestSpec, args) -> RequestResult:
    body = generate_body(_inputs(spec, args.use_eos))
    result = RequestResult(False, spec.prompt_len, start=time.perf_counter())
    result.last = result.start
    async with session.post(f"http://{args.url}/v2/models/{STREAM_MODEL}/generate_stream", json=body) as response:
        if response.status != 200:
            result.error = http_error(response.status, await response.text())
            return result
        async for raw in response.content:
            now = time.perf_counter()
            try:
                event = parse_sse(raw)
            except RuntimeError as e:  # the server's error event
                result.error = str(e)
                return result
            if event is not None and event["output_ids"]:
                result.arrived(now, len(event["output_ids"]))
    return result.finish()


async def _run(args, specs: list[RequestSpec], rng: random.Random) -> tuple[list[RequestResult], float]:
    if args.protocol == "grpc":
        import tritonclient.grpc.aio as grpcclient

        client = grpcclient.InferenceServerClient(args.url)
        send = _grpc_request
    else:
        import aiohttp

        client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout))
        send = _http_request
    limit = asyncio.Semaphore(args.concurrency or len(specs) or 1)

    async def one(spec):
        async with limit:
            try:
                return await asyncio.wait_for(send(client, spec, args), args.timeout)
            except Exception as e:  # noqa: BLE001 - a failed request is a result
                return RequestResult(False, spec.prompt_len, start=time.perf_counter(),
                                     error=f"{e.__class__.__name__}: {e}")

    try:
        for spec in specs[: args.warmup]:
            await one(spec)
        measured = specs[args.warmup:]
        tasks = []
        start = time.perf_counter()
        for i, spec in enumerate(measured):
            tasks.append(asyncio.create_task(one(spec)))
            if math.isfinite(args.request_rate) and i + 1 < len(measured):
                theta = 1.0 / (args.request_rate * args.burstiness)
                await asyncio.sleep(rng.gammavariate(args.burstiness, theta))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    finally:
        await client.close()
    return list(results), duration


# ---- metrics --------------------------------------------------------------------------------------------------
def _ms(values_s: list[float]) -> dict:
    """measure.summary of seconds, in milliseconds."""
    return summary([1e3 * v for v in values_s])


def summarize(results: list[RequestResult], duration: float) -> dict:
    ok = [r for r in results if r.ok]
    output_tokens = sum(r.output_tokens for r in ok)
    input_tokens = sum(r.prompt_len for r in ok)
    tpot = [(r.e2el - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    errors = [r.error for r in results if not r.ok]
    return {
        "completed": len(ok), "failed": len(errors), "errors": errors[:5], "duration_s": duration,
        "input_tokens": input_tokens, "output_tokens": output_tokens,
        "request_throughput": len(ok) / duration if duration else 0.0,
        "output_throughput": output_tokens / duration if duration else 0.0,
        "total_token_throughput": (input_tokens + output_tokens) / duration if duration else 0.0,
        "ttft_ms": _ms([r.ttft for r in ok]), "tpot_ms": _ms(tpot),
        "itl_ms": _ms([x for r in ok for x in r.itl]), "e2el_ms": _ms([r.e2el for r in ok]),
    }


ROWS = [("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E latency", "e2el_ms")]


def markdown(metrics: dict, title: str) -> str:
    m = metrics
    lines = [f"### {title}", "", "| metric | mean | p50 | p90 | p99 |", "|---|---:|---:|---:|---:|"]
    for name, key in ROWS:
        s = m[key]
        lines.append(f"| {name} (ms) | {s['mean']:.2f} | {s['p50']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} |")
    lines += ["", "| throughput | value |", "|---|---:|",
              f"| requests/s | {m['request_throughput']:.2f} |",
              f"| output tokens/s | {m['output_throughput']:.1f} |",
              f"| total tokens/s | {m['total_token_throughput']:.1f} |",
              f"| completed / failed | {m['completed']} / {m['failed']} |",
              f"| duration (s) | {m['duration_s']:.2f} |", ""]
    return "\n".join(lines)


def plot(results: list[RequestResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.ok]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    series = [("TTFT (ms)", [1e3 * r.ttft for r in ok]),
              ("TPOT (ms)", [1e3 * (r.e2el - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]),
              ("ITL (ms)", [1e3 * x for r in ok for x in r.itl])]
    for ax, (name, values) in zip(axes, series):
        if values:
            v = np.sort(np.asarray(values))
            ax.plot(v, np.arange(1, len(v) + 1) / len(v))
            for q in (50, 90, 99):
                ax.axvline(np.percentile(v, q), linestyle=":", color="gray")
        ax.set_xlabel(name)
        ax.set_ylabel("fraction of requests" if name != "ITL (ms)" else "fraction of token gaps")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: CDFs (dotted: p50, p90, p99)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_benchmark(args) -> dict:
    """Run the benchmark; the JSON-able result (config, metrics, per-request timings)."""
    rng = random.Random(args.seed)
    specs = make_requests(args, rng)
    info = machine()
    results, duration = asyncio.run(_run(args, specs, rng))
    config = {k: v for k, v in vars(args).items() if k not in ("output_dir", "quiet", "no_plot")}
    if math.isinf(config["request_rate"]):
        config["request_rate"] = "inf"
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": config, "machine": info,
            "metrics": summarize(results, duration), "requests": [asdict(r) for r in results]}


def write_outputs(result: dict, output_dir: str | Path, label: str, plot_png: bool = True) -> dict[str, Path]:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{label}.json", "md": out / f"{label}.md"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["md"].write_text(markdown(result["metrics"], label))
    if plot_png:
        paths["png"] = out / f"{label}.png"
        plot([RequestResult(**r) for r in result["requests"]], paths["png"], label)
    return paths


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.num_requests < 1 or (args.concurrency is not None and args.concurrency < 1):
        print("error: --num_requests and --concurrency must be >= 1", file=sys.stderr)
        return 2
    try:
        result = run_benchmark(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = write_outputs(result, args.output_dir, args.label, not args.no_plot)
    m = result["metrics"]
    if not args.quiet:
        print(markdown(m, args.label))
        print("written: " + ", ".join(str(p) for p in paths.values()))
    if m["failed"]:
        print(f"{m['failed']} requests failed, e.g.: {m['errors'][0]}", file=sys.stderr)
    return 0 if m["completed"] and not m["failed"] else 1
