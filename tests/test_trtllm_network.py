"""The network definition (pt_trtllm/trtllm/{config,model}.py) executed here, without TensorRT-LLM,
against a small stand-in of the TensorRT-LLM names it uses. The stand-in reproduces, from the 1.2.x
source (docs/trtllm.md lists the files), the signatures (keyword names included, so a misspelled or
missing argument fails), how layers size their weights at tp_size = T, when a layer would insert a
collective (only with a tp_group), PretrainedConfig's construction and to_dict, and
PretrainedModel.load's name and shape checks. Tensors are symbolic: each records the operation
that made it, so a test can read the merge arithmetic and count the AllReduce nodes.

What this cannot show (tests/test_trtllm_engine.py does, where TensorRT-LLM is installed): that
TensorRT builds the network and the runtime's outputs match the PyTorch runtime.
"""

from __future__ import annotations

import enum
import importlib
import json
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

from pt_trtllm.convert.writer import convert
from pt_trtllm.formats import padded_vocab_size
from pt_trtllm.schedule import merges_per_forward

NETWORK_MODULES = ("pt_trtllm.trtllm.config", "pt_trtllm.trtllm.model")


# ---- the stand-in -------------------------------------------------------------------------------
class Sym:
    """A symbolic tensor: the operation that produced it and its operands."""

    def __init__(self, op, *args):
        self.op, self.args = op, args

    def __add__(self, other):
        return Sym("add", self, other)

    def __sub__(self, other):
        return Sym("sub", self, other)

    def __mul__(self, other):
        return Sym("mul", self, other)

    def __repr__(self):
        return f"{self.op}({', '.join(map(repr, self.args))})"


class Parameter:
    def __init__(self, shape):
        self.shape, self.value = tuple(shape), None


class Module:
    def __init__(self):
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_parameters", {})

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        for store in ("_parameters", "_modules"):
            found = self.__dict__.get(store, {})
            if name in found:
                return found[name]
        raise AttributeError(name)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def named_parameters(self, prefix=""):
        for name, param in self._parameters.items():
            yield prefix + name, param
        for name, module in self._modules.items():
            yield from module.named_parameters(f"{prefix}{name}.")

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, module in self._modules.items():
            yield from module.named_modules(f"{prefix}{name}.")


class ModuleList(Module):
    def __init__(self, modules):
        super().__init__()
        for i, module in enumerate(modules):
            self._modules[str(i)] = module

    def __getitem__(self, idx):
        return self._modules[str(idx)]

    def __len__(self):
        return len(self._modules)


