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
import sys
from pathlib import Path

import pytest

from helpers import REPO

PLUGINS = REPO / "plugins"
C_API = ("pt_merge_get_unique_id", "pt_merge_create", "pt_merge_ipc_handle", "pt_merge_connect", "pt_merge_disconnect",
         "pt_merge_transport_for",
         "pt_merge_run", "pt_merge_destroy", "pt_merge_last_error")


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


def _library(build_dir: Path) -> Path:
    if _nccl_root() is None:
        pytest.skip("the NCCL wheel is not installed (pip install nvidia-nccl-cu13; `make plugins` does): "
                    "the library with its NCCL transport was not built")
    return build_dir / "libpt_trtllm_plugins.so"


def test_library_exports_the_c_api(build_dir):
    _library(build_dir)
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found")
    symbols = _run([nm, "-D", "--defined-only", str(build_dir / "libpt_trtllm_plugins.so")]).stdout.split()
    assert sorted(s for s in symbols if s.startswith("pt_merge")) == sorted(C_API)



def test_the_runtime_bindings_match_the_c_header(tmp_path):
    """pt_trtllm/runtime/plugin_comm.py's ctypes structures have the C header's sizes, field offsets
    and field sizes (a C program compiled against plugins/include/pt_merge.h prints them)."""
    import ctypes

    from pt_trtllm.runtime import plugin_comm

    cc, nvcc = shutil.which("cc") or shutil.which("gcc"), _nvcc()
    if cc is None or nvcc is None:
        pytest.skip("needs a C compiler and the CUDA headers (nvcc's toolkit)")
    dryrun = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull], capture_output=True, text=True).stderr
    cuda_include = dryrun.split('INCLUDES="-I', 1)[1].split('"', 1)[0]  # the toolkit's include/, as nvcc sees it
    structs = {"pt_merge_config": plugin_comm._Config, "pt_merge_norms": plugin_comm._Norms,
               "pt_merge_outputs": plugin_comm._Outputs}
    lines = [f'printf("{n} size %zu\\n", sizeof({n}));' for n in structs]
    lines += [f'printf("{n} {f} %zu %zu\\n", offsetof({n}, {f}), sizeof((({n}*)0)->{f}));'
              for n, c in structs.items() for f, _ in c._fields_]
    (tmp_path / "layout.c").write_text("#include <stddef.h>\n#include <stdio.h>\n#include \"pt_merge.h\"\n"
                                       "int main(void) {\n" + "\n".join(lines) + "\nreturn 0; }\n")
    _run([cc, "-I", str(PLUGINS / "include"), "-I", str(cuda_include), str(tmp_path / "layout.c"), "-o",
          str(tmp_path / "layout")])
    printed = {}
    for line in _run([str(tmp_path / "layout")]).stdout.splitlines():
        struct, field, *numbers = line.split()
        printed[struct, field] = [int(v) for v in numbers]
    expected = {(n, "size"): [ctypes.sizeof(c)] for n, c in structs.items()}
    expected |= {(n, f): [getattr(c, f).offset, getattr(c, f).size] for n, c in structs.items() for f, _ in c._fields_}
    assert printed == expected
    assert (plugin_comm.UNIQUE_ID_BYTES, plugin_comm.IPC_HANDLE_BYTES) == (128, 64)


CHECK_ERRORS = """
import ctypes, json
from pt_trtllm.runtime.plugin_comm import _Config, _library
lib, ctx, out = _library(), ctypes.c_void_p(), []
uid = ctypes.create_string_buffer(128)
out.append([lib.pt_merge_get_unique_id(uid), uid.raw != bytes(128)])
for args in ((5, 2, 2), (0, 17, 2), (0, 2, 1), (0, 2, 7), (0, 2, 2)):  # rank, num_ranks, transport
    rank, ranks, transport = args
    status = lib.pt_merge_create(ctypes.byref(_Config(rank, ranks, 0, None, 2, 0, 0, 64, 8, transport, 0)),
                                 ctypes.byref(ctx))
    out.append([status, lib.pt_merge_last_error().decode()])
print(json.dumps(out))
"""


