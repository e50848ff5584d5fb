"""The two checkpoint layouts (pt-spec sections 4 and 5) and the HF save/load round trip.

Expected tensor names and shapes are written out below from the spec's text (SPEC4 / SPEC5, the
section 4 and 5 listings copied verbatim), not taken from `pt_trtllm.formats`; a test checks these
copies against the spec file (docs/pt-spec.md, or ../shared/docs/pt-spec.md, or $PT_SPEC).
"""

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from helpers import REPO, convert_ok, make_llama_checkpoint, make_pt_model, random_ids
from pt_trtllm import PTConfig, PTForCausalLM
from pt_trtllm.formats import hf_layout, rank_layout

# ---- the spec's listings, verbatim (name, shape, note) ----------------------------------------
SPEC4 = """
model.embed_tokens.weight                                   [V, H]
model.tracks.{t}.layers.{l}.input_layernorm.weight          [H]
model.tracks.{t}.layers.{l}.self_attn.q_proj.weight         [h*d, H]
model.tracks.{t}.layers.{l}.self_attn.k_proj.weight         [g*d, H]
model.tracks.{t}.layers.{l}.self_attn.v_proj.weight         [g*d, H]
model.tracks.{t}.layers.{l}.self_attn.o_proj.weight         [H, h*d]
model.tracks.{t}.layers.{l}.self_attn.q_norm.weight         [d]          (qk_norm only)
model.tracks.{t}.layers.{l}.self_attn.k_norm.weight         [d]          (qk_norm only)
model.tracks.{t}.layers.{l}.post_attention_layernorm.weight [H]
model.tracks.{t}.layers.{l}.mlp.gate_proj.weight            [f, H]
model.tracks.{t}.layers.{l}.mlp.up_proj.weight              [f, H]
model.tracks.{t}.layers.{l}.mlp.down_proj.weight            [H, f]
model.tracks.{t}.layers.{l}.mlp.router.weight               [E, H]       (sparse layers, instead of
model.tracks.{t}.layers.{l}.mlp.experts.gate_proj           [E, fe, H]    the three dense mlp tensors;
model.tracks.{t}.layers.{l}.mlp.experts.up_proj             [E, fe, H]    [out, in] per expert)
model.tracks.{t}.layers.{l}.mlp.experts.down_proj           [E, H, fe]
model.tracks.{t}.layers.{l}.attn_pre_residual_norm.weight   [H]          (pre_residual_norm only; also mlp_pre_residual_norm)
model.tracks.{t}.layers.{l}.attn_post_norm.weight           [H]          (post_norm only; also mlp_post_norm)
model.tracks.{t}.dispatch_norms.{b}.weight                  [H]          (track_dispatch_norm only)
model.tracks.{t}.combine_norms.{b}.weight                   [H]          (track_combine_norm only)
model.norm.weight                                           [H]
lm_head.weight                                              [V, H]       (absent when tied)
"""
SPEC5 = """
transformer.vocab_embedding.weight                 [V, H]      replica
transformer.layers.{l}.input_layernorm.weight      [H]
transformer.layers.{l}.attention.qkv.weight        [(h+2g)*d, H]   rows: track t's q, then k, then v
transformer.layers.{l}.attention.dense.weight      [H, h*d]
transformer.layers.{l}.attention.q_layernorm.weight [d]        (qk_norm only)
transformer.layers.{l}.attention.k_layernorm.weight [d]        (qk_norm only)
transformer.layers.{l}.post_layernorm.weight       [H]
transformer.layers.{l}.mlp.fc.weight               [f, H]      = gate_proj
transformer.layers.{l}.mlp.gate.weight             [f, H]      = up_proj
transformer.layers.{l}.mlp.proj.weight             [H, f]      = down_proj
transformer.layers.{l}.mlp.router.weight           [E, H]      sparse layers: = mlp.router
transformer.layers.{l}.mlp.fc.weight               [E, 2fe, H] sparse layers: up_proj rows FIRST, then gate_proj
                                                               (TensorRT-LLM's MOE order; concatenated along dim 1)
transformer.layers.{l}.mlp.proj.weight             [E, H, fe]  sparse layers: = experts.down_proj
transformer.layers.{l}.{attn,mlp}_{pre_residual_norm,post_norm}.weight [H]   as in section 4
transformer.dispatch_norms.{b}.weight              [H]         (track_dispatch_norm only)
transformer.combine_norms.{b}.weight               [H]         (track_combine_norm only)
transformer.ln_f.weight                            [H]         replica
lm_head.weight                                     [V, H]      replica, unpadded, written also when tied
"""
# section 2's table, in order
SPEC2_FIELDS = ["vocab_size", "hidden_size", "num_tracks", "num_hidden_layers", "block_depth",
                "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size", "rms_norm_eps",
                "max_position_embeddings", "rope_theta", "rope_style", "qk_norm", "combine_op",
                "track_dispatch_norm", "track_combine_norm", "merge_schedule", "tie_word_embeddings",
                "bos_token_id", "eos_token_id", "pad_token_id", "attention_layer_pattern", "attention_window",
                "feed_forward_layer_pattern", "num_experts", "num_experts_per_token", "moe_intermediate_size",
                "router_logits_cap", "pre_residual_norm", "post_norm"]
