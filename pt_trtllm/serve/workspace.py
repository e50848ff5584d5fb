"""Rank 0's temporary workspace ($TMPDIR/pt_serve_*: PyTriton's copy of tritonserver, its model
store and sockets, the libpython link, the cancellation socket), and what a dead server left.

A server holds an exclusive `flock` on `<workspace>/lock` while it lives; the kernel releases it
when the process ends, however it ends (SIGKILL included). At start, a server removes every
`pt_serve_*` workspace of its user whose lock it can take (its server is dead), with the shared
memory segments that server's Python-backend stubs had (their prefix is written in the lock
file). A workspace whose lock is held (a live server) or that has no lock file (not made by this
code) is never touched.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "pt_serve_"
LOCK = "lock"
SHM = Path("/dev/shm")


class Workspace:
    """A fresh locked workspace; `remove()` deletes it and releases the lock."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix=PREFIX))
        # locked under another name, then renamed: another server never sees an unlocked `lock`
        self._lock = open(self.path / (LOCK + ".new"), "w")  # noqa: SIM115 - held until remove()
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock.write(f"pid {os.getpid()}\n")
        self._lock.flush()
        os.rename(self.path / (LOCK + ".new"), self.path / LOCK)

    def record_shm_prefix(self, prefix: str) -> None:
        """The prefix of the shared memory segments of this server's stubs (/dev/shm/<prefix>*),
        removed with the workspace if the server dies."""
        self._lock.write(f"shm {prefix}\n")
        self._lock.flush()

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._lock.close()


def clean_dead_workspaces(tmpdir: str | Path | None = None) -> list[str]:
    """Remove what dead servers of this user left in `tmpdir` (default: $TMPDIR) and /dev/shm;
    returns a note per workspace removed."""
    notes = []
    root = Path(tmpdir or tempfile.gettempdir())
    for path in sorted(root.glob(PREFIX + "*")):
        lock = path / LOCK
        try:
            if not path.is_dir() or path.stat().st_uid != os.getuid():
                continue
            fd = os.open(lock, os.O_RDONLY)
        except OSError:  # no lock file: not ours to judge
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: a live server
                continue
            shm = [line.split(" ", 1)[1] for line in Path(lock).read_text().splitlines() if line.startswith("shm ")]
            removed = _remove_shm(shm)
            shutil.rmtree(path, ignore_errors=True)
            notes.append(f"removed {path} (its server is dead)" + (f" and {removed} shared memory segments of its "
                                                                     f"stubs" if removed else ""))
        finally:
            os.close(fd)
    return notes


def _remove_shm(prefixes: list[str]) -> int:
    removed = 0
    for prefix in prefixes:
        if not prefix or "/" in prefix:
            continue
        for segment in SHM.glob(prefix + "*"):
            try:
                if segment.stat().st_uid == os.getuid():
                    segment.unlink()
                    removed += 1
            except OSError:
                pass
    return removed
