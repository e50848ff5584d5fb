"""The whole Apple PT architecture against tamm 0.2.0 (nobody here wrote it): mixtures of experts
inside tracks, interleaved local (sliding-window RoPE) and global (NoPE) attention, tamm's
pre-residual and post norms, converted by the converter and run by the HF model and by the
track-parallel runtime under mpiexec, with prompts and decodes longer than the window.

Every fixture really routes: each sparse layer sends tokens to at least half of its experts, and
every token's k-th and (k+1)-th router probabilities differ by more than 1e-3 (a near-tie could flip
under another summation order and make parity flaky)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from helpers import REPO, assert_logits_close, convert_ok, make_tamm_checkpoint, random_ids
from pt_trtllm import PTConfig, PTForCausalLM
from pt_trtllm.modeling import MoE

TOL = 1e-4
WINDOW = 5
PROMPT_LEN = 13  # > WINDOW + 1: local layers see only part of the prompt
NEW_TOKENS = 10  # decodes past the window too
MOE = dict(num_experts=8, num_experts_per_token=2, sparse_feed_forward_hidden_dim=24, local_attention_window_size=WINDOW)
CASES = {  # id -> (tamm overrides, seed)
    "dense_sparse_local_nope_dispatch_combine_T2_mean": (dict(
        MOE, feed_forward_layer_pattern=("dense", "sparse"), attention_layer_pattern=("local_rope", "global_nope"),
        tracks_dispatch_norm="rms_norm", tracks_combine_norm="rms_norm", experts_router_logits_cap=1.5), 8),
    "sparse_top1_afm_pattern_pre_residual_post_T4_sum": (dict(
        MOE, num_experts=4, num_experts_per_token=1, feed_forward_layer_pattern=("sparse", "dense"),
        num_tracks=4, num_heads=2, num_kv_heads=1,
        attention_layer_pattern=("local_rope", "local_rope", "local_rope", "global_nope"),
        tracks_combine_op="sum", pre_residual_norm="rms_norm", post_norm="rms_norm", experts_router_logits_cap=None), 2),
    "afm_defaults_shrunk_T2_mean_weightless_qknorm": (dict(
        MOE, feed_forward_layer_pattern=("dense", "sparse"), scale_qk_norm=False, experts_router_logits_cap=50.0,
        attention_layer_pattern=("local_rope", "local_rope", "local_rope", "global_nope")), 5),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """id -> (tamm HF model, HF PT checkpoint dir, per-rank checkpoint dir)."""
    out = {}
    for case, (overrides, seed) in CASES.items():
        root = tmp_path_factory.mktemp(case)
        src, tamm_model = make_tamm_checkpoint(root / "tamm", seed=seed, **overrides)
        out[case] = (tamm_model, convert_ok(src, root / "hf", output_format="hf"), convert_ok(src, root / "ranks"))
    return out


def prompts(vocab: int) -> torch.Tensor:
    return random_ids(vocab, (2, PROMPT_LEN), seed=7)


def tamm_greedy(tamm_model, prompt: list[int], n: int) -> list[int]:
    """tamm's greedy tokens by repeated full forwards (its generate() fails on transformers 4.57)."""
    return tamm_greedy_steps(tamm_model, prompt, n)[0]


def tamm_greedy_steps(tamm_model, prompt: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """tamm's greedy tokens and the logits [n, V] each was chosen from."""
    seq, logits = torch.tensor([prompt]), []
    with torch.no_grad():
        for _ in range(n):
            logits.append(tamm_model(seq).logits[0, -1].float())
            seq = torch.cat([seq, logits[-1].argmax()[None, None]], dim=1)
    return seq[0, len(prompt):].tolist(), torch.stack(logits)


def check_routing(model: PTForCausalLM, ids: torch.Tensor) -> None:
    """Assert that every sparse layer really routes on `ids` (see the module docstring)."""
    inputs = []
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.append((m, a[0]))) for m in model.modules()
             if isinstance(m, MoE)]
    with torch.no_grad():
        model(ids, use_cache=False)
    for h in hooks:
        h.remove()
    assert inputs, "no sparse layer ran"
    for moe, x in inputs:
        logits = moe.router(x.reshape(-1, x.shape[-1])).float()
        if moe.cap is not None:
            logits = moe.cap * torch.tanh(logits / moe.cap)
        top = logits.softmax(-1).topk(moe.top_k + 1, dim=-1).values
        gap = (top[:, -2] - top[:, -1]).min().item()
        used = logits.topk(moe.top_k, dim=-1).indices.unique().numel()
        assert used >= moe.experts.num_experts / 2, f"only {used} of {moe.experts.num_experts} experts get tokens"
        assert gap > 1e-3, f"a near-tie between the k-th and (k+1)-th expert ({gap:.1e})"


