"""The PyTriton binding: Triton models `pt` (request/response, HTTP and gRPC) and `pt_stream`
(decoupled: one response per generated token, gRPC streaming or HTTP `generate_stream`), both fed
to rank 0's scheduler; and the environment PyTriton's `tritonserver` needs.

`pt` is a plain Python-backend model: Triton runs one request per model instance at a time, so it
gets `instances` instances (one per KV-cache slot by default) for requests to run concurrently and
join the running batch. `pt_stream` is decoupled, so one instance takes any number of requests.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np

from .detok import IncrementalDetokenizer
from .requests import Limits, RequestError, make_generator, parse_request
from .scheduler import Scheduler, Sequence

MODEL, STREAM_MODEL = "pt", "pt_stream"


# ---- the environment of PyTriton's tritonserver -------------------------------------------------------
def prepare_environment(workdir: Path) -> list[str]:
    """Make PyTriton work on this interpreter; returns notes of what was done.

    PyTriton 0.7 needs numpy < 2 (its serializers), and its Python-backend stub links
    `libpython3.X.so.1.0` dynamically. Without help the dynamic linker finds the system's copy
    (e.g. /lib/x86_64-linux-gnu) instead of this interpreter's (pyenv, conda, a custom prefix):
    the stub then runs a different patch release of CPython against this interpreter's standard
    library and model loading fails (e.g. "'_thread.RLock' object has no attribute
    '_recursion_count'"). So: a directory holding only a link to this interpreter's libpython goes
    first on LD_LIBRARY_PATH, which tritonserver and its stubs inherit. Only that library is
    redirected (prepending all of LIBDIR could shadow other libraries)."""
    major = int(np.__version__.split(".")[0])
    if major >= 2:
        raise RuntimeError(f"PyTriton 0.7 needs numpy < 2, found numpy {np.__version__}: pip install 'numpy<2'")
    # Token ids are small: PyTriton's Base64 path over its sockets instead of its shared-memory
    # tensor store, which starts a multiprocessing manager per model whose shutdown races the
    # stubs' (slow exits, stray processes, leaked /dev/shm segments).
    os.environ["PYTRITON_NO_TENSORSTORE"] = "1"
    notes = ["PYTRITON_NO_TENSORSTORE=1"]
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    lib = Path(libdir or "") / (soname or "")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and soname and lib.is_file():
        shim = workdir / "libpython"
        shim.mkdir(parents=True, exist_ok=True)
        link = shim / soname
        if not link.exists():
            link.symlink_to(lib)
        old = os.environ.get("LD_LIBRARY_PATH")
        os.environ["LD_LIBRARY_PATH"] = str(shim) + (os.pathsep + old if old else "")
        notes.append(f"LD_LIBRARY_PATH starts with {shim} ({soname} -> {lib})")
    else:
        notes.append(f"this Python ({sys.executable}) has no shared libpython; PyTriton's stub will use the "
                     f"system's libpython{sys.version_info.major}.{sys.version_info.minor}")
    return notes


_HANDSHAKE_CONNECT = """        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(0.0, should_stop_before_s - time.time()))
        sock.connect(socket_path.as_posix())
"""
_HANDSHAKE_CONNECT_RETRY = """        while True:  # patched by pt_trtllm: the socket may exist before it listens
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(max(0.0, should_stop_before_s - time.time()))
            try:
                sock.connect(socket_path.as_posix())
                break
            except ConnectionRefusedError:
                sock.close()
                sock = None
                if time.time() >= should_stop_before_s:
                    raise
                time.sleep(0.01)
"""


_SERVER_POLL = """            flag_check_interval_s = 1.0
            # have to receive messages until all requests are processed, even while shutting down
"""
_SERVER_POLL_FAST = """            flag_check_interval_s = 0.1  # patched by pt_trtllm: instances unload in 0.1 s, not 1 s
            # have to receive messages until all requests are processed, even while shutting down
