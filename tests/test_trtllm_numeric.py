"""The network definition evaluated numerically: PTForCausalLM.forward of every rank of a per-rank
checkpoint, run on the numeric stand-in of TensorRT-LLM (tests/trtllm_standin.py; all ranks at once,
one thread each, allreduce() summing across them), gives the PyTorch model's logits (fp32, <= 1e-4)
on packed prompts of different lengths: QK-norm (in the graph) with gptj and neox, RoPE in the
plugin without it, GQA, each merge implementation, each combine op, block and sublayer, track
norms, one and three tracks, padded input, and a converted tamm checkpoint against tamm's own
model. The merge nodes (AllReduce, or PTTrackMerge for merge_impl pt_plugin, also counted by the
node-counting helper pt_trtllm.trtllm.nodes in each rank's network), the norms each merge is handed
and the RmsNorms the network applies are counted from the same runs.

The stand-in shares any misreading of TensorRT-LLM's semantics (the docstring of
tests/trtllm_standin.py lists what it models); these tests catch wiring bugs: a wrong norm weight,
residual, output order, eps, head split, RoPE pairing, table or dtype.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import trtllm_standin as standin
from trtllm_models import (  # noqa: F401 (one_torch_thread: an autouse fixture)
    PROMPTS,
    engine_checkpoint,
    one_torch_thread,
    reference_logits,
    run_network,
    tamm_engine_checkpoint,
)
from trtllm_standin import ALLREDUCES, PT_TRACK_MERGES, RMSNORM_CALLS, AllReduceFusionOp, AllReduceStrategy

from pt_trtllm.merge import MERGE_IMPLS
from pt_trtllm.modeling import apply_rope
from pt_trtllm.schedule import merges_per_forward

TOL = 1e-4
FUSED = ("allreduce_fused_norm", "pt_plugin")
"""The merge_impls whose merge node applies the next norm."""
COMBINE_OPS = {"mean": 0, "sum": 1, "residual_sum": 2}


@pytest.fixture
def trt(monkeypatch):
    yield standin.install(monkeypatch)
    standin.uninstall()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """`get(**overrides) -> (PyTorch model, per-rank fp32 checkpoint)`, made once per overrides."""
    made = {}

    def get(**overrides):
        key = tuple(sorted(overrides.items()))
        if key not in made:
            made[key] = engine_checkpoint(tmp_path_factory.mktemp("engine"), seed=len(made) + 1, **overrides)
        return made[key]
    return get


def expected_norms(model) -> list:
    """The weight tensor of the norm each merge of rank `model` must be handed, in order: the next
    segment's entry norm (its dispatch norm, or its first step's layer norm), ln_f after the last."""
    transformer = model.transformer
    return [transformer.entry_norm(transformer.segments[i + 1]).weight.raw_value
            for i in range(len(transformer.segments) - 1)] + [transformer.ln_f.weight.raw_value]


def check_run(run, reference, merge_impl: str) -> None:
    """Every rank's logits are the PyTorch model's (and each other's); each rank adds exactly one
    merge node per merge, of the kind merge_impl says (an AllReduce node, fused or not, or a
    PTTrackMerge node) and no other collective, as the node-counting helper also finds in its
    network; a fused merge is handed the norm that runs next with its eps, and the network never
    applies that norm itself."""
    config = run.models[0].config
    nodes = importlib.import_module("pt_trtllm.trtllm.nodes")
    for rank, logits in enumerate(run.logits):
        diff = float((logits - reference).abs().max())
        assert diff <= TOL, f"rank {rank}: max |logits - PyTorch| = {diff:.2e}"
        assert torch.equal(logits, run.logits[0])
    merges = merges_per_forward(config.merge_schedule, config.num_hidden_layers, config.block_depth)
    applied = {}
    for rank in range(config.num_tracks):
        calls = [c for c in ALLREDUCES if c.rank == rank]
        plugin_calls = [c for c in PT_TRACK_MERGES if c.rank == rank]
        applied[rank] = sum(1 for r, _ in RMSNORM_CALLS if r == rank)
        counted = nodes.count_collective_nodes(standin.rank_network(rank)) if config.num_tracks > 1 else None
        if config.num_tracks == 1:
            assert calls == [] and plugin_calls == []  # one track merges with itself
            continue
        assert counted == nodes.CollectiveNodes.expected(merge_impl, merges)
        if merge_impl == "pt_plugin":
            assert calls == [] and len(plugin_calls) == merges
            handed = [c.inputs[-1].value for c in plugin_calls]
            for c in plugin_calls:
                assert (c.fields["combine_op"], c.fields["num_ranks"], c.fields["rank"]) \
                    == (COMBINE_OPS[config.combine_op], config.num_tracks, rank)
                assert c.fields["has_next_norm"] == 1 and c.fields["next_eps"] == pytest.approx(config.norm_epsilon)
                assert c.fields["max_tokens"] == 64  # run_network's max_num_tokens
        else:
            assert plugin_calls == [] and len(calls) == merges
            assert all(c.strategy in (AllReduceStrategy.AUTO, AllReduceStrategy.NCCL) for c in calls)
            if merge_impl == "allreduce":
                assert all(c.params.fusion_op == AllReduceFusionOp.NONE for c in calls)
                continue
            assert all(c.params.fusion_op == AllReduceFusionOp.RESIDUAL_RMS_NORM for c in calls)
            assert all(c.params.eps == config.norm_epsilon for c in calls)
            handed = [c.params.norm_weight.value for c in calls]
        assert all(a is b for a, b in zip(handed, expected_norms(run.models[rank]), strict=True))
    norms = sum(1 for name, _ in run.models[0].named_parameters() if "norm" in name or "ln_f" in name)
    # each norm module applied once per forward, those handed to a fused merge never
    fused = merges if merge_impl in FUSED and config.num_tracks > 1 else 0
    assert set(applied.values()) == {norms - fused}


@pytest.mark.parametrize("schedule", ["block", "sublayer"])
@pytest.mark.parametrize("combine_op", ["mean", "sum", "residual_sum"])
@pytest.mark.parametrize("merge_impl", MERGE_IMPLS)
def test_each_merge_impl_combine_op_and_schedule(trt, checkpoints, merge_impl, combine_op, schedule):
    model, ckpt = checkpoints(qk_norm=True, rope_style="gptj", combine_op=combine_op)
    run = run_network(trt, ckpt, schedule=schedule, merge_impl=merge_impl)
    check_run(run, reference_logits(model, schedule=schedule), merge_impl)


@pytest.mark.parametrize("qk_norm", [True, False], ids=["qk-norm-in-graph", "rope-in-plugin"])
@pytest.mark.parametrize("rope_style", ["gptj", "neox"])
@pytest.mark.parametrize("merge_impl", MERGE_IMPLS)
def test_qk_norm_and_rope_styles(trt, checkpoints, qk_norm, rope_style, merge_impl):
    model, ckpt = checkpoints(qk_norm=qk_norm, rope_style=rope_style, rope_theta=500.0)
    check_run(run_network(trt, ckpt, merge_impl=merge_impl), reference_logits(model), merge_impl)


@pytest.mark.parametrize("overrides", [
    {"track_dispatch_norm": True, "track_combine_norm": True, "qk_norm": True},
    {"track_combine_norm": True, "combine_op": "residual_sum"},
], ids=["dispatch-and-combine-norms", "combine-norm-residual-sum"])
@pytest.mark.parametrize("merge_impl", MERGE_IMPLS)
def test_track_norms(trt, checkpoints, overrides, merge_impl):
    """With dispatch norms, a fused merge is handed (and applies) the next block's dispatch norm as
    the next norm; the combine norm stays its own layer before the merge (PTTrackMerge's
    has_combine_norm and has_dispatch_norm stay 0 in this version)."""
    model, ckpt = checkpoints(**overrides)
    check_run(run_network(trt, ckpt, merge_impl=merge_impl), reference_logits(model), merge_impl)


@pytest.mark.parametrize("overrides, strategy", [
    ({"num_tracks": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64}, None),
    ({"num_tracks": 3, "hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 3,
      "intermediate_size": 192}, AllReduceStrategy.NCCL),
    ({"num_tracks": 4, "num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 256},
     AllReduceStrategy.AUTO),
], ids=["one-track", "three-tracks", "four-tracks"])
def test_track_counts_and_the_pinned_strategy(trt, checkpoints, overrides, strategy):
    """T = 3 (no custom all-reduce kernel) pins NCCL; the padded vocabulary rows are dropped."""
    model, ckpt = checkpoints(qk_norm=True, **overrides)
    run = run_network(trt, ckpt, merge_impl="allreduce_fused_norm")
    check_run(run, reference_logits(model), "allreduce_fused_norm")
    assert {c.strategy for c in ALLREDUCES} == ({strategy} if strategy is not None else set())
    run = run_network(trt, ckpt, merge_impl="pt_plugin")  # the plugin's own transport: no strategy to pin
    check_run(run, reference_logits(model), "pt_plugin")


@pytest.mark.parametrize("merge_impl", FUSED)
def test_padded_input(trt, checkpoints, merge_impl):
    """remove_input_padding disabled: [batch, seq] inputs padded at the end, the QK-norm attention's
    batch dimension from the qkv shape; PTTrackMerge takes [batch, seq, H] as batch * seq rows."""
    model, ckpt = checkpoints(qk_norm=True, rope_style="gptj")
    run = run_network(trt, ckpt, merge_impl=merge_impl, packed=False)
    check_run(run, reference_logits(model), merge_impl)


def test_the_plugin_caches_k_after_rope_and_qk_norm(trt, checkpoints):
    """The KV-cache output of rank t's attention layer 0 holds track t's keys after RoPE and the
    k norm (pt-spec: the cache stores K after both), and its values."""
    model, ckpt = checkpoints(qk_norm=True, rope_style="gptj")
    run = run_network(trt, ckpt)
    pt = model.model
    with torch.no_grad():
        for rank, presents in enumerate(run.presents):
            layer = pt.tracks[rank].layers[0]
            keys, values = [], []
            for prompt in PROMPTS:
                x = layer.input_layernorm(pt.embed_tokens(torch.tensor([prompt])))
                k = layer.self_attn.k_proj(x).view(1, len(prompt), 1, 32)
                k = apply_rope(k, *pt.rotary(torch.arange(len(prompt))[None]), "gptj")
                keys.append(layer.self_attn.k_norm(k)[0])
                values.append(layer.self_attn.v_proj(x).view(len(prompt), 1, 32))
            assert torch.allclose(presents[0][0], torch.cat(keys), atol=1e-5)
            assert torch.allclose(presents[0][1], torch.cat(values), atol=1e-5)


@pytest.mark.parametrize("merge_impl", FUSED)
def test_bfloat16_follows_the_dtype_rules(trt, tmp_path, merge_impl):
    """A bf16 checkpoint: every operand of a strongly typed op has one dtype (the stand-in asserts
    it: the RoPE in float32 and back, the fused merge's residual and norm weight in the plugin's
    dtype, PTTrackMerge's inputs all bf16), and the logits stay within bf16 accuracy of the fp32
    model."""
    model, ckpt = engine_checkpoint(tmp_path, seed=7, dtype="bfloat16", qk_norm=True, rope_style="gptj",
                                    combine_op="sum")
    run = run_network(trt, ckpt, merge_impl=merge_impl)
    reference = reference_logits(model)
    for logits in run.logits:
        assert logits.dtype == torch.float32  # logits_dtype
        assert float((logits - reference).abs().max()) <= 0.1 * float(reference.abs().max())
    assert all(t.dtype == torch.bfloat16 for c in PT_TRACK_MERGES for t in c.inputs)


@pytest.mark.parametrize("merge_impl", MERGE_IMPLS)
def test_a_tamm_checkpoint_runs_as_tamm(trt, tmp_path, merge_impl):
    """A random tamm PT model (QK-norm after RoPE, gptj, GQA, d = 32), converted to rank files and
    run by the network definition, gives tamm's own logits."""
    tamm_model, ckpt = tamm_engine_checkpoint(tmp_path)
    run = run_network(trt, ckpt, merge_impl=merge_impl)
    with torch.no_grad():
        reference = torch.cat([tamm_model(torch.tensor([p])).logits[0].float() for p in PROMPTS])
    check_run(run, reference, merge_impl)
