"""Querying the server with `tritonclient`: models `pt` (one response) and `pt_stream` (one
response per generated token; gRPC streaming, or HTTP through Triton's `generate_stream`)."""

from __future__ import annotations

import json
import queue
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import numpy as np

MODEL, STREAM_MODEL = "pt", "pt_stream"
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}


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


def request_inputs(text: str | None = None, input_ids: list[int] | None = None, max_tokens: int = 16,
                   temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                   seed: int | None = None, end_id: int | None = None) -> dict[str, np.ndarray]:
    """The model inputs of one prompt (batch of 1) as numpy arrays."""
    if (text is None) == (input_ids is None):
        raise ValueError("give exactly one of text or input_ids")
    inputs = {"text_input": np.array([[text.encode("utf-8")]], dtype=object)} if text is not None else \
        {"input_ids": np.array([input_ids], dtype=np.int32)}
    inputs["max_tokens"] = np.array([[max_tokens]], dtype=np.int32)
    for name, value, dtype in (("temperature", temperature, np.float32), ("top_k", top_k, np.int32),
                               ("top_p", top_p, np.float32), ("seed", seed, np.uint64), ("end_id", end_id, np.int32)):
        if value is not None:
            inputs[name] = np.array([[value]], dtype=dtype)
    return inputs


def _triton_inputs(module, inputs: dict[str, np.ndarray]):
    from tritonclient.utils import np_to_triton_dtype

    out = []
    for name, array in inputs.items():
        dtype = "BYTES" if array.dtype == object else np_to_triton_dtype(array.dtype)
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def _text(result, name="text_output") -> str | None:
    array = result.as_numpy(name)
    if array is None:
        return None
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def infer(url: str, inputs: dict[str, np.ndarray], protocol: str = "http", timeout: float = 120.0) -> Result:
    """One request to `pt`."""
    if protocol == "http":
        import tritonclient.http as module

        client = module.InferenceServerClient(url, network_timeout=timeout, connection_timeout=timeout)
    else:
        import tritonclient.grpc as module

        client = module.InferenceServerClient(url)
    try:
        kwargs = {"client_timeout": timeout} if protocol == "grpc" else {}
        result = client.infer(MODEL, _triton_inputs(module, inputs), **kwargs)
    finally:
        client.close()
    n = int(result.as_numpy("sequence_length").reshape(-1)[0])
    return Result(result.as_numpy("output_ids")[0, :n].tolist(), _text(result))


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
            client.async_stream_infer(STREAM_MODEL, _triton_inputs(module, inputs), enable_empty_final_response=True)
            while True:
                result, error = responses.get(timeout=timeout)
                if error is not None:
                    raise error
                final = result.get_response().parameters.get("triton_final_response")
                ids = result.as_numpy("output_ids")
                if ids is not None:
                    take(ids.reshape(-1).tolist(), _text(result))
                if final is not None and final.bool_param:
                    break
        finally:
            client.stop_stream()
            client.close()
    else:  # Triton's generate extension: server-sent events, one per response
        body = {k: _json_value(v) for k, v in inputs.items()}
        request = urllib.request.Request(f"http://{url}/v2/models/{STREAM_MODEL}/generate_stream",
                                         data=json.dumps(body).encode(), method="POST")
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:  # Triton answers a refused request with 400 and {"error": ...}
            body = e.read().decode("utf-8", "replace").strip()
            try:
                body = json.loads(body.removeprefix("data:")).get("error", body)
            except ValueError:
                pass
            raise RuntimeError(f"[{e.code}] {body}") from None
        with response:
            for line in response:
                line = line.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    raise RuntimeError(event["error"])
                ids = event.get("output_ids", [])
                take(ids if isinstance(ids, list) else [ids], event.get("text_output"))
    ids = [t for c in chunks for t in c["output_ids"]]
    texts = [c["text"] for c in chunks if c["text"] is not None]
    return Result(ids, "".join(texts) if texts else None, chunks)


def _json_value(array: np.ndarray):
    value = array.reshape(-1)
    if array.dtype == object:
        return value[0].decode("utf-8")
    return value.tolist() if value.size > 1 else value[0].item()
