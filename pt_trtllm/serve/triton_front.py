"""The Triton front (a `Front`): PyTriton's tritonserver with the models of triton_models.py, on
HTTP, gRPC and metrics ports: its configuration, start, liveness and stop, and its workspace."""

from __future__ import annotations

import logging
import math

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

    def check(self) -> None:
        check_ports(self.host, self.ports)

    def start(self, backend: Backend, interruptible) -> None:
        from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy

        from .pytriton_env import make_workspace, patch_pytriton_proxy, prepare_environment
        from .triton_models import PTModels, bind

        self.workspace = make_workspace()
        for note in prepare_environment(self.workspace):
            LOG.info(note)
        p = self.ports
        config = TritonConfig(http_address=self.host, http_port=p["http_port"], grpc_address=self.host,
                              grpc_port=p["grpc_port"], metrics_address=self.host, metrics_port=p["metrics_port"],
                              exit_timeout_secs=max(1, math.ceil(self.drain_timeout)),
                              log_verbose=1 if self.verbose else None)
        # a local model store: tritonserver loads every model before it opens its ports, so "ready"
        # is never answered before the models can serve (PyTriton's default loads them afterwards)
        policy = TritonLifecyclePolicy(launch_triton_on_startup=False, local_model_store=True)
        self.triton = Triton(config=config, workspace=self.workspace / "pytriton", triton_lifecycle_policy=policy)
        max_batch = backend.scheduler.max_batch
        bind(self.triton, PTModels(backend), max_batch, self.instances or min(max_batch, 32))
        for note in patch_pytriton_proxy(self.workspace / "pytriton" / "model-store"):
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
        from .pytriton_env import remove_workspace

        stopped = super().stop(timeout)
        if self.workspace is not None:
            remove_workspace(self.workspace)
        return stopped
