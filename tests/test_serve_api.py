"""The Triton server of scripts/serve.py under `mpiexec -n 2` (a subprocess on free loopback ports),
queried over HTTP and gRPC, plain (`pt`) and streaming (`pt_stream`): the same greedy tokens and
text as scripts/run.py on every path, batched rows, seeded sampling (equal to run.py's and to the
documented sampling computed apart), EOS, in-flight batching, the statistics (`pt_stats`), and
malformed requests refused by name while the server keeps serving."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, make_pt_model
from pt_trtllm.convert.writer import convert
from pt_trtllm.serve_tools.client import infer, request_inputs, server_stats, stream, triton_inputs
from pt_trtllm.serve_tools.launcher import ServerProcess, mpiexec
from test_serve_units import reference_sampling

PROMPTS = ["The capital of France is", "Once upon a time, in a land far away,"]


def run_py(ckpt, *args, ranks=2) -> dict:
    """scripts/run.py under mpiexec; its --output_json."""
    out = Path(ckpt).parent / f"run-{time.monotonic_ns()}.json"
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, str(REPO / "scripts" / "run.py"), "--engine_dir", str(ckpt),
           "--device", "cpu", "--output_json", str(out), *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def served(tmp_path_factory, smollm2_dir):
    """A random 2-track tiny model with SmolLM2's vocabulary, served with SmolLM2's tokenizer."""
    root = tmp_path_factory.mktemp("serve_api")
    make_pt_model("tiny", seed=11, vocab_size=49152).save_pretrained(root / "hf")
    convert(root / "hf", root / "ckpt", progress=False)
    server = ServerProcess(root / "ckpt", 2, ["--tokenizer_dir", str(smollm2_dir), "--max_batch_size", "4",
                                              "--max_seq_len", "128", "--max_output_len", "120"],
                           log_path=root / "server.log")
    with server:
        yield server, root / "ckpt", smollm2_dir


@pytest.fixture(scope="module")
def reference(served):
    server, ckpt, tok = served
    return run_py(ckpt, "--input_text", *PROMPTS, "--tokenizer_dir", tok, "--max_output_len", 12)


def test_health_and_model_configs(served):
    """Live and ready; `pt` takes the TensorRT-LLM ensemble's inputs with batching up to the slot
    count; `pt_stream` is decoupled; both listen on 127.0.0.1 only."""
    server, _, _ = served
    assert server.live() and server.ready()

    def get(path):
        with urllib.request.urlopen(f"http://{server.http}{path}", timeout=10) as r:
            return json.loads(r.read())

    pt, stream_cfg, stats_cfg = (get(f"/v2/models/{m}/config") for m in ("pt", "pt_stream", "pt_stats"))
    inputs = {i["name"]: (i["data_type"], i["dims"], i.get("optional", False)) for i in pt["input"]}
    assert inputs == {"text_input": ("TYPE_STRING", [1], True), "input_ids": ("TYPE_INT32", [-1], True),
                      "input_lengths": ("TYPE_INT32", [1], True), "max_tokens": ("TYPE_INT32", [1], False),
                      "temperature": ("TYPE_FP32", [1], True), "top_k": ("TYPE_INT32", [1], True),
                      "top_p": ("TYPE_FP32", [1], True), "seed": ("TYPE_UINT64", [1], True),
                      "end_id": ("TYPE_INT32", [1], True)}
    assert {o["name"] for o in pt["output"]} == {"text_output", "output_ids", "sequence_length"}
    assert pt["max_batch_size"] == 4 and not pt.get("model_transaction_policy", {}).get("decoupled")
    assert stream_cfg["model_transaction_policy"]["decoupled"] is True and stream_cfg["max_batch_size"] == 1
    assert stats_cfg["input"] == [] and [o["name"] for o in stats_cfg["output"]] == ["stats"]
    loopback = ("0100007F:", "0000000000000000FFFF00000100007F:")  # 127.0.0.1 in /proc/net/tcp and tcp6
    rows = [line.split() for f in ("tcp", "tcp6") for line in Path(f"/proc/net/{f}").read_text().splitlines()[1:]]
    for port in (server.http_port, server.grpc_port, server.metrics_port):
        listen = [r[1] for r in rows if r[1].endswith(f":{port:04X}") and r[3] == "0A"]
        assert listen and all(a.startswith(loopback) for a in listen), (port, listen)


@pytest.mark.parametrize("path", ["http", "grpc", "grpc-stream", "http-stream"])
def test_text_matches_run_py_on_every_path(served, reference, path):
    """Greedy text and ids of `pt` (HTTP, gRPC) and `pt_stream` (gRPC stream, HTTP
    generate_stream) equal scripts/run.py's; streamed chunks add up to them."""
    server, _, _ = served
    protocol, streaming = path.split("-")[0], path.endswith("stream")
    url = server.http if protocol == "http" else server.grpc
    for i, prompt in enumerate(PROMPTS):
        inputs = request_inputs(prompt, max_tokens=12)
        result = stream(url, inputs, protocol) if streaming else infer(url, inputs, protocol)
        assert result.output_ids == reference["output_ids"][i]
        assert result.text == reference["text"][i]
        if streaming:
            assert len(result.chunks) >= 2


