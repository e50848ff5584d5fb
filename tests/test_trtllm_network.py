"""The network definition (pt_trtllm/trtllm/{config,merges,attention,model}.py) made and inspected
here, without TensorRT-LLM, against the stand-in of the TensorRT-LLM names it uses
(tests/trtllm_standin.py: signatures, sizing and semantics as in the 1.2.x source). Each rank's
network is made the way TensorRT-LLM's build_model makes it, `PTForCausalLM.from_checkpoint(ckpt_dir,
rank=..., config=...)`, with the config of `PTPretrainedConfig.from_checkpoint` (scripts/build.py)
or `PretrainedConfig.from_json_file` (trtllm-build): the configs it is refused for, the weights it
declares, the layers it is made of, the merge seam, and the build settings refused when the inputs
are prepared. tests/test_trtllm_numeric.py runs the networks against the PyTorch model.

What this cannot show (tests/test_trtllm_engine.py and scripts/trtllm_selftest.py do, where
TensorRT-LLM is installed): that TensorRT builds the network and the runtime's outputs match.
"""

from __future__ import annotations

import importlib
import inspect
import json
import shutil
import sys
import types

import pytest
import torch
import trtllm_standin as standin
from safetensors.torch import load_file
from trtllm_models import engine_checkpoint, one_torch_thread, tamm_engine_checkpoint  # noqa: F401 (autouse fixture)
from trtllm_standin import ALLREDUCES, PT_TRACK_MERGES, AllReduceFusionOp, AllReduceStrategy, Linear, RowLinear, Tensor

import pt_trtllm.merge
from pt_trtllm import plugin_lib
from pt_trtllm.formats import CheckpointError
from pt_trtllm.merge import MERGE_IMPLS
from pt_trtllm.trtllm.support import MMHA_HEAD_SIZES


@pytest.fixture
def trt(monkeypatch):
    """The network-definition modules imported against the stand-in; yields the model module."""
    yield standin.install(monkeypatch)
    standin.uninstall()


@pytest.fixture
def make_ckpt(tmp_path):
    """`make(**overrides) -> per-rank checkpoint dir` of the engine test model with overrides."""
    def make(**overrides):
        return engine_checkpoint(tmp_path / f"m{len(list(tmp_path.iterdir()))}", **overrides)[1]
    return make


def rank_model(trt, ckpt, rank, **overrides):
    """Rank `rank`'s network as scripts/build.py makes it: the config of
    PTPretrainedConfig.from_checkpoint (overrides: schedule, merge_impl), then TensorRT-LLM's
    build_model call, PTForCausalLM.from_checkpoint(ckpt_dir, config=rank config)."""
    config = trt.PTForCausalLM.config_class.from_checkpoint(ckpt, **overrides)
    return trt.PTForCausalLM.from_checkpoint(str(ckpt), rank=rank, config=config)


def edit_config(ckpt, drop=(), **changes):
    """Rewrite the checkpoint's config.json with `changes` and without the fields in `drop`."""
    path = ckpt / "config.json"
    data = {k: v for k, v in json.loads(path.read_text()).items() if k not in drop}
    path.write_text(json.dumps({**data, **changes}))


# ---- the config --------------------------------------------------------------------------------
def test_importing_registers_the_model_and_its_config_class(trt):
    assert sys.modules["tensorrt_llm.models"].MODEL_MAP["PTForCausalLM"] is trt.PTForCausalLM
    assert trt.PTForCausalLM.config_class.__name__ == "PTPretrainedConfig"


def test_trtllm_build_reads_the_config_through_model_map(trt, make_ckpt):
    """trtllm-build calls PretrainedConfig.from_json_file, which finds PTPretrainedConfig through
    MODEL_MAP: it gets the same config as scripts/build.py, every PT field an attribute."""
    ckpt = make_ckpt(track_dispatch_norm=True, rope_style="gptj", qk_norm=True)
    config = standin.PretrainedConfig.from_json_file(str(ckpt / "config.json"))
    assert type(config) is trt.PTForCausalLM.config_class
    assert config.to_dict() == trt.PTForCausalLM.config_class.from_checkpoint(ckpt).to_dict()
    assert (config.num_tracks, config.block_depth, config.num_blocks, config.head_dim) == (2, 1, 2, 32)
    assert (config.rope_style, config.qk_norm, config.track_dispatch_norm) == ("gptj", True, True)
    assert config.rotary_base == config.rope_theta == 10000.0 and config.merge_impl == "allreduce"


