"""The parts of the TensorRT-LLM path that run without TensorRT-LLM: detecting an engine directory,
reading what an engine records, which models an engine can express, build.py's flags, the runner's
request checks and output records, the one-line errors of build.py and run.py without TensorRT-LLM,
and that the network-definition files pass ruff."""

from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import pytest
from trtllm_models import ENGINE_TINY

from pt_trtllm import PTConfig, plugin_lib
from pt_trtllm.formats import CheckpointError, rank_config
from pt_trtllm.trtllm import runner
from pt_trtllm.trtllm.detect import is_engine_dir
from pt_trtllm.merge import MERGE_IMPLS
from pt_trtllm.trtllm.support import (
    EngineInfo,
    check_build_settings,
    check_supported,
    engine_schedule,
    load_merge_plugins,
    merge_max_tokens,
    read_engine_info,
)
from pt_trtllm.trtllm.triton_repo import launch_command, options_from_engine

REPO = Path(__file__).resolve().parent.parent
TRTLLM_FILES = sorted((REPO / "pt_trtllm" / "trtllm").glob("*.py")) + [REPO / "scripts" / "build.py",
                                                                     REPO / "scripts" / "trtllm_selftest.py"]
HAS_TRTLLM = importlib.util.find_spec("tensorrt_llm") is not None


def write_engine_dir(path: Path, cfg: PTConfig, schedule: str | None = None, logits_dtype: str = "float32",
                     merge_impl: str = "allreduce", **build) -> Path:
    """An engine directory as TensorRT-LLM's Engine.save lays it out (config.json: version,
    pretrained_config = PretrainedConfig.to_dict(), build_config), with empty rank files."""
    pretrained = rank_config(cfg, "float16", merge_impl)
    pretrained["mapping"] = {**pretrained["mapping"], "gpus_per_node": 8, "cp_size": 1}
    pretrained["quantization"] = {**pretrained["quantization"], "group_size": 128}
    pretrained["logits_dtype"] = logits_dtype
    if schedule:
        pretrained["merge_schedule"] = schedule
    build_config = {"max_batch_size": 4, "max_input_len": 64, "max_seq_len": 128, "gather_context_logits": False,
                    **build}
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"version": "1.2.1", "pretrained_config": pretrained,
                                                  "build_config": build_config}))
    for rank in range(cfg.num_tracks):
        (path / f"rank{rank}.engine").write_bytes(b"")
    return path


def args(**kw) -> Namespace:
    base = {"engine_dir": None, "max_output_len": 8, "input_text": None, "tokenizer_dir": None, "input_ids": "1,2,3",
            "schedule": None, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": None, "end_id": None,
            "output_json": None, "output_logits": None}
    return Namespace(**{**base, **kw})


# ---- detection and what an engine records -------------------------------------------------------
def test_is_engine_dir_tells_engines_from_per_rank_checkpoints(tmp_path):
    engines = write_engine_dir(tmp_path / "engines", PTConfig.from_preset("tiny"))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "rank0.safetensors").write_bytes(b"")
    assert is_engine_dir(engines) and not is_engine_dir(ckpt) and not is_engine_dir(tmp_path / "missing")


def test_read_engine_info_gives_the_schedule_the_engine_was_built_with(tmp_path):
    cfg = PTConfig.from_preset("tiny", combine_op="residual_sum")
    info = read_engine_info(write_engine_dir(tmp_path / "e", cfg, schedule="sublayer", logits_dtype="float16",
                                             gather_context_logits=True))
    assert info.schedule == "sublayer" and info.cfg.combine_op == "residual_sum"
    assert (info.dtype, info.max_batch_size, info.max_input_len, info.max_seq_len) == ("float16", 4, 64, 128)
    assert info.gather_context_logits and info.logits_dtype == "float16"  # the Triton logits outputs' type


@pytest.mark.parametrize("merge_impl", MERGE_IMPLS)
def test_read_engine_info_gives_the_merge_impl_the_engine_was_built_with(tmp_path, merge_impl):
    info = read_engine_info(write_engine_dir(tmp_path / "e", PTConfig.from_preset("tiny"), merge_impl=merge_impl))
    assert info.merge_impl == merge_impl
    path = write_engine_dir(tmp_path / "old", PTConfig.from_preset("tiny"))
    data = json.loads((path / "config.json").read_text())
    del data["pretrained_config"]["merge_impl"]  # built before the field existed
    (path / "config.json").write_text(json.dumps(data))
    assert read_engine_info(path).merge_impl == "allreduce"


