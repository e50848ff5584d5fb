"""What PyTriton 0.7's `tritonserver` needs from this process, set up by rank 0 before it starts:
the environment (this interpreter's libpython, numpy < 2, no shared-memory tensor store) and the
patches to the copies of PyTriton's proxy in the server's model store (docs/serving.md, "The
environment")."""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
from pathlib import Path

import numpy as np


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


_MODEL_HELPERS = """LOGGER = logging.getLogger(__name__)

# ---- added by pt_trtllm (pytriton_env.py): one-line request errors with Triton's codes, and
# requests Triton cancelled reported to the server (serve/triton_cancel.py)
_PT_ERRORS = {"pt_trtllm.serve.requests.RequestError: ": "INVALID_ARG",
              "pt_trtllm.serve.requests.Unavailable: ": "UNAVAILABLE"}
_PT_CANCEL_SOCKET = @CANCEL_SOCKET@
_PT_POLL_S = 0.1


def _pt_triton_error(payload):
    text = payload.decode("utf-8", "replace")
    for prefix, code in _PT_ERRORS.items():
        if text.startswith(prefix) and "\\n" not in text.rstrip("\\n"):
            return pb_utils.TritonError(text[len(prefix):].strip(), getattr(pb_utils.TritonError, code))
    return pb_utils.TritonError(text)


def _pt_error_responses(payload, n):
    error = _pt_triton_error(payload)
    if error.code() == pb_utils.TritonError.INTERNAL:
        return pb_utils.TritonModelException(payload.decode("utf-8"))
    return [pb_utils.InferenceResponse(error=error) for _ in range(n)]


def _pt_key(requests_id, i):
    return f"{os.getpid()}-{requests_id.hex()}-{i}"


def _pt_cancel_keys(requests, requests_id):
    for i, request in enumerate(requests):
        request.parameters = {**(request.parameters or {}), "pt_cancel_key": _pt_key(requests_id, i)}


class _PtCancelPoll:
    def __init__(self, cancellables, requests_id):
        self.cancellables, self.requests_id = cancellables, requests_id
        self.last, self.done = 0.0, _PT_CANCEL_SOCKET is None

    async def get(self, queue):
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), _PT_POLL_S)
            except asyncio.TimeoutError:
                item = None
            if not self.done and time.monotonic() - self.last >= _PT_POLL_S:
                self.last = time.monotonic()
                self._check()
            if item is not None:
                return item

    def _check(self):
        try:
            if any(c.is_cancelled() for c in self.cancellables):
                self.done = True
                keys = " ".join(_pt_key(self.requests_id, i) for i in range(len(self.cancellables)))
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                    s.sendto(keys.encode(), _PT_CANCEL_SOCKET)
        except Exception as e:  # never let the check break the request
            self.done = True
            LOGGER.warning(f"pt_trtllm: cannot report a cancelled request: {e}")
"""
_MODEL_PATCHES = [  # (PyTriton 0.7.0's text, the replacement): each must match exactly once
    ("import pathlib\n", "import pathlib\nimport socket\nimport time\n"),
    ("LOGGER = logging.getLogger(__name__)\n", None),  # the helpers above
    ("        requests_payload = self._serializer_deserializer.serialize_requests(requests)\n",
     "        _pt_cancel_keys(requests, requests_id)  # patched by pt_trtllm\n"
     "        requests_payload = self._serializer_deserializer.serialize_requests(requests)\n"),
    ("        eos = False\n        triton_responses_or_error = None\n        while not eos:\n            try:\n"
     "                flags, responses_payload = await responses_queue.get()\n",
     "        eos = False\n        triton_responses_or_error = None\n"
     "        poll = _PtCancelPoll(triton_requests, requests_id)  # patched by pt_trtllm\n"
     "        while not eos:\n            try:\n                flags, responses_payload = await poll.get(responses_queue)\n"),
    ("                    triton_responses_or_error = pb_utils.TritonModelException(  # pytype: disable=module-attr\n"
     "                        responses_payload.decode(\"utf-8\")\n                    )\n",
     "                    triton_responses_or_error = _pt_error_responses(  # patched by pt_trtllm\n"
     "                        responses_payload, len(triton_requests)\n                    )\n"),
    ("        eos = False\n        while not eos:\n            try:\n"
     "                flags, responses_payload = await responses_queue.get()\n",
     "        eos = False\n        poll = _PtCancelPoll(triton_senders, requests_id)  # patched by pt_trtllm\n"
     "        while not eos:\n            try:\n                flags, responses_payload = await poll.get(responses_queue)\n"),
    ("error=pb_utils.TritonError(responses_payload.decode(\"utf-8\"))  # pytype: disable=module-attr",
     "error=_pt_triton_error(responses_payload)  # patched by pt_trtllm"),
]