def test_input_ids_and_batched_rows(served):
    """input_ids work without text; a [2, S] request with input_lengths returns each row's tokens
    (padded with -1 past sequence_length) equal to run.py's."""
    server, ckpt, _ = served
    import tritonclient.http as th

    prompts = [[504, 3575, 282, 4649, 314], [17, 4000, 12]]
    ref = run_py(ckpt, "--input_ids", ";".join(",".join(map(str, p)) for p in prompts), "--max_output_len", 6)
    for i, p in enumerate(prompts):
        assert infer(server.grpc, request_inputs(input_ids=p, max_tokens=6), "grpc").output_ids == ref["output_ids"][i]
    padded = np.array([prompts[0], prompts[1] + [0, 0]], dtype=np.int32)
    arrays = {"input_ids": padded, "input_lengths": np.array([[5], [3]], np.int32),
              "max_tokens": np.array([[6], [3]], np.int32)}
    client = th.InferenceServerClient(server.http)
    tensors = []
    for name, a in arrays.items():
        t = th.InferInput(name, list(a.shape), "INT32")
        t.set_data_from_numpy(a)
        tensors.append(t)
    result = client.infer("pt", tensors)
    client.close()
    out, lengths = result.as_numpy("output_ids"), result.as_numpy("sequence_length")
    assert lengths.tolist() == [[6], [3]]
    assert out[0].tolist() == ref["output_ids"][0] and out[1].tolist() == ref["output_ids"][1][:3] + [-1, -1, -1]


def test_seeded_sampling_matches_run_py(served):
    """temperature/top_k/top_p/seed: the same seed gives the same tokens on both models and
    protocols, equal to run.py's with that seed and to the documented sampling computed apart from
    the runtime (reference_sampling: the HF model's logits, torch.multinomial with a generator
    seeded as given), also at temperatures far from 1 (5, and 0.001: the greedy tokens); another
    seed gives others."""
    from transformers import AutoTokenizer

    from pt_trtllm import PTForCausalLM

    server, ckpt, tok = served
    hf = PTForCausalLM.from_pretrained(ckpt.parent / "hf").eval()
    tokenizer = AutoTokenizer.from_pretrained(tok)
    prompt = tokenizer.encode(PROMPTS[0])
    params = dict(temperature=1.0, top_k=50, top_p=0.95)
    ref = run_py(ckpt, "--input_text", PROMPTS[0], "--tokenizer_dir", tok, "--max_output_len", 16,
                 "--temperature", 1.0, "--top_k", 50, "--top_p", 0.95, "--seed", 3)
    a = infer(server.http, request_inputs(PROMPTS[0], max_tokens=16, seed=3, **params))
    b = stream(server.grpc, request_inputs(PROMPTS[0], max_tokens=16, seed=3, **params), "grpc")
    c = infer(server.grpc, request_inputs(PROMPTS[0], max_tokens=16, seed=4, **params), "grpc")
    expected = reference_sampling(hf, prompt, 16, 1.0, 50, 0.95, 3)
    eos = tokenizer.eos_token_id  # the model has none: the server and run.py stop at the tokenizer's
    expected = expected[: expected.index(eos) + 1] if eos in expected else expected
    assert a.output_ids == b.output_ids == ref["output_ids"][0] == expected
    assert c.output_ids != a.output_ids
    greedy = infer(server.http, request_inputs(input_ids=prompt, max_tokens=16, end_id=-1)).output_ids
    for temperature, seed in ((5.0, 2**64 - 1), (0.001, 5)):
        got = stream(server.grpc, request_inputs(input_ids=prompt, max_tokens=16, temperature=temperature, seed=seed,
                                                 end_id=-1), "grpc").output_ids
        assert got == reference_sampling(hf, prompt, 16, temperature, 0, 1.0, seed), temperature
        assert (got == greedy) == (temperature < 1), temperature