@pytest.mark.parametrize("changes, drop, named", [
    ({"head_size": 8}, (), "head_size"),
    ({}, ("block_depth",), r"lacks the PT fields \['block_depth'\]"),
    ({}, ("hidden_size", "qk_norm"), r"lacks the PT fields \['hidden_size', 'qk_norm'\]"),
    ({"merge_impl": "fused"}, (), "merge_impl='fused'"),
    ({"merge_schedule": "none"}, (), "none"),
], ids=["contradicting", "no-block-depth", "no-pt-fields", "unknown-merge-impl", "none-schedule"])
def test_a_config_json_the_engine_cannot_be_built_from_is_refused_by_name(trt, make_ckpt, changes, drop, named):
    ckpt = make_ckpt()
    edit_config(ckpt, drop, **changes)
    with pytest.raises(ValueError, match=named):  # scripts/build.py
        trt.PTForCausalLM.config_class.from_checkpoint(ckpt)
    with pytest.raises(ValueError, match=named):  # trtllm-build
        standin.PretrainedConfig.from_json_file(str(ckpt / "config.json"))


@pytest.mark.parametrize("overrides, merge_impl, message", [
    ({"head_dim": 16}, None, "head_dim=16 is not supported by TensorRT-LLM's GPT attention plugin, whose generation "
                             "kernels take head sizes " + ", ".join(map(str, MMHA_HEAD_SIZES))),
    ({"num_tracks": 3, "num_attention_heads": 3, "num_key_value_heads": 3, "intermediate_size": 96}, None,
     "hidden_size=64 is not a multiple of num_tracks=3: TensorRT-LLM's C++ runtime divides hidden_size by tp_size"),
    ({"hidden_size": 68}, "allreduce_fused_norm", "merge_impl='allreduce_fused_norm' needs hidden_size % 8 == 0"),
], ids=["head-size", "hidden-size-over-tracks", "fused-norm-vector"])
def test_a_model_the_engine_cannot_run_is_refused_with_both_numbers(trt, make_ckpt, overrides, merge_impl, message):
    ckpt = make_ckpt(**overrides)
    with pytest.raises(ValueError) as refused:  # scripts/build.py
        trt.PTForCausalLM.config_class.from_checkpoint(ckpt, merge_impl=merge_impl)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
    if merge_impl is None:
        with pytest.raises(ValueError, match=message.split(":")[0]):  # trtllm-build
            standin.PretrainedConfig.from_json_file(str(ckpt / "config.json"))


def test_from_checkpoint_refuses_what_is_not_a_per_rank_checkpoint(trt, make_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match=r"not found \(is --checkpoint_dir a per-rank checkpoint\?\)"):
        trt.PTForCausalLM.config_class.from_checkpoint(tmp_path / "missing")
    ckpt = make_ckpt()
    edit_config(ckpt, architecture="LlamaForCausalLM")
    with pytest.raises(CheckpointError, match="'LlamaForCausalLM' is not PTForCausalLM"):
        trt.PTForCausalLM.config_class.from_checkpoint(ckpt)


def test_the_engine_config_records_the_schedule_and_merge_impl_it_was_built_with(trt, make_ckpt):
    ckpt = make_ckpt(combine_op="residual_sum")  # a block checkpoint, built as its TP baseline
    edit_config(ckpt, drop=("merge_impl",))  # written before the field existed
    config = trt.PTForCausalLM.config_class.from_checkpoint(ckpt)
    assert (config.merge_schedule, config.merge_impl) == ("block", "allreduce")  # the default
    config = trt.PTForCausalLM.config_class.from_checkpoint(ckpt, schedule="sublayer",
                                                            merge_impl="allreduce_fused_norm")
    recorded = config.to_dict()  # what the engine's config.json records as pretrained_config
    assert (recorded["merge_schedule"], recorded["merge_impl"]) == ("sublayer", "allreduce_fused_norm")
    assert json.loads((ckpt / "config.json").read_text())["merge_schedule"] == "block"  # the checkpoint is kept
    edit_config(ckpt, merge_impl="allreduce_fused_norm")  # what trtllm-build --model_cls_file reads
    model = trt.PTForCausalLM.from_checkpoint(str(ckpt), rank=0)
    assert type(model.transformer.merge).__name__ == "FusedNormAllReduceMerge"