@pytest.mark.parametrize("case", list(CASES))
def test_hf_model_matches_tamm_logits_and_greedy_past_the_window(converted, case):
    """The converted HF PT model gives tamm's logits (<= 1e-4) on prompts longer than the window,
    and its generate() (KV cache, one token per step: the experts' gathered decode path) gives
    tamm's greedy tokens decoding past the window, each step's logits within 1e-4 of tamm's."""
    tamm_model, hf_dir, _ = converted[case]
    model = PTForCausalLM.from_pretrained(hf_dir).eval()
    ids = prompts(model.config.vocab_size)
    check_routing(model, ids)
    with torch.no_grad():
        want = tamm_model(ids).logits.float()
        got = model(ids, use_cache=False).logits
    assert_logits_close(got, want, TOL, f"tamm PT-MoE parity [{case}]")
    tokens, logits = tamm_greedy_steps(tamm_model, ids[0].tolist(), NEW_TOKENS)
    with torch.no_grad():
        out = model.generate(ids[:1], max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True)
    assert out.sequences[0, PROMPT_LEN:].tolist() == tokens
    assert_logits_close(torch.cat(out.logits), logits, TOL, f"tamm PT-MoE decode parity [{case}]")


def test_converted_config_and_rank_files_hold_the_architecture(converted):
    """The converted config says what the tamm model is, and rank t's file holds exactly track t's
    router and experts, with TensorRT-LLM's MOE order in mlp.fc (up rows first, then gate)."""
    _, hf_dir, ranks = converted["dense_sparse_local_nope_dispatch_combine_T2_mean"]
    cfg = PTConfig.from_pretrained(hf_dir)
    assert cfg.attention_layer_pattern == ["local_rope", "global_nope"] and cfg.attention_window == WINDOW
    assert cfg.feed_forward_layer_pattern == ["dense", "sparse"] and (cfg.num_experts, cfg.num_experts_per_token) == (8, 2)
    assert (cfg.moe_intermediate_size, cfg.router_logits_cap, cfg.max_position_embeddings) == (24, 1.5, 4096)
    model = PTForCausalLM.from_pretrained(hf_dir)
    for t in range(cfg.num_tracks):
        experts = model.model.tracks[t].layers[1].mlp.experts
        with safe_open(str(ranks / f"rank{t}.safetensors"), "pt") as f:
            fc, proj = f.get_tensor("transformer.layers.1.mlp.fc.weight"), f.get_tensor("transformer.layers.1.mlp.proj.weight")
            router = f.get_tensor("transformer.layers.1.mlp.router.weight")
            assert "transformer.layers.0.mlp.router.weight" not in f.keys()  # layer 0 is dense
        assert fc.shape == (8, 48, cfg.hidden_size)
        assert torch.equal(fc[:, :24], experts.up_proj) and torch.equal(fc[:, 24:], experts.gate_proj)
        assert torch.equal(proj, experts.down_proj)
        assert torch.equal(router, model.model.tracks[t].layers[1].mlp.router.weight)


def mpirun(n: int, ckpt: Path, ids: list[list[int]], out: Path) -> dict:
    cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(n), sys.executable, str(REPO / "scripts" / "run.py"),
           "--engine_dir", str(ckpt), "--device", "cpu", "--threads", "1", "--max_output_len", str(NEW_TOKENS),
           "--input_ids", ";".join(",".join(map(str, p)) for p in ids), "--output_json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", ["afm_defaults_shrunk_T2_mean_weightless_qknorm",
                                  "sparse_top1_afm_pattern_pre_residual_post_T4_sum"])
