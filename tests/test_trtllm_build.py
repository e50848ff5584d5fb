"""scripts/build.py's main, and trtllm-build --model_cls_file's path, run in-process against the
stand-in of TensorRT-LLM (tests/trtllm_standin.py: BuildConfig, PluginConfig, add_plugin_argument,
parallel_build -> build_model -> PTForCausalLM.from_checkpoint -> build, which prepares the
network's inputs and saves the engine config). Without TensorRT-LLM the script itself stops at its
import with the install hint (tests/test_trtllm_support.py), so a subprocess could not show any of
this: every refusal is asserted here on its one-line message. merge_impl pt_plugin: build.py and
the engine runner load libpt_trtllm_plugins.so first (the stand-in's plugin_lib.load resolves the
library's path for real, from $PT_TRTLLM_PLUGINS_LIB, and records the load).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import types
from argparse import Namespace

import pytest
import trtllm_standin as standin
from helpers import REPO
from trtllm_models import engine_checkpoint, one_torch_thread, tamm_engine_checkpoint  # noqa: F401 (autouse fixture)

from pt_trtllm import plugin_lib
from pt_trtllm.trtllm import runner
from pt_trtllm.trtllm.support import MMHA_HEAD_SIZES


@pytest.fixture
def build_script(monkeypatch):
    """scripts/build.py imported with the stand-in installed as tensorrt_llm."""
    standin.install(monkeypatch)
    spec = importlib.util.spec_from_file_location("build_script", REPO / "scripts" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    standin.uninstall()


def build(script, ckpt, out, *flags) -> int:
    return script.main(["--checkpoint_dir", str(ckpt), "--output_dir", str(out), *flags])


@pytest.fixture
def library(tmp_path, monkeypatch):
    """A plugin library where $PT_TRTLLM_PLUGINS_LIB says (a file: the stand-in does not dlopen it)."""
    path = tmp_path / "lib" / plugin_lib.LIBRARY
    path.parent.mkdir()
    path.write_bytes(b"")
    monkeypatch.setenv(plugin_lib.ENV_VAR, str(path))
    return path


@pytest.mark.parametrize("flags, schedule, merge_impl, merge_class", [
    ((), "block", "allreduce", "AllReduceMerge"),
    (("--schedule", "sublayer", "--merge_impl", "allreduce_fused_norm"), "sublayer", "allreduce_fused_norm",
     "FusedNormAllReduceMerge"),
    (("--merge_impl", "pt_plugin"), "block", "pt_plugin", "PluginMerge"),
])
def test_build_builds_every_rank_and_records_schedule_and_merge_impl(build_script, tmp_path, capsys, flags, schedule,
                                                                     merge_impl, merge_class, request):
    if merge_impl == "pt_plugin":
        request.getfixturevalue("library")
    _, ckpt = engine_checkpoint(tmp_path / "m", qk_norm=True, combine_op="residual_sum")
    assert build(build_script, ckpt, tmp_path / "e", *flags) == 0
    recorded = json.loads((tmp_path / "e" / "config.json").read_text())["pretrained_config"]
    assert (recorded["merge_schedule"], recorded["merge_impl"], recorded["qk_norm"]) == (schedule, merge_impl, True)
    assert sorted(p.name for p in (tmp_path / "e").glob("rank*.engine")) == ["rank0.engine", "rank1.engine"]
    assert [type(m.transformer.merge).__name__ for m in standin.BUILT] == [merge_class] * 2
    assert [m.config.mapping.rank for m in standin.BUILT] == [0, 1]
    out = capsys.readouterr().out
    assert out.startswith(f"built 2 rank engines of {ckpt} -> {tmp_path / 'e'} (schedule={schedule}, merges/forward=")
    assert f"merge_impl={merge_impl}," in out


@pytest.mark.parametrize("how", ["flag", "checkpoint"])
def test_a_pt_plugin_build_loads_the_plugin_library_before_building(build_script, tmp_path, library, how):
    """--merge_impl pt_plugin, or a checkpoint whose merge_impl is pt_plugin: the library is loaded
    (once) before the ranks are built, each rank's merge is a PluginMerge of its own rank, sized by
    the build's max_num_tokens; other merge_impls load nothing."""
    _, ckpt = engine_checkpoint(tmp_path / "m", combine_op="residual_sum")
    assert build(build_script, ckpt, tmp_path / "plain") == 0 and standin.PLUGIN_LOADS == []
    standin.unregister_pt_plugin()
    standin.BUILT.clear()
    flags = ("--merge_impl", "pt_plugin") if how == "flag" else ()
    if how == "checkpoint":
        data = json.loads((ckpt / "config.json").read_text())
        (ckpt / "config.json").write_text(json.dumps({**data, "merge_impl": "pt_plugin"}))
    assert build(build_script, ckpt, tmp_path / "e", *flags, "--max_num_tokens", "96") == 0
    assert standin.PLUGIN_LOADS == [str(library)]
    merges = [m.transformer.merge for m in standin.BUILT]
    assert [(type(m).__name__, m.rank, m.max_tokens) for m in merges] == [("PluginMerge", 0, 96), ("PluginMerge", 1, 96)]
    assert json.loads((tmp_path / "e" / "config.json").read_text())["pretrained_config"]["merge_impl"] == "pt_plugin"