"""


def patch_pytriton_proxy(model_store: Path) -> list[str]:
    """Work around two problems of PyTriton 0.7.0's multi-instance models, in the copies of its
    proxy files in this server's model store (the installed package is untouched).

    1. A start-up race. Triton initializes a model's instances in parallel. The first one starts
       a Unix-socket handshake server; the others wait (at most 1 s) for the socket file and
       connect once. Under load (many instances on few cores) the first may take longer than 1 s,
       or be preempted between bind() and listen(), and the model fails to load ("Connection
       refused" / "Timeout occurred while waiting for config file"). Patched: wait up to 60 s and
       retry a refused connect.
    2. Slow shutdown. Each instance's request loop checks for shutdown once a second and Triton
       unloads the instances one after the other: 16 instances took 16 s, more than Triton's exit
       timeout. Patched: check every 0.1 s."""
    notes = []
    for path in sorted(model_store.glob("*/*/communication.py")):
        text = path.read_text()
        patched = text.replace("timeout_s: float = 1.0) -> dict:", "timeout_s: float = 60.0) -> dict:", 1)
        patched = patched.replace(_HANDSHAKE_CONNECT, _HANDSHAKE_CONNECT_RETRY, 1)
        patched = patched.replace(_SERVER_POLL, _SERVER_POLL_FAST, 1)
        if patched.count("patched by pt_trtllm") != 2 or "timeout_s: float = 60.0) -> dict:" not in patched:
            notes.append(f"{path}: PyTriton's proxy code is not the expected one; not patched")
            continue
        path.write_text(patched)
        notes.append(f"patched {path.relative_to(model_store)}")
    return notes


def check_ports(host: str, ports: dict[str, int]) -> None:
    """ValueError naming the first port that cannot be bound (before starting tritonserver,
    which would otherwise only time out)."""
    for name, port in ports.items():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                raise ValueError(f"--{name} {port}: cannot listen on {host}:{port} ({e.strerror})") from None


def make_workspace() -> Path:
    return Path(tempfile.mkdtemp(prefix="pt_serve_"))


def remove_workspace(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---- sinks: scheduler thread -> the request's event loop ---------------------------------------------------
class _Collect:
    """Non-streaming: gather tokens; wake the request's loop once, when finished."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.ids = loop, []
        self.done = loop.create_future()

    def tokens(self, ids):
        self.ids.extend(ids)

    def finish(self, reason, error=None):
        self.loop.call_soon_threadsafe(_resolve, self.done, (reason, error))


class _Stream:
    """Streaming: every token wakes the request's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()

    def tokens(self, ids):
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ("tokens", ids))

    def finish(self, reason, error=None):
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ("end", (reason, error)))


def _resolve(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


# ---- the models ---------------------------------------------------------------------------------------------
class PTModels:
    def __init__(self, scheduler: Scheduler, tokenizer, limits: Limits):
        self.scheduler, self.tokenizer, self.limits = scheduler, tokenizer, limits

    def _sequences(self, request, sink) -> list[Sequence]:
        specs = parse_request(dict(request.items()), self.tokenizer, self.limits)
        return [Sequence(s.prompt, s.max_tokens, s.params, s.eos_ids, sink(), make_generator(s.params))
                for s in specs]

    def _text(self, ids: list[int]) -> bytes:
        return self.tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8")

    async def infer(self, requests):
        """`pt`: the whole generation of every row of each request, in one response."""
        return list(await asyncio.gather(*(self._infer_one(r) for r in requests)))

    async def _infer_one(self, request):
        loop = asyncio.get_running_loop()
        seqs = self._sequences(request, lambda: _Collect(loop))
        self.scheduler.submit(seqs)
        results = [await s.sink.done for s in seqs]
        errors = [e for _, e in results if e]
        if errors:
            raise RequestError(errors[0])
        lengths = [len(s.sink.ids) for s in seqs]
        ids = np.full((len(seqs), max(lengths)), -1, dtype=np.int32)
        for i, s in enumerate(seqs):
            ids[i, : lengths[i]] = s.sink.ids
        out = {"output_ids": ids, "sequence_length": np.array(lengths, dtype=np.int32).reshape(-1, 1)}
        if self.tokenizer is not None:
            out["text_output"] = np.array([[self._text(s.sink.ids)] for s in seqs], dtype=object)
        return out

    async def stream(self, requests):
        """`pt_stream` (decoupled): one response per step that produced text or tokens."""
        (request,) = requests  # max_batch_size 1 and no dynamic batching: one request per call
        loop = asyncio.get_running_loop()
        (seq,) = self._sequences(request, lambda: _Stream(loop))
        detok = IncrementalDetokenizer(self.tokenizer) if self.tokenizer is not None else None
        self.scheduler.submit([seq])
        while True:
            kind, value = await seq.sink.queue.get()
            ids, end = [], None
            while True:  # take everything already queued: one response for it
                if kind == "tokens":
                    ids.extend(value)
                else:
                    end = value
                if end is not None or seq.sink.queue.empty():
                    break
                kind, value = seq.sink.queue.get_nowait()
            if end is not None and end[1]:
                raise RequestError(end[1])
            text = None
            if detok is not None:
                text = detok.add(ids) + (detok.finish() if end is not None else "")
            if ids or text:
                out = {"output_ids": np.array([ids], dtype=np.int32)}
                if text is not None:
                    out["text_output"] = np.array([[text.encode("utf-8")]], dtype=object)
                yield [out]
            if end is not None:
                return


def bind(triton, models: PTModels, max_batch_size: int, instances: int) -> None:
    from pytriton.model_config import ModelConfig, Tensor

    text = models.tokenizer is not None
    inputs = ([Tensor(name="text_input", dtype=np.bytes_, shape=(1,), optional=True)] if text else []) + [
        Tensor(name="input_ids", dtype=np.int32, shape=(-1,), optional=True),
        Tensor(name="input_lengths", dtype=np.int32, shape=(1,), optional=True),
        Tensor(name="max_tokens", dtype=np.int32, shape=(1,)),
        Tensor(name="temperature", dtype=np.float32, shape=(1,), optional=True),
        Tensor(name="top_k", dtype=np.int32, shape=(1,), optional=True),
        Tensor(name="top_p", dtype=np.float32, shape=(1,), optional=True),
        Tensor(name="seed", dtype=np.uint64, shape=(1,), optional=True),
        Tensor(name="end_id", dtype=np.int32, shape=(1,), optional=True),
    ]
    outputs = ([Tensor(name="text_output", dtype=np.bytes_, shape=(-1,))] if text else []) + [
        Tensor(name="output_ids", dtype=np.int32, shape=(-1,)),
    ]
    triton.bind(MODEL, [models.infer] * instances, inputs,
                outputs + [Tensor(name="sequence_length", dtype=np.int32, shape=(1,))],
                config=ModelConfig(batching=True, max_batch_size=max_batch_size, batcher=None), strict=False)
    triton.bind(STREAM_MODEL, models.stream, inputs, outputs,
                config=ModelConfig(batching=True, max_batch_size=1, batcher=None, decoupled=True), strict=False)
