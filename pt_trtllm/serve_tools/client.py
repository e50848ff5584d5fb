"""Requests to the server's Triton models (pt_trtllm/serve/triton_protocol.py): `pt` (one
response), `pt_stream` (one response per decode step; gRPC streaming, or HTTP through Triton's
`generate_stream` server-sent events) and `pt_stats` (the server's statistics). The inputs of a
request, their tritonclient and JSON forms and the parsing of a server-sent event are defined
here once, for scripts/client.py, the load generator and the tests."""

from __future__ import annotations

import json
import queue
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import numpy as np

from ..serve.triton_protocol import (GENERATE_MODEL, OUTPUT_IDS, SEQUENCE_LENGTH, STATS_MODEL, STATS_OUTPUT,
                                     STREAM_MODEL, TEXT_OUTPUT, input_dtype)


@dataclass
class Result:
    output_ids: list[int]
    text: str | None = None
    chunks: list[dict] = field(default_factory=list)
    """Streaming: each response's {"output_ids": [...], "text": str | None}."""


def error_message(error: Exception) -> str:
    """The line of a server error that names the problem (PyTriton wraps the model's error in its
    own traceback)."""
    text = error.message() if hasattr(error, "message") and callable(error.message) else str(error)
    for marker in ("RequestError: ", "TritonError: "):
        if marker in text:
            return text.split(marker, 1)[1].strip().splitlines()[0]
    return text.strip()


# ---- the inputs of a request, in each form ---------------------------------------------------------
def request_inputs(text: str | None = None, input_ids: list[int] | None = None, max_tokens: int = 16,
                   temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                   seed: int | None = None, end_id: int | None = None) -> dict[str, np.ndarray]:
    """The model inputs of one prompt (batch of 1) as numpy arrays of the models' dtypes."""
    if (text is None) == (input_ids is None):
        raise ValueError("give exactly one of text or input_ids")
    inputs = {"text_input": np.array([[text.encode("utf-8")]], dtype=object)} if text is not None else \
        {"input_ids": np.array([input_ids], dtype=input_dtype("input_ids"))}
    inputs["max_tokens"] = np.array([[max_tokens]], dtype=input_dtype("max_tokens"))
    for name, value in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p), ("seed", seed),
                        ("end_id", end_id)):
        if value is not None:
            inputs[name] = np.array([[value]], dtype=input_dtype(name))
    return inputs


def triton_inputs(module, inputs: dict[str, np.ndarray]) -> list:
    """`inputs` as the InferInput list of a tritonclient module (tritonclient.http, .grpc, .grpc.aio)."""
    from tritonclient.utils import np_to_triton_dtype

    out = []
    for name, array in inputs.items():
        dtype = "BYTES" if array.dtype == object else np_to_triton_dtype(array.dtype)
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def generate_body(inputs: dict[str, np.ndarray]) -> dict:
    """`inputs` (batch of 1) as the JSON body of Triton's generate and generate_stream."""
    body = {}
    for name, array in inputs.items():
        value = array.reshape(-1)
        if array.dtype == object:
            body[name] = value[0].decode("utf-8")
        else:
            body[name] = value.tolist() if value.size > 1 else value[0].item()
    return body


# ---- what comes back over HTTP -------------------------------------------------------------------------
def parse_sse(raw: bytes | str) -> dict | None:
    """One line of a generate_stream response: its event ({"output_ids": [...], "text_output": ...}
    with output_ids always a list), or None for a line that is not an event. RuntimeError with the
    server's message for an error event."""
    line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    line = line.strip()
    if not line.startswith("data:"):
        return None
    event = json.loads(line[5:])
    if "error" in event:
        raise RuntimeError(event["error"])
    ids = event.get(OUTPUT_IDS.name, [])
    event[OUTPUT_IDS.name] = ids if isinstance(ids, list) else [ids]
    return event


def http_error(status: int, body: str) -> str:
    """"[status] message" of a refused HTTP request (Triton answers {"error": ...})."""
    body = body.strip()
    try:
        body = json.loads(body.removeprefix("data:")).get("error", body)
    except (ValueError, AttributeError):
        pass
    return f"[{status}] {body}"


# ---- requests ---------------------------------------------------------------------------------------------
def _client(url: str, protocol: str, timeout: float):
    if protocol == "http":
        import tritonclient.http as module

        return module, module.InferenceServerClient(url, network_timeout=timeout, connection_timeout=timeout)
    import tritonclient.grpc as module

    return module, module.InferenceServerClient(url)


def _text(result, name=TEXT_OUTPUT.name) -> str | None:
    array = result.as_numpy(name)
    if array is None:
        return None
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def infer(url: str, inputs: dict[str, np.ndarray], protocol: str = "http", timeout: float = 120.0) -> Result:
    """One request to `pt`."""
    module, client = _client(url, protocol, timeout)
    try:
        kwargs = {"client_timeout": timeout} if protocol == "grpc" else {}
        result = client.infer(GENERATE_MODEL, triton_inputs(module, inputs), **kwargs)
    finally:
        client.close()
    n = int(result.as_numpy(SEQUENCE_LENGTH.name).reshape(-1)[0])
    return Result(result.as_numpy(OUTPUT_IDS.name)[0, :n].tolist(), _text(result))


def server_stats(url: str, protocol: str = "http", timeout: float = 30.0) -> dict:
    """The server's statistics now (model `pt_stats`; the fields are in docs/serving.md)."""
    _, client = _client(url, protocol, timeout)
    try:
        kwargs = {"client_timeout": timeout} if protocol == "grpc" else {}
        result = client.infer(STATS_MODEL, [], **kwargs)
    finally:
        client.close()
    return json.loads(_text(result, STATS_OUTPUT.name))


def stream(url: str, inputs: dict[str, np.ndarray], protocol: str = "grpc", timeout: float = 120.0,
           on_chunk=None) -> Result:
    """One request to `pt_stream`; `on_chunk(chunk)` is called as each response arrives."""
    chunks = []

    def take(ids, text):
        chunk = {"output_ids": ids, "text": text}
        chunks.append(chunk)
        if on_chunk:
            on_chunk(chunk)

    if protocol == "grpc":
        import tritonclient.grpc as module

        responses: queue.Queue = queue.Queue()
        client = module.InferenceServerClient(url)
        try:
            client.start_stream(callback=lambda result, error: responses.put((result, error)))
            client.async_stream_infer(STREAM_MODEL, triton_inputs(module, inputs), enable_empty_final_response=True)
            while True:
                result, error = responses.get(timeout=timeout)
                if error is not None:
                    raise error
                final = result.get_response().parameters.get("triton_final_response")
                ids = result.as_numpy(OUTPUT_IDS.name)
                if ids is not None:
                    take(ids.reshape(-1).tolist(), _text(result))
                if final is not None and final.bool_param:
                    break
        finally:
            client.stop_stream()
            client.close()
    else:  # Triton's generate extension: server-sent events, one per response
        request = urllib.request.Request(f"http://{url}/v2/models/{STREAM_MODEL}/generate_stream",
                                         data=json.dumps(generate_body(inputs)).encode(), method="POST")
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:  # Triton answers a refused request with 400 and {"error": ...}
            raise RuntimeError(http_error(e.code, e.read().decode("utf-8", "replace"))) from None
        with response:
            for line in response:
                event = parse_sse(line)
                if event is not None:
                    take(event[OUTPUT_IDS.name], event.get(TEXT_OUTPUT.name))
    ids = [t for c in chunks for t in c["output_ids"]]
    texts = [c["text"] for c in chunks if c["text"] is not None]
    return Result(ids, "".join(texts) if texts else None, chunks)
