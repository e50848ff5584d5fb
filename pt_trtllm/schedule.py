"""Merge schedules (pt-spec sections 3 and 6): which sublayers each track runs between two merges.

A schedule is a list of segments. Each track runs a segment's steps on its own, then the tracks
merge (one collective when served). `block` merges every D layers (the PT model), `sublayer` after
every attention and every MLP (the tensor-parallel equivalent), and `none` never merges (a
timing-only upper bound whose output is not a model output).
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("block", "sublayer", "none")


@dataclass(frozen=True)
class Segment:
    steps: tuple[tuple[int, str], ...]
    """(layer index, "attn" or "mlp") in the order a track runs them."""
    dispatch_block: int | None
    """Track block whose dispatch norm runs first (None: no dispatch norm here)."""
    combine_block: int | None
    """Track block whose combine norm runs last (None: no combine norm here)."""
    merge: bool
    """Whether the tracks merge after this segment."""


def build_schedule(schedule: str, num_layers: int, block_depth: int) -> list[Segment]:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not one of {SCHEDULES}")
    if schedule == "sublayer":
        return [Segment(((layer, kind),), None, None, True)
                for layer in range(num_layers) for kind in ("attn", "mlp")]
    segments = []
    for b in range(num_layers // block_depth):
        layers = range(b * block_depth, (b + 1) * block_depth)
        steps = tuple((layer, kind) for layer in layers for kind in ("attn", "mlp"))
        segments.append(Segment(steps, b, b, schedule == "block"))
    return segments


def merges_per_forward(schedule: str, num_layers: int, block_depth: int) -> int:
    """Collectives on the hidden state per forward pass: L/D (block), 2L (sublayer), 0 (none)."""
    return sum(s.merge for s in build_schedule(schedule, num_layers, block_depth))