# section 5's TensorRT-LLM config fields (besides the PT fields)
SPEC5_CONFIG = ["architecture", "dtype", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "intermediate_size", "head_size", "hidden_act", "norm_epsilon",
                "position_embedding_type", "rotary_base", "max_position_embeddings", "mapping", "quantization"]

LINE = re.compile(r"^(\S+)\s+\[([^\]]*)\]\s*(.*)$")


def parse_listing(text: str) -> list[tuple[str, str, str]]:
    """(name, shape, note) of every row; an indented line continues the note of the row above."""
    rows = []
    for line in text.strip().splitlines():
        if line[:1].isspace():
            name, shape, note = rows[-1]
            rows[-1] = (name, shape, f"{note} {line.strip()}")
            continue
        m = LINE.match(line)
        assert m, f"unparsable spec line {line!r}"
        rows.append((m.group(1), m.group(2).strip(), m.group(3).strip()))
    return rows


def _dims(cfg: PTConfig) -> dict:
    return dict(V=cfg.vocab_size, H=cfg.hidden_size, d=cfg.head_dim, h=cfg.heads_per_track,
                g=cfg.kv_heads_per_track, f=cfg.ffn_per_track, E=cfg.num_experts, fe=cfg.moe_intermediate_size)


def _shape(expr: str, dims: dict) -> tuple:
    return tuple(eval(re.sub(r"(\d)([a-z(])", r"\1*\2", part), {}, dims) for part in expr.split(","))


def _spelled_out(name: str, note: str) -> list[str]:
    """A row's names: `{a,b}` alternatives expanded, and the name of a note's `; also x` added."""
    names = [name]
    for group in re.findall(r"\{(\w+(?:,\w+)+)\}", name):
        names = [n.replace(f"{{{group}}}", alt, 1) for n in names for alt in group.split(",")]
    also = re.search(r"; also (\w+)", note)
    if also:
        names += [n.replace(n.rsplit(".", 2)[-2], also.group(1)) for n in names]
    return names


def _enabled(name: str, note: str, cfg: PTConfig, layer: int | None) -> bool:
    """Whether a row's tensor exists for `cfg` (in layer `layer` for a per-layer row)."""
    for flag in ("qk_norm", "track_dispatch_norm", "track_combine_norm"):
        if f"{flag} only" in note:
            return getattr(cfg, flag)
    if "absent when tied" in note:
        return not cfg.tie_word_embeddings
    for flag in ("pre_residual_norm", "post_norm"):
        if flag in name:
            return getattr(cfg, flag)
    if ".mlp." in name:  # a feed-forward tensor: the dense ones, or (router, experts) the sparse ones
        sparse = "mlp.router" in name or "mlp.experts" in name or note.startswith("sparse layers")
        return sparse == cfg.is_sparse(layer)
    return True  # including section 5's lm_head, "written also when tied"


def expected_layout(listing: str, cfg: PTConfig) -> dict[str, tuple]:
    """Expand a spec listing for `cfg`: {t} over tracks (section 4), {l} over layers, {b} over blocks."""
    dims, out = _dims(cfg), {}
    for row, shape, note in parse_listing(listing):
        for name in _spelled_out(row, note):
            for layer in range(cfg.num_hidden_layers) if "{l}" in name else [None]:
                if not _enabled(name, note, cfg, layer):
                    continue
                names = [name.replace("{l}", str(layer))]
                for key, n in (("{t}", cfg.num_tracks), ("{b}", cfg.num_blocks)):
                    names = [x.replace(key, str(i)) for x in names for i in range(n)] if key in name else names
                out.update({x: _shape(shape, dims) for x in names})
    return out


def _spec_text() -> str | None:
    for path in (os.environ.get("PT_SPEC"), REPO / "docs" / "pt-spec.md", REPO.parent / "shared" / "docs" / "pt-spec.md"):
        if path and Path(path).is_file():
            return Path(path).read_text()
    return None