def test_the_library_refuses_bad_configs_through_the_runtime_bindings(build_dir):
    """The library loads through pt_trtllm.plugin_lib ($PT_TRTLLM_PLUGINS_LIB), an NCCL id is made
    (no GPU needed), and pt_merge_create refuses each bad config with its status and a one-line
    message; a valid one-shot config gets to CUDA and fails there (no GPU here), status 2."""
    import json

    lib = _library(build_dir)
    env = {**os.environ, "PT_TRTLLM_PLUGINS_LIB": str(lib), "PYTHONPATH": str(REPO)}
    got = json.loads(_run([sys.executable, "-c", CHECK_ERRORS], env=env).stdout)
    assert got[0] == [0, True]
    assert got[1:5] == [[1, "pt_merge_create: rank 5 is not in 0..1"],
                        [1, "pt_merge_create: the one-shot transport takes at most 16 ranks, got 17"],
                        [1, "pt_merge_create: unique_id is null"],
                        [1, "pt_merge_create: unknown transport 7"]]
    status, message = got[5]
    assert status == 2 and message.startswith("pt_merge_create: device 0: ") and "\n" not in message, got[5]


def test_the_library_is_found_or_named_in_one_line(tmp_path, monkeypatch):
    """pt_trtllm.plugin_lib: $PT_TRTLLM_PLUGINS_LIB wins; a path there that is not a file, and no
    built library, are one-line errors naming what to do."""
    from pt_trtllm import plugin_lib

    lib = tmp_path / "libpt_trtllm_plugins.so"
    lib.write_bytes(b"")
    monkeypatch.setenv("PT_TRTLLM_PLUGINS_LIB", str(lib))
    assert plugin_lib.library_path() == lib
    monkeypatch.setenv("PT_TRTLLM_PLUGINS_LIB", str(tmp_path / "missing.so"))
    with pytest.raises(plugin_lib.PluginLibraryError, match=r"^PT_TRTLLM_PLUGINS_LIB=.*missing.so is not a file$"):
        plugin_lib.library_path()
    monkeypatch.delenv("PT_TRTLLM_PLUGINS_LIB")
    monkeypatch.setattr(plugin_lib, "BUILD_DIR", tmp_path / "build")
    with pytest.raises(plugin_lib.PluginLibraryError, match="not found: build it with `make plugins`"):
        plugin_lib.library_path()


def test_the_gpu_stage_compares_the_plugin_run_with_the_cpu_run(tmp_path):
    """scripts/gpu_check_plugins.py compare (the plugins stage's last step, which needs no GPU):
    it passes a pt_plugin run with the CPU run's tokens and logits within 1e-3, and fails one whose
    tokens differ, whose logits are further off, or that did not run on the plugin."""
    import json

    import numpy as np

    def write(name, ids, logits, communicator):
        (tmp_path / f"{name}.json").write_text(json.dumps({"output_ids": ids, "world_size": 2,
                                                           "communicator": communicator}))
        np.save(tmp_path / f"{name}.npy", np.asarray(logits, dtype=np.float32))

    def compare(gpu):
        done = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check_plugins.py"), "compare", "--out",
                               str(tmp_path / "out"), "--cpu_json", str(tmp_path / "cpu.json"), "--gpu_json",
                               str(tmp_path / f"{gpu}.json"), "--cpu_logits", str(tmp_path / "cpu.npy"),
                               "--gpu_logits", str(tmp_path / f"{gpu}.npy")], capture_output=True, text=True)
        return done.returncode, json.loads((tmp_path / "out" / "plugins_compare_T2.json").read_text())

    write("cpu", [[1, 2, 3]], [[0.5, 0.25]], "mpi4py")
    write("same", [[1, 2, 3]], [[0.5005, 0.25]], "pt_plugin")
    write("tokens", [[1, 2, 4]], [[0.5, 0.25]], "pt_plugin")
    write("logits", [[1, 2, 3]], [[0.502, 0.25]], "pt_plugin")
    write("nccl", [[1, 2, 3]], [[0.5, 0.25]], "nccl")
    assert compare("same") == (0, {"T": 2, "tokens_equal": True, "max_abs_logit_diff": pytest.approx(5e-4, abs=1e-6),
                                   "gpu_communicator": "pt_plugin", "ok": True})
    for bad in ("tokens", "logits", "nccl"):
        status, result = compare(bad)
        assert status == 1 and result["ok"] is False, (bad, result)
