"""A numeric stand-in for the TensorRT-LLM names that the network definition
(pt_trtllm/trtllm/{config,merges,attention,model}.py) and scripts/build.py use, so that the tests
execute both without TensorRT-LLM.

It reproduces, from the 1.2.x source (docs/trtllm.md lists the files and versions), the signatures
(keyword names included, so a misspelled or missing argument fails), the shapes, argument orders and
output orders, and evaluates every operation on torch tensors (`Tensor.value`):
- functional: Tensor arithmetic (same-dtype operands, as a strongly typed network), view, cast,
  shape, concat, split, unsqueeze, constant, embedding, gather_last_token_logits;
  RopeEmbeddingUtils.create_sinusoidal_positions ([1, P, d]: sin | cos) and apply_rotary_pos_emb
  ([cos, sin] of [b, s, d/2], a 4-D [b, s, heads, d] tensor, rotate_half for neox, rotate_every_two
  for gptj); allreduce with AllReduceParams (the strategy rewrites of allreduce(), the plugin's
  dtype rule for every input, and RESIDUAL_RMS_NORM returning (RMSNorm(sum + residual) * w,
  sum + residual) in that order, each rank normalizing with its own weight); gpt_attention as the
  GPT attention plugin's context phase: causal attention over the packed (or padded) sequences,
  GQA, scale 1 / (sqrt(d) q_scaling), RoPE applied inside when the position embedding is RoPE with
  a rotary dimension (positions 0.. of each sequence, base rotary_embedding_base), and the present
  K/V returned as the rank's cache (K after whatever RoPE and norm ran); no past KV is read;
- layers: ColumnLinear/Linear, RowLinear, Embedding, RmsNorm (normalize in float32, cast back, times
  the weight), GatedMLP (proj(silu(fc(x)) * gate(x))), Attention (qkv -> gpt_attention -> dense,
  sized at tp_size, a collective only with a tp_group), KeyValueCacheParams, AttentionParams;
- models: PretrainedConfig (construction, to_dict, from_dict through MODEL_MAP, from_json_file,
  from_checkpoint), DecoderModelForCausalLM (forward: transformer, gather_last_token_logits,
  lm_head, logits in logits_dtype; from_checkpoint; load with its name and shape checks;
  prepare_inputs: the inputs it would create, the all-reduce workspace when tp_size > 1, and
  input_ids with its optimization profiles' ranges as GenerationMixin.get_profiles_ranges makes
  them without speculative decoding: one profile [1, opt, max_num_tokens] tokens, or
  [max_batch_size * max_beam_width, max_input_len] padded, under in-flight batching, else the
  context/generation pair of has_ctx_gen_opt_profiles);
- builder, plugin, commands.build: BuildConfig, PluginConfig (enable/disable, "auto" is the model
  dtype), add_plugin_argument, parallel_build -> build_model -> from_checkpoint -> build (the
  network's plugin config, prepare_inputs with the build config's settings, the inputs bound to
  PTModel.forward as DecoderModelForCausalLM.forward passes them) -> Engine.save's config.json;
- tensorrt (TensorRT 10.14's Python API, python/src/infer/pyPlugin.cpp and pyGraph.cpp of
  NVIDIA/TensorRT v10.14): PluginField, PluginFieldType, PluginFieldCollection, TensorRTPhase,
  get_plugin_registry().get_creator (None for an unregistered creator), IPluginCreatorV3One's
  create_plugin(name, field_collection, phase), IPluginV3.get_capability_interface(CORE)'s
  plugin_name / plugin_namespace / plugin_version, LayerType, and each rank's INetworkDefinition
  (`default_trtnet()`: num_layers; get_layer returning a plain ILayer, whose class the caller
  sets to IPluginV3Layer / IPluginV2Layer to reach `plugin`; add_plugin_v3(inputs, shape_inputs,
  plugin) -> IPluginV3Layer with get_output / num_outputs), functional._create_tensor, and
  network.get_plugin_info (the record TensorRT-LLM keeps for its own plugin layers: allreduce()
  adds one PLUGIN_V2 layer named "allreduce" per call);
- the project's PTTrackMerge plugin (plugins/README.md, pt_merge.h, plugins/src/trt/merge_fields.cpp
  and pt_track_merge_plugin.cpp; PluginMerge's docstring): its creator ("PTTrackMerge", "1",
  "pt_trtllm"; registered as if libpt_trtllm_plugins.so were loaded, and `pt_trtllm.plugin_lib.load`
  replaced by a stand-in that resolves the library path with the real `library_path()`, so its
  one-line errors are real, then registers the creator), which checks every field (names, types,
  ranges as read_fields does; it also requires all 13, where the plugin would default a missing
  one) and, in add_plugin_v3, the inputs (count and
  order from the flags, one dtype, shapes, rows <= max_tokens, rank = the calling rank, num_ranks =
  the run's world) and computes the merge: the optional combine norm, the quantity to reduce, the
  sum over the ranks in float32 in rank order, the merged state, the optional dispatch norm and next
  norm (RMSNorm in float32 with the weight, rounded to the dtype once), outputs in the order merged,
  dispatch_normed, next_normed.

The T ranks of a model run in one process, one thread each (`run_ranks`): allreduce() waits for every
rank of its group and sums in rank order, so each rank's network is evaluated as it would run.
ALLREDUCES records every allreduce() call (rank, group, params), PT_TRACK_MERGES every PTTrackMerge
node (rank, fields, inputs), PLUGIN_LOADS every load of the plugin library, and RMSNORM_CALLS every
RmsNorm applied (rank, module id). Not modelled: graph rewriting (FusedGatedMLP), the plugin's fused RoPE
tables (it computes RoPE from rotary_embedding_base itself), the generation phase and the KV cache.
It shares any misreading of TensorRT-LLM's semantics; it catches wiring bugs (a wrong norm weight,
residual, output order, eps, head split, RoPE pairing or dtype).

`install(monkeypatch)` puts the stand-in in sys.modules and imports the network definition against
it (the model module is returned).
"""

from __future__ import annotations

import copy
import enum
import importlib
import inspect
import json
import math
import os
import sys
import threading
import types
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

NETWORK_MODULES = ("pt_trtllm.trtllm.config", "pt_trtllm.trtllm.merges", "pt_trtllm.trtllm.attention",
                   "pt_trtllm.trtllm.model", "pt_trtllm.trtllm.nodes")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int32": torch.int32}


def _dtype(dtype) -> torch.dtype:
    return DTYPES[dtype] if isinstance(dtype, str) else dtype


