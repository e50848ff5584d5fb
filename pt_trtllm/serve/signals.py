"""SIGTERM and SIGINT on every rank of a server: caught from the start (a rank killed by the default
action would take the job down uncleanly), remembered, passed on to whoever stops the server, and
able to interrupt a wait that must not outlive them; and SIGTERM when the launcher that started a
rank dies (`die_with_parent`)."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from contextlib import contextmanager

PR_SET_PDEATHSIG = 1
LAUNCHER_VARIABLES = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")
"""Set by MPI launchers (MPICH's hydra, PMIx, Open MPI) in the environment of the ranks they start."""


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Under an MPI launcher, ask the kernel for `sig` when this rank's parent (the launcher's
    process that started it, e.g. hydra_pmi_proxy) dies, so that no rank outlives a killed
    mpiexec; the signal then stops the server as mpiexec's SIGTERM does. Not under a launcher (a
    rank started by hand keeps running when its shell goes). Returns whether the watch is set."""
    if not any(v in os.environ for v in LAUNCHER_VARIABLES):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):  # not Linux
        return False
    if os.getppid() != parent or parent == 1:  # it died before the watch was set
        os.kill(os.getpid(), sig)
    return True


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