def test_the_plugin_library_is_loaded_for_pt_plugin_only_and_its_absence_named(tmp_path, monkeypatch):
    """support.load_merge_plugins with the real pt_trtllm.plugin_lib: nothing for the AllReduce
    merges, the library's one-line error for pt_plugin when it is missing or not a loadable library."""
    missing = tmp_path / "nowhere" / plugin_lib.LIBRARY
    monkeypatch.setenv(plugin_lib.ENV_VAR, str(missing))
    for merge_impl in ("allreduce", "allreduce_fused_norm"):
        load_merge_plugins(merge_impl)
    with pytest.raises(plugin_lib.PluginLibraryError, match=f"^{plugin_lib.ENV_VAR}={missing} is not a file$"):
        load_merge_plugins("pt_plugin")
    broken = tmp_path / plugin_lib.LIBRARY
    broken.write_bytes(b"not an ELF file")
    monkeypatch.setenv(plugin_lib.ENV_VAR, str(broken))
    with pytest.raises(plugin_lib.PluginLibraryError, match=f"^cannot load {broken}: "):
        load_merge_plugins("pt_plugin")
    with pytest.raises(ValueError, match="merge_impl='fused'"):
        load_merge_plugins("fused")


def test_merge_max_tokens_is_the_largest_input_ids_shape_of_the_profiles():
    """[tokens] profiles, or [batch, seq] ones (padded input): the most rows of any profile."""
    def dims(*maxima):
        return SimpleNamespace(min=[1] * len(maxima), opt=list(maxima), max=list(maxima))

    assert merge_max_tokens([dims(8192)]) == 8192
    assert merge_max_tokens([dims(64), dims(4096), dims(512)]) == 4096
    assert merge_max_tokens([dims(4, 1024), dims(8, 1)]) == 4096
    assert merge_max_tokens([dims(8, 1), dims(3, 5)]) == 15


def test_triton_launch_preloads_the_plugin_library_for_pt_plugin_engines(tmp_path):
    """The launch command of a pt_plugin engine preloads libpt_trtllm_plugins.so into the servers;
    the others' is launch_triton_server.py alone."""
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text("{}")
    commands = {}
    for merge_impl in MERGE_IMPLS:
        engines = write_engine_dir(tmp_path / merge_impl, PTConfig.from_preset("tiny"), merge_impl=merge_impl)
        options = options_from_engine(engines, tokenizer, tmp_path / "repo")
        assert options.merge_impl == merge_impl
        commands[merge_impl] = launch_command(options)
    plain = f"python3 triton_backend/scripts/launch_triton_server.py --world_size 2 --model_repo {tmp_path / 'repo'}"
    assert commands["allreduce"] == commands["allreduce_fused_norm"] == plain
    assert commands["pt_plugin"] == 'LD_PRELOAD="$PT_TRTLLM_PLUGINS_LIB" ' + plain


