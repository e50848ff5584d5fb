"""The converter's refusals and its atomic output (pt-spec section 7): problems with a source are
reported all at once, in one line; nothing, not even a temporary directory, is left behind by a
failed conversion; force replaces an output; only safetensors are ever loaded. The tests call the
converter's functions; one test runs scripts/convert_checkpoint.py's command line."""

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

import pt_trtllm.convert.writer as writer
from helpers import (CONVERT_SCRIPT, convert_ok, convert_refused, edit_config, leftovers, make_llama_checkpoint,
                     make_pt_checkpoint, run_script)


def _source(kind: str, tmp_path):
    """A random tiny source checkpoint: "pt" (HF PT format) or "llama"."""
    if kind == "pt":
        return make_pt_checkpoint(tmp_path / "src", "tiny")
    return make_llama_checkpoint(tmp_path / "llama")[0]


def _damage_pt(tensors):
    del tensors["model.tracks.1.layers.2.mlp.up_proj.weight"]
    tensors["model.tracks.0.layers.0.self_attn.o_proj.bias"] = torch.zeros(128)
    tensors["model.tracks.0.layers.3.self_attn.k_proj.weight"] = torch.zeros(40, 128)


def _damage_llama(tensors):
    del tensors["model.layers.1.mlp.gate_proj.weight"], tensors["model.norm.weight"]
    tensors["model.layers.0.self_attn.q_proj.weight"] = tensors["model.layers.0.self_attn.q_proj.weight"][:-8]


PT_PROBLEMS = ["missing tensor model.tracks.1.layers.2.mlp.up_proj.weight (expected shape [256, 128])",
               "unexpected tensor model.tracks.0.layers.0.self_attn.o_proj.bias",
               "model.tracks.0.layers.3.self_attn.k_proj.weight has shape [40, 128], expected [32, 128]"]
TENSOR_PROBLEMS = {
    "pt_to_hf": ("pt", _damage_pt, dict(output_format="hf"), PT_PROBLEMS),
    "pt_to_trtllm": ("pt", _damage_pt, dict(output_format="trtllm"), PT_PROBLEMS),
    "llama": ("llama", _damage_llama, dict(num_tracks=2), [
        "missing tensor model.layers.1.mlp.gate_proj.weight", "missing tensor model.norm.weight",
        "model.layers.0.self_attn.q_proj.weight has shape [56, 48], expected [64, 48]"]),
}


@pytest.mark.parametrize("case", list(TENSOR_PROBLEMS))
def test_missing_unexpected_and_misshapen_tensors_are_reported_all_at_once(tmp_path, case):
    """A source lacking tensors, with an unknown tensor or one of the wrong shape fails with ONE
    error that names every problem (with shapes, in the source's own naming) and writes nothing."""
    kind, damage, options, needles = TENSOR_PROBLEMS[case]
    src = _source(kind, tmp_path)
    tensors = load_file(src / "model.safetensors")
    damage(tensors)
    save_file(tensors, src / "model.safetensors")
    err = convert_refused(src, tmp_path / "out", **options)
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


# (case id, source kind, config.json edits, convert options, what the one error must name)
REFUSED = [
    ("llama_without_num_tracks", "llama", {}, {}, ["--num_tracks"]),
    ("num_tracks_3_does_not_divide_heads", "llama", {}, dict(num_tracks=3), ["num_attention_heads", "num_tracks=3"]),
    ("num_tracks_8_does_not_divide_kv_heads", "llama", {}, dict(num_tracks=8),
     ["num_key_value_heads", "num_tracks=8"]),
    ("num_tracks_16_does_not_divide_heads", "llama", {}, dict(num_tracks=16),
     ["num_attention_heads", "num_tracks=16"]),
    ("llama_features_all_at_once", "llama",
     dict(rope_scaling={"rope_type": "linear", "factor": 2.0}, attention_bias=True, mlp_bias=True, hidden_act="gelu"),
     dict(num_tracks=2), ["rope scaling", "'linear'", "attention_bias", "mlp_bias", "hidden_act='gelu'"]),
    ("rope_llama3", "llama", dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), dict(num_tracks=2),
     ["'llama3'"]),
    ("rope_dynamic_legacy_key", "llama", dict(rope_scaling={"type": "dynamic", "factor": 2.0}), dict(num_tracks=2),
     ["'dynamic'"]),
    ("rope_parameters_yarn", "llama",
     dict(rope_theta=..., rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
     dict(num_tracks=2), ["'yarn'"]),
    ("attention_bias", "llama", dict(attention_bias=True), dict(num_tracks=2), ["attention_bias"]),
    ("mlp_bias", "llama", dict(mlp_bias=True), dict(num_tracks=2), ["mlp_bias"]),
    ("relu", "llama", dict(hidden_act="relu"), dict(num_tracks=2), ["hidden_act='relu'"]),
    ("pt_num_tracks_differs", "pt", {}, dict(num_tracks=4), ["--num_tracks", "num_tracks=2"]),
    ("pt_block_depth_differs", "pt", {}, dict(block_depth=1), ["--block_depth", "block_depth=2"]),
    ("pt_invalid_config", "pt", dict(block_depth=3), {}, ["num_hidden_layers=4", "block_depth=3"]),
]


