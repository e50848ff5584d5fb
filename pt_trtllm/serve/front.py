"""The front-end interface: how requests reach rank 0's scheduler. The server's lifecycle
(server.py) knows fronts only through `Front`; the Triton front (triton_front.py) is one, and
another protocol (e.g. an OpenAI-compatible HTTP server) plugs in as another.

On rank 0 the lifecycle calls `check()` during the start-up every rank agrees on, `start(backend,
interruptible)` once every rank has loaded and warmed up, `alive()` while the scheduler idles (a
front that died stops the server), and `stop(timeout)` at shutdown.
"""

from __future__ import annotations

import socket
import sys
import threading
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable

from .requests import Limits
from .scheduler import Scheduler


@dataclass(frozen=True)
class Backend:
    """What a front serves: the scheduler to submit sequences to (its `stats` are the server's
    statistics), the tokenizer (None: token ids only) and the request limits."""
    scheduler: Scheduler
    tokenizer: object | None
    limits: Limits


class Front(ABC):
    what: str
    """How messages name the front, e.g. "the Triton server"."""
    gone: str
    """Why the server stopped when this front died, e.g. "tritonserver exited"."""

    @abstractmethod
    def check(self) -> None:
        """ValueError naming what would keep the front from starting (e.g. a port in use)."""

    @abstractmethod
    def start(self, backend: Backend, interruptible: Callable[[], AbstractContextManager]) -> None:
        """Start serving `backend`; return once requests are answered. Waits that a signal must be
        able to end run inside `with interruptible():` (the signal then raises out of start)."""

    @abstractmethod
    def alive(self) -> bool:
        """Whether the front still serves (cheap: called while idle)."""

    @abstractmethod
    def endpoints(self) -> str:
        """What it serves where, for the line printed when serving starts."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stop serving (may block); works whether or not start() got far."""

    def stop(self, timeout: float) -> bool:
        """`shutdown()` within `timeout` s: False (with a warning) if it did not return in time."""
        def run():
            try:
                self.shutdown()
            except Exception as e:  # noqa: BLE001 - best effort at shutdown
                print(f"warning: stopping {self.what}: {e}", file=sys.stderr, flush=True)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            print(f"warning: {self.what} did not stop within {timeout:.0f} s", file=sys.stderr, flush=True)
            return False
        return True


def check_ports(host: str, ports: dict[str, int]) -> None:
    """ValueError naming the first port (by its flag) that cannot be bound, before a server that
    would otherwise only time out is started."""
    for name, port in ports.items():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                raise ValueError(f"--{name} {port}: cannot listen on {host}:{port} ({e.strerror})") from None