def _section_block(text: str, number: int) -> str:
    section = re.search(rf"^## {number}\..*?(?=^## )", text, re.S | re.M).group(0)
    return re.search(r"```\n(.*?)```", section, re.S).group(1)


def test_listings_here_are_the_spec_listings():
    """SPEC4, SPEC5 and the field lists above are exactly what pt-spec.md says (sections 2, 4, 5)."""
    text = _spec_text()
    if text is None:
        pytest.skip("pt-spec.md not found (set PT_SPEC)")
    assert parse_listing(_section_block(text, 4)) == parse_listing(SPEC4)
    assert parse_listing(_section_block(text, 5)) == parse_listing(SPEC5)
    table = re.search(r"^## 2\..*?(?=^## )", text, re.S | re.M).group(0)
    fields = [f for row in re.findall(r"^\| (.*?) \|", table, re.M) for f in re.findall(r"`(\w+)`", row)]
    assert fields == SPEC2_FIELDS
    section5 = re.search(r"^## 5\..*?(?=^## )", text, re.S | re.M).group(0)
    for field in SPEC5_CONFIG:
        assert f"`{field}" in section5, field


# ---- configurations the layout tests cover ------------------------------------------------------
VARIANTS = {
    "plain_untied": dict(),
    "tied_qknorm_dispatch_combine_T3": dict(num_tracks=3, num_attention_heads=12, num_key_value_heads=6,
                                            intermediate_size=384, qk_norm=True, track_dispatch_norm=True,
                                            track_combine_norm=True, tie_word_embeddings=True, rope_style="gptj"),
    "qknorm_combine_only_D1_sum": dict(qk_norm=True, track_combine_norm=True, block_depth=1, combine_op="sum"),
    "combine_norm_tied_residual_sum_one_block": dict(track_combine_norm=True, tie_word_embeddings=True,
                                                     combine_op="residual_sum", num_hidden_layers=2, block_depth=2),
    "dispatch_norm_only": dict(track_dispatch_norm=True),
    "moe_local_nope_extra_norms": dict(qk_norm=True, rope_style="gptj", feed_forward_layer_pattern=["dense", "sparse"],
                                       num_experts=4, num_experts_per_token=2, moe_intermediate_size=32,
                                       attention_layer_pattern=["local_rope", "global_nope"], attention_window=8,
                                       pre_residual_norm=True, post_norm=True),
}


