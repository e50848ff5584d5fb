"""Load on the server of scripts/serve.py (`mpiexec -n 2`, loopback): 1,000 requests from 16
concurrent clients over HTTP and gRPC, plain and streaming, all succeed with scripts/run.py's
greedy tokens; and scripts/bench_serving.py measures it over gRPC and HTTP (JSON, markdown table,
plot)."""

from __future__ import annotations

import json
import random
import threading

import pytest

from helpers import make_pt_model, run_clients
from pt_trtllm.convert.writer import convert
from pt_trtllm.serve_tools.client import infer, request_inputs, stream
from pt_trtllm.serve_tools.launcher import ServerProcess
from test_serve_api import run_py

KINDS = ("http", "grpc", "grpc-stream", "http-stream")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_load")
    make_pt_model("tiny", seed=1).save_pretrained(root / "hf")
    convert(root / "hf", root / "ckpt", progress=False)
    server = ServerProcess(root / "ckpt", 2, ["--max_batch_size", "16", "--max_seq_len", "64"],
                           log_path=root / "server.log")
    with server:
        yield server, root


def test_1000_requests_from_16_clients_all_match_run_py(served):
    server, root = served
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 512) for _ in range(rng.randint(1, 24))] for _ in range(48)]
    ref = run_py(root / "ckpt", "--input_ids", ";".join(",".join(map(str, p)) for p in prompts),
                 "--max_output_len", 16)["output_ids"]
    jobs = [(rng.randrange(len(prompts)), rng.randint(1, 16), KINDS[i % len(KINDS)]) for i in range(1000)]
    failures, done = [], [0]
    lock = threading.Lock()

    def client(share):
        for p, n, kind in share:
            protocol = kind.split("-")[0]
            url = server.http if protocol == "http" else server.grpc
            inputs = request_inputs(input_ids=prompts[p], max_tokens=n)
            try:
                got = (stream if kind.endswith("stream") else infer)(url, inputs, protocol, 120).output_ids
                error = None if got == ref[p][:n] else f"prompt {p}, {n} tokens, {kind}: {got} != {ref[p][:n]}"
            except Exception as e:  # noqa: BLE001 - every failure is counted
                error = f"prompt {p}, {n} tokens, {kind}: {e.__class__.__name__}: {e}"
            with lock:
                done[0] += 1
                if error:
                    failures.append(error)

    elapsed, still_running = run_clients(client, jobs)
    tokens = sum(n for _, n, _ in jobs)
    print(f"1000 requests ({tokens} tokens) from 16 clients in {elapsed:.1f} s: {1000 / elapsed:.1f} req/s, "
          f"{tokens / elapsed:.0f} tok/s, {len(failures)} failures")
    assert done[0] == 1000 and still_running == 0
    assert failures == [], failures[:5]
    assert server.ready()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bench_serving_reports_json_markdown_and_plot(served, tmp_path, protocol):
    """bench_serving.py with Poisson arrivals and a concurrency cap, over gRPC streaming and HTTP
    generate_stream (server-sent events): every request succeeds, every token of every request is
    counted (one accounting for both), the metrics are consistent, and the JSON, markdown and PNG
    are written."""
    from pt_trtllm.serve_tools.bench import main

    server, _ = served
    out = tmp_path / "bench"
    url = server.grpc if protocol == "grpc" else server.http
    rc = main(["--url", url, "--protocol", protocol, "--num_requests", "24", "--request_rate", "40",
               "--concurrency", "6", "--input_len", "12", "--output_len", "6", "--seed", "1", "--output_dir", str(out),
               "--label", "test"])
    assert rc == 0
    result = json.loads((out / "test.json").read_text())
    m = result["metrics"]
    assert m["completed"] == 24 and m["failed"] == 0 and m["output_tokens"] == 24 * 6
    assert m["input_tokens"] == 24 * 12
    for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        s = m[name]
        assert 0 < s["mean"] and s["p50"] <= s["p90"] <= s["p99"], (name, s)
    assert 0 < m["ttft_ms"]["p50"] < m["e2el_ms"]["p50"] and m["itl_ms"]["mean"] > 0
    assert m["request_throughput"] > 0 and m["output_throughput"] > 0
    assert result["config"]["request_rate"] == 40 and result["config"]["concurrency"] == 6
    assert result["config"]["protocol"] == protocol
    table = (out / "test.md").read_text()
    assert "TTFT" in table and "TPOT" in table and "ITL" in table
    assert (out / "test.png").read_bytes()[:4] == b"\x89PNG"
