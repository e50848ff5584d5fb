"""Merge schedules (pt-spec sections 3 and 6): which sublayers each track runs between two merges,
and where each schedule may be used.

A schedule is a list of segments. Each track runs a segment's steps on its own, then the tracks
merge (one collective when served). `block` merges every D layers (the PT model), `sublayer` after
every attention and every MLP (the tensor-parallel equivalent), and `none` never merges (a
timing-only upper bound whose output is not a model output).

Where a schedule may be used is decided in one place, `check_schedule`, by context:

| context      | schedules                 | who asks                                             |
|--------------|---------------------------|------------------------------------------------------|
| `checkpoint` | block, sublayer           | a checkpoint's `merge_schedule` (PTConfig)           |
| `runtime`    | block, sublayer, none     | PTModel, the PyTorch runtime (`none`: one track per process) |
| `engine`     | block, sublayer           | the TensorRT-LLM network definition and build.py     |
| `server`     | block, sublayer           | scripts/serve.py                                     |

In every context, `sublayer` is undefined for a model with track dispatch or combine norms (those
norms belong to track blocks) and for one with pre-residual or post norms (the norm of a summed
sublayer output needs the merge first).
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("block", "sublayer", "none")
CONTEXTS = {
    "checkpoint": ("block", "sublayer"),
    "runtime": SCHEDULES,
    "engine": ("block", "sublayer"),
    "server": ("block", "sublayer"),
}
_WHERE = {"checkpoint": "a checkpoint's merge_schedule", "runtime": "the PyTorch runtime",
          "engine": "a TensorRT-LLM engine", "server": "the server"}


def check_schedule(schedule: str, context: str, config=None, tracks_per_process: int | None = None) -> str:
    """`schedule` if it may be used in `context` (a key of CONTEXTS) for a model of `config` (a
    PTConfig, optional) holding `tracks_per_process` tracks per process (optional); else ValueError
    naming the schedule, the context and the reason."""
    allowed = CONTEXTS[context]
    if schedule not in allowed:
        raise ValueError(f"schedule {schedule!r} cannot be used in {_WHERE[context]}; use one of {allowed}")
    if schedule == "sublayer" and config is not None and (config.track_dispatch_norm or config.track_combine_norm):
        raise ValueError(f"the sublayer schedule is undefined for models with track_dispatch_norm or "
                         f"track_combine_norm (got {config.track_dispatch_norm}, {config.track_combine_norm}): "
                         "those norms belong to track blocks")
    if schedule == "sublayer" and config is not None and (config.pre_residual_norm or config.post_norm):
        raise ValueError(f"the sublayer schedule is undefined for models with pre_residual_norm or post_norm "
                         f"(got {config.pre_residual_norm}, {config.post_norm}): the norm of a summed sublayer "
                         "output needs the merge first")
    if schedule == "none" and tracks_per_process not in (None, 1):
        raise ValueError("the none schedule (no merges; timing only) needs exactly one track per process, "
                         f"got {tracks_per_process}")
    return schedule


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
    """The segments of `schedule` (any of SCHEDULES; check_schedule says where it may be used)."""
    check_schedule(schedule, "runtime")
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
