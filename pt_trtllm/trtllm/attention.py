"""QK-norm after RoPE inside the TensorRT-LLM network (pt-spec section 3; needs tensorrt_llm).

The spec rotates q and k (RoPE), then applies a per-head RMSNorm to each (`qk_norm`). The GPT
attention plugin applies RoPE inside itself, after every graph op, so TensorRT-LLM's own
`Attention(qk_layernorm=True)` normalizes before RoPE (with a LayerNorm by default): not the spec
unless each norm weight is equal within every rotated pair. Here, as TensorRT-LLM's CogVLMAttention
does (layers/attention.py, with functional.RopeEmbeddingUtils.apply_rotary_pos_emb_cogvlm), RoPE
runs in the graph from `position_ids`, then the norms, then `gpt_attention` with
position_embedding_type=learned_absolute and no rotary dimension: the plugin applies no RoPE, still
owns the paged KV cache, and caches K after RoPE and norm, as the spec requires. The code is our
own: CogVLM's helper builds its table with theta 10000, is neox-only and views qkv as MHA.

Only models with qk_norm take this path: it gives up the plugin's fused RoPE
(scripts/trtllm_selftest.py reports the decode cost). Names as in modeling.py: `Rotary` computes the
angles once per forward, `QKNormAttention` is the attention of a QK-norm layer, whose weights are
attention.qkv, attention.dense, attention.q_layernorm, attention.k_layernorm (pt-spec section 5).
"""

from __future__ import annotations

from tensorrt_llm._common import default_net
from tensorrt_llm.functional import (
    PositionEmbeddingType,
    RopeEmbeddingUtils,
    cast,
    concat,
    constant,
    embedding,
    gpt_attention,
    shape,
    split,
    unsqueeze,
)
from tensorrt_llm.layers import Attention, RmsNorm

from pt_trtllm.formats import POSITION_EMBEDDING_TYPES


class Rotary:
    """RoPE angles of the positions (modeling.Rotary's role): `rotary(position_ids)` -> [cos, sin],
    each [batch, seq, d/2] float32, batch 1 for packed input (remove_input_padding). Looked up by
    `position_ids` in the constant table create_sinusoidal_positions(max_positions, d,
    theta=rope_theta) ([1, P, d]: sin | cos); attention_params.embed_positions is no substitute,
    TensorRT-LLM builds it with theta 10000."""

    def __init__(self, head_dim: int, theta: float, max_positions: int):
        self.head_dim = head_dim
        self.table = RopeEmbeddingUtils.create_sinusoidal_positions(max_positions, head_dim, theta=theta).squeeze(0)

    def __call__(self, position_ids) -> list:
        if default_net().plugin_config.remove_input_padding:
            position_ids = unsqueeze(position_ids, 0)  # [tokens] -> [1, tokens]
        angles = embedding(position_ids, constant(self.table))  # [batch, seq, d] float32
        sin, cos = split(angles, self.head_dim // 2, dim=-1)
        return [cos, sin]  # the order apply_rotary_pos_emb takes


class QKNormAttention(Attention):
    """The attention of a QK-norm layer: qkv -> q [h heads], k, v [g heads each] -> RoPE of q and k
    in float32 (RopeEmbeddingUtils.apply_rotary_pos_emb, rope_gptj or rope_gpt_neox) -> per-head
    RMSNorm of q and k (q_layernorm, k_layernorm: RmsNorm(head_size, norm_epsilon)) -> concat ->
    gpt_attention with RoPE off -> dense. Sized as TensorRT-LLM's Attention (tp_size = T, no
    tp_group: one track's heads), which it extends for qkv, dense and the head counts."""

    def __init__(self, *, rope_style: str, eps: float, **attention):
        super().__init__(position_embedding_type=PositionEmbeddingType.learned_absolute, **attention)
        self.rope_type = PositionEmbeddingType.from_string(POSITION_EMBEDDING_TYPES[rope_style])
        self.q_layernorm = RmsNorm(normalized_shape=self.attention_head_size, eps=eps, dtype=self.dtype)
        self.k_layernorm = RmsNorm(normalized_shape=self.attention_head_size, eps=eps, dtype=self.dtype)

    def forward(self, hidden_states, attention_mask=None, use_cache=False, kv_cache_params=None,
                attention_params=None, position_embedding=None):
        """As Attention.forward (the same call), with `position_embedding` the [cos, sin] of Rotary."""
        h, g, d = self.num_attention_heads, self.num_attention_kv_heads, self.attention_head_size
        qkv = self.qkv(hidden_states)  # [tokens, (h + 2g) d] packed; [batch, seq, (h + 2g) d] padded
        qkv_shape = shape(qkv)
        packed = default_net().plugin_config.remove_input_padding
        batch = 1 if packed else shape(qkv, 0)
        seq = shape(qkv, 0 if packed else 1)
        q, k, v = split(qkv, [h * d, g * d, g * d], dim=qkv.ndim() - 1)
        q = self._rope_norm(q.view(concat([batch, seq, h, d])), position_embedding, self.q_layernorm)
        k = self._rope_norm(k.view(concat([batch, seq, g, d])), position_embedding, self.k_layernorm)
        v = v.view(concat([batch, seq, g, d]))
        qkv = concat([q, k, v], dim=2).view(qkv_shape)
        kv = kv_cache_params
        context, present = gpt_attention(
            qkv=qkv, past_key_value=kv.get_first_past_key_value(), attention_mask=attention_mask,
            sequence_length=attention_params.sequence_length,
            host_past_key_value_lengths=kv.host_past_key_value_lengths,
            host_max_attention_window_sizes=kv.host_max_attention_window_sizes,
            host_sink_token_length=kv.host_sink_token_length, context_lengths=attention_params.context_lengths,
            cache_indirection=kv.cache_indirection, host_request_types=attention_params.host_request_types,
            layer_idx=self.local_layer_idx, num_heads=h, num_kv_heads=g, num_kv_heads_origin=self.num_kv_heads,
            hidden_size_per_head=d, q_scaling=self.q_scaling,
            position_embedding_type=self.position_embedding_type,  # learned_absolute, rotary dim 0: no RoPE here
            kv_cache_quant_mode=self.quant_mode, max_context_length=attention_params.max_context_length,
            mask_type=self.attention_mask_type, tp_size=self.tp_size, tp_rank=self.tp_rank,
            kv_cache_block_offsets=kv.kv_cache_block_offsets, host_kv_cache_block_offsets=kv.host_kv_cache_block_offsets,
            host_kv_cache_pool_pointers=kv.host_kv_cache_pool_pointers,
            host_kv_cache_pool_mapping=kv.host_kv_cache_pool_mapping,
            host_context_lengths=attention_params.host_context_lengths, use_cache=use_cache,
            host_runtime_perf_knobs=attention_params.host_runtime_perf_knobs,
            host_context_progress=attention_params.host_context_progress)
        context = self.dense(context)
        return (context, present) if use_cache else context

    def _rope_norm(self, x, cos_sin: list, norm: RmsNorm):
        """x [batch, seq, heads, d] rotated in float32, back to its dtype, then normalized per head."""
        rotated = RopeEmbeddingUtils.apply_rotary_pos_emb(cast(x, "float32"), cos_sin, self.rope_type)
        return norm(cast(rotated, x.dtype))