def test_statistics_are_json_while_serving(served, tmp_path):
    """Model pt_stats answers the server's statistics as one JSON document over HTTP, gRPC and
    Triton's generate endpoint, and scripts/client.py --stats prints it: the facts of the run, and
    counters that follow the requests served."""
    server, _, _ = served
    before = server_stats(server.http)
    assert before["state"] == "serving" and before["stopped_by"] is None
    assert (before["schedule"], before["ranks"], before["merges_per_forward"]) == ("block", 2, 2)
    assert (before["max_batch_size"], before["max_seq_len"]) == (4, 128)
    out = infer(server.http, request_inputs(input_ids=[17, 4000, 12], max_tokens=5, end_id=-1))
    assert len(out.output_ids) == 5
    after = server_stats(server.grpc, "grpc")
    assert after["sequences"] == before["sequences"] + 1 and after["failed"] == before["failed"]
    assert after["prefilled_tokens"] == before["prefilled_tokens"] + 3
    assert after["decoded_tokens"] == before["decoded_tokens"] + 4  # the first token comes from the prefill
    assert after["steps"] >= before["steps"] + 5 and after["uptime_s"] > before["uptime_s"]
    assert after["measured_merges_per_forward"] == 2  # L/D = 4/2 in every forward pass served
    request = urllib.request.Request(f"http://{server.http}/v2/models/pt_stats/generate", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as r:
        assert json.loads(json.loads(r.read())["stats"])["sequences"] == after["sequences"]
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "client.py"), "--url", server.http, "--stats"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sequences"] == after["sequences"]


def test_end_id_stops_generation(served, reference):
    """end_id set to the 4th greedy token: 4 tokens, ending with it; end_id -1 never stops early."""
    server, _, _ = served
    greedy = reference["output_ids"][0]
    eos = greedy[3]
    assert eos not in greedy[:3]
    assert infer(server.http, request_inputs(PROMPTS[0], max_tokens=12, end_id=eos)).output_ids == greedy[:4]
    assert stream(server.grpc, request_inputs(PROMPTS[0], max_tokens=12, end_id=eos)).output_ids == greedy[:4]
    assert infer(server.http, request_inputs(PROMPTS[0], max_tokens=12, end_id=-1)).output_ids == greedy