# ---- tensors -----------------------------------------------------------------------------------
class Tensor:
    """A network tensor, evaluated: `value` is the torch tensor it holds."""

    def __init__(self, value: torch.Tensor):
        self.value = value

    @property
    def dtype(self) -> torch.dtype:
        return self.value.dtype

    @property
    def shape(self) -> tuple:
        return tuple(self.value.shape)

    def ndim(self) -> int:
        return self.value.dim()

    @property
    def trt_tensor(self) -> Tensor:
        """The TensorRT tensor (the stand-in's tensors are their own ITensor)."""
        return self

    def is_dynamic(self, dim=None) -> bool:
        return False

    def view(self, shape, zero_is_placeholder=True) -> Tensor:
        dims = [int(d) for d in _ints(shape)]
        if zero_is_placeholder:
            dims = [self.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return Tensor(self.value.reshape(dims))

    def cast(self, dtype) -> Tensor:
        return cast(self, dtype)

    def mark_output(self, name, dtype=None):
        self.output_name = name

    def _binary(self, other, op, reverse=False):
        if isinstance(other, Tensor):
            assert other.dtype == self.dtype, f"elementwise {op.__name__} of {self.dtype} and {other.dtype}"
            other = other.value
        else:
            other = torch.tensor(other, dtype=self.dtype)
        a, b = (other, self.value) if reverse else (self.value, other)
        return Tensor(op(a, b))

    def __add__(self, other):
        return self._binary(other, torch.add)

    def __radd__(self, other):
        return self._binary(other, torch.add, reverse=True)

    def __sub__(self, other):
        return self._binary(other, torch.sub)

    def __rsub__(self, other):
        return self._binary(other, torch.sub, reverse=True)

    def __mul__(self, other):
        return self._binary(other, torch.mul)

    def __rmul__(self, other):
        return self._binary(other, torch.mul, reverse=True)


def _ints(shape) -> list[int]:
    """A shape given as a Tensor of ints or a list of ints and 1-element int Tensors."""
    if isinstance(shape, Tensor):
        return shape.value.flatten().tolist()
    return [d.value.flatten().tolist()[0] if isinstance(d, Tensor) else d for d in shape]


def cast(input, dtype) -> Tensor:
    return Tensor(input.value.to(_dtype(dtype)))


def shape(input, dim=None, cast_to_dtype=None, clip_before_cast=None) -> Tensor:
    dims = input.shape if dim is None else [input.shape[dim]]
    return Tensor(torch.tensor(dims, dtype=torch.int64))


def concat(inputs, dim=0) -> Tensor:
    if all(isinstance(i, int) or i.dtype == torch.int64 for i in inputs):  # a shape
        return Tensor(torch.tensor(_ints(inputs), dtype=torch.int64))
    return Tensor(torch.cat([i.value for i in inputs], dim=dim))


def split(tensor, split_size_or_sections, dim=0) -> list:
    assert not tensor.is_dynamic(dim)
    if isinstance(split_size_or_sections, int):
        assert tensor.shape[dim] % split_size_or_sections == 0
    else:
        assert sum(split_size_or_sections) == tensor.shape[dim]
    return [Tensor(t) for t in torch.split(tensor.value, split_size_or_sections, dim=dim)]


def unsqueeze(input, axis) -> Tensor:
    return Tensor(input.value.unsqueeze(axis))


def expand_dims(input, dim) -> Tensor:
    value = input.value
    for d in [dim] if isinstance(dim, int) else dim:
        value = value.unsqueeze(d)
    return Tensor(value)


def constant(ndarray) -> Tensor:
    return Tensor(torch.from_numpy(np.ascontiguousarray(ndarray)))


def embedding(input, weight, tp_size=1, tp_group=None, sharding_dim=0, tp_rank=None, per_token_scale=None,
              padding=None) -> Tensor:
    return Tensor(weight.value[input.value.long()])


def gather_last_token_logits(hidden_states, last_token_ids, remove_input_padding) -> Tensor:
    if last_token_ids is None:
        return hidden_states
    assert remove_input_padding
    return Tensor(hidden_states.value[last_token_ids.value.long() - 1])


class PositionEmbeddingType(enum.IntEnum):
    learned_absolute = 0
    rope_gptj = 1
    rope_gpt_neox = 2

    def is_rope(self) -> bool:
        return self in (PositionEmbeddingType.rope_gptj, PositionEmbeddingType.rope_gpt_neox)

    def __str__(self):
        return self.name

    @staticmethod
    def from_string(s):
        return PositionEmbeddingType[s]


class AttentionMaskType(enum.IntEnum):
    padding = 0
    causal = 1


class RopeEmbeddingUtils:
    @staticmethod
    def create_sinusoidal_positions(num_pos: int, dim: int, theta: float = 10000.0, dtype=np.float32):
        inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2) / dim)).astype(dtype)
        sinusoid_inp = np.einsum("i , j -> i j", np.arange(num_pos, dtype=dtype), inv_freq, dtype=dtype)
        concat_ = np.concatenate((np.sin(sinusoid_inp), np.cos(sinusoid_inp)), axis=1)
        return np.expand_dims(concat_, axis=0).astype(dtype)

    @staticmethod
    def rotate_every_two(tensor):
        assert tensor.ndim() == 4
        x1, x2 = tensor.value[..., 0::2], tensor.value[..., 1::2]
        return Tensor(torch.stack((-x2, x1), dim=-1).flatten(-2))

    @staticmethod
    def rotate_half(tensor):
        assert tensor.ndim() == 4
        x1, x2 = tensor.value.chunk(2, dim=-1)
        return Tensor(torch.cat((-x2, x1), dim=-1))

    @staticmethod
    def apply_rotary_pos_emb(tensor, position_embedding=None, pos_emb_type=PositionEmbeddingType.rope_gptj):
        assert len(position_embedding) == 2
        cos, sin = position_embedding
        sin, cos = expand_dims(sin, 2).value, expand_dims(cos, 2).value
        if pos_emb_type == PositionEmbeddingType.rope_gpt_neox:
            sin, cos = torch.cat([sin, sin], 3), torch.cat([cos, cos], 3)
            rotate = RopeEmbeddingUtils.rotate_half
        elif pos_emb_type == PositionEmbeddingType.rope_gptj:
            sin, cos = sin.repeat_interleave(2, 3), cos.repeat_interleave(2, 3)
            rotate = RopeEmbeddingUtils.rotate_every_two
        else:
            raise ValueError("The PositionEmbeddingType is not RoPE")
        return tensor * Tensor(cos) + rotate(tensor) * Tensor(sin)


# ---- the network context and the collectives ---------------------------------------------------
class PluginConfig:  # plugin/plugin.py: the fields the network and build.py read, their defaults
    FIELDS = {"dtype": "float16", "gpt_attention_plugin": "auto", "gemm_plugin": None, "nccl_plugin": "auto",
              "lora_plugin": None, "gemm_allreduce_plugin": None, "context_fmha": True, "paged_kv_cache": None,
              "remove_input_padding": True, "reduce_fusion": False, "user_buffer": False, "use_fused_mlp": True}
    CHOICES = {"gpt_attention_plugin": ["auto", "float16", "float32", "bfloat16", "int32", "disable"],
               "gemm_plugin": ["auto", "float16", "float32", "bfloat16", "int32", "fp8", "nvfp4", "disable"],
               "nccl_plugin": ["auto", "float16", "float32", "bfloat16", "int32", "disable"],
               "lora_plugin": ["auto", "float16", "float32", "bfloat16", "int32", "disable"],
               "gemm_allreduce_plugin": ["float16", "bfloat16", "disable"]}
    CLI = ("gpt_attention_plugin", "gemm_plugin", "nccl_plugin", "lora_plugin", "gemm_allreduce_plugin",
           "context_fmha", "remove_input_padding", "reduce_fusion", "user_buffer", "use_fused_mlp")

    def __init__(self, **values):
        for name, default in self.FIELDS.items():
            value = values.get(name, default)
            if value == "enable":
                value = True
            elif value == "disable":
                value = False if isinstance(default, bool) else None
            object.__setattr__(self, name, value)

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        return object.__getattribute__(self, "dtype") if name != "dtype" and value == "auto" else value

    @classmethod
    def from_arguments(cls, args):
        return cls(**{k: v for k, v in vars(args).items() if k in cls.FIELDS})

    def validate(self):
        pass


def add_plugin_argument(parser):
    for name in PluginConfig.CLI:
        default = PluginConfig.FIELDS[name]
        if name in PluginConfig.CHOICES:
            parser.add_argument("--" + name, type=str, default=default if default else "disable",
                                choices=PluginConfig.CHOICES[name])
        else:
            parser.add_argument("--" + name, type=str, default="enable" if default else "disable",
                                choices=["enable", "disable"])
    return parser


class _Network:
    def __init__(self):
        self.plugin_config = PluginConfig(dtype="float32")


_NET = _Network()


def default_net() -> _Network:
    return _NET


def set_plugin_config(plugin_config: PluginConfig) -> None:
    """The plugin config of the network being defined (builder.build sets it from the build config)."""
    _NET.plugin_config = plugin_config