@pytest.mark.parametrize("where", ["env", "build_dir"])
def test_a_pt_plugin_build_without_the_library_is_one_line_naming_it(build_script, tmp_path, capsys, monkeypatch,
                                                                     where):
    """No library: exit status 2, one `error:` line (the library's PluginLibraryError), nothing
    built, no output directory."""
    _, ckpt = engine_checkpoint(tmp_path / "m")
    missing = tmp_path / "nowhere" / plugin_lib.LIBRARY
    if where == "env":
        monkeypatch.setenv(plugin_lib.ENV_VAR, str(missing))
        message = f"{plugin_lib.ENV_VAR}={missing} is not a file"
    else:
        monkeypatch.delenv(plugin_lib.ENV_VAR, raising=False)
        monkeypatch.setattr(plugin_lib, "BUILD_DIR", tmp_path / "build")
        message = (f"{plugin_lib.LIBRARY} not found: build it with `make plugins` (it lands in {tmp_path / 'build'}) "
                   f"or set {plugin_lib.ENV_VAR} to its path")
    assert build(build_script, ckpt, tmp_path / "e", "--merge_impl", "pt_plugin") == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {message}\n" and captured.out == ""
    assert standin.BUILT == [] and standin.PREPARED == [] and not (tmp_path / "e").exists()


# ---- the engine runner ----------------------------------------------------------------------------
def run_args(engine_dir) -> Namespace:
    return Namespace(engine_dir=str(engine_dir), max_output_len=4, input_text=None, tokenizer_dir=None,
                     input_ids="1,2,3", schedule=None, temperature=0.0, top_k=0, top_p=1.0, seed=None, end_id=None,
                     output_json=None, output_logits=None)


class Deserialized(Exception):
    """Raised by the stand-in of runner.generate, where ModelRunnerCpp.from_dir would deserialize."""


@pytest.fixture
def run_engine_with_standin(build_script, monkeypatch):
    """runner.run_engine on this machine: tensorrt_llm._utils of 2 MPI ranks, and generate (where
    ModelRunnerCpp deserializes the engines) replaced by one that records the plugin loads so far."""
    monkeypatch.setitem(sys.modules, "tensorrt_llm._utils",
                        types.SimpleNamespace(mpi_rank=lambda: 0, mpi_world_size=lambda: 2,
                                              mpi_broadcast=lambda obj, root=0: obj))
    monkeypatch.setenv(runner.JOB_ID, "")  # teardown restores it, whatever run_engine sets
    monkeypatch.delenv(runner.JOB_ID)
    seen = []

    def generate(info, prompts, args, eos_ids, rank):
        seen.append(list(standin.PLUGIN_LOADS))
        raise Deserialized

    monkeypatch.setattr(runner, "generate", generate)
    return seen


def test_the_runner_loads_the_plugin_library_before_deserializing_a_pt_plugin_engine(
        build_script, run_engine_with_standin, tmp_path, library, monkeypatch, capsys):
    """The runner loads the library (and sets the rendezvous job id to rank 0's uuid) before the
    engines of a pt_plugin build are deserialized, for those engines only; a missing library is one
    line, exit 2, nothing deserialized."""
    _, ckpt = engine_checkpoint(tmp_path / "m")
    assert build(build_script, ckpt, tmp_path / "plain", "--max_seq_len", "32") == 0
    assert build(build_script, ckpt, tmp_path / "e", "--merge_impl", "pt_plugin", "--max_seq_len", "32") == 0
    standin.PLUGIN_LOADS.clear()
    with pytest.raises(Deserialized):
        runner.run_engine(run_args(tmp_path / "plain"))
    assert runner.JOB_ID not in os.environ  # only the plugin's rendezvous needs a job id
    with pytest.raises(Deserialized):
        runner.run_engine(run_args(tmp_path / "e"))
    assert run_engine_with_standin == [[], [str(library)]]  # the pt_plugin engine only, and before deserializing
    assert re.fullmatch(r"[0-9a-f]{32}", os.environ[runner.JOB_ID])  # rank 0's uuid, broadcast
    missing = tmp_path / "nowhere" / plugin_lib.LIBRARY
    monkeypatch.setenv(plugin_lib.ENV_VAR, str(missing))
    capsys.readouterr()
    assert runner.run_engine(run_args(tmp_path / "e")) == 2
    assert capsys.readouterr().err == f"error: {plugin_lib.ENV_VAR}={missing} is not a file\n"
    assert len(run_engine_with_standin) == 2  # never deserialized


