"""scripts/build.py's main, and trtllm-build --model_cls_file's path, run in-process against the
stand-in of TensorRT-LLM (tests/trtllm_standin.py: BuildConfig, PluginConfig, add_plugin_argument,
parallel_build -> build_model -> PTForCausalLM.from_checkpoint -> build, which prepares the
network's inputs and saves the engine config). Without TensorRT-LLM the script itself stops at its
import with the install hint (tests/test_trtllm_support.py), so a subprocess could not show any of
this: every refusal is asserted here on its one-line message.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import trtllm_standin as standin
from helpers import REPO
from trtllm_models import engine_checkpoint, one_torch_thread, tamm_engine_checkpoint  # noqa: F401 (autouse fixture)

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


@pytest.mark.parametrize("flags, schedule, merge_impl, merge_class", [
    ((), "block", "allreduce", "AllReduceMerge"),
    (("--schedule", "sublayer", "--merge_impl", "allreduce_fused_norm"), "sublayer", "allreduce_fused_norm",
     "FusedNormAllReduceMerge"),
])
def test_build_builds_every_rank_and_records_schedule_and_merge_impl(build_script, tmp_path, capsys, flags, schedule,
                                                                     merge_impl, merge_class):
    _, ckpt = engine_checkpoint(tmp_path / "m", qk_norm=True, combine_op="residual_sum")
    assert build(build_script, ckpt, tmp_path / "e", *flags) == 0
    recorded = json.loads((tmp_path / "e" / "config.json").read_text())["pretrained_config"]
    assert (recorded["merge_schedule"], recorded["merge_impl"], recorded["qk_norm"]) == (schedule, merge_impl, True)
    assert sorted(p.name for p in (tmp_path / "e").glob("rank*.engine")) == ["rank0.engine", "rank1.engine"]
    assert [type(m.transformer.merge).__name__ for m in standin.BUILT] == [merge_class] * 2
    assert [m.config.mapping.rank for m in standin.BUILT] == [0, 1]
    out = capsys.readouterr().out
    assert out.startswith(f"built 2 rank engines of {ckpt} -> {tmp_path / 'e'} (schedule={schedule}, merges/forward=")


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