class CustomAllReduceHelper:  # plugin/plugin.py
    def __init__(self):
        self.workspace = None

    def set_workspace_tensor(self, mapping, num_profiles=None):
        self.workspace = Tensor(torch.zeros(7 * mapping.tp_size + 3, dtype=torch.int64))


_HELPER = CustomAllReduceHelper()


def init_all_reduce_helper():
    global _HELPER
    _HELPER = CustomAllReduceHelper()


def current_all_reduce_helper():
    return _HELPER


class AllReduceStrategy(enum.IntEnum):
    NCCL = 0
    MIN_LATENCY = 1
    UB = 2
    AUTO = 3
    ONESHOT = 4
    TWOSHOT = 5
    LOWPRECISION = 6
    MNNVL = 7
    NCCL_SYMMETRIC = 8
    SYMM_MEM = 9
    FLASHINFER = 10


class AllReduceFusionOp(enum.IntEnum):
    NONE = 0
    RESIDUAL_RMS_NORM = 1
    LAST_PROCESS_FOR_UB = 2
    RESIDUAL_RMS_PREPOST_NORM = 3


class AllReduceParams:
    def __init__(self, strategy=AllReduceStrategy.AUTO, fusion_op=AllReduceFusionOp.NONE, bias=None, residual=None,
                 norm_weight=None, scale=None, norm_pre_residual_weight=None, eps=1e-06, enable_allreduce=True,
                 trigger_completion_at_end=True):
        self.strategy, self.fusion_op, self.bias, self.residual = strategy, fusion_op, bias, residual
        self.norm_weight, self.scale, self.norm_pre_residual_weight, self.eps = norm_weight, scale, \
            norm_pre_residual_weight, eps
        assert fusion_op == AllReduceFusionOp.NONE or residual is not None

    def update_strategy(self):
        if self.strategy == AllReduceStrategy.AUTO and default_net().plugin_config.user_buffer:
            self.strategy = AllReduceStrategy.UB


@dataclass
class AllReduceCall:
    rank: int
    group: list
    strategy: AllReduceStrategy
    """After allreduce()'s own rewrites: the strategy the plugin is built with."""
    params: AllReduceParams


ALLREDUCES: list[AllReduceCall] = []
RMSNORM_CALLS: list[tuple[int, int]] = []  # (rank, id of the RmsNorm module), for every RmsNorm applied
_THREAD = threading.local()


class _Collective:
    """The T rank threads of one run: all_reduce waits for every rank and sums in rank order."""

    def __init__(self, world: int):
        self.world, self.barrier, self.slots = world, threading.Barrier(world, timeout=120), [None] * world

    def all_reduce(self, rank: int, group: list, value: torch.Tensor) -> torch.Tensor:
        assert group == list(range(self.world)), f"group {group} is not the {self.world} ranks of the run"
        self.slots[rank] = value
        self.barrier.wait()
        total = self.slots[0].clone()
        for other in self.slots[1:]:
            total = total + other
        self.barrier.wait()  # every rank has read the slots before the next call writes them
        return total


def current_rank() -> int:
    return getattr(_THREAD, "rank", 0)


def run_ranks(fn, world: int) -> list:
    """[fn(0), ..., fn(world - 1)], each called in its own thread as that rank (allreduce() in one
    rank's network meets the same call in the others')."""
    collective, results, errors = _Collective(world), [None] * world, []

    def target(rank):
        _THREAD.rank, _THREAD.collective = rank, collective
        try:
            results[rank] = fn(rank)
        except BaseException as e:  # noqa: BLE001 - re-raised below, after every thread ended
            errors.append(e)
            collective.barrier.abort()

    threads = [threading.Thread(target=target, args=(rank,)) for rank in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
    return results


def _rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, dtype: torch.dtype) -> torch.Tensor:
    y = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(dtype)
    return y if weight is None else y * weight


_DEFAULT_PARAMS = AllReduceParams()


def allreduce(tensor, group, all_reduce_params=_DEFAULT_PARAMS):
    """functional.allreduce and the AllReduce plugin (allreducePlugin.cpp): the sum over `group`;
    with RESIDUAL_RMS_NORM the plugin's outputs 0 and 1, returned as (final, intermediate)."""
    params = AllReduceParams() if all_reduce_params is None else all_reduce_params
    params.update_strategy()
    if params.strategy not in (AllReduceStrategy.NCCL, AllReduceStrategy.UB) and _HELPER.workspace is None:
        params.strategy = AllReduceStrategy.NCCL_SYMMETRIC
    dtype = _dtype(default_net().plugin_config.nccl_plugin)
    rank = current_rank()
    ALLREDUCES.append(AllReduceCall(rank, list(group), params.strategy, params))
    default_trtnet().add_plugin_v2_layer("allreduce")
    total = _THREAD.collective.all_reduce(rank, list(group), tensor.value.to(dtype))
    if params.fusion_op == AllReduceFusionOp.NONE:
        return Tensor(total.to(tensor.dtype))
    assert params.fusion_op == AllReduceFusionOp.RESIDUAL_RMS_NORM
    for name in ("residual", "norm_weight"):  # plugin inputs: every one in the plugin's dtype
        value = getattr(params, name)
        assert value is None or value.dtype == dtype, f"allreduce {name} is {value.dtype}, the plugin's is {dtype}"
    assert params.residual.shape == tensor.shape
    inter = total + params.residual.value
    weight = None if params.norm_weight is None else params.norm_weight.value.float()
    normed = (inter.float() * torch.rsqrt(inter.float().pow(2).mean(-1, keepdim=True) + params.eps))
    normed = (normed * weight if weight is not None else normed).to(dtype)
    return Tensor(normed.to(tensor.dtype)), Tensor(inter.to(tensor.dtype))


# ---- tensorrt: plugins, layers, each rank's INetworkDefinition ------------------------------------
class PluginFieldType(enum.IntEnum):  # pyPlugin.cpp: nvinfer1::PluginFieldType
    FLOAT16 = 0
    FLOAT32 = 1
    FLOAT64 = 2
    INT8 = 3
    INT16 = 4
    INT32 = 5
    CHAR = 6
    DIMS = 7
    UNKNOWN = 8
    BF16 = 9
    INT64 = 10


class PluginField:
    def __init__(self, name="", data=None, type=PluginFieldType.UNKNOWN):
        self.name, self.data, self.type = name, data, type
        self.size = 0 if data is None else len(data)


class PluginFieldCollection(list):  # a bound std::vector<PluginField>
    pass


class TensorRTPhase(enum.IntEnum):
    BUILD = 0
    RUNTIME = 1


class PluginCapabilityType(enum.IntEnum):
    CORE = 0
    BUILD = 1
    RUNTIME = 2


class LayerType(enum.IntEnum):  # the values the network definition and nodes.py compare with
    PLUGIN_V2 = 20
    PLUGIN_V3 = 46


class ILayer:
    """What INetworkDefinition.get_layer returns: the base class, without `plugin`."""

    def __init__(self, state: dict):
        self._state = state

    @property
    def type(self):
        return self._state["type"]

    @property
    def name(self):
        return self._state["name"]

    @property
    def num_outputs(self):
        return len(self._state["outputs"])

    def get_output(self, index):
        return self._state["outputs"][index]


class IPluginV2Layer(ILayer):
    @property
    def plugin(self):
        return self._state["plugin"]


class IPluginV3Layer(ILayer):
    @property
    def plugin(self):
        return self._state["plugin"]