def test_a_tamm_checkpoint_builds(build_script, tmp_path):
    """Every tamm PT model has QK-norm: its converted checkpoint builds, with the fused merge too."""
    _, ckpt = tamm_engine_checkpoint(tmp_path)
    assert build(build_script, ckpt, tmp_path / "e", "--merge_impl", "allreduce_fused_norm") == 0
    recorded = json.loads((tmp_path / "e" / "config.json").read_text())["pretrained_config"]
    assert (recorded["qk_norm"], recorded["rope_style"], recorded["merge_impl"]) == (True, "gptj",
                                                                                     "allreduce_fused_norm")
    assert [type(m.transformer.layers[0].attention).__name__ for m in standin.BUILT] == ["QKNormAttention"] * 2


@pytest.mark.parametrize("overrides, flags, message", [
    ({}, ("--gemm_allreduce_plugin", "float16"),
     "--gemm_allreduce_plugin is not supported by the PT network definition: TensorRT-LLM's RowLinear would "
     "all-reduce inside every track"),
    ({}, ("--lora_plugin", "auto"), "--lora_plugin is not supported by the PT network definition"),
    ({}, ("--user_buffer", "enable"), "--user_buffer is not supported by the PT network definition"),
    ({"qk_norm": True}, ("--gpt_attention_plugin", "disable"), "qk_norm=True needs the GPT attention plugin"),
    ({"head_dim": 16}, (), f"head_dim=16 is not supported by TensorRT-LLM's GPT attention plugin, whose generation "
                           f"kernels take head sizes {', '.join(map(str, MMHA_HEAD_SIZES))}"),
    ({"num_tracks": 3, "num_attention_heads": 3, "num_key_value_heads": 3, "intermediate_size": 96}, (),
     "hidden_size=64 is not a multiple of num_tracks=3"),
    ({"hidden_size": 68}, ("--merge_impl", "allreduce_fused_norm"),
     "merge_impl='allreduce_fused_norm' needs hidden_size % 8 == 0"),
], ids=["gemm-allreduce", "lora", "user-buffer", "no-attention-plugin", "head-size", "hidden-size", "fused-vector"])
def test_build_refuses_by_name_in_one_line(build_script, tmp_path, capsys, overrides, flags, message):
    _, ckpt = engine_checkpoint(tmp_path / "m", **overrides)
    assert build(build_script, ckpt, tmp_path / "e", *flags) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {message}") and captured.err.count("\n") == 1
    assert captured.out == ""


def test_plugins_are_refused_before_anything_is_built(build_script, tmp_path, capsys):
    _, ckpt = engine_checkpoint(tmp_path / "m")
    assert build(build_script, ckpt, tmp_path / "e", "--gemm_allreduce_plugin", "bfloat16") == 2
    assert standin.BUILT == [] and standin.PREPARED == [] and not (tmp_path / "e").exists()


def test_unknown_choices_are_argparse_errors(build_script, tmp_path):
    _, ckpt = engine_checkpoint(tmp_path / "m")
    for flags in (("--merge_impl", "fused"), ("--schedule", "none"), ("--gemm_allreduce_plugin", "float32")):
        with pytest.raises(SystemExit):
            build(build_script, ckpt, tmp_path / "e", *flags)


def test_trtllm_build_with_model_cls_file_honours_merge_impl_and_gets_the_same_refusals(build_script, tmp_path):
    """trtllm-build: the --model_cls_file module registers PTForCausalLM, PretrainedConfig.from_json_file
    reads the checkpoint (its merge_impl included), parallel_build builds each rank; the network
    refuses the plugin config build.py refuses, with the same message."""
    model_cls = sys.modules["pt_trtllm.trtllm.model"].PTForCausalLM
    _, ckpt = engine_checkpoint(tmp_path / "m")
    data = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**data, "merge_impl": "allreduce_fused_norm"}))
    config = standin.PretrainedConfig.from_json_file(str(ckpt / "config.json"))
    standin.parallel_build(config, str(ckpt), standin.BuildConfig(), str(tmp_path / "e"), 1, "info", model_cls)
    assert json.loads((tmp_path / "e" / "config.json").read_text())["pretrained_config"]["merge_impl"] \
        == "allreduce_fused_norm"
    assert {type(m.transformer.merge).__name__ for m in standin.BUILT} == {"FusedNormAllReduceMerge"}
    plugins = standin.PluginConfig(gemm_allreduce_plugin="float16")
    with pytest.raises(ValueError, match="^--gemm_allreduce_plugin is not supported by the PT network definition"):
        standin.parallel_build(config, str(ckpt), standin.BuildConfig(plugin_config=plugins), str(tmp_path / "f"),
                               1, "info", model_cls)
