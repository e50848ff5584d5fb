"""scripts/convert_checkpoint.py refusals and its atomic output (pt-spec section 7): problems with a
source are reported all at once with a nonzero exit; nothing, not even a temporary directory, is
left behind by a failed conversion; --force replaces an output; only safetensors are ever loaded."""

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

import pt_trtllm.convert.writer as writer
from helpers import convert, convert_ok, edit_config, leftovers, make_llama_checkpoint, make_pt_checkpoint


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, f"expected one error line, got {err!r}"
    print(lines[0])
    return lines[0]


def _assert_nothing_written(parent, name):
    assert not (parent / name).exists(), f"{parent / name} was created"
    assert not leftovers(parent, name), f"temporary directories left behind: {leftovers(parent, name)}"


@pytest.mark.parametrize("fmt", ["hf", "trtllm"])
def test_missing_unexpected_and_misshapen_tensors_are_reported_all_at_once(tmp_path, capsys, fmt):
    """A PT source lacking one tensor, with one unknown tensor and one of the wrong shape fails with
    ONE error that names all three (with shapes), exit status != 0, and no output directory."""
    src = make_pt_checkpoint(tmp_path / "src", "tiny")
    tensors = load_file(src / "model.safetensors")
    del tensors["model.tracks.1.layers.2.mlp.up_proj.weight"]
    tensors["model.tracks.0.layers.0.self_attn.o_proj.bias"] = torch.zeros(128)
    tensors["model.tracks.0.layers.3.self_attn.k_proj.weight"] = torch.zeros(40, 128)
    save_file(tensors, src / "model.safetensors")
    assert convert(src, tmp_path / "out", "--output_format", fmt) != 0
    err = _error(capsys)
    assert "missing tensor model.tracks.1.layers.2.mlp.up_proj.weight" in err and "[256, 128]" in err
    assert "unexpected tensor model.tracks.0.layers.0.self_attn.o_proj.bias" in err
    assert "model.tracks.0.layers.3.self_attn.k_proj.weight has shape [40, 128], expected [32, 128]" in err
    _assert_nothing_written(tmp_path, "out")


def test_llama_source_tensor_problems_are_reported_all_at_once(tmp_path, capsys):
    """The same all-at-once check for a Llama source (names in the source's own naming)."""
    src, _ = make_llama_checkpoint(tmp_path / "llama")
    tensors = load_file(src / "model.safetensors")
    del tensors["model.layers.1.mlp.gate_proj.weight"], tensors["model.norm.weight"]
    tensors["model.layers.0.self_attn.q_proj.weight"] = tensors["model.layers.0.self_attn.q_proj.weight"][:-8]
    save_file(tensors, src / "model.safetensors")
    assert convert(src, tmp_path / "out", "--num_tracks", 2) != 0
    err = _error(capsys)
    for needle in ("missing tensor model.layers.1.mlp.gate_proj.weight", "missing tensor model.norm.weight",
                   "model.layers.0.self_attn.q_proj.weight has shape [56, 48], expected [64, 48]"):
        assert needle in err
    _assert_nothing_written(tmp_path, "out")


