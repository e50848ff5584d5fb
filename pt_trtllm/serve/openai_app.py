"""The OpenAI-compatible HTTP API (a FastAPI app) over rank 0's scheduler: `POST /v1/completions`,
`POST /v1/chat/completions` (plain or server-sent events ending with `[DONE]`), `GET /v1/models`,
`GET /health` and `GET /stats` (the server's statistics document, stats.py).

Requests become sequences with openai_protocol.py and go to the same scheduler as the Triton
front's. Text is detokenized incrementally (detok.py) and held back while it may be the start of a
stop string (stop_strings.py). A client that disconnects, streaming or not, has its sequences
cancelled at once (`Scheduler.cancel`): a task per request waits for the ASGI `http.disconnect`.
Errors are OpenAI's JSON error shape with one line: 400 for a request problem, 404 for an unknown
model or path, 503 while the server shuts down, 500 (the exception's class and message; the
traceback goes to the server's log) for a bug.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from .detok import IncrementalDetokenizer
from .front import Backend
from .openai_protocol import GenerateRequest, OpenAIError, parse_request
from .scheduler import Sequence
from .sinks import StreamSink
from .stop_strings import StopStrings

LOG = logging.getLogger("pt_trtllm.serve.openai")


class _Choice:
    """One sequence of a request, as its choice: the text so far and why it ended."""

    def __init__(self, tokenizer, stops):
        self.detok, self.stops = IncrementalDetokenizer(tokenizer), StopStrings(stops)
        self.tokens = 0
        """Generated tokens counted in `usage` (up to the one that completed a stop string)."""
        self.finish: str | None = None


class Generation:
    """The sequences of one request on the scheduler, as events of their choices."""

    def __init__(self, scheduler, tokenizer, req: GenerateRequest, receive):
        self.scheduler, self.req, self.receive = scheduler, req, receive
        self.choices = [_Choice(tokenizer, req.stops) for _ in req.specs]

    @property
    def tokens(self) -> int:
        return sum(c.tokens for c in self.choices)

    async def events(self):
        """Yields (choice index, new text, finish reason or None) as tokens arrive; OpenAIError (503)
        when the scheduler refuses (shutting down). Closing it, or the client disconnecting (ASGI
        `receive` says `http.disconnect`), cancels the sequences still generating."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        seqs = [Sequence(spec, StreamSink(loop, queue, i)) for i, spec in enumerate(self.req.specs)]
        self.scheduler.submit(seqs)
        watch = asyncio.create_task(self._cancel_on_disconnect(seqs))
        left = len(seqs)
        try:
            while left:
                i, kind, value = await queue.get()
                c = self.choices[i]
                if c.finish is not None:  # ended by a stop string: the rest is dropped
                    continue
                if kind == "tokens":
                    c.tokens += len(value)
                    text = c.stops.feed(c.detok.add(value))
                    if c.stops.matched:
                        c.finish = "stop"
                        self.scheduler.cancel([seqs[i]], "stop string")
                else:
                    reason, error = value
                    if error:
                        raise OpenAIError(error, 503)
                    if reason == "cancelled":  # the client is gone
                        return
                    text = c.stops.feed(c.detok.finish())
                    text += c.stops.finish()
                    c.finish = "stop" if reason == "stop" or c.stops.matched else "length"
                left -= c.finish is not None
                yield i, text, c.finish
        finally:
            watch.cancel()
            running = [s for s, c in zip(seqs, self.choices) if c.finish is None]
            if running:
                self.scheduler.cancel(running)

    async def _cancel_on_disconnect(self, seqs: list[Sequence]) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.scheduler.cancel(seqs)  # the finished ones are left alone


