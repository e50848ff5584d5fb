"""What PyTriton 0.7's `tritonserver` needs from this process, set up by rank 0 before it starts:
the environment (this interpreter's libpython, numpy < 2, no shared-memory tensor store), two
patches to the copies of PyTriton's proxy in the server's model store, and the temporary workspace
that holds them (docs/serving.md, "The environment")."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tempfile
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


def make_workspace() -> Path:
    """A fresh temporary directory for PyTriton's workspace and the libpython link."""
    return Path(tempfile.mkdtemp(prefix="pt_serve_"))


def remove_workspace(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
