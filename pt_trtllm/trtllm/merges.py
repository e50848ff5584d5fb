"""The merges of the TensorRT-LLM network definition: pt_trtllm/merge.py's interface as network
nodes (needs tensorrt_llm), one class per `merge_impl` (MERGES).

    merged, normed = merge(x, hs, norm=None)

x is the segment's input (the merged state the tracks started from), hs this rank's one track
output, norm the RmsNorm that runs next on the merged state (the network always has one: one track
per rank); normed is norm(merged), or None without a norm. Each merge is ONE AllReduce plugin node
(tensorrt_llm.functional.allreduce), so an engine has L/D of them per forward under "block" and 2L
under "sublayer", whichever implementation it was built with.

- "allreduce" (AllReduceMerge): the sum all-reduce, then the combine op and the norm as separate
  nodes.
- "allreduce_fused_norm" (FusedNormAllReduceMerge): the AllReduce plugin with
  AllReduceFusionOp.RESIDUAL_RMS_NORM, which returns (RMSNorm(sum + residual) * w, sum + residual)
  from the same node, the residual being x.

The all-reduce strategy (all_reduce_params): AUTO, as TensorRT-LLM's Llama, when T is a rank count
the custom all-reduce kernels dispatch on; NCCL otherwise. Never NCCL_SYMMETRIC (see there).
"""

from __future__ import annotations

from tensorrt_llm.functional import AllReduceFusionOp, AllReduceParams, AllReduceStrategy, allreduce
from tensorrt_llm.layers import RmsNorm

from pt_trtllm.merge import check_merge_impl

CUSTOM_KERNEL_RANKS = (2, 4, 6, 8, 16)
"""Ranks per node the custom all-reduce kernels (ONESHOT, TWOSHOT, and their fused-norm forms)
dispatch on: customAllReduceKernels.cu throws "Custom all reduce only supported on {2, 4, 6, 8, 16}
GPUs per node" for any other count, and the AllReduce plugin's AUTO selection
(allreducePlugin.cpp, selectImplementation) picks ONESHOT without checking the count."""


def all_reduce_params(num_tracks: int, **fusion) -> AllReduceParams:
    """A fresh AllReduceParams for one merge node (allreduce() mutates the one it is given), with
    `fusion` (fusion_op, residual, norm_weight, eps) when the node fuses the next norm.

    Strategy AUTO for T in CUSTOM_KERNEL_RANKS: the plugin picks ONESHOT/TWOSHOT or NCCL by message
    size at run time; all of them fuse the residual and the norm, each rank normalizing the whole
    reduced tensor with its own weight. NCCL for any other T, where AUTO could pick a custom kernel
    that throws. Never NCCL_SYMMETRIC: allreduce() falls back to it only without the all-reduce
    workspace, which PretrainedModel.prepare_inputs always creates when tp_size = T > 1."""
    strategy = AllReduceStrategy.AUTO if num_tracks in CUSTOM_KERNEL_RANKS else AllReduceStrategy.NCCL
    return AllReduceParams(strategy=strategy, **fusion)


class Merge:
    """The merge interface (see the module docstring): normed = norm(merged), computed after the
    merge. A fused implementation overrides __call__ and returns `normed` from its own node."""

    def __init__(self, combine_op: str, num_tracks: int):
        self.combine_op, self.num_tracks = combine_op, num_tracks

    def __call__(self, x, hs: list, norm: RmsNorm | None = None):
        merged = self.combine(x, hs)
        return merged, (norm(merged) if norm is not None else None)

    def combine(self, x, hs: list):
        raise NotImplementedError


class AllReduceMerge(Merge):
    """merge_impl "allreduce": ONE AllReduce (sum) of the [tokens, H] hidden state over the ranks
    of `group`, then the 1/T scale for "mean", or x + allreduce(h - x) for "residual_sum". A single
    track merges with itself: no node."""

    def __init__(self, combine_op: str, num_tracks: int, group: list[int]):
        super().__init__(combine_op, num_tracks)
        self.group = group

    def combine(self, x, hs: list):
        (h,) = hs
        if self.num_tracks == 1:
            return h
        if self.combine_op == "residual_sum":
            # never sum_t(h_t) - (T-1) x: it cancels badly in low precision
            return x + self._sum(h - x)
        total = self._sum(h)
        return total * (1.0 / self.num_tracks) if self.combine_op == "mean" else total

    def _sum(self, h):
        return allreduce(h, self.group, all_reduce_params=all_reduce_params(self.num_tracks))


class FusedNormAllReduceMerge(AllReduceMerge):
    """merge_impl "allreduce_fused_norm": ONE AllReduce plugin node per merge that also adds the
    residual x and applies `norm` (AllReduceFusionOp.RESIDUAL_RMS_NORM, eps = the norm's, i.e.
    config.norm_epsilon, not the plugin's 1e-6 default). The node computes x + allreduce(delta),
    and delta is chosen so that this is the combine op's merged state:

        residual_sum: delta = h - x          x + sum_t(h_t - x)       = x + sum_t(h_t - x)
        mean:         delta = (h - x) / T    x + sum_t((h_t - x) / T) = mean_t(h_t)
        sum:          delta = h - x / T      x + sum_t(h_t - x / T)   = sum_t(h_t)

    The norm is whichever RmsNorm the network says runs next: the next layer's input_layernorm,
    post_layernorm after an attention merge under "sublayer", ln_f after the last merge, and the
    next block's dispatch norm too. The dispatch norm is fused like the others, although it is a
    per-track norm: in an engine every norm of a track is per-track (its layer norms as well) and
    each rank holds one track, so the weight handed to the plugin is always this rank's own, and
    every strategy of the plugin (NCCL + residualRmsNorm, ONESHOT, lamport ONESHOT, TWOSHOT +
    rms_norm_kernel; allreducePlugin.cpp, customAllReduceKernels.cu) normalizes the whole reduced
    tensor on each rank with the weight that rank passed. (Only a process holding several tracks,
    as modeling.PTModel can, has no single next norm.) Without a norm, or with one track, it is the
    unfused merge."""

    def __call__(self, x, hs: list, norm: RmsNorm | None = None):
        (h,) = hs
        if norm is None or self.num_tracks == 1:
            return super().__call__(x, hs, norm)
        T = self.num_tracks
        if self.combine_op == "residual_sum":
            delta = h - x
        elif self.combine_op == "mean":
            delta = (h - x) * (1.0 / T)
        else:
            delta = h - x * (1.0 / T)
        params = all_reduce_params(T, fusion_op=AllReduceFusionOp.RESIDUAL_RMS_NORM, residual=x,
                                   norm_weight=norm.weight.value, eps=norm.eps)
        normed, merged = allreduce(delta, self.group, all_reduce_params=params)  # outputs 0 and 1 of the plugin
        return merged, normed


MERGES = {"allreduce": AllReduceMerge, "allreduce_fused_norm": FusedNormAllReduceMerge}
"""The merge class of each `merge_impl` (pt_trtllm.merge.MERGE_IMPLS)."""


def make_merge(impl: str, combine_op: str, num_tracks: int, group: list[int]) -> Merge:
    """The merge of `merge_impl` = `impl` for one rank of `group` (ValueError naming an unknown one)."""
    return MERGES[check_merge_impl(impl)](combine_op, num_tracks, group)
