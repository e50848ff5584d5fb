"""The PT model as a TensorRT-LLM network definition (pt-spec sections 3 and 5; needs tensorrt_llm).

One engine per rank; rank t holds track t. The tracks are TensorRT-LLM's tensor-parallel dimension
(mapping world_size = tp_size = T), so the runtime, mpirun and Triton treat the engines as an
ordinary T-way model. Every per-track layer is built with tp_size = T and NO tp_group: TensorRT-LLM
then gives it one track's shapes (totals / T) and inserts no collective (RowLinear all-reduces only
when it has a tp_group). The only collectives are the merges, one explicit AllReduce plugin node
(tensorrt_llm.functional.allreduce) after each segment of the schedule: L/D per forward under
"block", 2L under "sublayer". The embedding, the final norm and the LM head are replicated.

Structure and names mirror pt_trtllm/modeling.py (PTModel -> the track's DecoderLayers run segment
by segment, merged by AllReduceMerge), with the weight names of pt-spec section 5:
transformer.vocab_embedding, transformer.layers.{l}.{input_layernorm, attention.qkv,
attention.dense, post_layernorm, mlp.fc, mlp.gate, mlp.proj}, transformer.dispatch_norms.{b},
transformer.combine_norms.{b}, transformer.ln_f, lm_head.

Importing this file registers PTForCausalLM in tensorrt_llm.models.MODEL_MAP, so that
`trtllm-build --model_cls_file <this file> --model_cls_name PTForCausalLM` and every reader of an
engine's config.json (EngineConfig, ModelRunnerCpp) find it. trtllm-build loads this file as a
module named "models", hence the absolute imports.
"""

from __future__ import annotations

import torch
from tensorrt_llm.functional import AllReduceParams, allreduce
from tensorrt_llm.layers import (
    Attention,
    AttentionMaskType,
    ColumnLinear,
    Embedding,
    GatedMLP,
    KeyValueCacheParams,
    RmsNorm,
)
from tensorrt_llm.models import MODEL_MAP
from tensorrt_llm.models.modeling_utils import DecoderModelForCausalLM
from tensorrt_llm.module import Module, ModuleList

from pt_trtllm.formats import padded_vocab_size
from pt_trtllm.schedule import build_schedule
from pt_trtllm.trtllm.config import PTPretrainedConfig
from pt_trtllm.trtllm.support import check_supported


def _norm(config: PTPretrainedConfig) -> RmsNorm:
    return RmsNorm(normalized_shape=config.hidden_size, eps=config.norm_epsilon, dtype=config.dtype)


class AllReduceMerge:
    """The merge of one rank holding one track (pt_trtllm.merge.AllReduceMerge as network nodes):
    ONE AllReduce (sum) of the [tokens, H] hidden state over the T ranks, then the 1/T scale for
    "mean", or x + allreduce(h - x) for "residual_sum". A single track merges with itself: no node."""

    def __init__(self, combine_op: str, group: list[int]):
        self.combine_op, self.group = combine_op, group

    def __call__(self, x, h):
        if len(self.group) == 1:
            return h
        if self.combine_op == "residual_sum":
            # never sum_t(h_t) - (T-1) x: it cancels badly in low precision
            return x + self._sum(h - x)
        total = self._sum(h)
        return total * (1.0 / len(self.group)) if self.combine_op == "mean" else total

    def _sum(self, h):
        # a fresh AllReduceParams every call: allreduce() mutates the one it is given
        return allreduce(h, self.group, all_reduce_params=AllReduceParams())


class DecoderLayer(Module):
    """One pre-norm Llama layer of this rank's track, run as two residual steps (as in modeling.py)."""

    def __init__(self, config: PTPretrainedConfig, layer_idx: int):
        super().__init__()
        T = config.num_tracks
        self.input_layernorm = _norm(config)
        self.attention = Attention(
            local_layer_idx=layer_idx, hidden_size=config.hidden_size, attention_head_size=config.head_size,
            num_attention_heads=config.num_attention_heads, num_kv_heads=config.num_key_value_heads,
            max_position_embeddings=config.max_position_embeddings, dtype=config.dtype,
            attention_mask_type=AttentionMaskType.causal, bias=False,
            position_embedding_type=config.position_embedding_type, rotary_embedding_base=config.rotary_base,
            tp_group=None, tp_size=T, tp_rank=config.mapping.tp_rank, quant_mode=config.quant_mode)
        self.post_layernorm = _norm(config)
        self.mlp = GatedMLP(hidden_size=config.hidden_size, ffn_hidden_size=config.intermediate_size,
                            hidden_act=config.hidden_act, bias=False, dtype=config.dtype, tp_group=None,
                            tp_size=T, quant_mode=config.quant_mode)

    def step(self, kind: str, h, use_cache: bool, attention_mask, kv_cache_params, attention_params):
        """h + attention(norm(h)) for "attn", h + mlp(norm(h)) for "mlp"; -> (h, present or None)."""
        if kind == "mlp":
            return h + self.mlp(self.post_layernorm(h)), None
        out = self.attention(self.input_layernorm(h), attention_mask=attention_mask, use_cache=use_cache,
                             kv_cache_params=kv_cache_params, attention_params=attention_params)
        present = None
        if use_cache:
            out, present = out
        return h + out, present