class Linear(Module):  # layers/linear.py: ColumnLinear = Linear
    def __init__(self, in_features, out_features, bias=True, dtype=None, tp_group=None, tp_size=1,
                 gather_output=True, share_weight=None, strict_dtype=False, pad_lda=0, pad_ldc=0,
                 prefer_managed_weight=True, is_qkv=False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features // tp_size
        self.weight = Parameter((self.out_features, in_features))
        if bias:
            self.bias = Parameter((self.out_features,))
        self.collective = gather_output and tp_size > 1 and tp_group is not None  # the allgather

    def forward(self, x, lora_runtime_params=None):
        return Sym("linear", x)


class RowLinear(Module):
    def __init__(self, in_features, out_features, bias=True, dtype=None, tp_group=None, tp_size=1,
                 strict_dtype=False, pad_lda=0, prefer_managed_weight=True, is_expert=False):
        super().__init__()
        self.weight = Parameter((out_features, in_features // tp_size))
        if bias:
            self.bias = Parameter((out_features,))
        self.collective = tp_size > 1 and tp_group is not None  # the allreduce of collect_and_bias

    def forward(self, x, lora_runtime_params=None, all_reduce_params=None):
        return Sym("linear", x)


class RmsNorm(Module):
    def __init__(self, normalized_shape, num_groups=1, eps=1e-06, elementwise_affine=True, dtype=None):
        super().__init__()
        self.weight = Parameter((normalized_shape,))
        self.eps = eps

    def forward(self, x, normalized_shape=None):
        return Sym("rmsnorm", x, id(self))


class Embedding(Module):
    def __init__(self, num_embeddings, embedding_dim, dtype=None, tp_size=1, tp_group=None, sharding_dim=0,
                 tp_rank=None):
        super().__init__()
        self.weight = Parameter((num_embeddings, embedding_dim))

    def forward(self, x):
        return Sym("embedding", x)


class Attention(Module):  # layers/attention.py, the constructor's keyword names as in 1.2.x
    def __init__(self, *, local_layer_idx, hidden_size, num_attention_heads, num_kv_heads=None,
                 max_position_embeddings=1024, num_layers=1, apply_query_key_layer_scaling=False,
                 attention_head_size=None, qk_layernorm=False, layernorm_type=None, layernorm_share=True,
                 inner_layernorm=False, eps=1e-05, attention_mask_type=None, bias=True, dtype=None,
                 position_embedding_type=None, rotary_embedding_base=10000.0, rotary_embedding_base_local=1.0,
                 rotary_embedding_scaling=None, rotary_embedding_percentage=1.0, rope_scaling_short_factors=None,
                 rope_scaling_long_factors=None, rope_scaling_short_mscale=None, rope_scaling_long_mscale=None,
                 original_max_position_embeddings=1024, tp_group=None, tp_size=1, tp_rank=0, quant_mode=None,
                 q_scaling=1.0, cross_attention=False, relative_attention=False, max_distance=0, num_buckets=0,
                 dense_bias=None, clip_qkv=None, alibi_bias_max=8, skip_cross_kv=False, max_attn_value=0.0,
                 block_sparse_params=None, use_implicit_relative_attention=False, reorder=False, enable_qkv=True,
                 cp_group=None, cp_size=1, cp_rank=0, max_seqlen_for_logn_scaling=8192, use_logn_scaling=False,
                 is_local=False):
        super().__init__()
        head = attention_head_size or hidden_size // num_attention_heads
        heads, kv_heads = num_attention_heads // tp_size, (num_kv_heads + tp_size - 1) // tp_size
        self.qkv = Linear(hidden_size, tp_size * (heads + 2 * kv_heads) * head, bias=bias, tp_group=tp_group,
                          tp_size=tp_size, gather_output=False, is_qkv=True)
        self.dense = RowLinear(tp_size * heads * head, hidden_size, bias=bias, tp_group=tp_group, tp_size=tp_size)
        self.settings = {"local_layer_idx": local_layer_idx, "head": head, "heads": heads, "kv_heads": kv_heads,
                         "mask": attention_mask_type, "rope": position_embedding_type,
                         "base": rotary_embedding_base, "qk_layernorm": qk_layernorm, "q_scaling": q_scaling}

    def forward(self, hidden_states, attention_mask=None, attention_packed_mask=None, use_cache=False,
                spec_decoding_params=None, mrope_params=None, kv_cache_params=None, attention_params=None,
                encoder_output=None, position_embedding=None, norm_before_bmm1=False, lora_layer_params=None,
                cross_kv_cache_gen=None, cross_kv_reuse=None, all_reduce_params=None, skip_attn=None):
        out = Sym("attention", hidden_states, kv_cache_params.past_key_value[0])
        return (out, Sym("present", out)) if use_cache else out


class GatedMLP(Module):
    def __init__(self, hidden_size, ffn_hidden_size, hidden_act, bias=True, dtype=None, tp_group=None, tp_size=1,
                 quant_mode=None, inner_layernorm=False, eps=1e-05, is_expert=False):
        super().__init__()
        self.fc = Linear(hidden_size, ffn_hidden_size, bias=bias, tp_group=tp_group, tp_size=tp_size,
                         gather_output=False)
        self.proj = RowLinear(ffn_hidden_size, hidden_size, bias=bias, tp_group=tp_group, tp_size=tp_size)
        self.gate = Linear(hidden_size, ffn_hidden_size, bias=bias, tp_group=tp_group, tp_size=tp_size,
                           gather_output=False)
        self.hidden_act = hidden_act

    def forward(self, hidden_states, lora_layer_params=None, all_reduce_params=None):
        return Sym("mlp", hidden_states)


class KeyValueCacheParams:
    def __init__(self, past_key_value=None, host_past_key_value_lengths=None, host_max_attention_window_sizes=None,
                 host_sink_token_length=None, kv_cache_block_offsets=None, host_kv_cache_block_offsets=None,
                 host_kv_cache_pool_pointers=None, host_kv_cache_pool_mapping=None, cache_indirection=None,
                 past_key_value_length=None, cross_kv_cache_block_offsets=None,
                 host_cross_kv_cache_block_offsets=None, host_cross_kv_cache_pool_pointers=None,
                 host_cross_kv_cache_pool_mapping=None):
        self.past_key_value = past_key_value
        self.host_past_key_value_lengths = host_past_key_value_lengths
        self.host_max_attention_window_sizes = host_max_attention_window_sizes
        self.host_sink_token_length = host_sink_token_length
        self.kv_cache_block_offsets = kv_cache_block_offsets
        self.host_kv_cache_block_offsets = host_kv_cache_block_offsets
        self.host_kv_cache_pool_pointers = host_kv_cache_pool_pointers
        self.host_kv_cache_pool_mapping = host_kv_cache_pool_mapping
        self.cache_indirection = cache_indirection

    def fill_none_tensor_list(self, list_size):
        if self.past_key_value is None:
            self.past_key_value = tuple([None] * list_size)


class AttentionMaskType(enum.IntEnum):
    padding = 0
    causal = 1


class PositionEmbeddingType(enum.IntEnum):
    learned_absolute = 0
    rope_gptj = 1
    rope_gpt_neox = 2

    def __str__(self):
        return self.name

    @staticmethod
    def from_string(s):
        return PositionEmbeddingType[s]


class AllReduceParams:
    def __init__(self, strategy=3, fusion_op=0, bias=None, residual=None, norm_weight=None, scale=None,
                 norm_pre_residual_weight=None, eps=1e-06, enable_allreduce=True, trigger_completion_at_end=True):
        self.strategy, self.fusion_op = strategy, fusion_op


ALLREDUCES: list = []  # (group, params) of every allreduce() node added


def allreduce(tensor, group, all_reduce_params=None):
    ALLREDUCES.append((list(group), all_reduce_params))
    return Sym("allreduce", tensor)


class Mapping:
    def __init__(self, world_size=1, rank=0, gpus_per_node=8, *, cp_size=1, cp_config=None, tp_size=1, pp_size=1,
                 moe_cluster_size=-1, moe_tp_size=-1, moe_ep_size=-1, attn_tp_size=-1, attn_cp_size=-1,
                 auto_parallel=False, enable_attention_dp=False):
        if tp_size * pp_size * cp_size != world_size:
            raise ValueError("world_size must equal to tp_size * pp_size * cp_size")
        self.world_size, self.rank, self.tp_size, self.pp_size, self.cp_size = world_size, rank, tp_size, pp_size, cp_size

    @property
    def tp_rank(self):
        return self.rank % self.tp_size

    @property
    def tp_group(self):
        first = self.rank // self.tp_size * self.tp_size
        return list(range(first, first + self.tp_size))

    def to_dict(self):
        return {"world_size": self.world_size, "rank": self.rank, "gpus_per_node": 8, "cp_size": self.cp_size,
                "tp_size": self.tp_size, "pp_size": self.pp_size}


class QuantConfig:
    def __init__(self, quant_algo=None, kv_cache_quant_algo=None, **rest):
        self.quant_algo, self.kv_cache_quant_algo = quant_algo, kv_cache_quant_algo

    def to_dict(self):
        return {"quant_algo": self.quant_algo, "kv_cache_quant_algo": self.kv_cache_quant_algo, "group_size": 128}


class PretrainedConfig:  # models/modeling_utils.py: the constructor and to_dict
    def __init__(self, *, architecture, dtype, hidden_size, num_hidden_layers, num_attention_heads, vocab_size=None,
                 hidden_act="gelu", logits_dtype="float32", norm_epsilon=1e-5,
                 position_embedding_type=PositionEmbeddingType.learned_absolute, max_position_embeddings=None,
                 rotary_embedding_dim=None, num_key_value_heads=None, intermediate_size=None, mapping=None,
                 quantization=None, use_parallel_embedding=False, embedding_sharding_dim=0, head_size=None,
                 qk_layernorm=False, runtime_defaults=None, **kwargs):
        self.architecture, self.dtype, self.vocab_size = architecture, dtype, vocab_size
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
        self.num_attention_heads, self.hidden_act = num_attention_heads, hidden_act
        self.logits_dtype, self.norm_epsilon, self.runtime_defaults = logits_dtype, norm_epsilon, runtime_defaults
        if isinstance(position_embedding_type, str):
            position_embedding_type = PositionEmbeddingType.from_string(position_embedding_type)
        self.position_embedding_type = position_embedding_type
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.intermediate_size = intermediate_size or hidden_size * 4
        self.max_position_embeddings = max_position_embeddings
        self.mapping = Mapping(**mapping) if isinstance(mapping, dict) else (mapping or Mapping())
        self.quantization = QuantConfig(**quantization) if isinstance(quantization, dict) else QuantConfig()
        self.use_parallel_embedding, self.embedding_sharding_dim = use_parallel_embedding, embedding_sharding_dim
        self.head_size = head_size or hidden_size // num_attention_heads
        self.qk_layernorm = qk_layernorm
        self.rotary_embedding_dim = rotary_embedding_dim or self.head_size
        for key, value in kwargs.items():
            setattr(self, key, value)

    def to_dict(self):
        out = dict(self.__dict__)
        out["position_embedding_type"] = str(self.position_embedding_type)
        out["mapping"] = self.mapping.to_dict()
        out["mapping"].pop("rank")
        out["quantization"] = self.quantization.to_dict()
        return out

    def set_rank(self, rank):
        self.mapping.rank = rank

    @property
    def quant_mode(self):
        return "QuantMode(0)"


class DecoderModelForCausalLM(Module):
    def __init__(self, config, transformer, lm_head):
        super().__init__()
        self.config = config
        self.transformer = transformer
        self.lm_head = lm_head

    def load(self, weights, from_pruned=False):  # PretrainedModel.load: every parameter, its exact shape
        required = {name for name, _ in self.named_parameters()}
        if not required <= set(weights):
            raise RuntimeError(f"Required but not provided tensors:{required - set(weights)}")
        for name, param in self.named_parameters():
            assert tuple(weights[name].shape) == param.shape, f"{name}: {tuple(weights[name].shape)} vs {param.shape}"
            param.value = weights[name]


@pytest.fixture
def trt(monkeypatch):
    """The network-definition modules imported against the stand-in; yields the model module."""
    def module(name, **attrs):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)
        return mod

    module("tensorrt_llm")
    module("tensorrt_llm.functional", AllReduceParams=AllReduceParams, allreduce=allreduce)
    module("tensorrt_llm.layers", Attention=Attention, AttentionMaskType=AttentionMaskType, ColumnLinear=Linear,
           Embedding=Embedding, GatedMLP=GatedMLP, KeyValueCacheParams=KeyValueCacheParams, RmsNorm=RmsNorm)
    module("tensorrt_llm.models", MODEL_MAP={})
    module("tensorrt_llm.models.modeling_utils", PretrainedConfig=PretrainedConfig,
           DecoderModelForCausalLM=DecoderModelForCausalLM)
    module("tensorrt_llm.module", Module=Module, ModuleList=ModuleList)
    for name in NETWORK_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    ALLREDUCES.clear()
    yield importlib.import_module("pt_trtllm.trtllm.model")
    for name in NETWORK_MODULES:
        sys.modules.pop(name, None)


def rank_model(trt, ckpt, rank, **changes):
    data = {**json.loads((ckpt / "config.json").read_text()), **changes}
    config = trt.PTForCausalLM.config_class(**data)
    config.set_rank(rank)
    return trt.PTForCausalLM(config)


def forward(model, use_cache=True):
    kv = KeyValueCacheParams(past_key_value=[Sym(f"past{layer}") for layer in range(model.config.num_hidden_layers)])
    return model.transformer.forward(Sym("input_ids"), Sym("position_ids"), use_cache=use_cache,
                                     kv_cache_params=kv, attention_params=Sym("attention_params"))


@pytest.fixture
def make_ckpt(pt_checkpoint_factory, tmp_path):
    def make(**overrides):
        dst = tmp_path / f"ckpt{len(list(tmp_path.iterdir()))}"
        convert(pt_checkpoint_factory("tiny", **overrides), dst, dtype="float16", progress=False)
        return dst
    return make


# ---- the tests ----------------------------------------------------------------------------------
def test_importing_registers_the_model_and_its_config_class(trt):
    assert sys.modules["tensorrt_llm.models"].MODEL_MAP["PTForCausalLM"] is trt.PTForCausalLM
    assert trt.PTForCausalLM.config_class.__name__ == "PTPretrainedConfig"


@pytest.mark.parametrize("overrides", [
    {}, {"vocab_size": 511, "tie_word_embeddings": True},
    {"rope_style": "gptj", "track_dispatch_norm": True, "track_combine_norm": True},
    {"num_tracks": 4, "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 510},
], ids=["tiny", "odd-vocab-tied", "gptj-norms", "four-tracks"])
def test_each_rank_declares_and_loads_exactly_its_converted_rank_file(trt, make_ckpt, overrides):
    ckpt = make_ckpt(**overrides)
    data = json.loads((ckpt / "config.json").read_text())
    for rank in range(data["num_tracks"]):
        model = rank_model(trt, ckpt, rank)
        stored = load_file(ckpt / f"rank{rank}.safetensors")
        declared = dict(model.named_parameters())
        assert set(declared) == set(stored), f"rank {rank}: names differ"
        vocab, padded = data["vocab_size"], padded_vocab_size(model.config.pt_config())
        for name, param in declared.items():
            want = (padded, data["hidden_size"]) if name == "lm_head.weight" else tuple(stored[name].shape)
            assert param.shape == want, f"rank {rank} {name}: declared {param.shape}, expected {want}"
        model.load(stored)
        head = torch.as_tensor(declared["lm_head.weight"].value)
        assert torch.equal(head[:vocab], stored["lm_head.weight"]) and not head[vocab:].any()
        # every per-track layer holds one track and emits no collective
        layers = [m for _, m in model.named_modules() if isinstance(m, (Linear, RowLinear))]
        assert layers and not any(m.collective for m in layers)


def test_attention_settings_follow_the_config(trt, make_ckpt):
    ckpt = make_ckpt(rope_style="gptj", rope_theta=500000.0)
    cfg = rank_model(trt, ckpt, 1).config.pt_config()
    model = rank_model(trt, ckpt, 1)
    for layer in range(cfg.num_hidden_layers):
        s = model.transformer.layers[layer].attention.settings
        assert s == {"local_layer_idx": layer, "head": cfg.head_dim, "heads": cfg.heads_per_track,
                     "kv_heads": cfg.kv_heads_per_track, "mask": AttentionMaskType.causal,
                     "rope": PositionEmbeddingType.rope_gptj, "base": 500000.0, "qk_layernorm": False,
                     "q_scaling": 1.0}
    assert model.transformer.layers[0].mlp.hidden_act == "silu"


@pytest.mark.parametrize("schedule, combine_op", [("block", "mean"), ("block", "sum"), ("block", "residual_sum"),
                                                  ("sublayer", "residual_sum"), ("sublayer", "mean")])
def test_one_allreduce_per_merge_of_the_schedule(trt, make_ckpt, schedule, combine_op):
    ckpt = make_ckpt(combine_op=combine_op, merge_schedule=schedule)
    model = rank_model(trt, ckpt, 0)
    cfg = model.config.pt_config()
    hidden, presents = forward(model)
    expected = merges_per_forward(schedule, cfg.num_hidden_layers, cfg.block_depth)
    assert expected == (cfg.num_blocks if schedule == "block" else 2 * cfg.num_hidden_layers)
    assert len(ALLREDUCES) == expected
    assert all(group == [0, 1] for group, _ in ALLREDUCES)
    assert len({id(params) for _, params in ALLREDUCES}) == expected  # a fresh AllReduceParams each
    assert hidden.op == "rmsnorm" and len(presents) == cfg.num_hidden_layers
    assert all(p.op == "present" for p in presents)


def test_the_schedule_override_is_what_the_network_follows(trt, make_ckpt):
    ckpt = make_ckpt(combine_op="residual_sum")  # a block checkpoint, built as its TP baseline
    model = rank_model(trt, ckpt, 0, merge_schedule="sublayer")
    forward(model)
    assert len(ALLREDUCES) == 2 * model.config.num_hidden_layers
    assert model.config.to_dict()["merge_schedule"] == "sublayer"  # what the engine's config.json records


@pytest.mark.parametrize("combine_op", ["mean", "sum", "residual_sum"])
def test_merge_arithmetic(trt, make_ckpt, combine_op):
    model = rank_model(trt, make_ckpt(combine_op=combine_op, num_hidden_layers=2, block_depth=2), 0)
    hidden = forward(model, use_cache=False)
    merged = hidden.args[0]  # the input of ln_f: the one merge of the one block
    if combine_op == "mean":
        assert merged.op == "mul" and merged.args[0].op == "allreduce" and merged.args[1] == 0.5
    elif combine_op == "sum":
        assert merged.op == "allreduce"
    else:  # x + allreduce(h - x), never allreduce(h) - (T-1) x
        x = merged.args[0]
        assert merged.op == "add" and x.op == "embedding" and merged.args[1].op == "allreduce"
        h_minus_x = merged.args[1].args[0]
        assert h_minus_x.op == "sub" and h_minus_x.args[1] is x


def test_dispatch_and_combine_norms_wrap_every_track_block(trt, make_ckpt):
    model = rank_model(trt, make_ckpt(track_dispatch_norm=True, track_combine_norm=True), 0)
    cfg = model.config.pt_config()
    hidden = forward(model, use_cache=False)
    norms = {"dispatch": {id(n) for n in (model.transformer.dispatch_norms[b] for b in range(cfg.num_blocks))},
             "combine": {id(n) for n in (model.transformer.combine_norms[b] for b in range(cfg.num_blocks))}}
    x, seen = hidden.args[0], []
    for _ in range(cfg.num_blocks):  # walk back through the blocks: mean(combine(... dispatch(x)))
        combined = x.args[0].args[0]
        assert combined.op == "rmsnorm" and combined.args[1] in norms["combine"]
        seen.append(combined.args[1])
        node = combined.args[0]
        while not (node.op == "rmsnorm" and node.args[1] in norms["dispatch"]):
            node = node.args[0]
        x = node.args[0]
    assert x.op == "embedding" and len(set(seen)) == cfg.num_blocks


def test_one_track_merges_with_itself_without_a_collective(trt, make_ckpt):
    ckpt = make_ckpt(num_tracks=1)
    forward(rank_model(trt, ckpt, 0))
    assert ALLREDUCES == []


@pytest.mark.parametrize("overrides, schedule, named", [
    ({"qk_norm": True}, None, "qk_norm"),
    ({"track_dispatch_norm": True}, "sublayer", "track_dispatch_norm"),
    ({}, "none", "none"),
])
def test_what_the_engine_cannot_express_is_refused_at_build_time(trt, make_ckpt, overrides, schedule, named):
    ckpt = make_ckpt(**overrides)
    changes = {"merge_schedule": schedule} if schedule else {}
    with pytest.raises(ValueError, match=named):
        rank_model(trt, ckpt, 0, **changes)


def test_a_config_json_with_contradicting_fields_is_refused(trt, make_ckpt):
    ckpt = make_ckpt()
    with pytest.raises(ValueError, match="head_size"):
        rank_model(trt, ckpt, 0, head_size=8)
