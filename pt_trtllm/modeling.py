"""The PT model in plain PyTorch (pt-spec section 3). Single-device code: the tracks run one after
another and `merge` combines them. The distributed runtime builds the same `PTModel` with only its
own track and a `merge` that all-reduces; nothing else here knows about ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .merge import LocalMerge, Merge
from .schedule import Segment, build_schedule, check_schedule


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * w, computed in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).to(x.dtype)


class Rotary(nn.Module):
    """RoPE angles for integer positions."""

    def __init__(self, head_dim: int, theta: float, style: str):
        super().__init__()
        self.head_dim, self.theta, self.style = head_dim, theta, style
        self.register_buffer("inv_freq", self.frequencies(), persistent=False)

    def frequencies(self) -> torch.Tensor:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim
        return 1.0 / self.theta**exponent

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: [B, S] -> cos, sin: [B, S, 1, d/2] (float32; broadcast over heads)
        angles = positions[:, :, None, None].float() * self.inv_freq
        return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str) -> torch.Tensor:
    """Rotate x [B, S, heads, d]: "neox" pairs dims (i, i + d/2), "gptj" pairs (2i, 2i + 1)."""
    x32 = x.float()
    if style == "neox":
        x1, x2 = x32.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        x1, x2 = x32[..., 0::2], x32[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    return out.to(x.dtype)


@dataclass
class Context:
    """What every attention layer of one forward pass shares."""

    rope: tuple[torch.Tensor, torch.Tensor]
    mask: torch.Tensor | None
    """Boolean [B, 1, S, kv_len] (True = attend), or None: no cached past, plain causal."""
    cache: object | None
    """An HF-style cache: `update(k, v, index) -> (k_all, v_all)`; index = local track * L + layer.
    It may also answer `key_positions(index)`: the positions [B, kv_len] of the keys it returned
    (a ring buffer's), or None."""
    positions: torch.Tensor
    """[B, S] positions of the queries."""
    key_positions: torch.Tensor | None = None
    """[B, kv_len] positions of the cached keys (padding: a large negative number), or None: the
    keys are the queries' own tokens."""

    def window_mask(self, window: int, cache_index: int) -> torch.Tensor:
        """Boolean [B, 1, S, kv_len] of a local layer: a query at p attends to keys at p - window .. p."""
        keys = self.cache.key_positions(cache_index) if hasattr(self.cache, "key_positions") else None
        if keys is None:
            keys = self.key_positions if self.key_positions is not None else self.positions
        distance = self.positions[:, None, :, None] - keys[:, None, None, :]  # [B, 1, S, kv_len]
        return (distance >= 0) & (distance <= window)


class Attention(nn.Module):
    """Grouped-query attention of one track: RoPE (unless `kind` is "global_nope"), then QK-norm,
    then causal attention, limited to the last `window` positions for "local_rope"."""

    def __init__(self, heads: int, kv_heads: int, head_dim: int, hidden: int, qk_norm: bool,
                 eps: float, rope_style: str, kind: str = "global_rope", window: int | None = None):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.rope_style = heads, kv_heads, head_dim, rope_style
        self.rope = kind != "global_nope"
        self.window = window
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)
        if qk_norm:
            self.q_norm = RMSNorm(head_dim, eps)
            self.k_norm = RMSNorm(head_dim, eps)
        self.qk_norm = qk_norm
        self.qkv_weight: torch.Tensor | None = None

    def fuse(self) -> None:
        """Inference: one [q; k; v] matmul. The q/k/v weights become views of the fused one."""
        self.qkv_weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]).detach()
        for proj, part in zip((self.q_proj, self.k_proj, self.v_proj), self.qkv_weight.split(self._sizes())):
            proj.weight = nn.Parameter(part, requires_grad=False)

    def _sizes(self) -> list[int]:
        return [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim]

    def forward(self, x: torch.Tensor, ctx: Context, cache_index: int) -> torch.Tensor:
        B, S, _ = x.shape
        h, g, d = self.heads, self.kv_heads, self.head_dim
        if self.qkv_weight is not None:  # one matmul, and RoPE on q and k heads at once
            qk, v = F.linear(x, self.qkv_weight).split([(h + g) * d, g * d], dim=-1)
            qk = qk.view(B, S, h + g, d)
            if self.rope:
                qk = apply_rope(qk, *ctx.rope, self.rope_style)
            q, k = qk.split([h, g], dim=2)
        else:
            q, k = self.q_proj(x).view(B, S, h, d), self.k_proj(x).view(B, S, g, d)
            if self.rope:
                q, k = apply_rope(q, *ctx.rope, self.rope_style), apply_rope(k, *ctx.rope, self.rope_style)
            v = self.v_proj(x)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, h, S, d], [B, g, S, d]
        v = v.reshape(B, S, g, d).transpose(1, 2)  # [B, g, S, d]
        if ctx.cache is not None:
            k, v = ctx.cache.update(k, v, cache_index)  # [B, g, kv_len, d]
        mask = ctx.mask if self.window is None else ctx.window_mask(self.window, cache_index)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and S > 1, enable_gqa=g != h)  # [B, h, S, d]
        return self.o_proj(out.transpose(1, 2).reshape(B, S, h * d))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, ffn, bias=False)
        self.up_proj = nn.Linear(hidden, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, hidden, bias=False)
        self.gate_up_weight: torch.Tensor | None = None

    def fuse(self) -> None:
        """Inference: one [gate; up] matmul; the gate/up weights become views of the fused one."""
        self.gate_up_weight = torch.cat([self.gate_proj.weight, self.up_proj.weight]).detach()
        gate, up = self.gate_up_weight.chunk(2)
        self.gate_proj.weight = nn.Parameter(gate, requires_grad=False)
        self.up_proj.weight = nn.Parameter(up, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_weight is not None:
            gate, up = F.linear(x, self.gate_up_weight).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class MoE(nn.Module):
    """A track's mixture of experts (tamm's router and dropless dispatch): router logits in float32,
    soft-capped (cap * tanh(logits / cap)), softmax over the experts, top-k, the k weights
    renormalized to sum 1; the token's output is the weighted sum of its k experts' SwiGLUs."""

    def __init__(self, hidden: int, ffn: int, num_experts: int, top_k: int, cap: float | None):
        super().__init__()
        self.router = nn.Linear(hidden, num_experts, bias=False)
        self.experts = Experts(num_experts, hidden, ffn)
        self.top_k, self.cap = top_k, cap

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, H] -> the chosen experts [N, k] and their weights [N, k] (x's dtype)."""
        logits = self.router(x).float()  # [N, E]
        if self.cap is not None:
            logits = self.cap * torch.tanh(logits / self.cap)
        weights, experts = logits.softmax(dim=-1).topk(self.top_k, dim=-1)
        return experts, (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, H]
        experts, weights = self.route(x)
        if x.shape[0] * self.top_k <= self.experts.num_experts:  # few tokens (decode): gather their experts
            out = self.experts.gathered(x, experts)  # [N, k, H]
        elif torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():  # a CUDA graph: no host sync
            out = self.experts.every_expert(x, experts)
        else:
            out = self.experts.grouped(x, experts)
        return torch.einsum("nkh,nk->nh", out, weights).reshape(shape)


class Experts(nn.Module):
    """E SwiGLU experts as stacked [out, in] weights: gate_proj, up_proj [E, f, H], down_proj [E, H, f]."""

    def __init__(self, num_experts: int, hidden: int, ffn: int):
        super().__init__()
        self.num_experts = num_experts
        self.gate_proj = nn.Parameter(torch.empty(num_experts, ffn, hidden))
        self.up_proj = nn.Parameter(torch.empty(num_experts, ffn, hidden))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, ffn))

    def gathered(self, x: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """x [N, H], experts [N, k] -> [N, k, H], reading only the chosen experts' weights and
        with no host synchronization (a CUDA graph can capture it)."""
        gate = torch.einsum("nh,nkfh->nkf", x, self.gate_proj[experts])
        up = torch.einsum("nh,nkfh->nkf", x, self.up_proj[experts])
        return torch.einsum("nkf,nkhf->nkh", F.silu(gate) * up, self.down_proj[experts])

    def every_expert(self, x: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """x [N, H], experts [N, k] -> [N, k, H]: every expert on every token, then each token's k
        picked; no host synchronization, E / k times the FLOPs (decode batches too large to gather)."""
        y = torch.stack([F.linear(F.silu(F.linear(x, g)) * F.linear(x, u), d)
                         for g, u, d in zip(self.gate_proj, self.up_proj, self.down_proj)])  # [E, N, H]
        return y[experts, torch.arange(x.shape[0], device=x.device)[:, None]]

    def grouped(self, x: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """x [N, H], experts [N, k] -> [N, k, H]: the (token, expert) pairs sorted by expert, one
        matmul per expert that has tokens (its token count is read on the host: prefill only)."""
        N, k = experts.shape
        flat = experts.reshape(-1)  # [N * k]
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        rows = x[order // k]  # [N * k, H], grouped by expert
        out = torch.empty_like(rows)
        start = 0
        for e, n in enumerate(counts):
            if n:
                part = rows[start:start + n]
                hidden = F.silu(F.linear(part, self.gate_proj[e])) * F.linear(part, self.up_proj[e])
                out[start:start + n] = F.linear(hidden, self.down_proj[e])
                start += n
        return out.new_empty(N * k, x.shape[-1]).index_copy_(0, order, out).view(N, k, -1)


class DecoderLayer(nn.Module):
    """One pre-norm Llama layer of one track, run as two residual steps.

    `step` runs half a layer (attention or MLP) because the sublayer schedule merges the tracks
    between the two halves; under the block schedule a track simply runs both steps of each layer.
    """

    def __init__(self, config, layer: int):
        super().__init__()
        H, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = RMSNorm(H, eps)
        self.self_attn = Attention(config.heads_per_track, config.kv_heads_per_track, config.head_dim, H,
                                   config.qk_norm, eps, config.rope_style, config.attention_type(layer),
                                   config.window(layer))
        self.post_attention_layernorm = RMSNorm(H, eps)
        if config.is_sparse(layer):
            self.mlp = MoE(H, config.moe_intermediate_size, config.num_experts, config.num_experts_per_token,
                           config.router_logits_cap)
        else:
            self.mlp = MLP(H, config.ffn_per_track)
        for kind in ("attn", "mlp"):  # tamm's NormalizedResidualConnection: post(h + pre_residual(out))
            if config.pre_residual_norm:
                setattr(self, f"{kind}_pre_residual_norm", RMSNorm(H, eps))
            if config.post_norm:
                setattr(self, f"{kind}_post_norm", RMSNorm(H, eps))

    def norm(self, kind: str) -> RMSNorm:
        """The RMSNorm that step `kind` applies first."""
        return self.input_layernorm if kind == "attn" else self.post_attention_layernorm

    def step(self, kind: str, h: torch.Tensor, ctx: Context, cache_index: int,
             normed: torch.Tensor | None = None) -> torch.Tensor:
        """h + attn(input_layernorm(h)) for "attn", h + mlp(post_attention_layernorm(h)) for "mlp";
        `normed` is that norm's output when a fused merge already computed it."""
        if normed is None:
            normed = self.norm(kind)(h)
        out = self.self_attn(normed, ctx, cache_index) if kind == "attn" else self.mlp(normed)
        if hasattr(self, f"{kind}_pre_residual_norm"):
            out = getattr(self, f"{kind}_pre_residual_norm")(out)
        h = h + out
        if hasattr(self, f"{kind}_post_norm"):
            h = getattr(self, f"{kind}_post_norm")(h)
        return h


class Track(nn.Module):
    """One track: L layers plus the optional per-block dispatch and combine norms."""

    def __init__(self, config, cache_offset: int):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(config, layer) for layer in range(config.num_hidden_layers))
        if config.track_dispatch_norm:
            self.dispatch_norms = nn.ModuleList(
                RMSNorm(config.hidden_size, config.rms_norm_eps) for _ in range(config.num_blocks))
        if config.track_combine_norm:
            self.combine_norms = nn.ModuleList(
                RMSNorm(config.hidden_size, config.rms_norm_eps) for _ in range(config.num_blocks))
        self.cache_offset = cache_offset

    def entry_norm(self, segment: Segment) -> RMSNorm:
        """The RMSNorm this track applies first to a segment's input: the block's dispatch norm, or
        the first step's layer norm."""
        if segment.dispatch_block is not None and hasattr(self, "dispatch_norms"):
            return self.dispatch_norms[segment.dispatch_block]
        layer, kind = segment.steps[0]
        return self.layers[layer].norm(kind)

    def forward(self, segment: Segment, x: torch.Tensor, ctx: Context,
                normed: torch.Tensor | None = None) -> torch.Tensor:
        """Run one segment on the merged state x [B, S, H] -> this track's output [B, S, H].
        `normed` is entry_norm(segment)(x) when the previous merge computed it (then not redone)."""
        h = x
        if segment.dispatch_block is not None and hasattr(self, "dispatch_norms"):
            h = normed if normed is not None else self.dispatch_norms[segment.dispatch_block](h)
            normed = None
        for layer, kind in segment.steps:
            h = self.layers[layer].step(kind, h, ctx, self.cache_offset + layer, normed)
            normed = None
        if segment.combine_block is not None and hasattr(self, "combine_norms"):
            h = self.combine_norms[segment.combine_block](h)
        return h


@lru_cache(maxsize=None)
def _segments(schedule: str, num_layers: int, block_depth: int) -> tuple[Segment, ...]:
    return tuple(build_schedule(schedule, num_layers, block_depth))


class PTModel(nn.Module):
    """Embedding -> the schedule's segments, each run by every track and merged -> final norm.

    `num_local_tracks` is how many tracks this instance holds (all T by default; the runtime holds
    one per rank); `merge` combines the tracks' outputs after each segment (`LocalMerge` in one
    process; the runtime passes an `AllReduceMerge`, which has the same interface).
    """

    def __init__(self, config, num_local_tracks: int | None = None, merge: Merge | None = None):
        super().__init__()
        self.config = config
        L = config.num_hidden_layers
        n = config.num_tracks if num_local_tracks is None else num_local_tracks
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.tracks = nn.ModuleList(Track(config, i * L) for i in range(n))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = Rotary(config.head_dim, config.rope_theta, config.rope_style)
        self.merge = merge if merge is not None else LocalMerge(config.combine_op, config.num_tracks)

    def segments(self, schedule: str) -> tuple[Segment, ...]:
        cfg = self.config
        check_schedule(schedule, "runtime", cfg, tracks_per_process=len(self.tracks))
        return _segments(schedule, cfg.num_hidden_layers, cfg.block_depth)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None,
                cache=None, schedule: str | None = None, key_positions: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids, positions: [B, S] -> the final-normed hidden states [B, S, H]. `mask` and
        `key_positions` describe the cached keys when there are any (Context).

        block schedule (T tracks, L layers, merges after every D layers):

            x = embed(ids)
            |-> track 0: [dispatch norm] layers 0..D-1 [combine norm] --+
            |-> ...                                                     +-> merge -> x -> next block ...
            |-> track T-1: ...                                        --+
            ... L/D blocks ... -> final norm

        sublayer schedule: every attention step and every MLP step of every layer is its own
        segment, merged at once (2L merges: tensor parallelism on these weights). none: the one
        track held runs all L layers without merging (timing only).

        Each merge also returns the input of the norm that runs next on the merged state (the next
        segment's entry norm, or the final norm) when every track held would apply the same one:
        a fused merge computes it in its own kernel and the consumer skips it.
        """
        ctx = Context(self.rotary(positions), mask, cache, positions, key_positions)
        segments = self.segments(schedule or self.config.merge_schedule)
        x = self.embed_tokens(input_ids)  # [B, S, H]
        normed = None
        for i, segment in enumerate(segments):
            hs = [track(segment, x, ctx, normed) for track in self.tracks]  # T_local x [B, S, H]
            if segment.merge:
                x, normed = self.merge(x, hs, self._next_norm(segments, i))
            else:
                x, normed = hs[0], None
        return normed if normed is not None else self.norm(x)

    def _next_norm(self, segments: tuple[Segment, ...], i: int) -> RMSNorm | None:
        """The norm that runs next on the state merged after segment i, if it is one norm."""
        if i == len(segments) - 1:
            return self.norm
        if len(self.tracks) == 1:
            return self.tracks[0].entry_norm(segments[i + 1])
        return None  # each track has its own

    def fuse(self) -> None:
        """Fuse q/k/v and gate/up projections for inference (weights stay shared, not copied)."""
        for track in self.tracks:
            for layer in track.layers:
                layer.self_attn.fuse()
                if isinstance(layer.mlp, MLP):
                    layer.mlp.fuse()
