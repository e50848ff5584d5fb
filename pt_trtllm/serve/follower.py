"""Ranks 1..T-1 of a server: receive each step's plan from rank 0 and run this rank's track."""

from __future__ import annotations

import time

from .plan import PlanChannel, run_plan


def follow(engine, channel: PlanChannel, schedule: str, signals, grace: float = 60.0) -> int:
    """Run plans until rank 0 sends the stop plan (returns 0). SIGTERM/SIGINT (mpiexec forwards
    them to every rank) do not stop a follower by themselves: rank 0 drains and sends the stop
    plan; only if none comes within `grace` s of the signal does the follower give up (returns 1)."""

    def give_up() -> bool:
        return signals.received_at is not None and time.monotonic() > signals.received_at + grace

    while True:
        try:
            plan = channel.receive(give_up)
        except TimeoutError:
            return 1
        if plan.stop:
            return 0
        run_plan(engine, plan, schedule)