def test_read_engine_info_refuses_other_directories(tmp_path):
    with pytest.raises(CheckpointError, match=r"not found \(is --engine_dir a TensorRT-LLM engine directory\?\)"):
        read_engine_info(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        read_engine_info(tmp_path)
    (tmp_path / "config.json").write_text('{"architecture": "PTForCausalLM"}')  # a per-rank checkpoint's
    with pytest.raises(ValueError, match="not a TensorRT-LLM engine config"):
        read_engine_info(tmp_path)
    engines = write_engine_dir(tmp_path / "llama", PTConfig.from_preset("tiny"))
    data = json.loads((engines / "config.json").read_text())
    data["pretrained_config"]["architecture"] = "LlamaForCausalLM"
    (engines / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not PTForCausalLM"):
        read_engine_info(engines)


@pytest.mark.parametrize("requested", [None, "block"])
def test_the_engine_schedule_is_reported(tmp_path, requested):
    info = read_engine_info(write_engine_dir(tmp_path / "e", PTConfig.from_preset("tiny")))
    assert engine_schedule(requested, info) == "block"


@pytest.mark.parametrize("requested, match", [("sublayer", "contradicts the engine"),
                                              ("none", "not built into engines")])
def test_a_schedule_that_contradicts_the_engine_is_refused(tmp_path, requested, match):
    info = read_engine_info(write_engine_dir(tmp_path / "e", PTConfig.from_preset("tiny")))
    with pytest.raises(ValueError, match=match):
        engine_schedule(requested, info)


# ---- what an engine can express -----------------------------------------------------------------
def refusal(qk_norm: bool, dispatch: bool, combine: bool, schedule: str) -> set[str]:
    """The features that keep an engine from expressing a model exactly, as docs/trtllm.md lists
    them (empty: supported): the timing-only schedule none; sublayer with track norms. QK-norm is
    supported (in the graph)."""
    out = set()
    if schedule == "none":
        out.add("none")
    if schedule == "sublayer" and (dispatch or combine):
        out |= {"track_dispatch_norm"} if dispatch else {"track_combine_norm"}
    return out


FEATURES = list(itertools.product((False, True), (False, True), (False, True), ("block", "sublayer", "none")))
SUPPORTED = [f for f in FEATURES if not refusal(*f)]
UNSUPPORTED = [f for f in FEATURES if refusal(*f)]


def model(qk_norm: bool, dispatch: bool, combine: bool, **more) -> PTConfig:
    """The engine test model (d = 32, a head size the attention plugin supports) with these features."""
    return PTConfig.from_preset("tiny", **{**ENGINE_TINY, "qk_norm": qk_norm, "track_dispatch_norm": dispatch,
                                           "track_combine_norm": combine, **more})


@pytest.mark.parametrize("features", SUPPORTED, ids=str)
@pytest.mark.parametrize("more", [{}, {"rope_style": "gptj"}, {"combine_op": "sum"}], ids=str)
def test_supported_models(features, more):
    """Exactly the 10 documented combinations (block with or without track norms, sublayer without;
    with or without QK-norm) are accepted, whatever the RoPE style, combine op or merge_impl."""
    assert len(SUPPORTED) == 10 and {f[3] for f in SUPPORTED} == {"block", "sublayer"}
    for merge_impl in (None, *MERGE_IMPLS):
        assert check_supported(model(*features[:3], **more), features[3], merge_impl) is None


@pytest.mark.parametrize("features", UNSUPPORTED, ids=str)
def test_unsupported_models_are_refused_by_name(features):
    with pytest.raises(ValueError) as refused:
        check_supported(model(*features[:3]), features[3])
    assert any(name in str(refused.value) for name in refusal(*features)), str(refused.value)


@pytest.mark.parametrize("head_dim", range(8, 264, 8))
def test_only_head_sizes_the_attention_plugin_has_kernels_for_are_accepted(head_dim):
    cfg = model(False, False, False, head_dim=head_dim)
    if head_dim in (32, 48, 64, 80, 96, 104, 112, 128, 144, 160, 192, 224, 256):  # by hand, from the kernels
        assert check_supported(cfg, "block") is None
    else:
        with pytest.raises(ValueError, match=f"^head_dim={head_dim} is not supported by TensorRT-LLM's GPT "
                                             "attention plugin, whose generation kernels take head sizes 32, 48,"):
            check_supported(cfg, "block")


@pytest.mark.parametrize("hidden, tracks, ok", [(64, 2, True), (96, 3, True), (64, 3, False), (66, 4, False)])
def test_hidden_size_must_be_a_multiple_of_the_tracks(hidden, tracks, ok):
    cfg = model(False, False, False, hidden_size=hidden, num_tracks=tracks, num_attention_heads=2 * tracks,
                num_key_value_heads=tracks, intermediate_size=32 * tracks)
    if ok:
        assert check_supported(cfg, "block") is None
    else:
        with pytest.raises(ValueError, match=f"^hidden_size={hidden} is not a multiple of num_tracks={tracks}: "):
            check_supported(cfg, "block")


def test_the_fused_merge_needs_a_vectorizable_hidden_size():
    cfg = model(False, False, False, hidden_size=68)
    assert check_supported(cfg, "block", "allreduce") is None
    with pytest.raises(ValueError, match=r"^merge_impl='allreduce_fused_norm' needs hidden_size % 8 == 0 .*got "
                                         r"hidden_size=68; build with --merge_impl allreduce$"):
        check_supported(cfg, "block", "allreduce_fused_norm")


@pytest.mark.parametrize("fields, named", [
    ({"attention_layer_pattern": ["local_rope", "global_nope"], "attention_window": 8}, "global_nope layers"),
    ({"attention_layer_pattern": ["local_rope"], "attention_window": 8}, "convert with --max_position_embeddings 9 "),
    ({"feed_forward_layer_pattern": ["dense", "sparse"]}, "sparse (mixture-of-experts) layers"),
    ({"pre_residual_norm": True}, "pre_residual_norm=True"),
    ({"post_norm": True}, "post_norm=True"),
], ids=["nope", "window", "moe", "pre-residual-norm", "post-norm"])
def test_parts_of_the_pt_architecture_the_engine_does_not_build_are_refused(fields, named):
    cfg = model(True, False, False)
    for name, value in fields.items():
        setattr(cfg, name, value)
    with pytest.raises(ValueError) as refused:
        check_supported(cfg, "block")
    assert named in str(refused.value) and "\n" not in str(refused.value)
    cfg.max_position_embeddings = 9  # a window no sequence outgrows: local attention is global attention
    cfg.attention_layer_pattern, cfg.attention_window = ["local_rope"], 8
    if "attention_layer_pattern" in fields:
        assert check_supported(cfg, "block") is None


def test_build_settings_are_refused_by_name():
    plugins = Namespace(lora_plugin=None, gemm_allreduce_plugin=None, user_buffer=False, gpt_attention_plugin="float16")
    assert check_build_settings(plugins, qk_norm=True) is None
    assert check_build_settings(Namespace(**{**vars(plugins), "gpt_attention_plugin": None}), qk_norm=False) is None
    cases = [({"prompt_embedding_table_size": 4}, {}, "prompt tables (max_prompt_embedding_table_size=4)"),
             ({"max_draft_len": 3}, {}, "speculative decoding (max_draft_len=3)"),
             ({"mrope_rotary_cos_sin_size": 8}, {}, "mrope (multimodal RoPE)"),
             ({}, {"lora_plugin": "float16"}, "--lora_plugin"), ({}, {"gemm_allreduce_plugin": "bfloat16"},
                                                                  "--gemm_allreduce_plugin"),
             ({}, {"user_buffer": True}, "--user_buffer"), ({}, {"gpt_attention_plugin": None}, "qk_norm=True needs")]
    for settings, plugin_changes, named in cases:
        with pytest.raises(ValueError) as refused:
            check_build_settings(Namespace(**{**vars(plugins), **plugin_changes}), True, **settings)
        assert str(refused.value).startswith(named) and "\n" not in str(refused.value)


def test_build_flags_take_their_choices_from_the_schedule_and_merge_modules():
    spec = importlib.util.spec_from_file_location("build_script", REPO / "scripts" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    defaults = Namespace(max_batch_size=8, max_input_len=1024, max_seq_len=None, max_beam_width=1,
                         max_num_tokens=8192, opt_num_tokens=None, output_timing_cache="model.cache")

    def parse(*flags):
        return build.parse_args(["--checkpoint_dir", "ckpt", *flags], defaults, lambda group: None)

    args = parse()
    assert (args.schedule, args.merge_impl) == (None, None)  # the checkpoint's
    args = parse("--schedule", "sublayer", "--merge_impl", "allreduce_fused_norm")
    assert (args.schedule, args.merge_impl) == ("sublayer", "allreduce_fused_norm")
    assert parse("--merge_impl", "pt_plugin").merge_impl == "pt_plugin"
    for flags in (("--schedule", "none"), ("--merge_impl", "fused")):
        with pytest.raises(SystemExit):
            parse(*flags)


# ---- the runner's own logic ---------------------------------------------------------------------
def info(**kw) -> EngineInfo:
    base = {"cfg": PTConfig.from_preset("tiny"), "schedule": "block", "dtype": "float16", "max_batch_size": 2,
            "max_input_len": 16, "max_seq_len": 32, "gather_context_logits": False}
    return EngineInfo(**{**base, **kw})


@pytest.mark.parametrize("prompts, max_output_len, world, logits, match", [
    ([[1, 2]], 4, 1, False, "need exactly 2 processes"),
    ([], 4, 2, False, "no prompts"),
    ([[1], [2], [3]], 4, 2, False, "maximum batch size 2"),
    ([[1]], 0, 2, False, "max_output_len must be >= 1"),
    ([list(range(17))], 4, 2, False, "the limit is 16 "),
    ([list(range(10))], 30, 2, False, "the limit is 2 \\(max_input_len"),
    ([[1, 512]], 4, 2, False, "outside"),
    ([[1, 2]], 4, 2, True, "gather_context_logits"),
])
def test_check_request_refuses_what_the_engines_cannot_run(prompts, max_output_len, world, logits, match):
    with pytest.raises(ValueError, match=match):
        runner.check_request(info(), prompts, max_output_len, world, logits)


def test_check_request_needs_equal_lengths_for_logits():
    with pytest.raises(ValueError, match="equal length"):
        runner.check_request(info(gather_context_logits=True), [[1, 2], [3]], 4, 2, True)
    runner.check_request(info(gather_context_logits=True), [[1, 2], [3, 4]], 4, 2, True)


@pytest.mark.parametrize("ids, prompt_len, seq_len, eos, max_out, expected", [
    ([5, 6, 7, 8, 2, 2], 2, 6, [2], 4, [7, 8, 2]),  # stops at and includes the first EOS
    ([5, 6, 7, 8, 9, 9], 2, 4, [2], 4, [7, 8, 2]),  # stopped early without the EOS token: put back
    ([5, 6, 7, 8, 9, 10], 2, 6, [2], 4, [7, 8, 9, 10]),  # ran to max_output_len
    ([5, 6, 7, -1, -1], 2, 3, [], 3, [7]),  # no EOS known: nothing is added
    ([5, 6, 7, 3, 2], 2, 5, [2, 3], 3, [7, 3]),  # any of several EOS ids
])
def test_generated_tokens_end_at_and_include_eos(ids, prompt_len, seq_len, eos, max_out, expected):
    assert runner.generated_tokens(ids, prompt_len, seq_len, eos, max_out) == expected


def test_end_ids_and_sampling_arguments():
    assert runner.end_ids(7, [2, 3], None) == [7]
    assert runner.end_ids(None, [2, 3], None) == [2, 3]
    assert runner.end_ids(None, None, Namespace(eos_token_id=5)) == [5]
    assert runner.end_ids(None, None, None) == []
    assert runner.sampling_kwargs(args()) == {"top_k": 1}
    assert runner.sampling_kwargs(args(temperature=0.7, top_k=5, top_p=0.9, seed=3)) == {
        "temperature": 0.7, "top_k": 5, "top_p": 0.9, "random_seed": 3}


def test_prompts_come_from_exactly_one_source():
    assert runner.parse_prompts(args(input_ids="1,2,3;4,5"), None) == [[1, 2, 3], [4, 5]]
    with pytest.raises(ValueError, match="exactly one"):
        runner.parse_prompts(args(input_ids=None), None)
    with pytest.raises(ValueError, match="needs --tokenizer_dir"):
        runner.parse_prompts(args(input_ids=None, input_text=["hi"]), None)
    with pytest.raises(ValueError, match="is not a list"):
        runner.parse_prompts(args(input_ids="1,x"), None)


# ---- without TensorRT-LLM -----------------------------------------------------------------------
@pytest.mark.skipif(HAS_TRTLLM, reason="tensorrt_llm is installed: the install hint is not printed")
def test_build_without_tensorrt_llm_prints_one_line_and_fails(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "build.py"), "--checkpoint_dir", str(tmp_path)],
                            check=False, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stdout == "" and result.stderr.count("\n") == 1 and "tensorrt_llm==1.2.1" in result.stderr


@pytest.mark.skipif(HAS_TRTLLM, reason="tensorrt_llm is installed: the install hint is not printed")
def test_run_on_an_engine_dir_without_tensorrt_llm_prints_one_line_and_fails(tmp_path, capsys):
    engines = write_engine_dir(tmp_path / "e", PTConfig.from_preset("tiny"))
    assert runner.run_engine(args(engine_dir=str(engines))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensorrt_llm==1.2.1" in err


def test_nothing_outside_pt_trtllm_trtllm_imports_the_network_definition():
    for path in (REPO / "pt_trtllm").rglob("*.py"):
        if path.parent.name == "trtllm":
            continue
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.startswith("tensorrt_llm") or n.endswith("trtllm.model")], path


def test_network_definition_files_pass_ruff():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (pip install ruff)")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", *map(str, TRTLLM_FILES)],
                            check=False, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