# ---- the layers --------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, lm_rows", [
    ({}, 98),
    ({"vocab_size": 96, "tie_word_embeddings": True}, 96),
    ({"qk_norm": True, "rope_style": "gptj", "track_dispatch_norm": True, "track_combine_norm": True}, 98),
    ({"num_tracks": 4, "num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 256}, 100),
], ids=["base", "tied", "qk-norm-track-norms", "four-tracks"])
def test_each_rank_declares_and_loads_exactly_its_converted_rank_file(trt, make_ckpt, overrides, lm_rows):
    """lm_rows: the logits width the runtime expects of a T-rank engine, ceil(V / T) * T, by hand."""
    ckpt = make_ckpt(**overrides)
    data = json.loads((ckpt / "config.json").read_text())
    for rank in range(data["num_tracks"]):
        model = rank_model(trt, ckpt, rank)
        stored = load_file(ckpt / f"rank{rank}.safetensors")
        declared = dict(model.named_parameters())
        assert set(declared) == set(stored), f"rank {rank}: names differ"
        for name, param in declared.items():
            want = (lm_rows, data["hidden_size"]) if name == "lm_head.weight" else tuple(stored[name].shape)
            assert param.shape == want, f"rank {rank} {name}: declared {param.shape}, expected {want}"
        model.load(stored)
        head = declared["lm_head.weight"].raw_value
        vocab = data["vocab_size"]
        assert torch.equal(head[:vocab], stored["lm_head.weight"]) and not head[vocab:].any()
        # every per-track layer holds one track and emits no collective
        layers = [m for _, m in model.named_modules() if isinstance(m, (Linear, RowLinear))]
        assert layers and not any(m.collective for m in layers)


def test_the_tamm_to_engine_contract(trt, tmp_path):
    """A tamm checkpoint (QK-norm, gptj, d = 32) converts to rank files holding exactly the names
    and shapes the network declares for rank t, q/k norms included, and the engine accepts it.
    (tests/test_trtllm_numeric.py runs it against tamm's own logits.)"""
    _, ckpt = tamm_engine_checkpoint(tmp_path)
    config = trt.PTForCausalLM.config_class.from_checkpoint(ckpt)  # check_supported runs here
    assert (config.qk_norm, config.rope_style, config.head_dim) == (True, "gptj", 32)
    for rank in range(config.num_tracks):
        model = rank_model(trt, ckpt, rank)
        stored = load_file(ckpt / f"rank{rank}.safetensors")
        declared = {name: p.shape for name, p in model.named_parameters() if name != "lm_head.weight"}
        assert declared == {name: tuple(t.shape) for name, t in stored.items() if name != "lm_head.weight"}
        assert declared["transformer.layers.0.attention.q_layernorm.weight"] == (32,)
        assert declared["transformer.layers.0.attention.k_layernorm.weight"] == (32,)


def test_attention_layers_follow_the_config(trt, make_ckpt):
    """Without QK-norm: TensorRT-LLM's Attention with RoPE in the plugin (the style's position
    embedding, base rope_theta). With QK-norm: the QK-norm attention, whose plugin call has no RoPE
    (learned_absolute, rotary dimension 0), its own q/k RmsNorms of the head size and
    norm_epsilon, and the RoPE table of rope_theta."""
    model = rank_model(trt, make_ckpt(rope_style="gptj", rope_theta=500000.0), 1)
    for layer in range(2):
        attention = model.transformer.layers[layer].attention
        assert type(attention) is standin.Attention and attention.local_layer_idx == layer
        assert (attention.num_attention_heads, attention.num_attention_kv_heads, attention.attention_head_size) \
            == (2, 1, 32)
        assert attention.position_embedding_type == standin.PositionEmbeddingType.rope_gptj
        assert (attention.rotary_embedding_base, attention.rotary_embedding_dim) == (500000.0, 32)
    assert model.transformer.rotary is None
    model = rank_model(trt, make_ckpt(qk_norm=True, rope_style="neox", rope_theta=500000.0), 0)
    attention = model.transformer.layers[1].attention
    assert type(attention).__name__ == "QKNormAttention" and attention.local_layer_idx == 1
    assert attention.position_embedding_type == standin.PositionEmbeddingType.learned_absolute
    assert attention.rotary_embedding_dim == 0 and attention.rope_type == standin.PositionEmbeddingType.rope_gpt_neox
    for norm in (attention.q_layernorm, attention.k_layernorm):
        assert norm.weight.shape == (32,) and norm.eps == model.config.norm_epsilon == 1e-2
    table = model.transformer.rotary.table  # [max_position_embeddings, d]: sin | cos of theta 500000
    assert table.shape == (64, 32) and float(table[1, 0]) == pytest.approx(torch.tensor(1.0).sin().item())
    assert float(table[1, 15]) == pytest.approx(torch.tensor(500000.0 ** (-30 / 32)).sin().item(), rel=1e-5)
    assert model.transformer.layers[0].mlp.hidden_act == "silu"


