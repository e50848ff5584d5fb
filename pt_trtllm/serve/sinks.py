"""Sinks: how a sequence's tokens get from the scheduler's thread to the asyncio loop of the request
that asked for them (`loop.call_soon_threadsafe`), whole or token by token."""

from __future__ import annotations

import asyncio


class CollectSink:
    """Non-streaming: gather tokens; wake the request's loop once, when finished."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.ids = loop, []
        self.done = loop.create_future()
        """Resolves to (finish reason, error or None)."""

    def tokens(self, ids):
        self.ids.extend(ids)

    def finish(self, reason, error=None):
        self.loop.call_soon_threadsafe(_resolve, self.done, (reason, error))


class StreamSink:
    """Streaming: every token wakes the request's loop. Several sequences of one request may share
    a queue; `key` tells their items apart."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue | None = None, key=0):
        self.loop, self.key = loop, key
        self.queue = asyncio.Queue() if queue is None else queue
        """Items: (key, "tokens", ids) and, last, (key, "end", (finish reason, error or None))."""

    def tokens(self, ids):
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (self.key, "tokens", ids))

    def finish(self, reason, error=None):
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (self.key, "end", (reason, error)))


def _resolve(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)