class TrtNetwork:
    """One rank's INetworkDefinition: the plugin layers added to it, and TensorRT-LLM's plugin
    infos (network.set_plugin_info) by layer name."""

    def __init__(self):
        self.layers: list[dict] = []
        self.plugin_infos: dict[str, types.SimpleNamespace] = {}

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, index) -> ILayer:
        return ILayer(self.layers[index])

    def add_plugin_v2_layer(self, plugin_name: str) -> None:
        """A layer TensorRT-LLM's functional API adds with _add_plugin_info (allreduce(): "allreduce")."""
        name = f"PLUGIN_V2_{plugin_name}_{len(self.layers)}"
        self.layers.append({"type": LayerType.PLUGIN_V2, "name": name, "plugin": None, "outputs": []})
        self.plugin_infos[name] = types.SimpleNamespace(plugin_name=plugin_name)

    def add_plugin_v3(self, inputs, shape_inputs, plugin) -> IPluginV3Layer:
        assert isinstance(inputs, list) and all(isinstance(t, Tensor) for t in inputs), "inputs: a list of ITensor"
        assert shape_inputs == [], "PTTrackMerge takes no shape inputs"
        outputs = plugin.enqueue(inputs)
        state = {"type": LayerType.PLUGIN_V3, "name": f"PLUGIN_V3_{len(self.layers)}", "plugin": plugin,
                 "outputs": outputs}
        self.layers.append(state)
        return IPluginV3Layer(state)


_TRT_NETWORKS: dict[int, TrtNetwork] = {}
_NETWORKS_LOCK = threading.Lock()


def default_trtnet() -> TrtNetwork:
    """The calling rank's INetworkDefinition (each rank thread builds its own network)."""
    with _NETWORKS_LOCK:
        return _TRT_NETWORKS.setdefault(current_rank(), TrtNetwork())


def rank_network(rank: int) -> TrtNetwork:
    """Rank `rank`'s INetworkDefinition, after its network was defined."""
    return _TRT_NETWORKS[rank]


def reset_networks() -> None:
    _TRT_NETWORKS.clear()


def get_plugin_info(trt_network, layer_name):  # tensorrt_llm/network.py
    return trt_network.plugin_infos.get(layer_name)


def _create_tensor(trt_tensor, producer) -> Tensor:  # functional.py: wraps a layer's output
    assert any(trt_tensor is producer.get_output(i) for i in range(producer.num_outputs))
    return trt_tensor


class _Registry:
    def __init__(self):
        self.creators: dict[tuple[str, str, str], object] = {}

    def get_creator(self, type, version, plugin_namespace=""):
        return self.creators.get((type, version, plugin_namespace))


_REGISTRY = _Registry()


def get_plugin_registry() -> _Registry:
    return _REGISTRY


# ---- the PTTrackMerge plugin (plugins/README.md, pt_merge.h) -------------------------------------
PT_TRACK_MERGE = ("PTTrackMerge", "1", "pt_trtllm")
PT_INT_FIELDS = ("combine_op", "residual_form", "num_ranks", "rank", "has_combine_norm", "has_dispatch_norm",
                 "has_next_norm", "transport", "max_tokens", "oneshot_max_bytes")
PT_FLOAT_FIELDS = ("combine_eps", "dispatch_eps", "next_eps")
PT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class PTTrackMergeCall:
    rank: int
    fields: dict
    inputs: list
    outputs: list


PT_TRACK_MERGES: list[PTTrackMergeCall] = []
PLUGIN_LOADS: list[str] = []  # the library path of every pt_trtllm.plugin_lib.load() call


class _Core:  # IPluginV3OneCore
    plugin_name, plugin_version, plugin_namespace = PT_TRACK_MERGE


