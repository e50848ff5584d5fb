"""Track merges (pt-spec section 3): the one seam between the model and how tracks are combined.

Every merge has the same call, in PyTorch here and mirrored by the TensorRT-LLM network definition
(pt_trtllm/trtllm/model.py):

    merged, normed = merge(x, hs, norm=None)

- x [.., H]: the segment's input (the block input of `residual_sum`);
- hs: the tracks' outputs [.., H] that this process holds (all T of them in one process; one per
  rank when served);
- norm: the RMSNorm that runs next on the merged state, when the caller wants its output;
- merged: the merged state; normed: norm(merged), or None when no norm was given.

A fused implementation (an all-reduce fused with the next RMSNorm, a custom plugin, a GPU kernel)
returns `normed` from the same kernel; the model then skips that norm. `LocalMerge` combines the
tracks held by one process; `AllReduceMerge` is the served form (one all-reduce per merge). Both
sum first, then scale or correct, so they agree up to summation order.

Which implementation a served model uses is the `merge_impl` field of the per-rank and engine
config.json (MERGE_IMPLS; `make_merge`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

MERGE_IMPLS = ("allreduce", "allreduce_fused_norm", "pt_plugin")
"""Values of config.json's `merge_impl`. "allreduce": one unfused sum all-reduce, then the combine
op and the next norm as separate operations (the default). "allreduce_fused_norm": in a TensorRT-LLM
engine, one AllReduce plugin node that also adds the residual and applies the next RMSNorm
(pt_trtllm/trtllm/merges.py); the PyTorch runtime serves it with the unfused AllReduceMerge, which
computes the same values. "pt_plugin": one PTTrackMerge node of the project's own plugin library
(plugins/, pt_trtllm/plugin_lib.py) per merge, the all-reduce and the next RMSNorm in one node; the
PyTorch runtime serves it with AllReduceMerge too (its own use of the library is `--comm pt_plugin`,
a communicator choice, not a checkpoint field)."""
DEFAULT_MERGE_IMPL = "allreduce"

Norm = Callable[[torch.Tensor], torch.Tensor]


def check_merge_impl(impl: str) -> str:
    if impl not in MERGE_IMPLS:
        raise ValueError(f"merge_impl={impl!r} is not one of {MERGE_IMPLS}")
    return impl


class Merge(nn.Module):
    """The merge interface (see the module docstring)."""

    def __init__(self, combine_op: str, num_tracks: int):
        super().__init__()
        self.combine_op, self.num_tracks = combine_op, num_tracks

    def forward(self, x: torch.Tensor, hs: list[torch.Tensor],
                norm: Norm | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        merged = self.combine(x, hs)
        return merged, (norm(merged) if norm is not None else None)

    def combine(self, x: torch.Tensor, hs: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class LocalMerge(Merge):
    """All tracks in this process (PTForCausalLM): the combine op over the list."""

    def combine(self, x: torch.Tensor, hs: list[torch.Tensor]) -> torch.Tensor:
        if self.combine_op == "residual_sum":
            return x + sum(h - x for h in hs)
        total = sum(hs)
        return total / self.num_tracks if self.combine_op == "mean" else total


class AllReduceMerge(Merge):
    """One track per rank: ONE sum all-reduce of a [.., H] tensor per merge, on `comm`."""

    def __init__(self, combine_op: str, num_tracks: int, comm):
        super().__init__(combine_op, num_tracks)
        self.comm = comm

    def combine(self, x: torch.Tensor, hs: list[torch.Tensor]) -> torch.Tensor:
        (h,) = hs
        if self.num_tracks == 1:  # every combine op is the identity on one track
            self.comm.all_reduce(h)  # counted (a no-op on one rank), as the merge is part of the model
            return h
        if self.combine_op == "residual_sum":
            # never sum_t(h_t) - (T-1) x: it cancels badly in low precision
            return x + self.comm.all_reduce(h - x)
        total = self.comm.all_reduce(h)
        return total / self.num_tracks if self.combine_op == "mean" else total


def make_merge(impl: str, combine_op: str, num_tracks: int, comm) -> Merge:
    """The served merge of `merge_impl` = `impl` for one rank of `comm`: AllReduceMerge for every
    value (the fused norms of "allreduce_fused_norm" and "pt_plugin" exist only in TensorRT-LLM
    engines), unless `comm` makes its own merges (runtime/plugin_comm.py, whatever the value)."""
    check_merge_impl(impl)
    if hasattr(comm, "make_merge"):  # a communicator that merges itself (--comm pt_plugin)
        return comm.make_merge(combine_op, num_tracks)
    return AllReduceMerge(combine_op, num_tracks, comm)