def test_a_new_request_joins_a_running_batch(served):
    """In-flight batching: while a long streaming request generates, a short request sent after
    its first token finishes long before it (it does not wait for the running batch to end)."""
    server, _, _ = served
    long_ref = infer(server.http, request_inputs(PROMPTS[1], max_tokens=60, end_id=-1)).output_ids
    first, done = threading.Event(), {}

    def run_long():
        def on_chunk(chunk):
            first.set()

        done["long"] = stream(server.grpc, request_inputs(PROMPTS[1], max_tokens=60, end_id=-1), "grpc",
                              on_chunk=on_chunk)
        done["long_t"] = time.monotonic()

    thread = threading.Thread(target=run_long)
    thread.start()
    assert first.wait(60)
    t0 = time.monotonic()
    short = infer(server.http, request_inputs(PROMPTS[0], max_tokens=3, end_id=-1))
    t_short = time.monotonic()
    thread.join(120)
    assert len(short.output_ids) == 3 and done["long"].output_ids == long_ref
    assert t_short < done["long_t"], "the short request waited for the long one"
    print(f"short request: {1e3 * (t_short - t0):.0f} ms; the long one ended {1e3 * (done['long_t'] - t_short):.0f} "
          f"ms later")


def _error(fn) -> tuple[str | None, str]:
    """(status, message) of the error `fn` raises: HTTP "400" or gRPC "StatusCode.INVALID_ARGUMENT"."""
    from tritonclient.utils import InferenceServerException

    with pytest.raises((InferenceServerException, RuntimeError)) as e:
        fn()
    if isinstance(e.value, InferenceServerException):
        return e.value.status(), e.value.message()
    return None, str(e.value)


BAD = [  # (inputs, protocol, the words the error must contain)
    ({"max_tokens": np.array([[8]], np.int32)}, "http", ["no prompt"]),
    ({"text_input": np.array([[b""]], dtype=object), "max_tokens": np.array([[8]], np.int32)}, "grpc",
     ["text_input is empty"]),
    ({"text_input": np.array([[b"hi"]], dtype=object)}, "http", ["max_tokens"]),
    ({"text_input": np.array([[b"hi"]], dtype=object), "max_tokens": np.array([[8.0]], np.float32)}, "http",
     ["max_tokens", "INT32"]),
    ({"text_input": np.array([[1]], np.int32), "max_tokens": np.array([[8]], np.int32)}, "grpc",
     ["text_input", "BYTES"]),
    ({"text_input": np.array([[b"hi"]], dtype=object), "max_tokens": np.array([[0]], np.int32)}, "grpc",
     ["max_tokens must be >= 1, got 0"]),
    ({"text_input": np.array([[b"hi"]], dtype=object), "max_tokens": np.array([[121]], np.int32)}, "http",
     ["max_tokens=121 exceeds this server's limit of 120"]),
    ({"text_input": np.array([[b"hi"]], dtype=object), "max_tokens": np.array([[8]], np.int32),
      "temperature": np.array([[-0.5]], np.float32)}, "http", ["temperature must be >= 0, got -0.5"]),
    ({"text_input": np.array([[b"hi"]], dtype=object), "max_tokens": np.array([[8]], np.int32),
      "top_p": np.array([[1.5]], np.float32)}, "grpc", ["top_p must be in (0, 1], got 1.5"]),
    ({"text_input": np.array([[b"hi"]], dtype=object), "max_tokens": np.array([[8]], np.int32),
      "top_p": np.array([[0.0]], np.float32)}, "http", ["top_p must be in (0, 1], got 0.0"]),
    ({"input_ids": np.array([[1, 60000]], np.int32), "max_tokens": np.array([[8]], np.int32)}, "grpc",
     ["outside [0, 49152)", "60000"]),
    ({"input_ids": np.ones((1, 100), np.int32), "max_tokens": np.array([[40]], np.int32)}, "http",
     ["100 tokens", "at most 88"]),
    ({"text_input": np.array([[b"hi"]], dtype=object), "max_tokens": np.array([[8]], np.int32),
      "bogus": np.array([[1]], np.int32)}, "grpc", ["bogus"]),
    ({"input_ids": np.ones((5, 3), np.int32), "max_tokens": np.ones((5, 1), np.int32)}, "http", ["batch", "4"]),
]


