"""The server's statistics: the counters rank 0's scheduler keeps while serving and the one JSON
document made of them, which the `pt_stats` model answers while the server runs, `--stats_json`
writes at exit, and the "stopped (...)" line prints (docs/serving.md lists the fields).

A new counter is one line in COUNTERS, and `stats.add(name=n)` where it happens (`set` for a gauge,
`raise_to` for a peak).
"""

from __future__ import annotations

import json
import threading
import time

COUNTERS = {
    "sequences": 0,         # sequences received (each row of a batched request is one)
    "failed": 0,            # sequences that ended with an error
    "cancelled": 0,         # sequences whose client went away before they finished (their slots freed)
    "stop_strings": 0,      # sequences ended by one of their stop strings (OpenAI `stop`)
    "cancel_lag_steps": 0,  # the most steps a cancelled sequence still ran after its cancel (a peak; bound: 1)
    "running": 0,           # sequences in KV-cache slots now (a gauge: `set`)
    "active_sequences": 0,  # sequences running or waiting for a slot now (a gauge: `set`)
    "steps": 0,             # scheduler steps (a prefill, a decode step, or both)
    "prefill_steps": 0,     # steps that prefilled prompts
    "prefilled_tokens": 0,  # prompt tokens prefilled
    "decoded_tokens": 0,    # tokens fed to decode steps (one per running sequence per step)
    "forward_passes": 0,    # forward passes (a prefill and a decode step are one each)
    "max_running": 0,       # the most sequences running at once (a peak: `raise_to`)
    "step_s": 0.0,          # seconds in steps
    "forward_s": 0.0,       # seconds in forward passes
}


class ServerStats:
    """COUNTERS of one server, with the facts of its run (schedule, ranks, ...) and the collectives
    its communicator counted; safe to read from any thread while the scheduler adds to it."""

    def __init__(self, engine, schedule: str):
        self.comm = engine.comm
        self.facts = {"schedule": schedule, "ranks": self.comm.world_size, "communicator": self.comm.name,
                      "device": str(engine.device), "merges_per_forward": engine.expected_merges(schedule),
                      "max_batch_size": engine.max_batch, "max_seq_len": engine.max_len}
        self._counts = dict(COUNTERS)
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self.stopped_by: str | None = None
        """Why the server stopped (a signal's name, "tritonserver exited", ...); None while serving."""

    def add(self, **counts) -> None:
        with self._lock:
            for name, n in counts.items():
                self._counts[name] += n

    def set(self, **values) -> None:
        """Gauges: each counter becomes the value given."""
        with self._lock:
            self._counts.update(values)

    def raise_to(self, **values) -> None:
        """Peaks: each counter becomes at least the value given."""
        with self._lock:
            for name, v in values.items():
                self._counts[name] = max(self._counts[name], v)

    def snapshot(self) -> dict:
        """The JSON document: state, the facts, every counter, the collectives, and per-step ratios."""
        with self._lock:
            c = dict(self._counts)
        merges, others = self.comm.calls["merge"], self.comm.calls["other"]
        return {"state": "serving" if self.stopped_by is None else "stopped", "stopped_by": self.stopped_by,
                "uptime_s": time.monotonic() - self._started, **self.facts, **c,
                "merges": merges, "other_collectives": others,
                "ms_per_step": 1e3 * c["step_s"] / max(1, c["steps"]),
                "forward_share": c["forward_s"] / max(1e-9, c["step_s"]),
                "measured_merges_per_forward": merges / max(1, c["forward_passes"]),
                "other_collectives_per_step": others / max(1, c["steps"])}

    def to_json(self) -> str:
        return json.dumps(self.snapshot(), indent=1) + "\n"


def stopped_line(s: dict) -> str:
    """The line rank 0 prints at exit, from a snapshot."""
    return (f"stopped ({s['stopped_by']}): {s['sequences']} sequences, {s['steps']} steps, {s['decoded_tokens']} "
            f"decoded tokens, {s['prefilled_tokens']} prefilled tokens, at most {s['max_running']} running at once, "
            f"{s['failed']} failed, {s['cancelled']} cancelled; {s['ms_per_step']:.2f} ms per step, "
            f"{100 * s['forward_share']:.0f}% of it in forward passes; {s['measured_merges_per_forward']:g} merges per "
            f"forward pass, {s['other_collectives_per_step']:.2f} other collectives per step")