class Reply:
    """The response objects of one request (completions or chat), plain or as stream chunks."""

    def __init__(self, chat: bool, model: str, req: GenerateRequest):
        self.chat, self.model, self.req = chat, model, req
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def usage(self, choices_tokens: int) -> dict:
        prompt = sum(len(s.prompt) for s in self.req.specs)
        return {"prompt_tokens": prompt, "completion_tokens": choices_tokens, "total_tokens": prompt + choices_tokens}

    def whole(self, texts: list[str], finishes: list[str], tokens: int) -> dict:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                        "finish_reason": f} for i, (t, f) in enumerate(zip(texts, finishes))]
        else:
            choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": f}
                       for i, (t, f) in enumerate(zip(texts, finishes))]
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage(tokens)}

    def chunk(self, index: int, text: str | None, finish: str | None, first: bool = False) -> str:
        """One server-sent event: new text (chat: the role too in the first), or the finish reason."""
        if self.chat:
            delta = {"role": "assistant", "content": text or ""} if first else ({} if text is None else
                                                                                {"content": text})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return self._event([choice])

    def usage_chunk(self, tokens: int) -> str:
        return self._event([], self.usage(tokens))

    def _event(self, choices: list, usage: dict | None = None) -> str:
        body = {"id": self.id, "object": self.object + ".chunk" if self.chat else self.object,
                "created": self.created, "model": self.model, "choices": choices}
        if self.req.include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"


def error_event(e: OpenAIError) -> str:
    return f"data: {json.dumps(e.body(), ensure_ascii=False)}\n\n"


def make_app(backend: Backend, model_name: str):
    """The FastAPI app serving `backend` as model `model_name`."""
    app = FastAPI(title="pt_trtllm OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    card = {"id": model_name, "object": "model", "created": created, "owned_by": "pt_trtllm",
            "max_model_len": backend.limits.max_seq_len}

    @app.exception_handler(OpenAIError)
    async def openai_error(request, e: OpenAIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        message = f"{request.method} {request.url.path}: {e.detail}"
        return JSONResponse(OpenAIError(message, e.status_code).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request, e: Exception):
        LOG.error("%s %s failed", request.method, request.url.path, exc_info=e)
        error = OpenAIError(f"internal error: {e.__class__.__name__}: {e}".splitlines()[0], 500)
        return JSONResponse(error.body(), status_code=500)

    @app.get("/health")
    async def health():
        return Response(status_code=200)

    @app.get("/stats")
    async def stats():
        return Response(backend.scheduler.stats.to_json(), media_type="application/json")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str):
        if model != model_name:
            raise OpenAIError(f"The model `{model}` does not exist.", 404, "model", "model_not_found")
        return card

    async def complete(request: Request, chat: bool):
        try:
            body = json.loads(await request.body())
        except ValueError as e:
            raise OpenAIError(f"the request body is not valid JSON: {e}") from None
        req = parse_request(body, chat, backend.tokenizer, backend.limits, model_name)
        reply = Reply(chat, model_name, req)
        generation = Generation(backend.scheduler, backend.tokenizer, req, request.receive)
        events = generation.events()
        if not req.stream:
            texts, finishes = [""] * len(req.specs), [None] * len(req.specs)
            async for i, text, finish in events:
                texts[i] += text
                finishes[i] = finish
            return reply.whole(texts, finishes, generation.tokens)
        try:  # the first event before the status line: a refusal (shutting down) is a 503, not a 200
            first = await events.__anext__()
        except StopAsyncIteration:
            first = None
        return StreamingResponse(_sse(reply, generation, events, first), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    return app


async def _sse(reply: Reply, generation: Generation, events, first):
    """The server-sent events of a streaming reply: the chat role first, text as it comes, each
    choice's finish reason, the usage if asked for, then `data: [DONE]`. An error after the first
    event (the server shutting down) is an error event."""
    if reply.chat:
        for i in range(len(generation.choices)):
            yield reply.chunk(i, "", None, first=True)
    try:
        event = first
        while event is not None:
            i, text, finish = event
            if text:
                yield reply.chunk(i, text, None)
            if finish is not None:
                yield reply.chunk(i, None, finish)
            event = await anext(events, None)
    except OpenAIError as e:
        yield error_event(e)
    finally:
        await events.aclose()
    if reply.req.include_usage:
        yield reply.usage_chunk(generation.tokens)
    yield "data: [DONE]\n\n"