def test_runtime_on_T_ranks_gives_tamm_greedy_tokens_past_the_window(converted, case, tmp_path):
    """mpiexec -n T scripts/run.py on the rank files: a batch of two prompts of different lengths
    (both longer than the window + 1, so the local layers' ring caches wrap during the prefill and
    again while decoding) gives tamm's greedy tokens, with L/D merges per forward pass, no other
    collective inside it, and every rank holding the same tokens."""
    tamm_model, hf_dir, ranks = converted[case]
    cfg = PTConfig.from_pretrained(hf_dir)
    ids = prompts(cfg.vocab_size)
    batch = [ids[0].tolist(), ids[1, :PROMPT_LEN - 3].tolist()]
    got = mpirun(cfg.num_tracks, ranks, batch, tmp_path / "out.json")
    assert got["output_ids"] == [tamm_greedy(tamm_model, p, NEW_TOKENS) for p in batch]
    assert got["merges_per_forward"] == cfg.num_hidden_layers // cfg.block_depth
    assert got["other_collectives_per_forward"] == 0
    assert len(set(got["rank_digests"])) == 1


def test_runtime_decode_steps_match_the_hf_model_logits(tmp_path):
    """One track per process (T = 1, in-process TrackEngine): a batch of two prompts longer than
    the window, then decode steps past it; every step's logits (ring caches, the experts' gathered
    decode path) within 1e-4 of the HF model's full forward on the same tokens."""
    from pt_trtllm.runtime.comm import Communicator
    from pt_trtllm.runtime.engine import TrackEngine

    overrides = dict(MOE, feed_forward_layer_pattern=("dense", "sparse"), num_tracks=1,
                     attention_layer_pattern=("local_rope", "global_nope"), pre_residual_norm="rms_norm")
    src, _ = make_tamm_checkpoint(tmp_path / "tamm", seed=4, **overrides)
    model = PTForCausalLM.from_pretrained(convert_ok(src, tmp_path / "hf", output_format="hf")).eval()
    engine = TrackEngine(convert_ok(src, tmp_path / "ranks"), Communicator(0, 1), torch.device("cpu"), max_batch=2,
                         max_len=PROMPT_LEN + NEW_TOKENS)
    ids = prompts(model.config.vocab_size)
    seqs = [ids[0].tolist(), ids[1, :PROMPT_LEN - 4].tolist()]
    logits = engine.prefill(seqs, [0, 1], "block")
    for _ in range(NEW_TOKENS):
        with torch.no_grad():
            want = torch.stack([model(torch.tensor([s]), use_cache=False).logits[0, -1] for s in seqs])
        assert_logits_close(logits, want, TOL, f"runtime step at lengths {[len(s) for s in seqs]}")
        tokens = logits.argmax(-1)
        seqs = [s + [t] for s, t in zip(seqs, tokens.tolist())]
        logits = engine.decode(tokens, torch.tensor([len(s) - 1 for s in seqs]), "block")


def test_the_three_expert_paths_agree():
    """The decode path that gathers the chosen experts' weights, the CUDA-graph path that runs every
    expert, and the prefill path that groups tokens by expert give the same [N, k, H] outputs."""
    from pt_trtllm.modeling import Experts

    torch.manual_seed(0)
    experts = Experts(6, 16, 8)
    for w in experts.parameters():
        torch.nn.init.normal_(w, 0.0, w.shape[-1] ** -0.5)
    x, chosen = torch.randn(5, 16), torch.randint(0, 6, (5, 2))
    with torch.no_grad():
        want = experts.grouped(x, chosen)
        for path in (experts.gathered, experts.every_expert):
            torch.testing.assert_close(path(x, chosen), want, atol=1e-6, rtol=0)
        for j in range(2):  # each (token, slot) is that expert's SwiGLU
            e = chosen[:, j]
            ref = torch.stack([experts.down_proj[e[n]] @ (torch.nn.functional.silu(experts.gate_proj[e[n]] @ x[n])
                                                          * (experts.up_proj[e[n]] @ x[n])) for n in range(5)])
            torch.testing.assert_close(want[:, j], ref, atol=1e-6, rtol=0)