def test_existing_output_dir_is_refused_without_force(tmp_path, capsys):
    """An existing --output_dir is refused (nonzero exit, message names --force) and left as it was."""
    src = make_pt_checkpoint(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert convert(src, out) != 0
    assert "--force" in _error(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_force_replaces_an_existing_output(tmp_path):
    """--force replaces an existing output directory completely (old files gone) and leaves no
    temporary or backup directory behind."""
    src = make_pt_checkpoint(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    convert_ok(src, out, "--force")
    assert not (out / "stale.txt").exists()
    assert (out / "config.json").is_file() and (out / "rank1.safetensors").is_file()
    assert not leftovers(tmp_path, "out")


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "force_over_existing"])
def test_error_in_the_middle_of_writing_leaves_no_output_and_no_temporary_dir(tmp_path, monkeypatch, existing):
    """A failure after rank0.safetensors is written and before rank1 is: no output directory (or,
    with --force over an existing one, the old output untouched) and no temporary directory."""
    src = make_pt_checkpoint(tmp_path / "src")
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "old.txt").write_text("old")
    real_save, calls = writer.save_file, []

    def failing_save(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(writer, "save_file", failing_save)
    with pytest.raises(OSError, match="simulated"):
        convert(src, out, *(["--force"] if existing else []))
    assert len(calls) == 2, "the failure was not in the middle of writing"
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    else:
        assert not out.exists()
    assert not leftovers(tmp_path, "out"), leftovers(tmp_path, "out")


def test_llama_without_num_tracks_is_refused(tmp_path, capsys):
    """A dense Llama source needs --num_tracks (nothing is guessed)."""
    src, _ = make_llama_checkpoint(tmp_path / "llama")
    assert convert(src, tmp_path / "out") != 0
    assert "--num_tracks" in _error(capsys)
    _assert_nothing_written(tmp_path, "out")


@pytest.mark.parametrize("T, field", [(3, "num_attention_heads"), (8, "num_key_value_heads"),
                                      (16, "num_attention_heads")])
def test_num_tracks_that_does_not_divide_heads_is_refused(tmp_path, capsys, T, field):
    """--num_tracks T that does not divide the heads (8) or the KV heads (4) is refused naming the
    field and both values."""
    src, _ = make_llama_checkpoint(tmp_path / "llama")
    assert convert(src, tmp_path / "out", "--num_tracks", T) != 0
    err = _error(capsys)
    assert field in err and f"num_tracks={T}" in err, err
    _assert_nothing_written(tmp_path, "out")


def test_llama_features_outside_the_spec_are_refused_by_name(tmp_path, capsys):
    """rope scaling, attention/MLP biases and a non-SiLU activation are each named in one error."""
    src, _ = make_llama_checkpoint(tmp_path / "llama")
    edit_config(src, rope_scaling={"rope_type": "linear", "factor": 2.0}, attention_bias=True, mlp_bias=True,
                hidden_act="gelu")
    assert convert(src, tmp_path / "out", "--num_tracks", 2) != 0
    err = _error(capsys)
    for needle in ("rope scaling", "'linear'", "attention_bias", "mlp_bias", "hidden_act='gelu'"):
        assert needle in err, f"{needle!r} not in {err!r}"
    _assert_nothing_written(tmp_path, "out")


@pytest.mark.parametrize("change, needle", [
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "'llama3'"),
    (dict(rope_scaling={"type": "dynamic", "factor": 2.0}), "'dynamic'"),
    (dict(rope_theta=..., rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}), "'yarn'"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(hidden_act="relu"), "hidden_act='relu'"),
], ids=["rope_llama3", "rope_dynamic_legacy_key", "rope_parameters_yarn", "attention_bias", "mlp_bias", "relu"])
def test_each_unsupported_llama_feature_alone_is_refused(tmp_path, capsys, change, needle):
    """Each unsupported Llama feature on its own is refused by name (legacy `type` key and
    `rope_parameters` included)."""
    src, _ = make_llama_checkpoint(tmp_path / "llama")
    edit_config(src, **change)
    assert convert(src, tmp_path / "out", "--num_tracks", 2) != 0
    assert needle in _error(capsys)
    _assert_nothing_written(tmp_path, "out")


def test_pickle_only_source_is_refused(tmp_path, capsys, monkeypatch):
    """A source with only pytorch_model.bin (pickle) is refused, and no pickle is ever unpickled."""
    src, _ = make_llama_checkpoint(tmp_path / "llama", safe=False)
    assert list(src.glob("*.bin")) and not list(src.glob("*.safetensors"))

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a pickle file was loaded")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    assert convert(src, tmp_path / "out", "--num_tracks", 2) != 0
    err = _error(capsys)
    assert "pytorch_model.bin" in err and "safetensors" in err
    _assert_nothing_written(tmp_path, "out")


def test_stray_pickle_beside_safetensors_is_ignored(tmp_path, monkeypatch):
    """A .bin file beside the safetensors is never read: the conversion reads the safetensors only."""
    src = make_pt_checkpoint(tmp_path / "src")
    (src / "pytorch_model.bin").write_bytes(b"not a pickle")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a pickle file was loaded")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    convert_ok(src, tmp_path / "out", "--output_format", "hf")


@pytest.mark.parametrize("option, value, needle", [("--num_tracks", 4, "num_tracks=2"),
                                                   ("--block_depth", 1, "block_depth=2")])
def test_pt_source_options_must_match_the_source(tmp_path, capsys, option, value, needle):
    """For a PT source --num_tracks / --block_depth may be omitted, but if given must equal the
    source's (a PT model's T and D are part of its weights)."""
    src = make_pt_checkpoint(tmp_path / "src")
    assert convert(src, tmp_path / "out", option, value) != 0
    err = _error(capsys)
    assert option in err and needle in err
    _assert_nothing_written(tmp_path, "out")


def test_invalid_pt_source_config_is_refused_with_the_config_error(tmp_path, capsys):
    """A PT source whose config.json is invalid is refused with PTConfig's message."""
    src = make_pt_checkpoint(tmp_path / "src")
    edit_config(src, block_depth=3)
    assert convert(src, tmp_path / "out") != 0
    err = _error(capsys)
    assert "num_hidden_layers=4" in err and "block_depth=3" in err
    _assert_nothing_written(tmp_path, "out")


def test_token_ids_survive_both_conversions(tmp_path):
    """bos/eos/pad token ids are carried through every conversion (pt-spec section 2)."""
    src, _ = make_llama_checkpoint(tmp_path / "llama", bos_token_id=5, eos_token_id=6, pad_token_id=7)
    hf = convert_ok(src, tmp_path / "hf", "--output_format", "hf", "--num_tracks", 2)
    ranks = convert_ok(hf, tmp_path / "ranks")
    for conf in (json.loads((hf / "config.json").read_text()), json.loads((ranks / "config.json").read_text())):
        assert (conf["bos_token_id"], conf["eos_token_id"], conf["pad_token_id"]) == (5, 6, 7)
