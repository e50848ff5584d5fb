"""Start `mpiexec -n T python scripts/serve.py ...` as a subprocess on free loopback ports, wait
until it is ready, and stop it (SIGTERM, then SIGKILL of every process it started). Used by the
benchmark wrapper and the tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ..serve.workspace import clean_dead_workspaces

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "scripts" / "serve.py"


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def mpiexec() -> str:
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else (shutil.which("mpiexec") or shutil.which("mpirun") or "mpiexec")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(pid))
    return tree


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> dict[int, str]:
    """pid -> start time of `pid` and every process below it (start times tell a reused pid)."""
    tree, out, todo = _children(), {}, [pid]
    while todo:
        p = todo.pop()
        start = _start_time(p)
        if start is not None:
            out[p] = start
        todo.extend(tree.get(p, []))
    return out


class ServerProcess:
    """`with ServerProcess(ckpt, ranks=2, args=[...]) as server:` -> server.http / server.grpc."""

    def __init__(self, engine_dir, ranks: int = 2, args: list[str] | None = None, host: str = "127.0.0.1",
                 log_path: str | Path | None = None, env: dict | None = None, script: str | Path = SERVE,
                 openai: bool = False):
        self.engine_dir, self.ranks, self.args, self.host = str(engine_dir), ranks, list(args or []), host
        self.http_port, self.grpc_port, self.metrics_port, port = free_ports(4, host)
        self.openai_port = port if openai else None
        """--openai_port (None: no OpenAI front)."""
        self.log_path = Path(log_path) if log_path else None
        # the server's temporary files (its Triton workspace) go here, removed with the server even
        # when a rank is killed and cannot remove them itself
        self.tmp = Path(tempfile.mkdtemp(prefix="pt-serve-proc-"))
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(self.tmp), **(env or {})}
        self.script = str(script)
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._seen: dict[int, str] = {}

    @property
    def http(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def openai(self) -> str:
        """The OpenAI API's base URL (what `openai.OpenAI(base_url=...)` takes)."""
        return f"http://{self.host}:{self.openai_port}/v1"

    def command(self) -> list[str]:
        return [mpiexec(), "-n", str(self.ranks), sys.executable, self.script, "--engine_dir", self.engine_dir,
                "--host", self.host, "--http_port", str(self.http_port), "--grpc_port", str(self.grpc_port),
                "--metrics_port", str(self.metrics_port),
                *(["--openai_port", str(self.openai_port)] if self.openai_port else []), *self.args]

    def start(self, timeout: float = 180.0) -> "ServerProcess":
        self._log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.remember()
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode} before it was ready:\n"
                                   f"{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.25)
        self.kill()
        raise TimeoutError(f"the server was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        """Triton ready (and the OpenAI API healthy, when served)."""
        return _http_ok(f"http://{self.http}/v2/health/ready") and (
            self.openai_port is None or _http_ok(f"http://{self.host}:{self.openai_port}/health"))

    def live(self) -> bool:
        return _http_ok(f"http://{self.http}/v2/health/live")

    def remember(self) -> None:
        """Record the processes the server has started (they may outlive their parents)."""
        if self.proc is not None:
            self._seen.update(descendants(self.proc.pid))

    def rank_pids(self) -> dict[int, int]:
        """rank -> pid of the serve.py processes."""
        out = {}
        for pid in descendants(self.proc.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if self.script.encode() in cmd:
                for item in env:
                    if item.startswith(b"PMI_RANK="):
                        out[int(item[9:])] = pid
        return out

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM to mpiexec (it forwards it to every rank); the exit status, or None if it had to
        be killed. Every process the server started is gone afterwards."""
        if self.proc is None:
            return None
        self.remember()
        code = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                code = None
        else:
            code = self.proc.returncode
        self.kill()
        return code

    def leftovers(self) -> list[int]:
        """Processes the server started that are still running."""
        return [pid for pid, start in self._seen.items() if _start_time(pid) == start and _alive(pid)]

    def wait_for_leftovers(self, timeout: float = 10.0) -> list[int]:
        """The processes still running after up to `timeout` s (stubs exit once tritonserver is gone)."""
        deadline = time.monotonic() + timeout
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.25)
        return left

    def kill(self) -> None:
        self.remember()
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
            self._log = None
        if not self.leftovers():  # also the shared memory a killed server's stubs left (its workspace names it)
            clean_dead_workspaces(self.tmp)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def log_tail(self, chars: int = 4000) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-chars:]
        return "(no log)"

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
