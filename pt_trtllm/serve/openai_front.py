"""The OpenAI front (a `Front`): the app of openai_app.py served by uvicorn on `--openai_port`, in a
thread of rank 0's process (next to the scheduler, which it feeds like the Triton front does)."""

from __future__ import annotations

import logging
import threading
import time

from .front import Backend, Front, check_ports


class OpenAIFront(Front):
    what = "the OpenAI API server"
    gone = "the OpenAI API server exited"

    def __init__(self, host: str, port: int, model_name: str, drain_timeout: float, verbose: bool = False):
        self.host, self.port, self.model_name = host, port, model_name
        self.drain_timeout, self.verbose = drain_timeout, verbose
        self.server = None
        self.thread: threading.Thread | None = None

    def check(self) -> None:
        check_ports(self.host, {"openai_port": self.port})

    def start(self, backend: Backend, interruptible) -> None:
        import uvicorn

        from .openai_app import make_app

        level = logging.INFO if self.verbose else logging.WARNING
        config = uvicorn.Config(make_app(backend, self.model_name), host=self.host, port=self.port,
                                log_config=None, log_level=level, access_log=self.verbose, lifespan="off",
                                timeout_graceful_shutdown=max(1, round(self.drain_timeout)))
        self.server = uvicorn.Server(config)  # in a thread it leaves the signals to the lifecycle
        self.thread = threading.Thread(target=self.server.run, name="openai-front", daemon=True)
        self.thread.start()
        with interruptible():
            while not self.server.started:
                if not self.thread.is_alive():
                    raise RuntimeError(f"uvicorn did not start on {self.host}:{self.port} (see the log above)")
                time.sleep(0.01)

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def endpoints(self) -> str:
        return f"OpenAI API http://{self.host}:{self.port}/v1 (model {self.model_name!r})"

    def shutdown(self) -> None:
        """Stop accepting, let open responses finish (at most --drain_timeout s), stop."""
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join()