def test_slot_move_carries_a_ring_with_its_positions():
    """SlotKVCache.move (the server's slot compaction) copies a ring layer whole, keys, values and
    the positions its entries hold, and the first `length` positions of a full layer."""
    from pt_trtllm.runtime.cache import SlotKVCache

    cache = SlotKVCache(2, 2, 1, 16, 2, torch.float32, torch.device("cpu"), windows=[3, None])
    k, v = torch.randn(2, 1, 9, 2), torch.randn(2, 1, 9, 2)
    cache.prefill(torch.tensor([0, 1]), torch.tensor([9, 6]))
    for layer in range(2):
        cache.update(k, v, layer)
    src = [(t[1].clone()) for t in (cache.k[0], cache.v[0], cache.pos[0])]
    assert cache.pos[0][1].tolist() == [4, 5, 2, 3]  # the last R = 4 positions of a 6-token prompt
    cache.move(1, 0, 6)
    for t, want in zip((cache.k[0], cache.v[0], cache.pos[0]), src):
        assert torch.equal(t[0], want)
    assert torch.equal(cache.k[1][0, :, :6], k[1, :, :6]) and torch.equal(cache.k[1][0, :, 6:9], k[0, :, 6:9])


def test_local_layer_cache_is_bounded_by_the_window(converted):
    """The runtime keeps W + 1 positions per slot for a local layer and every position for the
    others, whatever the cache length."""
    from pt_trtllm.runtime.comm import Communicator
    from pt_trtllm.runtime.engine import TrackEngine

    _, hf_dir, ranks = converted["afm_defaults_shrunk_T2_mean_weightless_qknorm"]
    cfg = PTConfig.from_pretrained(hf_dir)
    comm = Communicator(0, 1)
    comm.world_size = cfg.num_tracks  # a stand-in world: only the cache is inspected
    engine = TrackEngine(ranks, comm, torch.device("cpu"), max_batch=3, max_len=64)
    for layer, (k, v) in enumerate(zip(engine.cache.k, engine.cache.v)):
        want = WINDOW + 1 if cfg.attention_type(layer) == "local_rope" else 64
        assert k.shape[2] == v.shape[2] == want, f"layer {layer} ({cfg.attention_type(layer)})"


@pytest.mark.parametrize("change, message", [
    (dict(attention_layer_pattern=["local_rope"]), "attention_window"),
    (dict(attention_layer_pattern=["sliding"]), "attention_layer_pattern"),
    (dict(feed_forward_layer_pattern=["sparse"]), "num_experts"),
    (dict(feed_forward_layer_pattern=["sparse"], num_experts=2, num_experts_per_token=3, moe_intermediate_size=8),
     "exceeds num_experts"),
    (dict(router_logits_cap=0.0), "router_logits_cap"),
    (dict(merge_schedule="sublayer", combine_op="residual_sum", post_norm=True), "post_norm"),
])
def test_invalid_architecture_fields_are_refused_by_name(change, message):
    """Each invalid combination of the new fields raises one ValueError naming the field."""
    with pytest.raises(ValueError, match=message):
        PTConfig.from_preset("tiny", **change)


def test_checkpoints_without_the_new_fields_are_unchanged(tmp_path):
    """A per-rank config.json written before the architecture fields existed still loads, as a
    model with their defaults (global RoPE, dense layers, no extra norms)."""
    from pt_trtllm.formats import OPTIONAL_PT_FIELDS, config_from_rank_config, rank_config

    data = {k: v for k, v in rank_config(PTConfig.from_preset("tiny"), "float32").items()
            if k not in OPTIONAL_PT_FIELDS}
    cfg = config_from_rank_config(data)
    assert cfg.attention_layer_pattern == ["global_rope"] and cfg.feed_forward_layer_pattern == ["dense"]
    assert not (cfg.pre_residual_norm or cfg.post_norm) and cfg.window(0) is None and not cfg.is_sparse(0)
