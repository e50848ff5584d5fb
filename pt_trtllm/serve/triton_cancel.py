"""Cancellation from tritonserver to rank 0's scheduler.

PyTriton 0.7 never tells the inference callable that Triton cancelled a request (a gRPC client
cancelled its stream or call, or its deadline passed). The patched proxy (pytriton_env.py) tags
every request with a key (parameter `pt_cancel_key`: the stub's pid, PyTriton's request id, the
row), asks Triton whether the request was cancelled (at most every 0.1 s while it runs) and, when
it was, sends the keys in one datagram to this listener's Unix socket in the server's workspace.
The Triton handlers register their sequences under their request's key; the listener cancels them
(`Scheduler.cancel`). A key that arrives before its handler registered is remembered (the last
1024), so the handler cancels at once.
"""

from __future__ import annotations

import socket
import threading
from collections import OrderedDict
from pathlib import Path

CANCEL_KEY = "pt_cancel_key"
"""The request parameter the patched proxy sets (it overwrites one a client sent)."""
SOCKET_NAME = "cancel.sock"
MAX_PATH = 107
"""The longest path of a Unix socket (sun_path holds 108 bytes with the NUL)."""


class CancelListener:
    def __init__(self, path: Path, scheduler):
        self.path, self.scheduler = Path(path), scheduler
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.5)
        self._running: dict[str, list] = {}
        self._early: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="triton-cancel", daemon=True)
        self._thread.start()

    def register(self, key: str | None, sequences: list) -> None:
        """`sequences` run for the request tagged `key` (None: untagged, never cancelled)."""
        if key is None:
            return
        with self._lock:
            early = self._early.pop(key, "no") is None
            if not early:
                self._running[key] = sequences
        if early:
            self.scheduler.cancel(sequences)

    def unregister(self, key: str | None) -> None:
        with self._lock:
            self._running.pop(key, None)

    def _serve(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            for key in data.decode("utf-8", "replace").split():
                with self._lock:
                    sequences = self._running.pop(key, None)
                    if sequences is None:
                        self._early[key] = None
                        while len(self._early) > 1024:
                            self._early.popitem(last=False)
                if sequences is not None:
                    self.scheduler.cancel(sequences)

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        self._thread.join(2.0)