# ---- the merge seam ----------------------------------------------------------------------------
def test_the_merges_have_the_interface_of_pt_trtllm_merge(trt):
    """merged, normed = merge(x, hs, norm=None), as pt_trtllm.merge: the same class names and
    parameters, normed = norm(merged) when a norm is given and None without one, for every
    merge_impl; one track merges with itself (no node of any kind)."""
    merges = sys.modules["pt_trtllm.trtllm.merges"]
    assert set(merges.MERGES) == set(MERGE_IMPLS)  # every merge_impl has its network merge
    for impl in MERGE_IMPLS:  # and the PyTorch runtime serves every one (unfused)
        assert type(pt_trtllm.merge.make_merge(impl, "mean", 2, comm=None)) is pt_trtllm.merge.AllReduceMerge
    assert merges.Merge.__name__ == pt_trtllm.merge.Merge.__name__
    assert issubclass(merges.AllReduceMerge, merges.Merge) and merges.AllReduceMerge.__name__ == "AllReduceMerge"
    params = list(inspect.signature(merges.Merge.__call__).parameters)
    assert params == list(inspect.signature(pt_trtllm.merge.Merge.forward).parameters) == ["self", "x", "hs", "norm"]
    norm = standin.RmsNorm(8, eps=0.01, dtype="float32")
    norm.weight.value = 1 + 0.1 * torch.randn(8)
    x, hs = Tensor(torch.randn(3, 8)), [Tensor(torch.randn(3, 8)) for _ in range(2)]
    for impl in MERGE_IMPLS:
        def merge_on(rank, impl=impl):
            merge = merges.make_merge(impl, "mean", 2, [0, 1], rank)
            merge.max_tokens = 3  # as PTForCausalLM.prepare_inputs sets it
            return merge(x, [hs[rank]], norm), merge(x, [hs[rank]])

        for (merged, normed), (again, none) in standin.run_ranks(merge_on, 2):
            assert torch.allclose(merged.value, (hs[0].value + hs[1].value) / 2, atol=1e-6)
            assert torch.allclose(normed.value, norm(merged).value, atol=1e-6)
            assert none is None and torch.allclose(again.value, merged.value, atol=1e-6)
        ALLREDUCES.clear()
        PT_TRACK_MERGES.clear()
        merged, normed = merges.make_merge(impl, "mean", 1, [0], 0)(x, [hs[0]], norm)
        assert merged is hs[0] and torch.equal(normed.value, norm(hs[0]).value)
        assert not ALLREDUCES and not PT_TRACK_MERGES


@pytest.mark.parametrize("combine_op", ["mean", "sum", "residual_sum"])
@pytest.mark.parametrize("tracks, strategy", [(2, AllReduceStrategy.AUTO), (3, AllReduceStrategy.NCCL)])
def test_the_fused_merge_is_one_allreduce_node_with_the_residual_algebra(trt, combine_op, tracks, strategy):
    """x + allreduce(delta) with delta = h - x (residual_sum), (h - x) / T (mean), h - x / T (sum)
    is the combine op of pt_trtllm.merge.LocalMerge; the node is the plugin's RESIDUAL_RMS_NORM
    with the residual x, the norm's own weight tensor and eps; its outputs come back as (merged,
    normed); the strategy is AUTO for a custom-kernel rank count, NCCL otherwise."""
    merges = sys.modules["pt_trtllm.trtllm.merges"]
    norm = standin.RmsNorm(16, eps=0.05, dtype="float32")
    norm.weight.value = 1 + 0.1 * torch.randn(16)
    x = Tensor(torch.randn(5, 16))
    hs = [Tensor(torch.randn(5, 16) * (t + 1)) for t in range(tracks)]
    standin.current_all_reduce_helper().set_workspace_tensor(standin.Mapping(tracks, tp_size=tracks))
    results = standin.run_ranks(
        lambda rank: merges.make_merge("allreduce_fused_norm", combine_op, tracks, list(range(tracks)))(
            x, [hs[rank]], norm), tracks)
    expected, _ = pt_trtllm.merge.LocalMerge(combine_op, tracks)(x.value, [h.value for h in hs])
    for merged, normed in results:
        assert torch.allclose(merged.value, expected, atol=1e-5)
        want = torch.nn.functional.rms_norm(expected, (16,), norm.weight.raw_value, eps=0.05)
        assert torch.allclose(normed.value, want, atol=1e-5)
    assert len(ALLREDUCES) == tracks  # one node per rank
    for call in ALLREDUCES:
        p = call.params
        assert (call.strategy, p.fusion_op, p.eps) == (strategy, AllReduceFusionOp.RESIDUAL_RMS_NORM, 0.05)
        assert p.residual is x and p.norm_weight.value is norm.weight.raw_value