def _plugin_rms_norm(v: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """The plugin's RMSNorm: v / sqrt(mean(v^2) + eps) * w in float32, rounded to the dtype once."""
    v32 = v.float()
    return (v32 * torch.rsqrt(v32.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(v.dtype)


class PTTrackMergePlugin:  # IPluginV3
    def __init__(self, fields: dict):
        self.fields = fields

    def get_capability_interface(self, type):
        return _Core() if type == PluginCapabilityType.CORE else None

    def enqueue(self, inputs: list[Tensor]) -> list[Tensor]:
        """The node's outputs (merged, [dispatch_normed], [next_normed]) on this rank's inputs."""
        f, rank = self.fields, current_rank()
        op, form, T = f["combine_op"], f["residual_form"], f["num_ranks"]
        residual = op == 2 or form == 1
        names = ["h", *(["x"] if residual else []), *(["combine_w"] if f["has_combine_norm"] else []),
                 *(["dispatch_w"] if f["has_dispatch_norm"] else []), *(["next_w"] if f["has_next_norm"] else [])]
        assert len(inputs) == len(names), f"PTTrackMerge takes {names}, got {len(inputs)} inputs"
        given = {name: t.value for name, t in zip(names, inputs)}
        h = given["h"]
        dtype, H = h.dtype, h.shape[-1]
        assert dtype in PT_DTYPES and all(v.dtype == dtype for v in given.values()), \
            f"PTTrackMerge inputs of one dtype: {[(n, v.dtype) for n, v in given.items()]}"
        assert "x" not in given or given["x"].shape == h.shape, "x must have h's shape"
        assert all(given[n].shape == (H,) for n in names if n.endswith("_w")), "norm weights are [H]"
        assert h.numel() // H <= f["max_tokens"], f"{h.numel() // H} rows > max_tokens={f['max_tokens']}"
        assert f["rank"] == rank, f"rank field {f['rank']} on rank {rank}"
        assert T == _THREAD.collective.world, f"num_ranks={T} in a run of {_THREAD.collective.world} ranks"
        x = given.get("x")
        hc = _plugin_rms_norm(h, given["combine_w"], f["combine_eps"]) if "combine_w" in given else h
        if op == 2:
            q = (hc.float() - x.float()).to(dtype)
        elif form == 1:
            q = ((hc.float() - x.float()) / T if op == 0 else hc.float() - x.float() / T).to(dtype)
        else:
            q = hc
        reduced = _THREAD.collective.all_reduce(rank, list(range(T)), q.float())
        merged = (x.float() + reduced if residual else reduced * (1.0 / T if op == 0 else 1.0)).to(dtype)
        outputs = [merged]
        current = merged
        if "dispatch_w" in given:
            current = _plugin_rms_norm(merged, given["dispatch_w"], f["dispatch_eps"])
            outputs.append(current)
        if "next_w" in given:
            outputs.append(_plugin_rms_norm(current, given["next_w"], f["next_eps"]))
        outputs = [Tensor(o) for o in outputs]
        PT_TRACK_MERGES.append(PTTrackMergeCall(rank, dict(f), list(inputs), outputs))
        return outputs


class PTTrackMergeCreator:  # IPluginCreatorV3One
    name, plugin_version, plugin_namespace = PT_TRACK_MERGE
    field_names = PluginFieldCollection(PluginField(n) for n in (*PT_INT_FIELDS, *PT_FLOAT_FIELDS))

    def create_plugin(self, name, field_collection, phase) -> PTTrackMergePlugin:
        assert isinstance(name, str) and phase == TensorRTPhase.BUILD
        fields = {}
        for field_ in field_collection:
            kind = PluginFieldType.INT32 if field_.name in PT_INT_FIELDS else PluginFieldType.FLOAT32
            assert field_.name in (*PT_INT_FIELDS, *PT_FLOAT_FIELDS), f"unknown PTTrackMerge field {field_.name!r}"
            assert field_.name not in fields, f"field {field_.name!r} given twice"
            assert field_.type == kind and field_.data.dtype == (np.int32 if kind == PluginFieldType.INT32
                                                                  else np.float32), \
                f"field {field_.name!r}: {field_.type!r} of {field_.data.dtype}"
            assert field_.data.shape == (1,), f"field {field_.name!r} has {field_.data.shape} elements"
            fields[field_.name] = field_.data.item()
        missing = set(PT_INT_FIELDS + PT_FLOAT_FIELDS) - set(fields)
        assert not missing, f"PTTrackMerge fields missing: {sorted(missing)}"
        assert fields["combine_op"] in (0, 1, 2) and fields["transport"] in (0, 1, 2)
        assert all(fields[n] in (0, 1) for n in ("residual_form", "has_combine_norm", "has_dispatch_norm",
                                                 "has_next_norm"))
        assert 0 <= fields["rank"] < fields["num_ranks"] and fields["max_tokens"] >= 1
        assert fields["oneshot_max_bytes"] >= 0 and (fields["transport"] != 2 or fields["num_ranks"] <= 16)
        assert all(math.isfinite(fields[n]) and fields[n] >= 0 for n in PT_FLOAT_FIELDS)
        return PTTrackMergePlugin(fields)


def register_pt_plugin() -> None:
    """TensorRT's registry with the PTTrackMerge creator, as once libpt_trtllm_plugins.so is loaded."""
    _REGISTRY.creators[PT_TRACK_MERGE] = PTTrackMergeCreator()


def unregister_pt_plugin() -> None:
    """The registry as in a process that has not loaded the library."""
    _REGISTRY.creators.pop(PT_TRACK_MERGE, None)


def load_plugin_library():
    """pt_trtllm.plugin_lib.load, stood in: the real library_path() (its one-line
    PluginLibraryError when the library is missing), then the creator registered (no ctypes load)."""
    from pt_trtllm import plugin_lib

    path = plugin_lib.library_path()
    PLUGIN_LOADS.append(str(path))
    register_pt_plugin()
    return path


def _plugin_rope(x: torch.Tensor, positions: torch.Tensor, dim: int, base: float, kind) -> torch.Tensor:
    """The attention plugin's own RoPE of x [n, heads, d] at `positions` [n] (float32)."""
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = positions[:, None, None].float() * inv_freq  # [n, 1, dim/2]
    cos, sin = angles.cos(), angles.sin()
    x32 = x.float()
    if kind == PositionEmbeddingType.rope_gpt_neox:
        x1, x2 = x32.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        x1, x2 = x32[..., 0::2], x32[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    return out.to(x.dtype)


def gpt_attention(*, qkv, past_key_value, attention_mask=None, attention_packed_mask=None, sequence_length,
                  host_past_key_value_lengths, host_max_attention_window_sizes, host_sink_token_length,
                  context_lengths, cache_indirection, host_request_types, layer_idx, num_heads, num_kv_heads,
                  hidden_size_per_head, q_scaling, attn_logit_softcapping_scale=0.0, rotary_embedding_dim=0,
                  rotary_embedding_base=10000.0, rotary_embedding_scale_type=None, rotary_embedding_short_m_scale=1.0,
                  rotary_embedding_long_m_scale=1.0, rotary_embedding_scale=1.0, rotary_embedding_max_positions=1024,
                  rotary_embedding_original_max_positions=1024,
                  position_embedding_type=PositionEmbeddingType.learned_absolute, rotary_inv_freq=None,
                  rotary_cos_sin=None, kv_orig_quant_scale=None, kv_quant_orig_scale=None,
                  attention_output_orig_quant_scale=None, attention_output_sf_scale=None, kv_cache_quant_mode=None,
                  max_context_length=None, mask_type=AttentionMaskType.causal, block_sparse_block_size=64,
                  block_sparse_homo_head_pattern=False, block_sparse_num_local_blocks=16,
                  block_sparse_vertical_stride=8, alibi_slopes=None, tp_size=1, tp_rank=0, vision_start=-1,
                  vision_length=-1, kv_cache_block_offsets=None, host_kv_cache_block_offsets=None,
                  host_kv_cache_pool_pointers=None, host_kv_cache_pool_mapping=None, do_cross_attention=False,
                  cross_kv=None, cross_kv_length=None, encoder_input_lengths=None, relative_attention_bias=None,
                  logn_scaling=None, max_distance=0, host_context_lengths=None, qkv_bias=None, use_cache=True,
                  spec_decoding_is_generation_length_variable=False, spec_decoding_max_generation_length=0,
                  spec_decoding_generation_lengths=None, spec_decoding_position_offsets=None,
                  spec_decoding_packed_mask=None, spec_decoding_use=None, long_rope_rotary_inv_freq=None,
                  long_rope_rotary_cos_sin=None, mrope_rotary_cos_sin=None, mrope_position_deltas=None,
                  host_runtime_perf_knobs=None, host_context_progress=None, is_mla_enabled_flag=False, q_lora_rank=0,
                  kv_lora_rank=0, qk_nope_head_dim=0, qk_rope_head_dim=0, v_head_dim=0, q_b_proj=None,
                  kv_b_proj=None, k_b_proj_trans=None, skip_attn=None, cp_group=None, cp_size=1, cp_rank=0,
                  num_kv_heads_origin=-1):
    """The GPT attention plugin's context phase (see the module docstring) -> (context, present)."""
    h, g, d = num_heads, num_kv_heads, hidden_size_per_head
    assert mask_type == AttentionMaskType.causal and attention_mask is None
    assert not host_request_types.value.any(), "the stand-in runs the context phase only"
    packed = default_net().plugin_config.remove_input_padding
    x = qkv.value
    assert x.dim() == (2 if packed else 3) and x.shape[-1] == (h + 2 * g) * d, (tuple(x.shape), h, g, d)
    lengths = (host_context_lengths if packed else context_lengths).value.tolist()
    rows = list(x.split(lengths)) if packed else [x[b, :n] for b, n in enumerate(lengths)]
    rope = position_embedding_type.is_rope() and rotary_embedding_dim > 0
    assert rotary_embedding_dim in (0, d), "partial RoPE is not modelled"
    outs, keys, values = [], [], []
    for row in rows:
        n = row.shape[0]
        q, k, v = row.split([h * d, g * d, g * d], dim=-1)
        q, k, v = q.reshape(n, h, d), k.reshape(n, g, d), v.reshape(n, g, d)
        if rope:
            positions = torch.arange(n)
            q = _plugin_rope(q, positions, d, rotary_embedding_base, position_embedding_type)
            k = _plugin_rope(k, positions, d, rotary_embedding_base, position_embedding_type)
        keys.append(k)
        values.append(v)
        scores = torch.einsum("qhd,khd->hqk", q.float(), k.repeat_interleave(h // g, dim=1).float())
        scores = scores / (math.sqrt(d) * q_scaling)
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        out = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v.repeat_interleave(h // g, dim=1).float())
        outs.append(out.reshape(n, h * d).to(x.dtype))
    if packed:
        context = torch.cat(outs)
    else:
        context = torch.zeros(x.shape[0], x.shape[1], h * d, dtype=x.dtype)
        for b, out in enumerate(outs):
            context[b, : out.shape[0]] = out
    present = Tensor(torch.stack([torch.cat(keys), torch.cat(values)]))  # [2, tokens, g, d]
    return Tensor(context), present


# ---- layers ------------------------------------------------------------------------------------
class Parameter:  # parameter.py: .value is a network tensor; the setter asserts the shape
    def __init__(self, shape, dtype=None):
        self.shape, self.dtype, self._value = tuple(shape), _dtype(dtype or "float32"), None

    def is_inited(self) -> bool:
        return self._value is not None

    @property
    def value(self) -> Tensor:
        assert self._value is not None, "parameter not loaded"
        return Tensor(self._value)

    @value.setter
    def value(self, v):
        v = torch.as_tensor(v)
        assert tuple(v.shape) == self.shape, f"{tuple(v.shape)} vs {self.shape}"
        self._value = v.to(self.dtype)

    @property
    def raw_value(self) -> torch.Tensor:
        return self._value


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
        self.weight = Parameter((self.out_features, in_features), dtype)
        if bias:
            self.bias = Parameter((self.out_features,), dtype)
        self.collective = gather_output and tp_size > 1 and tp_group is not None  # the allgather

    def forward(self, x, lora_runtime_params=None):
        w = self.weight.value
        assert x.dtype == w.dtype, f"matmul of {x.dtype} and {w.dtype}"
        return Tensor(x.value @ w.value.T)


class RowLinear(Module):
    def __init__(self, in_features, out_features, bias=True, dtype=None, tp_group=None, tp_size=1,
                 strict_dtype=False, pad_lda=0, prefer_managed_weight=True, is_expert=False):
        super().__init__()
        self.weight = Parameter((out_features, in_features // tp_size), dtype)
        if bias:
            self.bias = Parameter((out_features,), dtype)
        self.collective = tp_size > 1 and tp_group is not None  # the allreduce of collect_and_bias

    def forward(self, x, lora_runtime_params=None, all_reduce_params=None):
        w = self.weight.value
        assert x.dtype == w.dtype, f"matmul of {x.dtype} and {w.dtype}"
        return Tensor(x.value @ w.value.T)


class RmsNorm(Module):
    def __init__(self, normalized_shape, num_groups=1, eps=1e-06, elementwise_affine=True, dtype=None):
        super().__init__()
        self.weight = Parameter((normalized_shape,), dtype)
        self.eps = eps

    def forward(self, x, normalized_shape=None):
        RMSNORM_CALLS.append((current_rank(), id(self)))
        w = self.weight.value
        assert x.dtype == w.dtype, f"rms_norm of {x.dtype} with a {w.dtype} weight"
        return Tensor(_rms_norm(x.value, w.value, self.eps, x.dtype))


class Embedding(Module):
    def __init__(self, num_embeddings, embedding_dim, dtype=None, tp_size=1, tp_group=None, sharding_dim=0,
                 tp_rank=None):
        super().__init__()
        self.weight = Parameter((num_embeddings, embedding_dim), dtype)

    def forward(self, x):
        return embedding(x, self.weight.value)


class GatedMLP(Module):
    def __init__(self, hidden_size, ffn_hidden_size, hidden_act, bias=True, dtype=None, tp_group=None, tp_size=1,
                 quant_mode=None, inner_layernorm=False, eps=1e-05, is_expert=False):
        super().__init__()
        self.fc = Linear(hidden_size, ffn_hidden_size, bias=bias, dtype=dtype, tp_group=tp_group, tp_size=tp_size,
                         gather_output=False)
        self.proj = RowLinear(ffn_hidden_size, hidden_size, bias=bias, dtype=dtype, tp_group=tp_group,
                              tp_size=tp_size)
        self.gate = Linear(hidden_size, ffn_hidden_size, bias=bias, dtype=dtype, tp_group=tp_group, tp_size=tp_size,
                           gather_output=False)
        self.hidden_act = hidden_act

    def forward(self, hidden_states, lora_layer_params=None, all_reduce_params=None):
        assert self.hidden_act == "silu"
        inter = Tensor(F.silu(self.fc(hidden_states).value))
        return self.proj(inter * self.gate(hidden_states))


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

    def get_first_past_key_value(self):
        return None if self.past_key_value is None else self.past_key_value[0]

    def fill_none_tensor_list(self, list_size):
        if self.past_key_value is None:
            self.past_key_value = tuple([None] * list_size)


class AttentionParams:
    def __init__(self, sequence_length=None, context_lengths=None, host_context_lengths=None,
                 max_context_length=None, host_request_types=None, encoder_input_lengths=None,
                 encoder_max_input_length=None, host_runtime_perf_knobs=None, host_context_progress=None):
        self.sequence_length, self.context_lengths = sequence_length, context_lengths
        self.host_context_lengths, self.max_context_length = host_context_lengths, max_context_length
        self.host_request_types = host_request_types
        self.encoder_input_lengths, self.encoder_max_input_length = encoder_input_lengths, encoder_max_input_length
        self.host_runtime_perf_knobs, self.host_context_progress = host_runtime_perf_knobs, host_context_progress


class Attention(Module):  # layers/attention.py, the constructor's keyword names as in 1.2.x
    def __init__(self, *, local_layer_idx, hidden_size, num_attention_heads, num_kv_heads=None,
                 max_position_embeddings=1024, num_layers=1, apply_query_key_layer_scaling=False,
                 attention_head_size=None, qk_layernorm=False, layernorm_type=None, layernorm_share=True,
                 inner_layernorm=False, eps=1e-05, attention_mask_type=AttentionMaskType.padding, bias=True,
                 dtype=None, position_embedding_type=PositionEmbeddingType.learned_absolute,
                 rotary_embedding_base=10000.0, rotary_embedding_base_local=1.0, rotary_embedding_scaling=None,
                 rotary_embedding_percentage=1.0, rope_scaling_short_factors=None, rope_scaling_long_factors=None,
                 rope_scaling_short_mscale=None, rope_scaling_long_mscale=None, original_max_position_embeddings=1024,
                 tp_group=None, tp_size=1, tp_rank=0, quant_mode=None, q_scaling=1.0, cross_attention=False,
                 relative_attention=False, max_distance=0, num_buckets=0, dense_bias=None, clip_qkv=None,
                 alibi_bias_max=8, skip_cross_kv=False, max_attn_value=0.0, block_sparse_params=None,
                 use_implicit_relative_attention=False, reorder=False, enable_qkv=True, cp_group=None, cp_size=1,
                 cp_rank=0, max_seqlen_for_logn_scaling=8192, use_logn_scaling=False, is_local=False):
        super().__init__()
        self.local_layer_idx, self.attention_mask_type, self.dtype = local_layer_idx, attention_mask_type, dtype
        self.attention_head_size = hidden_size // num_attention_heads if attention_head_size is None \
            else attention_head_size
        assert num_attention_heads % tp_size == 0
        self.num_attention_heads = num_attention_heads // tp_size
        self.num_attention_kv_heads = (num_kv_heads + tp_size - 1) // tp_size if num_kv_heads is not None \
            else self.num_attention_heads
        self.num_kv_heads = num_kv_heads if num_kv_heads is not None else self.num_attention_heads
        self.max_position_embeddings, self.tp_size, self.tp_rank = max_position_embeddings, tp_size, tp_rank
        self.q_scaling, self.quant_mode, self.qk_layernorm = q_scaling, quant_mode, qk_layernorm
        self.position_embedding_type, self.rotary_embedding_base = position_embedding_type, rotary_embedding_base
        self.rotary_embedding_dim = int(self.attention_head_size * rotary_embedding_percentage) \
            if position_embedding_type.is_rope() else 0
        heads, kv_heads, d = self.num_attention_heads, self.num_attention_kv_heads, self.attention_head_size
        self.qkv = Linear(hidden_size, tp_size * heads * d + 2 * tp_size * kv_heads * d, bias=bias, dtype=dtype,
                          tp_group=tp_group, tp_size=tp_size, gather_output=False, is_qkv=True)
        self.dense = RowLinear(tp_size * heads * d, hidden_size, bias=bias if dense_bias is None else dense_bias,
                               dtype=dtype, tp_group=tp_group, tp_size=tp_size)

    def forward(self, hidden_states, attention_mask=None, attention_packed_mask=None, use_cache=False,
                spec_decoding_params=None, mrope_params=None, kv_cache_params=None, attention_params=None,
                encoder_output=None, position_embedding=None, norm_before_bmm1=False, lora_layer_params=None,
                cross_kv_cache_gen=None, cross_kv_reuse=None, all_reduce_params=None, skip_attn=None):
        assert not self.qk_layernorm, "TensorRT-LLM's qk_layernorm runs before the plugin's RoPE (not modelled)"
        qkv = self.qkv(hidden_states)
        kv = kv_cache_params
        context, present = gpt_attention(
            qkv=qkv, past_key_value=kv.get_first_past_key_value(), attention_mask=attention_mask,
            sequence_length=attention_params.sequence_length,
            host_past_key_value_lengths=kv.host_past_key_value_lengths,
            host_max_attention_window_sizes=kv.host_max_attention_window_sizes,
            host_sink_token_length=kv.host_sink_token_length, context_lengths=attention_params.context_lengths,
            cache_indirection=kv.cache_indirection, host_request_types=attention_params.host_request_types,
            layer_idx=self.local_layer_idx, num_heads=self.num_attention_heads,
            num_kv_heads=self.num_attention_kv_heads, num_kv_heads_origin=self.num_kv_heads,
            hidden_size_per_head=self.attention_head_size, q_scaling=self.q_scaling,
            rotary_embedding_dim=self.rotary_embedding_dim, rotary_embedding_base=self.rotary_embedding_base,
            position_embedding_type=self.position_embedding_type, kv_cache_quant_mode=self.quant_mode,
            max_context_length=attention_params.max_context_length, mask_type=self.attention_mask_type,
            tp_size=self.tp_size, tp_rank=self.tp_rank, host_context_lengths=attention_params.host_context_lengths,
            use_cache=use_cache)
        context = self.dense(context)
        return (context, present) if use_cache else context


# ---- configs and models --------------------------------------------------------------------------
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
        out = copy.deepcopy(self.__dict__)
        out["position_embedding_type"] = str(self.position_embedding_type)
        out["mapping"] = self.mapping.to_dict()
        out["mapping"].pop("rank")
        out["quantization"] = self.quantization.to_dict()
        return out

    @classmethod
    def from_dict(cls, config):  # the config class of the architecture's model, from MODEL_MAP
        model_cls = sys.modules["tensorrt_llm.models"].MODEL_MAP[config["architecture"]]
        return getattr(model_cls, "config_class", cls)(**config)

    @classmethod
    def from_json_file(cls, config_file):  # what trtllm-build calls, on PretrainedConfig itself
        with open(config_file) as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_checkpoint(cls, ckpt_dir):
        return cls.from_json_file(os.path.join(ckpt_dir, "config.json"))

    def set_rank(self, rank):
        self.mapping.rank = rank

    @property
    def quant_mode(self):
        return "QuantMode(0)"


PREPARED: list[dict] = []  # the arguments of every PretrainedModel.prepare_inputs call
TRANSFORMER_INPUTS = ("input_ids", "position_ids", "use_cache", "attention_mask", "kv_cache_params",
                      "attention_params")
OPTIONAL_INPUTS = ("lora_params", "hidden_states", "prompt_embedding_table", "prompt_tasks", "prompt_vocab_size",
                   "spec_decoding_params", "mrope_params")


def transformer_kwargs(forward_args: dict) -> dict:
    """What DecoderModelForCausalLM.forward passes to transformer.forward, from its own arguments:
    the six inputs, and each optional one only when it is not None."""
    return {**{k: forward_args.get(k) for k in TRANSFORMER_INPUTS},
            **{k: forward_args[k] for k in OPTIONAL_INPUTS if forward_args.get(k) is not None}}


@dataclass
class DimRange:  # functional.py: one profile's (min, opt, max) of every dimension
    min: list
    opt: list
    max: list


def input_ids_profiles(plugin_config, max_batch_size, max_beam_width, max_input_len, max_num_tokens) -> list:
    """The profiles of input_ids (generation_mixin.py: prepare_basic_inputs, has_ctx_gen_opt_profiles,
    get_profiles_ranges) without draft tokens, opt_batch_size or multiple_profiles; a paged KV cache
    unless plugin_config.paged_kv_cache is False (BuildConfig.update_kv_cache_type's default)."""
    packed = plugin_config.remove_input_padding
    paged = plugin_config.paged_kv_cache is not False
    gpt, gemm = bool(plugin_config.gpt_attention_plugin), bool(plugin_config.gemm_plugin)
    ctx_gen = not (gpt and gemm) and not (packed and gpt and paged)

    def rng(high):
        return [1, (high + 1) // 2, high]

    if ctx_gen:
        if packed:
            return [DimRange(*zip(rng(max_batch_size * max_input_len))),
                    DimRange(*zip(rng(max_batch_size * max(1, max_beam_width))))]
        return [DimRange(*zip(rng(max_batch_size), rng(max_input_len))),
                DimRange(*zip(rng(max_batch_size * max_beam_width), [1, 1, 1]))]
    if packed:
        opt = min(max_num_tokens, max_batch_size * max_beam_width)
        return [DimRange([1], [opt], [max_num_tokens])]
    return [DimRange(*zip(rng(max_batch_size * max_beam_width), [1, 1, max_input_len]))]


class DecoderModelForCausalLM(Module):
    def __init__(self, config, transformer, lm_head):
        super().__init__()
        init_all_reduce_helper()  # PretrainedModel.__init__
        self.config = config
        self.transformer = transformer
        self.lm_head = lm_head

    def forward(self, input_ids, position_ids=None, use_cache=False, last_token_ids=None, attention_mask=None,
                kv_cache_params=None, attention_params=None, mrope_params=None, hidden_states=None,
                prompt_embedding_table=None, prompt_tasks=None, prompt_vocab_size=None, lora_params=None,
                spec_decoding_params=None):
        kwargs = transformer_kwargs(dict(locals()))
        hidden_states = self.transformer.forward(**kwargs)
        if use_cache:
            hidden_states, presents = hidden_states
        all_hidden_states = hidden_states
        hidden_states = gather_last_token_logits(hidden_states, last_token_ids,
                                                 default_net().plugin_config.remove_input_padding)
        lm_logits = cast(self.lm_head(hidden_states), self.config.logits_dtype)
        lm_logits.mark_output("logits", self.config.logits_dtype)
        if use_cache and not default_net().plugin_config.paged_kv_cache:
            return lm_logits, presents, hidden_states
        return lm_logits, hidden_states, all_hidden_states

    def prepare_inputs(self, max_batch_size, max_input_len, max_seq_len, max_num_tokens, use_cache, max_beam_width=1,
                       opt_num_tokens=None, prompt_embedding_table_size=0, position_encoding_2d=False,
                       max_draft_len=0, speculative_decoding_draft_tokens_external=False,
                       spec_decoding_is_generation_length_variable=False, gather_context_logits=False,
                       lora_target_modules=None, opt_batch_size=0, num_hidden_layers=None,
                       mrope_rotary_cos_sin_size=None):
        """PretrainedModel.prepare_inputs: the names of the inputs it creates for forward (values
        are not modelled), and the all-reduce workspace when tp_size > 1."""
        PREPARED.append(dict(locals(), self=None))
        if self.config.mapping.tp_size > 1:
            current_all_reduce_helper().set_workspace_tensor(self.config.mapping)
        result = dict.fromkeys(("input_ids", "position_ids", "use_cache", "last_token_ids", "attention_mask",
                                "kv_cache_params", "attention_params"), "input")
        result["input_ids"] = types.SimpleNamespace(profiles=input_ids_profiles(
            default_net().plugin_config, max_batch_size, max_beam_width, max_input_len, max_num_tokens))
        if prompt_embedding_table_size > 0:
            result.update(dict.fromkeys(("prompt_embedding_table", "prompt_tasks", "prompt_vocab_size"), "input"))
        if default_net().plugin_config.lora_plugin:
            result["lora_params"] = "input"
        if max_draft_len > 0 and not speculative_decoding_draft_tokens_external:
            result["spec_decoding_params"] = "input"
        if mrope_rotary_cos_sin_size is not None:
            result["mrope_params"] = "input"
        return result

    @classmethod
    def from_checkpoint(cls, ckpt_dir, rank=None, config=None, *, preprocess_weights_hook=None):
        if config is None:
            config = PretrainedConfig.from_json_file(os.path.join(ckpt_dir, "config.json"))
        if rank is not None:
            config.set_rank(rank)
        weights_path = os.path.join(ckpt_dir, f"rank{config.mapping.rank}.safetensors")
        assert os.path.isfile(weights_path)
        weights = load_file(weights_path)
        model = cls(config)
        model.load(weights)
        return model

    def load(self, weights, from_pruned=False):  # PretrainedModel.load: every parameter, its exact shape
        required = {name for name, p in self.named_parameters() if not p.is_inited()}
        if not required <= set(weights):
            raise RuntimeError(f"Required but not provided tensors:{required - set(weights)}")
        for name, param in self.named_parameters():
            if name in weights:
                param.value = weights[name]


# ---- building (builder.py, commands/build.py) --------------------------------------------------
@dataclass
class BuildConfig:
    max_input_len: int = 1024
    max_seq_len: int | None = None
    opt_batch_size: int = 8
    max_batch_size: int = 2048
    max_beam_width: int = 1
    max_num_tokens: int = 8192
    opt_num_tokens: int | None = None
    max_prompt_embedding_table_size: int = 0
    gather_context_logits: bool = False
    strongly_typed: bool = True
    max_draft_len: int = 0
    speculative_decoding_draft_tokens_external: bool = False
    output_timing_cache: str = "model.cache"
    dry_run: bool = False
    plugin_config: PluginConfig = field(default_factory=PluginConfig)

    @classmethod
    def from_dict(cls, config, plugin_config=None):
        return cls(**config, plugin_config=plugin_config or PluginConfig())

    def to_dict(self):
        out = {k: v for k, v in self.__dict__.items() if k != "plugin_config"}
        out["plugin_config"] = {name: getattr(self.plugin_config, name) for name in PluginConfig.FIELDS}
        return out


BUILT: list = []  # every model build() was given


def build(model, build_config):
    """builder.build: the network's plugin config (its dtype the model's), prepare_inputs with the
    build config's settings, then the inputs DecoderModelForCausalLM.forward would pass to
    transformer.forward, bound to its signature (a TypeError for an input it does not take)."""
    plugin_config = copy.copy(build_config.plugin_config)
    object.__setattr__(plugin_config, "dtype", model.config.dtype)
    set_plugin_config(plugin_config)
    inputs = model.prepare_inputs(
        max_batch_size=build_config.max_batch_size, max_input_len=build_config.max_input_len,
        max_seq_len=build_config.max_seq_len, use_cache=True, max_beam_width=build_config.max_beam_width,
        max_num_tokens=build_config.max_num_tokens, opt_num_tokens=build_config.opt_num_tokens,
        prompt_embedding_table_size=build_config.max_prompt_embedding_table_size,
        max_draft_len=build_config.max_draft_len,
        speculative_decoding_draft_tokens_external=build_config.speculative_decoding_draft_tokens_external,
        gather_context_logits=build_config.gather_context_logits)
    forward_args = inspect.signature(model.forward).bind(**inputs).arguments
    inspect.signature(model.transformer.forward).bind(**transformer_kwargs(forward_args))
    BUILT.append(model)
    return {"version": "1.2.1", "pretrained_config": model.config.to_dict(), "build_config": build_config.to_dict()}


def build_model(build_config, rank=0, ckpt_dir=None, model_config=None, model_cls=None, dry_run=False, **kwargs):
    rank_config = copy.deepcopy(model_config)
    if kwargs.get("logits_dtype") is not None:
        rank_config.logits_dtype = kwargs["logits_dtype"]
    rank_config.set_rank(rank)
    model_cls = model_cls or sys.modules["tensorrt_llm.models"].MODEL_MAP[rank_config.architecture]
    model = model_cls.from_checkpoint(ckpt_dir, config=rank_config)
    return build(model, build_config)


def parallel_build(model_config, ckpt_dir, build_config, output_dir, workers=1, log_level="info", model_cls=None,
                   **kwargs):
    """commands/build.py: each rank built in turn (workers == 1), then Engine.save: config.json
    (version, pretrained_config, build_config) and rank{r}.engine."""
    os.makedirs(output_dir, exist_ok=True)
    for rank in range(model_config.mapping.world_size):
        engine = build_model(build_config, rank, ckpt_dir, model_config, model_cls, **kwargs)
        if rank == 0:
            with open(os.path.join(output_dir, "config.json"), "w") as f:
                json.dump(engine, f)
        with open(os.path.join(output_dir, f"rank{rank}.engine"), "wb") as f:
            f.write(b"")


class _Logger:
    def set_level(self, level):
        self.level = level


# ---- installing --------------------------------------------------------------------------------
def install(monkeypatch):
    """Put the stand-in in sys.modules and import the network definition against it; -> the model
    module (its modules are dropped from sys.modules when the test ends)."""
    def module(name, **attrs):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)
        return mod

    module("tensorrt", PluginField=PluginField, PluginFieldType=PluginFieldType,
           PluginFieldCollection=PluginFieldCollection, TensorRTPhase=TensorRTPhase,
           PluginCapabilityType=PluginCapabilityType, LayerType=LayerType, ILayer=ILayer,
           IPluginV2Layer=IPluginV2Layer, IPluginV3Layer=IPluginV3Layer, get_plugin_registry=get_plugin_registry)
    module("tensorrt_llm")
    module("tensorrt_llm._common", default_net=default_net, default_trtnet=default_trtnet)
    module("tensorrt_llm.functional", AllReduceFusionOp=AllReduceFusionOp, AllReduceParams=AllReduceParams,
           AllReduceStrategy=AllReduceStrategy, PositionEmbeddingType=PositionEmbeddingType,
           RopeEmbeddingUtils=RopeEmbeddingUtils, Tensor=Tensor, _create_tensor=_create_tensor, allreduce=allreduce,
           cast=cast, concat=concat, constant=constant, embedding=embedding, gpt_attention=gpt_attention, shape=shape,
           split=split, unsqueeze=unsqueeze)
    module("tensorrt_llm.network", get_plugin_info=get_plugin_info)
    module("tensorrt_llm.layers", Attention=Attention, AttentionMaskType=AttentionMaskType,
           AttentionParams=AttentionParams, ColumnLinear=Linear, Embedding=Embedding, GatedMLP=GatedMLP,
           KeyValueCacheParams=KeyValueCacheParams, RmsNorm=RmsNorm)
    module("tensorrt_llm.models", MODEL_MAP={})
    module("tensorrt_llm.models.modeling_utils", PretrainedConfig=PretrainedConfig,
           DecoderModelForCausalLM=DecoderModelForCausalLM)
    module("tensorrt_llm.module", Module=Module, ModuleList=ModuleList)
    module("tensorrt_llm.builder", BuildConfig=BuildConfig)
    module("tensorrt_llm.commands")
    module("tensorrt_llm.commands.build", parallel_build=parallel_build)
    module("tensorrt_llm.logger", logger=_Logger())
    module("tensorrt_llm.plugin", PluginConfig=PluginConfig, add_plugin_argument=add_plugin_argument)
    from pt_trtllm import plugin_lib

    monkeypatch.setattr(plugin_lib, "load", load_plugin_library)
    for name in NETWORK_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    for record in (ALLREDUCES, RMSNORM_CALLS, PREPARED, BUILT, PT_TRACK_MERGES, PLUGIN_LOADS):
        record.clear()
    reset_networks()
    register_pt_plugin()  # as where the library is loaded; unregister_pt_plugin() for a process without it
    set_plugin_config(PluginConfig(dtype="float32"))
    init_all_reduce_helper()
    return importlib.import_module("pt_trtllm.trtllm.model")


def uninstall() -> None:
    """Drop the network-definition modules imported against the stand-in."""
    for name in NETWORK_MODULES:
        sys.modules.pop(name, None)