class PTModel(Module):
    """Embedding -> this rank's track, segment by segment of the schedule, merged after each
    segment -> final norm. The schedule is the config's merge_schedule (scripts/build.py may have
    overridden it; the engine's config.json records it)."""

    def __init__(self, config: PTPretrainedConfig):
        super().__init__()
        cfg = config.pt_config()
        self.vocab_embedding = Embedding(config.vocab_size, config.hidden_size, dtype=config.dtype)
        self.layers = ModuleList([DecoderLayer(config, layer) for layer in range(config.num_hidden_layers)])
        if cfg.track_dispatch_norm:
            self.dispatch_norms = ModuleList([_norm(config) for _ in range(cfg.num_blocks)])
        if cfg.track_combine_norm:
            self.combine_norms = ModuleList([_norm(config) for _ in range(cfg.num_blocks)])
        self.ln_f = _norm(config)
        self.segments = tuple(build_schedule(cfg.merge_schedule, cfg.num_hidden_layers, cfg.block_depth))
        self.merge = AllReduceMerge(cfg.combine_op, config.mapping.tp_group)
        self.has_dispatch_norms, self.has_combine_norms = cfg.track_dispatch_norm, cfg.track_combine_norm

    def forward(self, input_ids, position_ids=None, use_cache=False, attention_mask=None, kv_cache_params=None,
                attention_params=None):
        kv_cache_params.fill_none_tensor_list(len(self.layers))
        presents = [None] * len(self.layers)
        x = self.vocab_embedding(input_ids)
        for segment in self.segments:
            h = x
            if self.has_dispatch_norms:
                h = self.dispatch_norms[segment.dispatch_block](h)
            for layer, kind in segment.steps:
                h, present = self.layers[layer].step(kind, h, use_cache, attention_mask,
                                                     self._layer_cache(kv_cache_params, layer), attention_params)
                if present is not None:
                    presents[layer] = present
            if self.has_combine_norms:
                h = self.combine_norms[segment.combine_block](h)
            x = self.merge(x, h) if segment.merge else h
        x = self.ln_f(x)
        return (x, tuple(presents)) if use_cache else x

    @staticmethod
    def _layer_cache(params: KeyValueCacheParams, layer: int) -> KeyValueCacheParams:
        """The KV-cache inputs of one layer (as TensorRT-LLM's DecoderLayerList hands them out)."""
        return KeyValueCacheParams(
            past_key_value=[params.past_key_value[layer]],
            host_past_key_value_lengths=params.host_past_key_value_lengths,
            host_max_attention_window_sizes=params.host_max_attention_window_sizes,
            host_sink_token_length=params.host_sink_token_length,
            kv_cache_block_offsets=params.kv_cache_block_offsets,
            host_kv_cache_block_offsets=params.host_kv_cache_block_offsets,
            host_kv_cache_pool_pointers=params.host_kv_cache_pool_pointers,
            host_kv_cache_pool_mapping=params.host_kv_cache_pool_mapping,
            cache_indirection=params.cache_indirection)


class PTForCausalLM(DecoderModelForCausalLM):
    """transformer (PTModel) + a replicated LM head whose rows are padded to the runtime's vocab
    (formats.padded_vocab_size). Models the engine cannot express exactly are refused here, at
    build time, with an error naming the feature (support.check_supported)."""

    config_class = PTPretrainedConfig

    def __init__(self, config: PTPretrainedConfig):
        cfg = config.pt_config()
        check_supported(cfg, cfg.merge_schedule)
        transformer = PTModel(config)
        lm_head = ColumnLinear(config.hidden_size, padded_vocab_size(cfg), bias=False, dtype=config.dtype,
                               tp_group=None, tp_size=1, gather_output=False)
        super().__init__(config, transformer, lm_head)

    def load(self, weights, from_pruned=False):
        """Load rank{t}.safetensors; the stored [V, H] LM head gets the zero rows of the padding."""
        head = weights.get("lm_head.weight")
        if head is not None and head.shape[0] < self.lm_head.out_features:
            padding = head.new_zeros(self.lm_head.out_features - head.shape[0], head.shape[1])
            weights = {**weights, "lm_head.weight": torch.cat([head, padding])}
        super().load(weights, from_pruned=from_pruned)


MODEL_MAP["PTForCausalLM"] = PTForCausalLM