PLUGIN_FIELDS = {"mean": 0, "sum": 1, "residual_sum": 2}


@pytest.mark.parametrize("combine_op", ["mean", "sum", "residual_sum"])
@pytest.mark.parametrize("tracks", [2, 3])
def test_the_plugin_merge_is_one_pt_track_merge_node_with_its_fields(trt, combine_op, tracks):
    """merge_impl pt_plugin: each rank adds ONE PTTrackMerge node (no AllReduce), created from the
    registry's ("PTTrackMerge", "1", "pt_trtllm") creator with exactly the interface's fields, its
    inputs h, x (residual_sum only) and the next norm's own weight in that order, its outputs
    (merged, next_normed): the combine op of pt_trtllm.merge.LocalMerge and the norm of it."""
    merges = sys.modules["pt_trtllm.trtllm.merges"]
    nodes = importlib.import_module("pt_trtllm.trtllm.nodes")
    norm = standin.RmsNorm(16, eps=0.05, dtype="float32")
    norm.weight.value = 1 + 0.1 * torch.randn(16)
    x = Tensor(torch.randn(5, 16))
    hs = [Tensor(torch.randn(5, 16) * (t + 1)) for t in range(tracks)]

    def merge_on(rank):
        merge = merges.make_merge("pt_plugin", combine_op, tracks, list(range(tracks)), rank)
        merge.max_tokens = 7
        return merge(x, [hs[rank]], norm)

    results = standin.run_ranks(merge_on, tracks)
    expected, _ = pt_trtllm.merge.LocalMerge(combine_op, tracks)(x.value, [h.value for h in hs])
    want = torch.nn.functional.rms_norm(expected, (16,), norm.weight.raw_value, eps=0.05)
    for merged, normed in results:
        assert torch.allclose(merged.value, expected, atol=1e-5)
        assert torch.allclose(normed.value, want, atol=1e-5)
    assert not ALLREDUCES and sorted(c.rank for c in PT_TRACK_MERGES) == list(range(tracks))  # one node per rank
    for call in PT_TRACK_MERGES:
        assert call.fields == {
            "combine_op": PLUGIN_FIELDS[combine_op], "residual_form": 0, "num_ranks": tracks, "rank": call.rank,
            "has_combine_norm": 0, "has_dispatch_norm": 0, "has_next_norm": 1, "combine_eps": 0.0,
            "dispatch_eps": 0.0, "next_eps": pytest.approx(0.05), "transport": 0, "max_tokens": 7,
            "oneshot_max_bytes": 0}
        residual = [x] if combine_op == "residual_sum" else []
        assert [t.value for t in call.inputs[:-1]] == [t.value for t in [hs[call.rank], *residual]]
        assert call.inputs[-1].value is norm.weight.raw_value
    for rank in range(tracks):  # what the node-counting helper sees in each rank's network
        assert nodes.count_collective_nodes(standin.rank_network(rank)) == nodes.CollectiveNodes(pt_track_merge=1)


