"""The PT model as a TensorRT-LLM network definition (pt-spec sections 3 and 5; needs tensorrt_llm).

One engine per rank; rank t holds track t. The tracks are TensorRT-LLM's tensor-parallel dimension
(mapping world_size = tp_size = T), so the runtime, mpirun and Triton treat the engines as an
ordinary T-way model. Every per-track layer is built with tp_size = T and NO tp_group: TensorRT-LLM
then gives it one track's shapes (totals / T) and inserts no collective (RowLinear all-reduces only
when it has a tp_group). The only collectives are the merges, one explicit collective node after
each segment of the schedule (an AllReduce plugin node, tensorrt_llm.functional.allreduce, or with
merge_impl "pt_plugin" a PTTrackMerge node): L/D per forward under "block", 2L under "sublayer".
The embedding, the final norm and the LM head are replicated.

Structure and names mirror pt_trtllm/modeling.py for the one track a rank holds: PTModel runs it
segment by segment (`track` is modeling's Track.forward, `entry_norm` its Track.entry_norm,
`_next_norm` PTModel._next_norm), DecoderLayer.step runs half a layer, and the merge has
pt_trtllm/merge.py's interface, `merged, normed = merge(x, hs, norm=None)` (pt_trtllm/trtllm/
merges.py, one class per config `merge_impl`): the network hands each merge the norm that runs
next on the merged state (the next segment's entry norm, or ln_f) and takes that norm's output from
the merge, so a fused merge computes it in its own node (the AllReduce node with
AllReduceFusionOp.RESIDUAL_RMS_NORM, or the PTTrackMerge node). A model with qk_norm uses the
QK-norm attention of pt_trtllm/trtllm/attention.py (RoPE and the q/k norms in the graph, the plugin
without RoPE); the others TensorRT-LLM's Attention (RoPE in the plugin). The weight names are those of pt-spec section 5: transformer.vocab_embedding,
transformer.layers.{l}.{input_layernorm, attention.qkv, attention.dense, attention.q_layernorm,
attention.k_layernorm, post_layernorm, mlp.fc, mlp.gate, mlp.proj}, transformer.dispatch_norms.{b},
transformer.combine_norms.{b}, transformer.ln_f, lm_head.

Build settings under which TensorRT-LLM would hand PTModel.forward inputs it does not take (prompt
tables, speculative decoding, mrope, LoRA), and plugins it cannot be built with, are refused in
PTForCausalLM.prepare_inputs, which every build runs (support.check_build_settings); it also hands
the merge the most token rows a forward can have (the input_ids profiles' largest shape,
support.merge_max_tokens), which sizes the PTTrackMerge plugin's buffers.

Importing this file registers PTForCausalLM in tensorrt_llm.models.MODEL_MAP, so that
`trtllm-build --model_cls_file <this file> --model_cls_name PTForCausalLM` and every reader of an
engine's config.json (EngineConfig, ModelRunnerCpp) find it. trtllm-build loads this file as a
module named "models", hence the absolute imports.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from tensorrt_llm._common import default_net
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
from pt_trtllm.schedule import Segment, build_schedule
from pt_trtllm.trtllm.attention import QKNormAttention, Rotary
from pt_trtllm.trtllm.config import PTPretrainedConfig
from pt_trtllm.trtllm.merges import make_merge
from pt_trtllm.trtllm.support import check_build_settings, check_supported, merge_max_tokens


def _norm(config: PTPretrainedConfig) -> RmsNorm:
    return RmsNorm(normalized_shape=config.hidden_size, eps=config.norm_epsilon, dtype=config.dtype)


# ---- the network ---------------------------------------------------------------------------------
@dataclass
class Context:
    """What every layer of one forward pass shares (modeling.Context's role)."""

    use_cache: bool
    attention_mask: object
    kv_cache_params: KeyValueCacheParams
    attention_params: object
    rope: list | None
    """[cos, sin] of the positions for the QK-norm attention (Rotary), None without QK-norm (RoPE
    then runs inside the attention plugin)."""
    presents: list
    """Filled by the attention steps: each layer's KV-cache output."""

    def layer_cache(self, layer: int) -> KeyValueCacheParams:
        """The KV-cache inputs of one layer (as TensorRT-LLM's DecoderLayerList hands them out)."""
        params = self.kv_cache_params
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


class DecoderLayer(Module):
    """One pre-norm Llama layer of this rank's track, run as two residual steps (as in modeling.py:
    the sublayer schedule merges between the two halves)."""

    def __init__(self, config: PTPretrainedConfig, layer_idx: int):
        super().__init__()
        T = config.num_tracks
        self.input_layernorm = _norm(config)
        attention = dict(
            local_layer_idx=layer_idx, hidden_size=config.hidden_size, attention_head_size=config.head_size,
            num_attention_heads=config.num_attention_heads, num_kv_heads=config.num_key_value_heads,
            max_position_embeddings=config.max_position_embeddings, dtype=config.dtype,
            attention_mask_type=AttentionMaskType.causal, bias=False, tp_group=None, tp_size=T,
            tp_rank=config.mapping.tp_rank, quant_mode=config.quant_mode)
        if config.qk_norm:
            self.attention = QKNormAttention(rope_style=config.rope_style, eps=config.norm_epsilon, **attention)
        else:
            self.attention = Attention(position_embedding_type=config.position_embedding_type,
                                       rotary_embedding_base=config.rotary_base, **attention)
        self.post_layernorm = _norm(config)
        self.mlp = GatedMLP(hidden_size=config.hidden_size, ffn_hidden_size=config.intermediate_size,
                            hidden_act=config.hidden_act, bias=False, dtype=config.dtype, tp_group=None,
                            tp_size=T, quant_mode=config.quant_mode)

    def norm(self, kind: str) -> RmsNorm:
        """The RmsNorm that step `kind` applies first."""
        return self.input_layernorm if kind == "attn" else self.post_layernorm

    def step(self, kind: str, h, ctx: Context, cache_index: int, normed=None):
        """h + attention(input_layernorm(h)) for "attn", h + mlp(post_layernorm(h)) for "mlp";
        `normed` is that norm's output when the merge before already computed it."""
        if normed is None:
            normed = self.norm(kind)(h)
        if kind == "mlp":
            return h + self.mlp(normed)
        out = self.attention(normed, attention_mask=ctx.attention_mask, use_cache=ctx.use_cache,
                             kv_cache_params=ctx.layer_cache(cache_index), attention_params=ctx.attention_params,
                             position_embedding=ctx.rope)
        if ctx.use_cache:
            out, ctx.presents[cache_index] = out
        return h + out


class PTModel(Module):
    """Embedding -> this rank's track, segment by segment of the schedule, merged after each
    segment -> final norm (applied by the last merge). The schedule is the config's merge_schedule
    and the merge its merge_impl (scripts/build.py may have overridden either; the engine's
    config.json records both)."""

    def __init__(self, config: PTPretrainedConfig):
        super().__init__()
        self.vocab_embedding = Embedding(config.vocab_size, config.hidden_size, dtype=config.dtype)
        self.layers = ModuleList([DecoderLayer(config, layer) for layer in range(config.num_hidden_layers)])
        if config.track_dispatch_norm:
            self.dispatch_norms = ModuleList([_norm(config) for _ in range(config.num_blocks)])
        if config.track_combine_norm:
            self.combine_norms = ModuleList([_norm(config) for _ in range(config.num_blocks)])
        self.ln_f = _norm(config)
        self.rotary = Rotary(config.head_size, config.rope_theta, config.max_position_embeddings) \
            if config.qk_norm else None
        self.segments = tuple(build_schedule(config.merge_schedule, config.num_hidden_layers, config.block_depth))
        self.merge = make_merge(config.merge_impl, config.combine_op, config.num_tracks, config.mapping.tp_group,
                                config.mapping.tp_rank)
        self.has_dispatch_norms, self.has_combine_norms = config.track_dispatch_norm, config.track_combine_norm

    def forward(self, input_ids, position_ids=None, use_cache=False, attention_mask=None, kv_cache_params=None,
                attention_params=None):
        """As modeling.PTModel.forward for one track per process: every segment ends in a merge
        (engine schedules always merge), which also gives the output of the norm that runs next."""
        kv_cache_params.fill_none_tensor_list(len(self.layers))
        rope = self.rotary(position_ids) if self.rotary is not None else None
        ctx = Context(use_cache, attention_mask, kv_cache_params, attention_params, rope, [None] * len(self.layers))
        x = self.vocab_embedding(input_ids)
        normed = None
        for i, segment in enumerate(self.segments):
            h = self.track(segment, x, ctx, normed)
            x, normed = self.merge(x, [h], self._next_norm(self.segments, i))
        # ln_f(x), from the last merge: unlike modeling.PTModel (whose merge may have no single next
        # norm when a process holds several tracks), the network never applies a norm the merge was
        # handed, so with a fused merge each such norm exists only inside the merge's node.
        hidden = normed
        return (hidden, tuple(ctx.presents)) if use_cache else hidden

    def track(self, segment: Segment, x, ctx: Context, normed=None):
        """Run one segment of this rank's track on the merged state x -> the track's output
        (modeling.Track.forward). `normed` is entry_norm(segment)(x), from the merge before."""
        h = x
        if segment.dispatch_block is not None and self.has_dispatch_norms:
            h = normed if normed is not None else self.dispatch_norms[segment.dispatch_block](h)
            normed = None
        for layer, kind in segment.steps:
            h = self.layers[layer].step(kind, h, ctx, layer, normed)
            normed = None
        if segment.combine_block is not None and self.has_combine_norms:
            h = self.combine_norms[segment.combine_block](h)
        return h

    def entry_norm(self, segment: Segment) -> RmsNorm:
        """The RmsNorm the track applies first to a segment's input: the block's dispatch norm, or
        the first step's layer norm (modeling.Track.entry_norm)."""
        if segment.dispatch_block is not None and self.has_dispatch_norms:
            return self.dispatch_norms[segment.dispatch_block]
        layer, kind = segment.steps[0]
        return self.layers[layer].norm(kind)

    def _next_norm(self, segments: tuple[Segment, ...], i: int) -> RmsNorm:
        """The norm that runs next on the state merged after segment i: the next segment's entry
        norm, or ln_f after the last (one track per rank: always one norm)."""
        return self.ln_f if i == len(segments) - 1 else self.entry_norm(segments[i + 1])


class PTForCausalLM(DecoderModelForCausalLM):
    """transformer (PTModel) + a replicated LM head whose rows are padded to the runtime's vocab
    (formats.padded_vocab_size). Models the engine cannot express exactly are refused when the
    config is made and here, at build time, with an error naming the feature (support.check_supported)."""

    config_class = PTPretrainedConfig

    def __init__(self, config: PTPretrainedConfig):
        check_supported(config, config.merge_schedule, config.merge_impl)
        transformer = PTModel(config)
        lm_head = ColumnLinear(config.hidden_size, padded_vocab_size(config), bias=False, dtype=config.dtype,
                               tp_group=None, tp_size=1, gather_output=False)
        super().__init__(config, transformer, lm_head)

    def prepare_inputs(self, *args, **kwargs):
        """TensorRT-LLM's PretrainedModel.prepare_inputs (the network's inputs; every build calls it
        with the build config's settings), after refusing, with an error naming the feature, the
        settings that would make DecoderModelForCausalLM.forward hand PTModel.forward inputs it does
        not take, and the plugins the network cannot be built with (support.check_build_settings):
        a TypeError deep in the build otherwise. The model is made from its PretrainedConfig alone,
        so this is the first place the build settings are seen. Then it tells the merge the most
        token rows one forward can hand it (Merge.max_tokens): the largest input_ids shape of the
        optimization profiles TensorRT-LLM made (support.merge_max_tokens)."""
        given = inspect.signature(super().prepare_inputs).bind(*args, **kwargs).arguments
        check_build_settings(default_net().plugin_config, self.config.qk_norm,
                             given.get("prompt_embedding_table_size", 0), given.get("max_draft_len", 0),
                             given.get("mrope_rotary_cos_sin_size"))
        inputs = super().prepare_inputs(*args, **kwargs)
        self.transformer.merge.max_tokens = merge_max_tokens(inputs["input_ids"].profiles)
        return inputs

    def load(self, weights, from_pruned=False):
        """Load rank{t}.safetensors; the stored [V, H] LM head gets the zero rows of the padding."""
        head = weights.get("lm_head.weight")
        if head is not None and head.shape[0] < self.lm_head.out_features:
            padding = head.new_zeros(self.lm_head.out_features - head.shape[0], head.shape[1])
            weights = {**weights, "lm_head.weight": torch.cat([head, padding])}
        super().load(weights, from_pruned=from_pruned)


MODEL_MAP["PTForCausalLM"] = PTForCausalLM