@pytest.mark.parametrize("inputs,protocol,words", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_malformed_requests_get_an_error_naming_the_problem(served, inputs, protocol, words):
    """Missing or wrongly typed inputs, empty text, max_tokens <= 0 or above the limit, negative
    temperature, top_p outside (0, 1], out-of-vocabulary ids, too long prompts, unknown inputs, a
    too large batch: Triton's INVALID_ARG (HTTP 400) with one line containing the problem's words
    (those the server checks too: the patched proxy); then the server still serves."""
    server, _, _ = served
    if protocol == "http":
        import tritonclient.http as module

        client = module.InferenceServerClient(server.http)
    else:
        import tritonclient.grpc as module

        client = module.InferenceServerClient(server.grpc)
    status, message = _error(lambda: client.infer("pt", triton_inputs(module, inputs)))
    client.close()
    assert status == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"), (status, message)
    assert "\n" not in message.strip() and "Traceback" not in message, message
    for word in words:
        assert word in message, message
    assert infer(server.http, request_inputs(PROMPTS[0], max_tokens=2)).output_ids


def test_streaming_errors_and_the_server_keeps_serving(served):
    """The streaming model refuses bad requests with the one line too (gRPC stream, HTTP
    generate_stream: 400)."""
    server, _, _ = served
    _, message = _error(lambda: stream(server.grpc, request_inputs(PROMPTS[0], max_tokens=8, top_p=0.0), "grpc"))
    assert message == "top_p must be in (0, 1], got 0.0"  # a stream's error carries no status in tritonclient
    _, message = _error(lambda: stream(server.http, request_inputs("", max_tokens=8), "http"))
    assert message == "[400] text_input is empty"
    assert stream(server.grpc, request_inputs(PROMPTS[0], max_tokens=2), "grpc").output_ids


def test_triton_cancellations_free_the_slots(served):
    """A gRPC stream cancelled by its client, a gRPC call past its deadline and an HTTP
    generate_stream whose client disconnects: the patched proxy reports each to the server, which
    cancels the sequence (counted) long before its max_tokens (120). The deadline is a quarter of
    the time the same request takes to finish here, so it fires mid-decode on a fast or a slow
    machine."""
    import socket

    import tritonclient.grpc as grpcclient

    server, _, _ = served
    inputs = request_inputs(input_ids=[7, 8, 9], max_tokens=120, end_id=-1)
    client = grpcclient.InferenceServerClient(server.grpc)
    started = time.monotonic()
    client.infer("pt", triton_inputs(grpcclient, inputs))
    full_request_s = time.monotonic() - started
    client.close()

    def cancelled_after(start, before):
        start()
        deadline = time.monotonic() + 20
        while (s := server_stats(server.http))["cancelled"] == before["cancelled"] and time.monotonic() < deadline:
            time.sleep(0.02)
        return s

    def grpc_stream():
        client, got = grpcclient.InferenceServerClient(server.grpc), []
        client.start_stream(callback=lambda result, error: got.append(error or result))
        client.async_stream_infer("pt_stream", triton_inputs(grpcclient, inputs))
        deadline = time.monotonic() + 60
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        client.stop_stream(cancel_requests=True)
        client.close()

    def grpc_deadline():
        client = grpcclient.InferenceServerClient(server.grpc)
        with pytest.raises(Exception, match="Deadline"):
            client.infer("pt", triton_inputs(grpcclient, inputs), client_timeout=full_request_s / 4)
        client.close()

    def http_disconnect():
        body = json.dumps({"input_ids": [7, 8, 9], "max_tokens": 120, "end_id": -1}).encode()
        with socket.create_connection((server.host, server.http_port), timeout=60) as sock:
            sock.sendall(b"POST /v2/models/pt_stream/generate_stream HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            data = b""
            while data.count(b"data:") < 2:
                data += sock.recv(4096)

    for start in (grpc_stream, grpc_deadline, http_disconnect):
        before = server_stats(server.http)
        after = cancelled_after(start, before)
        assert after["cancelled"] == before["cancelled"] + 1, start.__name__
        assert after["decoded_tokens"] - before["decoded_tokens"] < 119, start.__name__
    assert infer(server.http, request_inputs(PROMPTS[0], max_tokens=2)).output_ids
