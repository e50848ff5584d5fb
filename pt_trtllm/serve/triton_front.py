"""The Triton front (a `Front`): PyTriton's tritonserver with the models of triton_models.py, on
HTTP, gRPC and metrics ports: its configuration, start, liveness and stop, its workspace (and
what dead servers left, workspace.py), and the listener of Triton's cancellations
(triton_cancel.py)."""

from __future__ import annotations

import contextlib
import logging
import math
import sys

from .front import Backend, Front, check_ports
from .triton_protocol import GENERATE_MODEL, STREAM_MODEL

LOG = logging.getLogger("pt_trtllm.serve")


class TritonFront(Front):
    what = "the Triton server"
    gone = "tritonserver exited"

    def __init__(self, host: str, http_port: int, grpc_port: int, metrics_port: int, drain_timeout: float,
                 instances: int | None = None, verbose: bool = False):
        self.host, self.verbose = host, verbose
        self.ports = {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port}
        self.drain_timeout, self.instances = drain_timeout, instances
        """Instances of `pt` (default: the KV-cache slots, at most 32)."""
        self.triton = None
        self.workspace = None
        self.cancels = None

    def check(self) -> None:
        check_ports(self.host, self.ports)

    def start(self, backend: Backend, interruptible) -> None:
        from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy

        from .pytriton_env import patch_pytriton_proxy, prepare_environment, quiet_request_errors
        from .triton_cancel import MAX_PATH, SOCKET_NAME, CancelListener
        from .triton_models import PTModels, bind
        from .workspace import Workspace, clean_dead_workspaces

        logging.getLogger("pytriton.proxy.inference").addFilter(quiet_request_errors)
        for note in clean_dead_workspaces():
            print(note, flush=True)
        self.workspace = Workspace()
        for note in prepare_environment(self.workspace.path):
            LOG.info(note)
        cancel_socket = self.workspace.path / SOCKET_NAME
        if len(str(cancel_socket)) <= MAX_PATH:
            self.cancels = CancelListener(cancel_socket, backend.scheduler)
        else:
            print(f"warning: {cancel_socket} is too long for a Unix socket: Triton's cancellations are not forwarded "
                  f"(a shorter TMPDIR fixes it)", file=sys.stderr, flush=True)
        p = self.ports
        config = TritonConfig(http_address=self.host, http_port=p["http_port"], grpc_address=self.host,
                              grpc_port=p["grpc_port"], metrics_address=self.host, metrics_port=p["metrics_port"],
                              exit_timeout_secs=max(1, math.ceil(self.drain_timeout)),
                              log_verbose=1 if self.verbose else None)
        # a local model store: tritonserver loads every model before it opens its ports, so "ready"
        # is never answered before the models can serve (PyTriton's default loads them afterwards)
        policy = TritonLifecyclePolicy(launch_triton_on_startup=False, local_model_store=True)
        self.triton = Triton(config=config, workspace=self.workspace.path / "pytriton", triton_lifecycle_policy=policy)
        with contextlib.suppress(Exception):  # PyTriton's private state: without it, no shared memory clean-up
            self.workspace.record_shm_prefix(self.triton._python_backend_config["shm-region-prefix-name"])
        max_batch = backend.scheduler.max_batch
        bind(self.triton, PTModels(backend, self.cancels), max_batch, self.instances or min(max_batch, 32))
        store = self.workspace.path / "pytriton" / "model-store"
        for note in patch_pytriton_proxy(store, self.cancels.path if self.cancels else None):
            LOG.info(note)
        # PyTriton waits for tritonserver holding a lock its exit handler needs: a signal now (which
        # mpiexec also delivers to tritonserver) would leave it waiting for minutes, so it interrupts
        with interruptible():
            self.triton.run()

    def alive(self) -> bool:
        return self.triton.is_alive()

    def endpoints(self) -> str:
        p, h = self.ports, self.host
        return (f"models {GENERATE_MODEL!r} and {STREAM_MODEL!r}: http {h}:{p['http_port']} grpc {h}:{p['grpc_port']} "
                f"metrics {h}:{p['metrics_port']}")

    def shutdown(self) -> None:
        """Stop tritonserver (it may already be exiting: mpiexec forwards SIGTERM to rank 0's process
        group, and Triton then drains for exit_timeout_secs = --drain_timeout itself)."""
        if self.triton is not None:
            self.triton.stop()

    def stop(self, timeout: float) -> bool:
        """Stop tritonserver, then remove the workspace (also when it did not stop in time)."""
        stopped = super().stop(timeout)
        if self.cancels is not None:
            self.cancels.close()
        if self.workspace is not None:
            self.workspace.remove()
        return stopped