def _read(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_saved_hf_checkpoint_has_exactly_the_section4_tensors(tmp_path, variant):
    """save_pretrained writes exactly the section 4 names and shapes (no lm_head.weight when tied,
    q_norm/k_norm only with qk_norm, dispatch/combine norms per block only when enabled, router and
    experts instead of the dense MLP in sparse layers, pre-residual/post norms when enabled), all fp32;
    formats.hf_layout agrees with the spec."""
    model = make_pt_model("tiny", seed=1, **VARIANTS[variant])
    model.save_pretrained(tmp_path, safe_serialization=True)
    tensors = _read(tmp_path / "model.safetensors")
    want = expected_layout(SPEC4, model.config)
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    assert sorted(set(got) - set(want)) == [] and sorted(set(want) - set(got)) == []
    assert got == want
    assert {v.dtype for v in tensors.values()} == {torch.float32}
    assert hf_layout(model.config) == want
    assert ("lm_head.weight" in got) == (not model.config.tie_word_embeddings)
    assert not list(tmp_path.glob("*.bin"))


@pytest.mark.parametrize("variant", ["plain_untied", "tied_qknorm_dispatch_combine_T3"])
def test_save_pretrained_from_pretrained_round_trip_is_exact(tmp_path, variant):
    """save_pretrained -> AutoModelForCausalLM.from_pretrained (the Auto classes know
    model_type parallel_track) gives a PTForCausalLM with no missing/unexpected keys, the same
    config, bit-identical logits, and the LM head still tied to the embedding when tied."""
    model = make_pt_model("tiny", seed=2, **VARIANTS[variant])
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    loaded.eval()
    assert isinstance(loaded, PTForCausalLM)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert loaded.config.pt_dict() == model.config.pt_dict()
    if model.config.tie_word_embeddings:
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    ids = random_ids(model.config.vocab_size, (2, 9), seed=3)
    with torch.no_grad():
        assert torch.equal(loaded(ids, use_cache=False).logits, model(ids, use_cache=False).logits)


def test_converting_an_hf_pt_checkpoint_to_hf_is_the_identity(tmp_path):
    """The converter's PT source path (--output_format hf) copies every tensor unchanged."""
    model = make_pt_model("tiny", seed=4, **VARIANTS["tied_qknorm_dispatch_combine_T3"])
    model.save_pretrained(tmp_path / "src", safe_serialization=True)
    convert_ok(tmp_path / "src", tmp_path / "dst", output_format="hf")
    a, b = _read(tmp_path / "src" / "model.safetensors"), _read(tmp_path / "dst" / "model.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert PTConfig.from_pretrained(tmp_path / "dst").pt_dict() == model.config.pt_dict()


# ---- section 5: per-rank checkpoints ------------------------------------------------------------
@pytest.mark.parametrize("variant", ["plain_untied", "tied_qknorm_dispatch_combine_T3", "moe_local_nope_extra_norms"])
def test_per_rank_checkpoint_is_section5(tmp_path, variant):
    """The default output format (trtllm) writes config.json + rank{t}.safetensors: each rank file
    holds exactly the section 5 names and shapes for track t only; qkv rows are track t's q, then
    k, then v; mlp fc/gate/proj are gate/up/down (in a sparse layer: router, [experts' up; gate]
    along dim 1, experts' down); norms are track t's; the embedding, final norm and
    lm_head (present even when tied) are replicas; config.json has the section 5 fields (model
    totals, head_size, mapping world_size = tp_size = T, pp_size 1, null quantization) and every
    section 2 field."""
    model = make_pt_model("tiny", seed=5, **VARIANTS[variant])
    cfg = model.config
    model.save_pretrained(tmp_path / "src", safe_serialization=True)
    out = convert_ok(tmp_path / "src", tmp_path / "ranks")  # default output_format trtllm
    T = cfg.num_tracks
    files = sorted(p.name for p in out.iterdir())
    assert sorted(f for f in files if f.endswith(".safetensors")) == [f"rank{t}.safetensors" for t in range(T)]
    assert "config.json" in files
    assert set(files) - {"config.json", *(f"rank{t}.safetensors" for t in range(T))} <= {"generation_config.json"}
    hf = _read(tmp_path / "src" / "model.safetensors")

    for t in range(T):
        rank = _read(out / f"rank{t}.safetensors")
        want = expected_layout(SPEC5, cfg)
        assert {k: tuple(v.shape) for k, v in rank.items()} == want, f"rank{t}"
        assert rank_layout(cfg, t) == want
        p = f"model.tracks.{t}."
        for layer in range(cfg.num_hidden_layers):
            r, s = f"transformer.layers.{layer}.", f"{p}layers.{layer}."
            qkv = torch.cat([hf[s + "self_attn.q_proj.weight"], hf[s + "self_attn.k_proj.weight"],
                             hf[s + "self_attn.v_proj.weight"]])
            pairs = {"attention.qkv.weight": qkv, "attention.dense.weight": hf[s + "self_attn.o_proj.weight"],
                     "input_layernorm.weight": hf[s + "input_layernorm.weight"],
                     "post_layernorm.weight": hf[s + "post_attention_layernorm.weight"]}
            if cfg.is_sparse(layer):  # up_proj rows first, then gate_proj, along dim 1
                pairs.update({"mlp.router.weight": hf[s + "mlp.router.weight"],
                              "mlp.fc.weight": torch.cat([hf[s + "mlp.experts.up_proj"],
                                                          hf[s + "mlp.experts.gate_proj"]], dim=1),
                              "mlp.proj.weight": hf[s + "mlp.experts.down_proj"]})
            else:
                pairs.update({"mlp.fc.weight": hf[s + "mlp.gate_proj.weight"],
                              "mlp.gate.weight": hf[s + "mlp.up_proj.weight"],
                              "mlp.proj.weight": hf[s + "mlp.down_proj.weight"]})
            for part in ("attn", "mlp"):
                for norm, on in (("pre_residual_norm", cfg.pre_residual_norm), ("post_norm", cfg.post_norm)):
                    if on:
                        pairs[f"{part}_{norm}.weight"] = hf[f"{s}{part}_{norm}.weight"]
            if cfg.qk_norm:
                pairs["attention.q_layernorm.weight"] = hf[s + "self_attn.q_norm.weight"]
                pairs["attention.k_layernorm.weight"] = hf[s + "self_attn.k_norm.weight"]
            for name, tensor in pairs.items():
                assert torch.equal(rank[r + name], tensor), f"rank{t} {r + name}"
        for b in range(cfg.num_blocks):
            for kind, on in (("dispatch_norms", cfg.track_dispatch_norm), ("combine_norms", cfg.track_combine_norm)):
                if on:
                    assert torch.equal(rank[f"transformer.{kind}.{b}.weight"], hf[f"{p}{kind}.{b}.weight"])
        assert torch.equal(rank["transformer.vocab_embedding.weight"], hf["model.embed_tokens.weight"])
        assert torch.equal(rank["transformer.ln_f.weight"], hf["model.norm.weight"])
        head = hf["model.embed_tokens.weight"] if cfg.tie_word_embeddings else hf["lm_head.weight"]
        assert torch.equal(rank["lm_head.weight"], head)

    conf = json.loads((out / "config.json").read_text())
    assert set(SPEC5_CONFIG) <= set(conf) and set(SPEC2_FIELDS) <= set(conf)
    assert conf["architecture"] == "PTForCausalLM" and conf["dtype"] == "float32" and conf["hidden_act"] == "silu"
    assert (conf["num_attention_heads"], conf["num_key_value_heads"], conf["intermediate_size"], conf["head_size"]) == (
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size, cfg.head_dim)
    assert (conf["vocab_size"], conf["hidden_size"], conf["num_hidden_layers"]) == (
        cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers)
    assert conf["position_embedding_type"] == {"neox": "rope_gpt_neox", "gptj": "rope_gptj"}[cfg.rope_style]
    assert (conf["rotary_base"], conf["norm_epsilon"]) == (cfg.rope_theta, cfg.rms_norm_eps)
    assert conf["max_position_embeddings"] == cfg.max_position_embeddings
    assert conf["mapping"] == {"world_size": T, "tp_size": T, "pp_size": 1}
    assert all(v is None for v in conf["quantization"].values())
    assert {k: conf[k] for k in SPEC2_FIELDS} == cfg.pt_dict()


def test_per_rank_checkpoint_of_a_llama_holds_tensor_parallel_shards(tmp_path):
    """A Llama (8 heads, 4 KV heads, head_dim 8) converted to 4 ranks: rank t's qkv rows are exactly
    Llama's q rows [t*h*d, (t+1)*h*d), then k and v rows [t*g*d, (t+1)*g*d); dense and proj are
    the matching column slices of o_proj and down_proj (checked against the Llama tensors)."""
    src, llama = make_llama_checkpoint(tmp_path / "llama", seed=6)
    out = convert_ok(src, tmp_path / "ranks", num_tracks=4)
    sd = {k: v.detach() for k, v in llama.state_dict().items()}
    hd, gd, f = 2 * 8, 1 * 8, 96 // 4
    for t in range(4):
        rank = _read(out / f"rank{t}.safetensors")
        for layer in range(llama.config.num_hidden_layers):
            s, r = f"model.layers.{layer}.", f"transformer.layers.{layer}."
            qkv = torch.cat([sd[s + "self_attn.q_proj.weight"][t * hd:(t + 1) * hd],
                             sd[s + "self_attn.k_proj.weight"][t * gd:(t + 1) * gd],
                             sd[s + "self_attn.v_proj.weight"][t * gd:(t + 1) * gd]])
            assert torch.equal(rank[r + "attention.qkv.weight"], qkv)
            assert torch.equal(rank[r + "attention.dense.weight"], sd[s + "self_attn.o_proj.weight"][:, t * hd:(t + 1) * hd])
            assert torch.equal(rank[r + "mlp.fc.weight"], sd[s + "mlp.gate_proj.weight"][t * f:(t + 1) * f])
            assert torch.equal(rank[r + "mlp.gate.weight"], sd[s + "mlp.up_proj.weight"][t * f:(t + 1) * f])
            assert torch.equal(rank[r + "mlp.proj.weight"], sd[s + "mlp.down_proj.weight"][:, t * f:(t + 1) * f])
            assert torch.equal(rank[r + "input_layernorm.weight"], sd[s + "input_layernorm.weight"])
    conf = json.loads((out / "config.json").read_text())
    assert (conf["combine_op"], conf["merge_schedule"], conf["mapping"]["tp_size"]) == ("residual_sum", "sublayer", 4)


@pytest.mark.parametrize("fmt", ["hf", "trtllm"])
def test_dtype_option_casts_every_tensor_and_records_it(tmp_path, fmt):
    """dtype bfloat16 writes every tensor as BF16 and records the dtype in config.json."""
    make_pt_model("tiny", seed=7).save_pretrained(tmp_path / "src", safe_serialization=True)
    out = convert_ok(tmp_path / "src", tmp_path / "out", output_format=fmt, dtype="bfloat16")
    dtypes = set()
    for file in out.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            dtypes |= {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}
    conf = json.loads((out / "config.json").read_text())
    assert conf.get("dtype", conf.get("torch_dtype")) == "bfloat16"