def test_the_plugin_merge_without_a_norm_and_with_one_track(trt):
    """Without a norm: one node, has_next_norm 0, its one output merged, normed None. One track:
    no node (as the other merges), the norm applied as its own layer."""
    merges = sys.modules["pt_trtllm.trtllm.merges"]
    norm = standin.RmsNorm(8, eps=0.01, dtype="float32")
    norm.weight.value = 1 + 0.1 * torch.randn(8)
    x, hs = Tensor(torch.randn(3, 8)), [Tensor(torch.randn(3, 8)) for _ in range(2)]

    def merge_on(rank):
        merge = merges.make_merge("pt_plugin", "sum", 2, [0, 1], rank)
        merge.max_tokens = 3
        return merge(x, [hs[rank]])

    for merged, normed in standin.run_ranks(merge_on, 2):
        assert normed is None and torch.allclose(merged.value, hs[0].value + hs[1].value, atol=1e-6)
    assert [(c.fields["has_next_norm"], len(c.inputs), len(c.outputs)) for c in PT_TRACK_MERGES] == [(0, 1, 1)] * 2
    PT_TRACK_MERGES.clear()
    merged, normed = merges.make_merge("pt_plugin", "sum", 1, [0], 0)(x, [hs[0]], norm)  # no max_tokens needed
    assert merged is hs[0] and torch.equal(normed.value, norm(hs[0]).value) and not PT_TRACK_MERGES


def test_the_plugin_merge_needs_its_rank_and_the_most_rows_of_a_forward(trt):
    merges = sys.modules["pt_trtllm.trtllm.merges"]
    for rank, group in ((None, [0, 1]), (2, [0, 1]), (0, [0])):
        with pytest.raises(ValueError, match="merge_impl='pt_plugin' needs this rank's track"):
            merges.make_merge("pt_plugin", "mean", 2, group, rank)
    x = Tensor(torch.randn(3, 8))
    with pytest.raises(ValueError, match="needs the most token rows of a forward"):
        merges.make_merge("pt_plugin", "mean", 2, [0, 1], 0)(x, [x])
    assert not PT_TRACK_MERGES


def test_the_plugin_merge_loads_the_library_when_the_creator_is_missing(trt, tmp_path, monkeypatch):
    """trtllm-build --model_cls_file and --workers processes have nobody else to load the library:
    the merge loads it when the registry lacks the creator; a missing library is the library's own
    one-line error, and a library without the creator is named too."""
    merges = sys.modules["pt_trtllm.trtllm.merges"]
    norm = standin.RmsNorm(8, eps=0.01, dtype="float32")
    norm.weight.value = torch.ones(8)
    x, hs = Tensor(torch.randn(3, 8)), [Tensor(torch.randn(3, 8)) for _ in range(2)]

    def merge_on(rank):
        merge = merges.make_merge("pt_plugin", "mean", 2, [0, 1], rank)
        merge.max_tokens = 3
        return merge(x, [hs[rank]], norm)

    standin.unregister_pt_plugin()
    missing = tmp_path / "nowhere" / plugin_lib.LIBRARY
    monkeypatch.setenv(plugin_lib.ENV_VAR, str(missing))
    with pytest.raises(plugin_lib.PluginLibraryError, match=f"^{plugin_lib.ENV_VAR}={missing} is not a file$"):
        merge_on(0)
    assert not PT_TRACK_MERGES and not standin.PLUGIN_LOADS
    library = tmp_path / plugin_lib.LIBRARY
    library.write_bytes(b"")
    monkeypatch.setenv(plugin_lib.ENV_VAR, str(library))
    standin.run_ranks(merge_on, 2)
    assert set(standin.PLUGIN_LOADS) == {str(library)} and len(PT_TRACK_MERGES) == 2
    standin.unregister_pt_plugin()
    monkeypatch.setattr(plugin_lib, "load", lambda: None)  # loads, registers nothing
    with pytest.raises(plugin_lib.PluginLibraryError, match=f"^{library} is loaded but TensorRT's plugin registry has "
                                                            "no PTTrackMerge creator"):
        merge_on(0)


@pytest.mark.parametrize("plugins, beams, max_tokens", [
    ({}, 1, 40),  # packed, paged KV cache: in-flight batching, one profile of up to max_num_tokens tokens
    ({"paged_kv_cache": False}, 1, 4 * 16),  # context/generation profiles: max_batch_size * max_input_len > 40
    ({"remove_input_padding": False, "gemm_plugin": "auto"}, 2, 4 * 2 * 16),  # padded, one profile
    ({"remove_input_padding": False}, 2, 4 * 16),  # padded, context [4, 16] and generation [8, 1] profiles
], ids=["packed", "ctx-gen-profiles", "padded", "padded-ctx-gen"])
def test_prepare_inputs_hands_the_merge_the_most_rows_of_a_forward(trt, make_ckpt, plugins, beams, max_tokens):
    """Merge.max_tokens is the largest input_ids shape over the optimization profiles that
    prepare_inputs made (what PTTrackMerge's configurePlugin checks each profile against), set
    before the network is defined; not simply max_num_tokens."""
    model = rank_model(trt, make_ckpt(), 1, merge_impl="pt_plugin")
    merge = model.transformer.merge
    assert type(merge).__name__ == "PluginMerge" and merge.rank == 1 and merge.max_tokens is None
    standin.build(model, standin.BuildConfig(max_batch_size=4, max_input_len=16, max_seq_len=32, max_num_tokens=40,
                                             max_beam_width=beams, plugin_config=standin.PluginConfig(**plugins)))
    assert merge.max_tokens == max_tokens