def patch_pytriton_proxy(model_store: Path, cancel_socket: Path | None) -> list[str]:
    """Patch the copies of PyTriton 0.7.0's proxy files in this server's model store (the installed
    package is untouched); returns notes of what was done. Each patch replaces a piece of text that
    must occur exactly once; a file that differs is left as it is, with a note (the server then
    runs with PyTriton's own behaviour).

    communication.py:
    1. A start-up race. Triton initializes a model's instances in parallel. The first one starts
       a Unix-socket handshake server; the others wait (at most 1 s) for the socket file and
       connect once. Under load (many instances on few cores) the first may take longer than 1 s,
       or be preempted between bind() and listen(), and the model fails to load ("Connection
       refused" / "Timeout occurred while waiting for config file"). Patched: wait up to 60 s and
       retry a refused connect.
    2. Slow shutdown. Each instance's request loop checks for shutdown once a second and Triton
       unloads the instances one after the other: 16 instances took 16 s, more than Triton's exit
       timeout. Patched: check every 0.1 s.

    model.py (the Python-backend model that forwards requests to this process):
    3. Errors. PyTriton turns any error of the inference callable into an uncoded Triton error
       (HTTP 500) wrapped in a traceback. A `RequestError` (`Unavailable`) arrives as one line;
       patched: answered as Triton's INVALID_ARG, HTTP 400 (UNAVAILABLE, 503) with just its
       message. Other errors stay as they were (500 with the traceback: a bug to report).
    4. Cancellation. PyTriton never checks whether Triton cancelled a request. Patched: each
       request gets the parameter `pt_cancel_key`, and while it runs the proxy asks Triton at most
       every 0.1 s whether it was cancelled (`is_cancelled()` of the request, or of the response
       sender for the decoupled model) and then reports the keys to `cancel_socket`
       (triton_cancel.py). Nothing else changes: responses still flow until the server ends the
       request (at its next step)."""
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
    socket_path = str(cancel_socket) if cancel_socket is not None else None
    for path in sorted(model_store.glob("*/*/model.py")):
        text = path.read_text()
        if any(text.count(old) != 1 for old, _ in _MODEL_PATCHES):
            notes.append(f"{path}: PyTriton's proxy model is not the expected one; not patched")
            continue
        for old, new in _MODEL_PATCHES:
            text = text.replace(old, _MODEL_HELPERS.replace("@CANCEL_SOCKET@", repr(socket_path)) if new is None else new)
        path.write_text(text)
        notes.append(f"patched {path.relative_to(model_store)}")
    return notes


REQUEST_ERRORS = ("pt_trtllm.serve.requests.RequestError: ", "pt_trtllm.serve.requests.Unavailable: ")
"""How a refused request's error reaches tritonserver (one line: the class, then the message)."""


def quiet_request_errors(record: logging.LogRecord) -> bool:
    """A logging filter for PyTriton's inference handler: drop its warning (with a traceback) about a
    request the server refused; the client got the message, the server has nothing to fix."""
    last = record.getMessage().rstrip().rsplit("\n", 1)[-1]
    return not last.startswith(REQUEST_ERRORS)
