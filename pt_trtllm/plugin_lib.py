"""Where libpt_trtllm_plugins.so (plugins/, the PT track-merge kernels, their C API and the TensorRT
plugin PTTrackMerge) is, and loading it once per process.

The library is found at, in order:
- $PT_TRTLLM_PLUGINS_LIB: the path of the .so (e.g. an installed copy next to Triton's backends);
- plugins/build/libpt_trtllm_plugins.so in this source tree (what `make plugins` builds).

TensorRT finds the PTTrackMerge creator only after the library is loaded into the process with
RTLD_GLOBAL (as TensorRT-LLM loads its own plugins): scripts/build.py does it before building an
engine whose merge_impl is "pt_plugin", the engine runner before deserializing one, and the PyTorch
runtime before `--comm pt_plugin`.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from pathlib import Path

ENV_VAR = "PT_TRTLLM_PLUGINS_LIB"
LIBRARY = "libpt_trtllm_plugins.so"
BUILD_DIR = Path(__file__).resolve().parent.parent / "plugins" / "build"


class PluginLibraryError(RuntimeError):
    """The plugin library is missing or cannot be loaded (one line, naming the path)."""


def library_path() -> Path:
    """The library this process would load (see the module docstring); raises PluginLibraryError."""
    if os.environ.get(ENV_VAR):
        path = Path(os.environ[ENV_VAR])
        if not path.is_file():
            raise PluginLibraryError(f"{ENV_VAR}={path} is not a file")
        return path
    path = BUILD_DIR / LIBRARY
    if not path.is_file():
        raise PluginLibraryError(f"{LIBRARY} not found: build it with `make plugins` (it lands in {BUILD_DIR}) "
                                 f"or set {ENV_VAR} to its path")
    return path


@lru_cache(maxsize=None)
def load() -> ctypes.CDLL:
    """Load the library once, with RTLD_GLOBAL (TensorRT's plugin registry then sees PTTrackMerge)."""
    path = library_path()
    try:
        return ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as e:  # e.g. libnccl.so.2 or libcudart.so.13 not on the loader's path
        raise PluginLibraryError(f"cannot load {path}: {e}") from None
