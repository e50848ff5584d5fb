"""The TensorRT-LLM engine path end to end. Needs TensorRT-LLM 1.2.1 (TensorRT 10.x), a GPU to build
and two GPUs plus mpirun to run; skipped with the reason otherwise. Tiny random 2-track models
(fp16, head size 32, with and without QK-norm) are converted, built with scripts/build.py and with
trtllm-build --model_cls_file (each engine recording its schedule and merge_impl), their networks are
inspected (exactly L/D merge nodes under "block", 2L under "sublayer", no other collective, with
every merge implementation: AllReduce plugin layers, or PTTrackMerge layers for pt_plugin, counted by
pt_trtllm.trtllm.nodes), and `mpirun -n 2 scripts/run.py` on the engines gives the PyTorch runtime's
tokens. The pt_plugin cases also need libpt_trtllm_plugins.so built with TensorRT (`make plugins`,
pt_trtllm/plugin_lib.py), skipped with the reason otherwise. scripts/trtllm_selftest.py runs a wider
matrix the same way."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, make_pt_model
from trtllm_models import ENGINE_TINY

from pt_trtllm import plugin_lib
from pt_trtllm.convert.writer import convert
from pt_trtllm.merge import MERGE_IMPLS
from pt_trtllm.schedule import merges_per_forward
from pt_trtllm.trtllm.detect import is_engine_dir

pytest.importorskip("tensorrt_llm",
                    reason="TensorRT-LLM 1.2.1 is not installed (the engine tests need it, a GPU and mpirun)")

if not torch.cuda.is_available():
    pytest.skip("building TensorRT engines needs a GPU", allow_module_level=True)

BUILD, RUN = str(REPO / "scripts" / "build.py"), str(REPO / "scripts" / "run.py")
MPIRUN = shutil.which("mpirun") or shutil.which("mpiexec")
PROMPTS = [[5, 17, 33, 2, 90, 60, 7], [40, 3, 3, 25, 11, 64, 1]]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
       "PYTHONUNBUFFERED": "1", "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
SHAPES = ["--max_batch_size", "2", "--max_input_len", "16", "--max_seq_len", "32"]
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2 or MPIRUN is None,
                                    reason="running the engines needs 2 GPUs and mpirun")


def plugin_library_missing() -> str | None:
    """Why the pt_plugin cases cannot run here (the library's one-line error), or None."""
    try:
        plugin_lib.library_path()
    except plugin_lib.PluginLibraryError as e:
        return str(e)
    return None


def needs_plugin_library(merge_impl: str) -> None:
    if merge_impl == "pt_plugin" and plugin_library_missing():
        pytest.skip(f"merge_impl pt_plugin needs the plugin library: {plugin_library_missing()}")


def run(cmd: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO, check=False)


@pytest.fixture(scope="session", params=[False, True], ids=["rope-in-plugin", "qk-norm-in-graph"])
def tiny(request, tmp_path_factory):
    """A random 2-track PT model of a supported head size (block schedule, combine_op residual_sum
    so that its sublayer engine is its TP form; with and without QK-norm) and its fp16 per-rank
    checkpoint."""
    model = make_pt_model("tiny", seed=3, **ENGINE_TINY, combine_op="residual_sum", qk_norm=request.param,
                          rope_style="gptj" if request.param else "neox")
    hf = tmp_path_factory.mktemp("hf")
    model.save_pretrained(hf)
    ckpt = tmp_path_factory.mktemp("ckpt") / "ckpt"
    convert(hf, ckpt, dtype="float16", progress=False)
    return model, ckpt


@pytest.fixture(scope="session")
def engines(tiny, tmp_path_factory):
    """{schedule: engine dir} built by scripts/build.py from the same checkpoint."""
    _, ckpt = tiny
    out = {}
    for schedule, merge_impl in (("block", []), ("sublayer", ["--merge_impl", "allreduce_fused_norm"])):
        dst = tmp_path_factory.mktemp(f"engines_{schedule}")
        r = run([sys.executable, BUILD, "--checkpoint_dir", str(ckpt), "--output_dir", str(dst), "--schedule",
                 schedule, *merge_impl, "--gather_context_logits", "--output_timing_cache", str(dst / "model.cache"),
                 *SHAPES])
        assert r.returncode == 0, r.stderr[-3000:]
        out[schedule] = dst
    return out


@pytest.mark.parametrize("merge_impl", MERGE_IMPLS)
@pytest.mark.parametrize("schedule", ["block", "sublayer"])
def test_the_network_holds_exactly_the_merges(tiny, schedule, merge_impl):
    """Rank 0's network, built by TensorRT-LLM's builder (dry run), counted by the one helper
    (pt_trtllm.trtllm.nodes): AllReduce layers, or PTTrackMerge layers for pt_plugin, and nothing else."""
    from pt_trtllm.trtllm.nodes import CollectiveNodes, network_collective_nodes

    needs_plugin_library(merge_impl)
    model, ckpt = tiny
    cfg = model.config
    expected = merges_per_forward(schedule, cfg.num_hidden_layers, cfg.block_depth)
    assert expected == (cfg.num_hidden_layers // cfg.block_depth if schedule == "block" else 2 * cfg.num_hidden_layers)
    assert network_collective_nodes(ckpt, schedule, merge_impl) == CollectiveNodes.expected(merge_impl, expected)


def test_build_writes_t_rank_engines_recording_their_schedule_and_merge_impl(tiny, engines):
    for schedule, path in engines.items():
        assert is_engine_dir(path) and sorted(p.name for p in path.glob("rank*.engine")) == ["rank0.engine",
                                                                                            "rank1.engine"]
        recorded = json.loads((path / "config.json").read_text())["pretrained_config"]
        merge_impl = "allreduce_fused_norm" if schedule == "sublayer" else "allreduce"
        assert (recorded["merge_schedule"], recorded["merge_impl"]) == (schedule, merge_impl)


def test_trtllm_build_with_model_cls_file_builds_the_same_engines(tiny, tmp_path):
    _, ckpt = tiny
    trtllm_build = shutil.which("trtllm-build")
    if trtllm_build is None:
        pytest.skip("trtllm-build is not on PATH")
    r = run([trtllm_build, "--checkpoint_dir", str(ckpt), "--output_dir", str(tmp_path / "e"), "--model_cls_file",
             str(REPO / "pt_trtllm" / "trtllm" / "model.py"), "--model_cls_name", "PTForCausalLM", "--workers", "1",
             "--output_timing_cache", str(tmp_path / "model.cache"), *SHAPES])
    assert r.returncode == 0, r.stderr[-3000:]
    assert is_engine_dir(tmp_path / "e")
    recorded = json.loads((tmp_path / "e" / "config.json").read_text())["pretrained_config"]
    assert (recorded["merge_schedule"], recorded["merge_impl"]) == ("block", "allreduce")  # the checkpoint's


def mpirun_run(engine_dir, tmp_path, *args: str) -> subprocess.CompletedProcess:
    ids = ";".join(",".join(map(str, p)) for p in PROMPTS)
    env = {**ENV, "PT_TRTLLM_JOB_ID": f"pt-engine-test-{os.getpid()}-{tmp_path.name}",
           "PT_TRTLLM_RENDEZVOUS_DIR": str(tmp_path)}  # read by PTTrackMerge (pt_plugin engines)
    return subprocess.run([MPIRUN, "-n", "2", sys.executable, RUN, "--engine_dir", str(engine_dir), "--input_ids", ids,
                           "--max_output_len", "8", *args], capture_output=True, text=True, timeout=600, env=env,
                          cwd=REPO, check=False)


@needs_two_gpus
@pytest.mark.parametrize("schedule", ["block", "sublayer"])
@pytest.mark.parametrize("built", ["engines", "plugin_engines"])
def test_engines_give_the_pytorch_runtime_tokens(tiny, request, tmp_path, schedule, built):
    """Same fp16 checkpoint, same schedule, greedy: the engines' tokens are the PyTorch runtime's;
    the prefill logits are the fp32 single-process model's within fp16 accuracy. For engines whose
    merges are AllReduce nodes and for engines whose merges are PTTrackMerge nodes (the runner
    loads the plugin library before deserializing them)."""
    model, ckpt = tiny
    ref = mpirun_run(ckpt, tmp_path, "--schedule", schedule, "--output_json", str(tmp_path / "ref.json"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    r = mpirun_run(request.getfixturevalue(built)[schedule], tmp_path, "--output_json", str(tmp_path / "trt.json"), "--output_logits",
                   str(tmp_path / "logits.npy"))
    assert r.returncode == 0, r.stderr[-3000:]
    out, expected = json.loads((tmp_path / "trt.json").read_text()), json.loads((tmp_path / "ref.json").read_text())
    assert out["schedule"] == schedule
    assert out["merges_per_forward"] == expected["merges_per_forward"]
    assert out["output_ids"] == expected["output_ids"]
    with torch.no_grad():
        ref_logits = model(torch.tensor(PROMPTS), schedule=schedule).logits.numpy()
    logits = np.load(tmp_path / "logits.npy")
    assert logits.shape == ref_logits.shape and logits.dtype == np.float32
    assert float(np.abs(logits - ref_logits).max()) <= 5e-2


@needs_two_gpus
def test_a_schedule_that_contradicts_the_engine_is_refused(engines, tmp_path):
    r = mpirun_run(engines["block"], tmp_path, "--schedule", "sublayer")
    assert r.returncode != 0 and "contradicts the engine" in r.stderr


@pytest.fixture(scope="session")
def plugin_engines(tiny, tmp_path_factory):
    """{schedule: engine dir} built by scripts/build.py --merge_impl pt_plugin from the same checkpoint."""
    needs_plugin_library("pt_plugin")
    _, ckpt = tiny
    out = {}
    for schedule in ("block", "sublayer"):
        dst = tmp_path_factory.mktemp(f"plugin_engines_{schedule}")
        r = run([sys.executable, BUILD, "--checkpoint_dir", str(ckpt), "--output_dir", str(dst), "--schedule",
                 schedule, "--merge_impl", "pt_plugin", "--gather_context_logits", "--output_timing_cache",
                 str(dst / "model.cache"), *SHAPES])
        assert r.returncode == 0, r.stderr[-3000:]
        out[schedule] = dst
    return out


def test_pt_plugin_engines_record_their_merge_impl(plugin_engines):
    """build.py --merge_impl pt_plugin writes merge_impl and the schedule into each engine's config."""
    for schedule, path in plugin_engines.items():
        recorded = json.loads((path / "config.json").read_text())["pretrained_config"]
        assert (recorded["merge_schedule"], recorded["merge_impl"]) == (schedule, "pt_plugin")