def test_the_node_counting_helper_tells_the_collectives_apart(trt):
    """pt_trtllm.trtllm.nodes.count_collective_nodes on one network: AllReduce and AllGather layers
    by TensorRT-LLM's plugin info, PTTrackMerge layers by their IPluginV3's core name and namespace
    (reached through IPluginV3Layer: get_layer gives a plain ILayer), other IPluginV3 layers not."""
    nodes = importlib.import_module("pt_trtllm.trtllm.nodes")

    class OtherPlugin:  # an IPluginV3 of another name, or of our name in another namespace
        def __init__(self, name, namespace):
            self.core = types.SimpleNamespace(plugin_name=name, plugin_namespace=namespace, plugin_version="1")

        def get_capability_interface(self, kind):
            return self.core if kind == standin.PluginCapabilityType.CORE else None

        def enqueue(self, inputs):
            return []

    network = standin.TrtNetwork()
    for name in ("allreduce", "allreduce", "allgather", "gemm"):
        network.add_plugin_v2_layer(name)
    fields = sys.modules["pt_trtllm.trtllm.merges"].plugin_fields(
        combine_op=0, residual_form=0, num_ranks=1, rank=0, has_combine_norm=0, has_dispatch_norm=0,
        has_next_norm=0, combine_eps=0.0, dispatch_eps=0.0, next_eps=0.0, transport=0, max_tokens=4,
        oneshot_max_bytes=0)
    merge = standin.PTTrackMergeCreator().create_plugin("m", standin.PluginFieldCollection(fields),
                                                        standin.TensorRTPhase.BUILD)
    merge.enqueue = lambda inputs: []
    for plugin in (merge, OtherPlugin("PTTrackMerge", "other"), OtherPlugin("Other", "pt_trtllm"), merge):
        network.add_plugin_v3([], [], plugin)
    assert isinstance(network.get_layer(4), standin.ILayer) and not hasattr(network.get_layer(4), "plugin")
    counted = nodes.count_collective_nodes(network)
    assert counted == nodes.CollectiveNodes(allreduce=2, pt_track_merge=2, allgather=1) and counted.merges == 4
    assert nodes.CollectiveNodes.expected("pt_plugin", 3) == nodes.CollectiveNodes(pt_track_merge=3)
    assert nodes.CollectiveNodes.expected("allreduce_fused_norm", 3) == nodes.CollectiveNodes(allreduce=3)


def test_an_unknown_merge_impl_is_refused_by_name(trt, make_ckpt):
    ckpt = make_ckpt()
    with pytest.raises(ValueError, match="merge_impl='fused'"):  # scripts/build.py --merge_impl
        rank_model(trt, ckpt, 0, merge_impl="fused")
    config = trt.PTForCausalLM.config_class.from_checkpoint(ckpt)
    config.merge_impl = "fused"  # the network reads the config's field when it is defined
    with pytest.raises(ValueError, match="merge_impl='fused'"):
        trt.PTForCausalLM(config)


# ---- what the engine cannot express or build -----------------------------------------------------
@pytest.mark.parametrize("overrides, schedule, named", [
    ({"track_dispatch_norm": True}, "sublayer", "track_dispatch_norm"),
    ({}, "none", "none"),
])
def test_what_the_engine_cannot_express_is_refused_at_build_time(trt, make_ckpt, overrides, schedule, named):
    ckpt = make_ckpt(**overrides)
    with pytest.raises(ValueError, match=named):
        rank_model(trt, ckpt, 0, schedule=schedule)


def test_a_schedule_changed_after_the_config_was_made_is_refused_when_the_network_is_defined(trt, make_ckpt):
    config = trt.PTForCausalLM.config_class.from_checkpoint(make_ckpt())
    config.merge_schedule = "none"
    with pytest.raises(ValueError, match="none"):
        trt.PTForCausalLM(config)


