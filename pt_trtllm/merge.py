"""Track merges (pt-spec section 3). `TrackMerge` combines the tracks held by one process;
`AllReduceMerge` is the served form: each rank holds one track and one all-reduce (sum) does it.
Both compute the sum first and then scale or correct, so they agree up to summation order.
"""

from __future__ import annotations

import torch
from torch import nn


class TrackMerge(nn.Module):
    """x: the block input [.., H]; hs: one [.., H] output per track -> the merged state."""

    def __init__(self, combine_op: str, num_tracks: int):
        super().__init__()
        self.combine_op, self.num_tracks = combine_op, num_tracks

    def forward(self, x: torch.Tensor, hs: list[torch.Tensor]) -> torch.Tensor:
        if self.combine_op == "residual_sum":
            return x + sum(h - x for h in hs)
        total = sum(hs)
        return total / self.num_tracks if self.combine_op == "mean" else total


class AllReduceMerge(nn.Module):
    """The merge of one rank holding one track: one all-reduce of a [.., H] tensor per call."""

    def __init__(self, combine_op: str, num_tracks: int, comm):
        super().__init__()
        self.combine_op, self.num_tracks, self.comm = combine_op, num_tracks, comm

    def forward(self, x: torch.Tensor, hs: list[torch.Tensor]) -> torch.Tensor:
        (h,) = hs
        if self.num_tracks == 1:  # every combine op is the identity on one track
            self.comm.all_reduce(h)  # counted (a no-op on one rank), as the merge is part of the model
            return h
        if self.combine_op == "residual_sum":
            # never sum_t(h_t) - (T-1) x: it cancels badly in low precision
            return x + self.comm.all_reduce(h - x)
        total = self.comm.all_reduce(h)
        return total / self.num_tracks if self.combine_op == "mean" else total
