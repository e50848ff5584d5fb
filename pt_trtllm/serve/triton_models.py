"""The Triton models and their handlers on rank 0: `pt` (request/response, HTTP and gRPC),
`pt_stream` (decoupled: one response per decode step, gRPC streaming or HTTP `generate_stream`),
both fed to the scheduler, and `pt_stats` (the server's statistics as JSON).

`pt` is a plain Python-backend model: Triton runs one request per model instance at a time, so it
gets `instances` instances (one per KV-cache slot by default) for requests to run concurrently and
join the running batch. `pt_stream` is decoupled, so one instance takes any number of requests.
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager

import numpy as np

from .detok import IncrementalDetokenizer
from .front import Backend
from .requests import Unavailable
from .scheduler import Sequence
from .sinks import CollectSink, StreamSink
from .triton_cancel import CANCEL_KEY, CancelListener
from .triton_protocol import (GENERATE_MODEL, INPUTS, OUTPUT_IDS, SEQUENCE_LENGTH, STATS_MODEL, STATS_OUTPUT,
                              STREAM_MODEL, TEXT_INPUT, TEXT_OUTPUT, TensorSpec)
from .triton_requests import parse_triton_request


class PTModels:
    """The handlers of the three models, over one backend."""

    def __init__(self, backend: Backend, cancels: CancelListener | None = None):
        self.scheduler, self.tokenizer, self.limits = backend.scheduler, backend.tokenizer, backend.limits
        self.cancels = cancels

    def _sequences(self, request, sink) -> list[Sequence]:
        specs = parse_triton_request(dict(request.items()), self.tokenizer, self.limits)
        return [Sequence(spec, sink()) for spec in specs]

    @contextmanager
    def _cancellable(self, request, seqs: list[Sequence]):
        """While the sequences run, Triton's cancellation of `request` cancels them."""
        key = (request.parameters or {}).get(CANCEL_KEY) if self.cancels is not None else None
        if key is not None:
            self.cancels.register(key, seqs)
        try:
            yield
        finally:
            if key is not None:
                self.cancels.unregister(key)

    def _text(self, ids: list[int]) -> bytes:
        return self.tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8")

    async def infer(self, requests):
        """`pt`: the whole generation of every row of each request, in one response."""
        return list(await asyncio.gather(*(self._infer_one(r) for r in requests)))

    async def _infer_one(self, request):
        loop = asyncio.get_running_loop()
        seqs = self._sequences(request, lambda: CollectSink(loop))
        with self._cancellable(request, seqs):
            self.scheduler.submit(seqs)
            results = [await s.sink.done for s in seqs]
        errors = [e for _, e in results if e]
        if errors:
            raise Unavailable(errors[0])
        lengths = [len(s.sink.ids) for s in seqs]
        ids = np.full((len(seqs), max(lengths)), -1, dtype=np.int32)
        for i, s in enumerate(seqs):
            ids[i, : lengths[i]] = s.sink.ids
        out = {OUTPUT_IDS.name: ids, SEQUENCE_LENGTH.name: np.array(lengths, dtype=np.int32).reshape(-1, 1)}
        if self.tokenizer is not None:
            out[TEXT_OUTPUT.name] = np.array([[self._text(s.sink.ids)] for s in seqs], dtype=object)
        return out

    async def stream(self, requests):
        """`pt_stream` (decoupled): one response per step that produced text or tokens."""
        (request,) = requests  # max_batch_size 1 and no dynamic batching: one request per call
        loop = asyncio.get_running_loop()
        (seq,) = self._sequences(request, lambda: StreamSink(loop))
        detok = IncrementalDetokenizer(self.tokenizer) if self.tokenizer is not None else None
        with self._cancellable(request, [seq]):
            self.scheduler.submit([seq])
            while True:
                _, kind, value = await seq.sink.queue.get()
                ids, end = [], None
                while True:  # take everything already queued: one response for it
                    if kind == "tokens":
                        ids.extend(value)
                    else:
                        end = value
                    if end is not None or seq.sink.queue.empty():
                        break
                    _, kind, value = seq.sink.queue.get_nowait()
                if end is not None and end[1]:
                    raise Unavailable(end[1])
                text = None
                if detok is not None:
                    text = detok.add(ids) + (detok.finish() if end is not None else "")
                if ids or text:
                    out = {OUTPUT_IDS.name: np.array([ids], dtype=np.int32)}
                    if text is not None:
                        out[TEXT_OUTPUT.name] = np.array([[text.encode("utf-8")]], dtype=object)
                    yield [out]
                if end is not None:
                    return

    def stats(self, requests):
        """`pt_stats`: the statistics document (stats.py) as JSON text."""
        text = self.scheduler.stats.to_json().encode("utf-8")
        return [{STATS_OUTPUT.name: np.array([text], dtype=object)} for _ in requests]


def bind(triton, models: PTModels, max_batch_size: int, instances: int) -> None:
    """Declare the three models (tensors from triton_protocol.py) on a PyTriton `Triton`."""
    from pytriton.model_config import ModelConfig, Tensor

    def tensors(specs: list[TensorSpec]) -> list:
        return [Tensor(name=t.name, dtype=t.dtype, shape=t.shape, optional=t.optional) for t in specs]

    text = models.tokenizer is not None
    inputs = tensors([t for t in INPUTS if text or t is not TEXT_INPUT])
    outputs = tensors(([TEXT_OUTPUT] if text else []) + [OUTPUT_IDS])
    triton.bind(GENERATE_MODEL, [models.infer] * instances, inputs, outputs + tensors([SEQUENCE_LENGTH]),
                config=ModelConfig(batching=True, max_batch_size=max_batch_size, batcher=None), strict=False)
    triton.bind(STREAM_MODEL, models.stream, inputs, outputs,
                config=ModelConfig(batching=True, max_batch_size=1, batcher=None, decoupled=True), strict=False)
    triton.bind(STATS_MODEL, models.stats, [], tensors([STATS_OUTPUT]), config=ModelConfig(batching=False),
                strict=False)