BUILD_SETTINGS = [
    ({"max_prompt_embedding_table_size": 16}, {}, "prompt tables (max_prompt_embedding_table_size=16) are not "
                                                  "supported by the PT network definition"),
    ({"max_draft_len": 4}, {}, "speculative decoding (max_draft_len=4) is not supported by the PT network definition"),
    ({"max_draft_len": 4, "speculative_decoding_draft_tokens_external": True}, {},
     "speculative decoding (max_draft_len=4)"),
    ({}, {"lora_plugin": "auto"}, "--lora_plugin is not supported by the PT network definition"),
    ({}, {"gemm_allreduce_plugin": "float16"}, "--gemm_allreduce_plugin is not supported by the PT network "
                                               "definition: TensorRT-LLM's RowLinear would all-reduce inside every"),
    ({}, {"user_buffer": "enable"}, "--user_buffer is not supported by the PT network definition"),
    ({}, {"gpt_attention_plugin": "disable"}, "qk_norm=True needs the GPT attention plugin"),
]


@pytest.mark.parametrize("settings, plugins, message", BUILD_SETTINGS,
                         ids=["prompt-tables", "speculative", "draft-tokens-external", "lora", "gemm-allreduce",
                              "user-buffer", "no-attention-plugin"])
def test_build_settings_the_network_cannot_take_are_refused_when_inputs_are_prepared(trt, make_ckpt, settings,
                                                                                     plugins, message):
    """Every build runs prepare_inputs with the build config's settings (builder.build): the
    refusal names the feature there, for scripts/build.py and trtllm-build alike."""
    model = rank_model(trt, make_ckpt(qk_norm=True), 0)
    build_config = standin.BuildConfig(**settings, plugin_config=standin.PluginConfig(**plugins))
    with pytest.raises(ValueError) as refused:
        standin.build(model, build_config)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_prepare_inputs_refuses_settings_given_by_position_or_by_name(trt, make_ckpt):
    """mrope inputs are made only for Qwen2-VL architectures by the builder; refused all the same.
    A setting passed by position is read as TensorRT-LLM's signature places it."""
    model = rank_model(trt, make_ckpt(), 0)
    standin.set_plugin_config(standin.PluginConfig(dtype="float32"))
    with pytest.raises(ValueError, match=r"^mrope \(multimodal RoPE\) is not supported by the PT network definition"):
        model.prepare_inputs(8, 16, 32, 64, True, mrope_rotary_cos_sin_size=128)
    with pytest.raises(ValueError, match=r"^prompt tables \(max_prompt_embedding_table_size=4\)"):
        model.prepare_inputs(8, 16, 32, 64, True, 1, None, 4)


def test_without_the_refusal_those_settings_fail_deep_in_the_build(trt, make_ckpt, monkeypatch):
    """What the refusals replace: PTModel.forward does not take the inputs TensorRT-LLM would then
    create, and the stand-in's build fails with a TypeError, as TensorRT-LLM's would."""
    model = rank_model(trt, make_ckpt(), 0)
    monkeypatch.setattr(trt.PTForCausalLM, "prepare_inputs", standin.DecoderModelForCausalLM.prepare_inputs)
    for settings in ({"max_prompt_embedding_table_size": 16}, {"max_draft_len": 4}):
        with pytest.raises(TypeError):
            standin.build(model, standin.BuildConfig(**settings))
    standin.build(model, standin.BuildConfig())  # the plain build binds


def test_build_prepares_the_workspace_the_merge_strategy_relies_on(trt, make_ckpt, tmp_path):
    """With T > 1 prepare_inputs makes the all-reduce workspace, so allreduce() keeps the merges'
    AUTO strategy (it falls back to NCCL_SYMMETRIC only without one)."""
    ckpt = make_ckpt()
    shutil.rmtree(tmp_path / "engines", ignore_errors=True)
    config = trt.PTForCausalLM.config_class.from_checkpoint(ckpt)
    standin.parallel_build(config, str(ckpt), standin.BuildConfig(), str(tmp_path / "engines"),
                           model_cls=trt.PTForCausalLM)
    assert standin.current_all_reduce_helper().workspace is not None
    assert [p["max_draft_len"] for p in standin.PREPARED] == [0, 0]  # one build per rank