@pytest.mark.parametrize("case, kind, edits, options, needles", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_source_names_every_problem_in_one_error(tmp_path, case, kind, edits, options, needles):
    """Each source the converter cannot convert as asked is refused with ONE one-line error naming
    the problem(s) and the values, and nothing written: a dense Llama needs --num_tracks, which must
    divide the heads (8) and KV heads (4); Llama features outside the spec (rope scaling in any of
    its keys, biases, a non-SiLU activation) are named, all of them in one error; for a PT source
    --num_tracks / --block_depth may be omitted but must equal the source's (a PT model's T and D
    are part of its weights); an invalid PT config.json is refused with PTConfig's message."""
    src = _source(kind, tmp_path)
    if edits:
        edit_config(src, **edits)
    err = convert_refused(src, tmp_path / "out", **options)
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def test_existing_output_dir_is_refused_without_force(tmp_path):
    """An existing output directory is refused (the message names --force) and left as it was."""
    src = make_pt_checkpoint(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "--force" in convert_refused(src, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_force_replaces_an_existing_output(tmp_path):
    """force=True replaces an existing output directory completely (old files gone) and leaves no
    temporary or backup directory behind."""
    src = make_pt_checkpoint(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    convert_ok(src, out, force=True)
    assert not (out / "stale.txt").exists()
    assert (out / "config.json").is_file() and (out / "rank1.safetensors").is_file()
    assert not leftovers(tmp_path, "out")


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "force_over_existing"])
def test_error_in_the_middle_of_writing_leaves_no_output_and_no_temporary_dir(tmp_path, monkeypatch, existing):
    """A failure after rank0.safetensors is written and before rank1 is: no output directory (or,
    with force over an existing one, the old output untouched) and no temporary directory."""
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
        convert_ok(src, out, force=existing)
    assert len(calls) == 2, "the failure was not in the middle of writing"
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    else:
        assert not out.exists()
    assert not leftovers(tmp_path, "out"), leftovers(tmp_path, "out")


def _forbid_unpickling(monkeypatch):
    def no_unpickling(*args, **kwargs):
        raise AssertionError("a pickle file was loaded")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)


def test_pickle_only_source_is_refused(tmp_path, monkeypatch):
    """A source with only pytorch_model.bin (pickle) is refused, and no pickle is ever unpickled."""
    src, _ = make_llama_checkpoint(tmp_path / "llama", safe=False)
    assert list(src.glob("*.bin")) and not list(src.glob("*.safetensors"))
    _forbid_unpickling(monkeypatch)
    err = convert_refused(src, tmp_path / "out", num_tracks=2)
    assert "pytorch_model.bin" in err and "safetensors" in err


def test_stray_pickle_beside_safetensors_is_ignored(tmp_path, monkeypatch):
    """A .bin file beside the safetensors is never read: the conversion reads the safetensors only."""
    src = make_pt_checkpoint(tmp_path / "src")
    (src / "pytorch_model.bin").write_bytes(b"not a pickle")
    _forbid_unpickling(monkeypatch)
    convert_ok(src, tmp_path / "out", output_format="hf")


def test_token_ids_survive_both_conversions(tmp_path):
    """bos/eos/pad token ids are carried through every conversion (pt-spec section 2)."""
    src, _ = make_llama_checkpoint(tmp_path / "llama", bos_token_id=5, eos_token_id=6, pad_token_id=7)
    hf = convert_ok(src, tmp_path / "hf", output_format="hf", num_tracks=2)
    ranks = convert_ok(hf, tmp_path / "ranks")
    for conf in (json.loads((hf / "config.json").read_text()), json.loads((ranks / "config.json").read_text())):
        assert (conf["bos_token_id"], conf["eos_token_id"], conf["pad_token_id"]) == (5, 6, 7)


def test_command_line_passes_every_option_and_prints_one_error_line(tmp_path):
    """scripts/convert_checkpoint.py (a subprocess): --output_format, --num_tracks, --block_depth,
    --dtype, --workers and --force reach the conversion (exit 0, a summary line, the output says
    so); a source with several problems exits 2 with exactly one stderr line, `error: ` and the
    converter's message naming each problem, and writes nothing."""
    src, _ = make_llama_checkpoint(tmp_path / "llama", num_hidden_layers=4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    ok = run_script(CONVERT_SCRIPT, "--model_dir", src, "--output_dir", out, "--output_format", "hf",
                    "--num_tracks", 2, "--block_depth", 2, "--dtype", "bfloat16", "--workers", 2, "--force")
    assert ok.returncode == 0, ok.stderr
    assert f"converted llama checkpoint {src} -> {out} (hf, T=2, L=4, D=2, schedule=sublayer)" in ok.stdout
    conf = json.loads((out / "config.json").read_text())
    assert (conf["num_tracks"], conf["block_depth"], conf["dtype"]) == (2, 2, "bfloat16")
    assert (out / "model.safetensors").is_file() and not (out / "stale.txt").exists()

    edit_config(src, attention_bias=True, hidden_act="gelu")
    bad = run_script(CONVERT_SCRIPT, "--model_dir", src, "--output_dir", tmp_path / "bad", "--num_tracks", 2)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), bad.stderr
    assert "attention_bias" in lines[0] and "hidden_act='gelu'" in lines[0]
    assert not (tmp_path / "bad").exists() and not leftovers(tmp_path, "bad")
