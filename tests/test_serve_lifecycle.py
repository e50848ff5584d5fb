"""The server's life under `mpiexec -n 2` (subprocesses, free loopback ports, bounded waits, every
process cleaned up even on failure): ready only when it serves, start-up errors on every rank,
SIGTERM drains and exits 0 leaving nothing behind, a killed follower never hangs the server, and an
idle follower does not burn a core."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import make_pt_model
from pt_trtllm.convert.writer import convert
from pt_trtllm.serve.stats import stopped_line
from pt_trtllm.serve_tools.client import infer, request_inputs, stream
from pt_trtllm.serve_tools.launcher import SERVE, ServerProcess, mpiexec


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_life")
    make_pt_model("tiny", seed=4, max_position_embeddings=4096).save_pretrained(root / "hf")
    convert(root / "hf", root / "ckpt", progress=False)
    return root / "ckpt"


def test_ready_means_serving_and_an_idle_follower_sleeps(ckpt, tmp_path):
    """Polled from the moment mpiexec starts, the ready endpoint first answers 200 when the model
    answers too (tritonserver opens its ports only after every rank loaded, ran a step together
    and both models loaded); an idle follower then uses < 10% of a core; Triton's metrics count
    the requests."""
    server = ServerProcess(ckpt, 2, ["--max_batch_size", "4"], log_path=tmp_path / "server.log")
    try:
        server.proc = subprocess.Popen(server.command(), stdout=open(server.log_path, "w"),  # noqa: SIM115
                                       stderr=subprocess.STDOUT, env=server.env, start_new_session=True)
        deadline = time.monotonic() + 180
        while not server.ready():
            server.remember()
            assert server.proc.poll() is None, server.log_tail()
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.02)
        assert infer(server.http, request_inputs(input_ids=[1, 2, 3], max_tokens=4)).output_ids
        follower = server.rank_pids()[1]
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu(pid):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / ticks

        time.sleep(1.0)
        before, t0 = cpu(follower), time.monotonic()
        time.sleep(4.0)
        share = (cpu(follower) - before) / (time.monotonic() - t0)
        print(f"idle follower: {100 * share:.1f}% of a core")
        assert share < 0.10
        for _ in range(2):
            infer(server.grpc, request_inputs(input_ids=[1, 2], max_tokens=2), "grpc")
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
            metrics = r.read().decode()  # Triton's Prometheus metrics count what was served
        line = next(x for x in metrics.splitlines() if x.startswith('nv_inference_request_success{model="pt"'))
        assert float(line.rsplit(" ", 1)[1]) >= 3
    finally:
        server.stop()
    assert server.leftovers() == []


def test_sigterm_drains_running_requests_and_every_rank_exits_0(ckpt, tmp_path):
    """SIGTERM to mpiexec while a request streams: the request still completes, every rank exits
    0 (mpiexec's status), the server stops answering, no process it started is left, nothing of it
    in TMPDIR or /dev/shm, and --stats_json holds the statistics the exit line prints."""
    stats_json = tmp_path / "out" / "stats.json"
    server = ServerProcess(ckpt, 2, ["--max_batch_size", "4", "--drain_timeout", "20", "--stats_json", str(stats_json)],
                           log_path=tmp_path / "s.log")
    server.start()
    try:
        ref = infer(server.http, request_inputs(input_ids=[7, 8, 9], max_tokens=400, end_id=-1)).output_ids
        first, out = threading.Event(), {}

        def run():
            try:
                out["result"] = stream(server.grpc, request_inputs(input_ids=[7, 8, 9], max_tokens=400, end_id=-1),
                                       "grpc", 120, on_chunk=lambda chunk: first.set())
            except Exception as e:  # noqa: BLE001 - reported below
                out["error"] = e

        thread = threading.Thread(target=run)
        thread.start()
        assert first.wait(60)
        server.remember()
        shm = [shm_prefix(server.tmp)]
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(90)
        print(f"exited {code} {time.monotonic() - t0:.1f} s after SIGTERM")
        thread.join(30)
        assert "error" not in out, out.get("error")
        assert out["result"].output_ids == ref
        assert code == 0, server.log_tail()
        log = server.log_tail()
        assert "stopped (SIGTERM)" in log
        assert "2 merges per forward pass" in log  # L/D = 4/2, counted on rank 0 while serving
        stats = json.loads(stats_json.read_text())
        assert stats["state"] == "stopped" and stats["stopped_by"] == "SIGTERM" and stats["failed"] == 0
        assert stats["sequences"] == 2 and stats["decoded_tokens"] == 2 * 399 and stats["max_running"] == 1
        assert stopped_line(stats) in log
        assert not server.live()
        assert server.wait_for_leftovers() == []
        assert ours_in(server.tmp, shm) == []
    finally:
        server.kill()


def ours_in(tmpdir: Path, shm_prefixes: list[str]) -> list[str]:
    """What a server left in its TMPDIR (torch's per-user compile cache aside) and in /dev/shm."""
    left = [p.name for p in tmpdir.iterdir() if not p.name.startswith("torchinductor_")]
    return left + [p.name for prefix in shm_prefixes for p in Path("/dev/shm").glob(prefix + "*")]


def shm_prefix(tmpdir: Path) -> str:
    """The prefix of the shared memory segments of the Python-backend stubs of the server running
    with TMPDIR `tmpdir` (as its workspace records it)."""
    (lock,) = tmpdir.glob("pt_serve_*/lock")
    return next(line.split()[1] for line in lock.read_text().splitlines() if line.startswith("shm "))


def test_a_killed_follower_makes_the_server_exit_not_hang(ckpt, tmp_path):
    """SIGKILL rank 1 while requests run: within 30 s the server is unhealthy or gone, the clients
    get errors instead of waiting forever, mpiexec exits != 0 and nothing is left running."""
    server = ServerProcess(ckpt, 2, ["--max_batch_size", "4"], log_path=tmp_path / "s.log")
    server.start()
    try:
        errors, started = [], threading.Event()

        def run():
            try:
                stream(server.grpc, request_inputs(input_ids=[5, 6], max_tokens=3000, end_id=-1), "grpc", 60,
                       on_chunk=lambda chunk: started.set())
                errors.append(None)
            except Exception as e:  # noqa: BLE001 - expected
                errors.append(e)

        clients = [threading.Thread(target=run) for _ in range(2)]
        for c in clients:
            c.start()
        assert started.wait(60)
        server.remember()
        os.kill(server.rank_pids()[1], signal.SIGKILL)
        killed = time.monotonic()
        while server.ready() and time.monotonic() - killed < 30:
            time.sleep(0.2)
        print(f"not ready {time.monotonic() - killed:.1f} s after the kill")
        assert not server.ready()
        code = server.proc.wait(60)
        print(f"mpiexec exited {code} {time.monotonic() - killed:.1f} s after the kill")
        assert code != 0
        for c in clients:
            c.join(60)
            assert not c.is_alive()
        assert len(errors) == 2 and all(e is not None for e in errors)
        assert server.wait_for_leftovers() == []
    finally:
        server.kill()


def test_sigkill_of_mpiexec_then_a_restart_leaves_nothing(ckpt, tmp_path):
    """SIGKILL of mpiexec while a request streams: no rank, tritonserver or stub survives (the
    launcher takes the ranks down; each rank also watches its parent). What the dead server left in
    TMPDIR and /dev/shm is removed by the next server started with the same TMPDIR, which leaves
    nothing itself after SIGTERM."""
    dead = ServerProcess(ckpt, 2, ["--max_batch_size", "2"], log_path=tmp_path / "dead.log")
    dead.start()
    try:
        started = threading.Event()
        threading.Thread(target=lambda: _quietly(lambda: stream(
            dead.grpc, request_inputs(input_ids=[5, 6], max_tokens=3000, end_id=-1), "grpc", 60,
            on_chunk=lambda chunk: started.set())), daemon=True).start()
        assert started.wait(60)
        dead.remember()
        shm = [shm_prefix(dead.tmp)]
        assert any(p.is_dir() for p in dead.tmp.glob("pt_serve_*"))
        dead.proc.kill()
        assert dead.wait_for_leftovers(30) == [], dead.log_tail()
        print(f"left by the killed server: {ours_in(dead.tmp, shm)}")
        restarted = ServerProcess(ckpt, 2, ["--max_batch_size", "2"], log_path=tmp_path / "restarted.log",
                                  env={"TMPDIR": str(dead.tmp)})
        restarted.start()
        try:
            (mine,) = [p.name for p in dead.tmp.glob("pt_serve_*")]
            assert ours_in(dead.tmp, shm) == [mine]  # the dead server's workspace and segments are gone
            shm.append(shm_prefix(dead.tmp))
            assert infer(restarted.http, request_inputs(input_ids=[1, 2, 3], max_tokens=2)).output_ids
        finally:
            assert restarted.stop() == 0
        assert restarted.wait_for_leftovers() == []
        assert ours_in(dead.tmp, shm) == []
    finally:
        dead.kill()


def _quietly(fn):
    try:
        fn()
    except Exception:  # noqa: BLE001 - the server is killed under it
        pass


def _run(cmd, timeout=120):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_startup_errors_are_reported_by_every_rank(ckpt, tmp_path):
    """The wrong number of ranks, a port in use and a bad tokenizer directory: every rank exits
    with the error (no hang, no server left)."""
    r = _run([mpiexec(), "-n", "3", sys.executable, str(SERVE), "--engine_dir", str(ckpt)])
    assert r.returncode != 0 and r.stderr.count("needs exactly 2 ranks") == 3, r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _run([mpiexec(), "-n", "2", sys.executable, str(SERVE), "--engine_dir", str(ckpt), "--http_port",
                  str(port), "--grpc_port", "0", "--metrics_port", "0"])
    assert r.returncode == 2, r.stderr
    assert r.stderr.count(f"--http_port {port}: cannot listen on 127.0.0.1:{port}") == 2, r.stderr
    r = _run([mpiexec(), "-n", "2", sys.executable, str(SERVE), "--engine_dir", str(ckpt), "--tokenizer_dir",
              str(tmp_path / "nothing")])
    assert r.returncode == 2 and r.stderr.count("cannot load a tokenizer") == 2, r.stderr


def test_defaults_bind_loopback():
    from pt_trtllm.serve.server import parse_args

    args = parse_args(["--engine_dir", "x"])
    assert args.host == "127.0.0.1" and (args.http_port, args.grpc_port, args.metrics_port) == (8000, 8001, 8002)
