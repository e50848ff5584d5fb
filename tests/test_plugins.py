"""plugins/ (libpt_trtllm_plugins.so): builds with CMake into a scratch directory, then its CPU unit tests
of the merge arithmetic run (ctest) and the library exports the C API (the build also compiles the C API
header as C99).

Skips, with the reason, where nvcc or cmake is absent; without the NCCL wheel (nvidia-nccl-cu13, which
`make plugins` installs) the kernels are still compiled and the arithmetic tested, and only the library
check skips. Nothing here runs on a GPU (the kernels and the NCCL transport are compiled and linked, not run).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import REPO

PLUGINS = REPO / "plugins"
C_API = ("pt_merge_get_unique_id", "pt_merge_create", "pt_merge_run", "pt_merge_destroy", "pt_merge_last_error")


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    return found or ("/usr/local/bin/nvcc" if os.access("/usr/local/bin/nvcc", os.X_OK) else None)


def _nccl_root() -> Path | None:
    try:
        spec = importlib.util.find_spec("nvidia.nccl")
    except ModuleNotFoundError:  # no nvidia namespace package at all
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    nvcc, cmake, nccl = _nvcc(), shutil.which("cmake"), _nccl_root()
    if nvcc is None:
        pytest.skip("nvcc not found: plugins/ needs the CUDA toolkit")
    if cmake is None:
        pytest.skip("cmake not found (`make plugins` installs it from PyPI)")
    build = tmp_path_factory.mktemp("plugins-build")
    _run([cmake, "-S", str(PLUGINS), "-B", str(build), f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DNCCL_ROOT={nccl or ''}",
          "-DCMAKE_BUILD_TYPE=Release"])
    _run([cmake, "--build", str(build), "-j", str(min(os.cpu_count() or 1, 4))])
    return build


def test_merge_arithmetic_on_cpu(build_dir):
    done = _run([shutil.which("ctest"), "--output-on-failure"], cwd=build_dir)
    assert "100% tests passed" in done.stdout
    report = _run([str(build_dir / "test_merge_math")]).stdout
    assert report.strip().endswith(" 0 failures") and int(report.split()[-4]) > 10000, report[-2000:]


def test_library_exports_the_c_api(build_dir):
    if _nccl_root() is None:
        pytest.skip("the NCCL wheel is not installed (pip install nvidia-nccl-cu13; `make plugins` does): "
                    "the library with its NCCL transport was not built")
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found")
    symbols = _run([nm, "-D", "--defined-only", str(build_dir / "libpt_trtllm_plugins.so")]).stdout.split()
    assert sorted(s for s in symbols if s.startswith("pt_merge")) == sorted(C_API)

