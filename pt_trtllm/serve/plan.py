"""The step plan: what every rank runs in one server step, decided by rank 0.

A step is (1) KV-cache slot moves that keep the running sequences in slots 0..n-1, (2) one prefill
of the newly admitted prompts into the slots after them, (3) one decode step of slots 0..n-1. Rank 0
broadcasts the plan before the step: a fixed-size int64 header (one collective, counted as
"other", outside the forward passes), plus the prompt tokens when the step prefills (a second one).
The tokens to decode travel in the header, so followers never need the sampled tokens otherwise.

Followers wait for the header with a nonblocking broadcast that they test with growing sleeps, so
an idle follower does not spin on a core (MPICH's blocking calls busy-poll).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..runtime.comm import Communicator

OP_STEP, OP_STOP = 0, 1
_FIXED = 5  # op, moves, prefills, decodes, prompt tokens


@dataclass
class StepPlan:
    moves: list[tuple[int, int, int]] = field(default_factory=list)
    """(src slot, dst slot, cached positions) copied before anything else."""
    prefill_slots: list[int] = field(default_factory=list)
    prompts: list[list[int]] = field(default_factory=list)
    decode_tokens: list[int] = field(default_factory=list)
    """Input token of slots 0..n-1."""
    decode_positions: list[int] = field(default_factory=list)
    stop: bool = False

    @property
    def empty(self) -> bool:
        return not (self.moves or self.prompts or self.decode_tokens or self.stop)


def run_plan(engine, plan: StepPlan, schedule: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Run one step on this rank: moves, then the prefill, then the decode step. Returns the
    last-token logits of the prefilled prompts [k, V] and of the decoded slots [n, V] (or None)."""
    for src, dst, length in plan.moves:
        engine.cache.move(src, dst, length)
    prefill = engine.prefill(plan.prompts, plan.prefill_slots, schedule) if plan.prompts else None
    decode = None
    if plan.decode_tokens:
        tokens = torch.tensor(plan.decode_tokens, dtype=torch.long, device=engine.device)
        positions = torch.tensor(plan.decode_positions, dtype=torch.long, device=engine.device)
        decode = engine.decode(tokens, positions, schedule)
    return prefill, decode


class PlanChannel:
    """Rank 0 sends plans, the other ranks receive them, over a duplicate of the MPI world
    communicator (so plans never mix with the merges). With one rank it does nothing."""

    def __init__(self, comm: Communicator, max_batch: int, max_idle_sleep: float = 1e-3):
        self.comm, self.max_batch, self.max_idle_sleep = comm, max_batch, max_idle_sleep
        self.size = _FIXED + 7 * max_batch
        mpi = getattr(comm, "mpi", None) or comm  # NCCLComm keeps its MPIComm in .mpi
        self.mpi = mpi.comm.Dup() if comm.world_size > 1 else None
        self.idle_polls = 0
        """Tests of the pending header a follower has made (how often it woke up)."""

    # ---- rank 0 -----------------------------------------------------------------------------------
    def send(self, plan: StepPlan) -> None:
        if self.mpi is None:
            return
        header, tokens = self.encode(plan)
        self.mpi.Ibcast(header, root=0).Wait()
        self._count(header)
        if tokens is not None:
            self.mpi.Bcast(tokens, root=0)
            self._count(tokens)

    def encode(self, plan: StepPlan) -> tuple[np.ndarray, np.ndarray | None]:
        mb = self.max_batch
        if max(len(plan.moves), len(plan.prompts), len(plan.decode_tokens)) > mb:
            raise ValueError(f"a step plan exceeds the maximum batch size {mb}")
        h = np.zeros(self.size, dtype=np.int64)
        lens = [len(p) for p in plan.prompts]
        h[:_FIXED] = (OP_STOP if plan.stop else OP_STEP, len(plan.moves), len(plan.prompts),
                      len(plan.decode_tokens), sum(lens))
        o = _FIXED
        for i, (src, dst, length) in enumerate(plan.moves):
            h[o + i], h[o + mb + i], h[o + 2 * mb + i] = src, dst, length
        o += 3 * mb
        h[o: o + len(plan.prompts)] = plan.prefill_slots
        h[o + mb: o + mb + len(lens)] = lens
        o += 2 * mb
        h[o: o + len(plan.decode_tokens)] = plan.decode_tokens
        h[o + mb: o + mb + len(plan.decode_positions)] = plan.decode_positions
        tokens = np.fromiter((t for p in plan.prompts for t in p), dtype=np.int64, count=sum(lens)) if lens else None
        return h, tokens

    # ---- followers --------------------------------------------------------------------------------
    def receive(self, should_give_up=lambda: False) -> StepPlan:
        """The next plan from rank 0. While none is pending, sleep between tests of the nonblocking
        broadcast: 20 us at first, doubling up to `max_idle_sleep` (so a busy server pays at most
        tens of microseconds per step and an idle follower wakes ~1000 times a second)."""
        header = np.empty(self.size, dtype=np.int64)
        request = self.mpi.Ibcast(header, root=0)
        delay = 0.0
        while not request.Test():
            self.idle_polls += 1
            if should_give_up():
                raise TimeoutError("gave up waiting for a step plan from rank 0")
            time.sleep(delay)
            delay = min(max(2 * delay, 2e-5), self.max_idle_sleep)
        self._count(header)
        tokens = None
        if header[4] > 0:
            tokens = np.empty(int(header[4]), dtype=np.int64)
            self.mpi.Bcast(tokens, root=0)
            self._count(tokens)
        return self.decode(header, tokens)

    def decode(self, h: np.ndarray, tokens: np.ndarray | None) -> StepPlan:
        mb = self.max_batch
        op, n_moves, n_prefill, n_decode, _ = (int(x) for x in h[:_FIXED])
        if op == OP_STOP:
            return StepPlan(stop=True)
        o = _FIXED
        moves = [(int(h[o + i]), int(h[o + mb + i]), int(h[o + 2 * mb + i])) for i in range(n_moves)]
        o += 3 * mb
        slots = h[o: o + n_prefill].tolist()
        lens = h[o + mb: o + mb + n_prefill].tolist()
        flat = tokens.tolist() if tokens is not None else []
        prompts, start = [], 0
        for n in lens:
            prompts.append(flat[start: start + n])
            start += n
        o += 2 * mb
        return StepPlan(moves, slots, prompts, h[o: o + n_decode].tolist(), h[o + mb: o + mb + n_decode].tolist())

    def _count(self, array: np.ndarray) -> None:
        self.comm.calls["other"] += 1
        self.comm.bytes["other"] += array.nbytes
