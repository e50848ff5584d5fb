"""SIGTERM and SIGINT on every rank of a server: caught from the start (a rank killed by the default
action would take the job down uncleanly), remembered, passed on to whoever stops the server, and
able to interrupt a wait that must not outlive them."""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager


class Interrupted(BaseException):
    """Raised by the signal handler inside `Signals.interruptible()` (not an Exception, so that no
    `except Exception` on the way swallows it)."""


class Signals:
    """What arrived, when, and who to tell."""

    def __init__(self):
        self.received: int | None = None
        self.received_at: float | None = None
        self.on_signal = None
        self._interrupt = False

    def install(self) -> "Signals":
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    @contextmanager
    def interruptible(self):
        """A signal arriving inside raises `Interrupted` (once)."""
        self._interrupt = True
        try:
            yield
        finally:
            self._interrupt = False

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received, self.received_at = signum, time.monotonic()
        if self.on_signal is not None:
            self.on_signal()
        if self._interrupt:
            self._interrupt = False
            raise Interrupted()
