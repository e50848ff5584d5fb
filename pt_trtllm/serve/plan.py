"""The step plan: what every rank runs in one server step, decided by rank 0, and how it travels.

A step is (1) KV-cache slot moves that keep the running sequences in slots 0..n-1, (2) one prefill
of the newly admitted prompts into the slots after them, (3) one decode step of slots 0..n-1. Rank 0
broadcasts the plan before the step: a fixed-size header (one collective, counted as "other",
outside the forward passes), plus the prompt tokens when the step prefills (a second one). The
tokens to decode travel in the header, so followers never need the sampled tokens otherwise.

The header is one record of `header_dtype(max_batch)`, every field int64 (B = max_batch):

| field             | shape | what                                                  |
|-------------------|-------|-------------------------------------------------------|
| op                | 1     | OP_STEP or OP_STOP                                    |
| n_moves           | 1     | slot moves used in the move_* fields                  |
| n_prefills        | 1     | prompts prefilled (prefill_slots, prompt_lens)        |
| n_decodes         | 1     | slots decoded (decode_tokens, decode_positions)       |
| prompt_tokens     | 1     | length of the second broadcast (all prompts, in order) |
| move_src, move_dst, move_len | B each | (src slot, dst slot, cached positions)   |
| prefill_slots, prompt_lens   | B each | slot and length of each prefilled prompt |
| decode_tokens, decode_positions | B each | input token and position of slots 0..n-1 |

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
_COUNTS = ("op", "n_moves", "n_prefills", "n_decodes", "prompt_tokens")
_PER_SLOT = ("move_src", "move_dst", "move_len", "prefill_slots", "prompt_lens", "decode_tokens",
             "decode_positions")


def header_dtype(max_batch: int) -> np.dtype:
    """The header's record type (the table above), all int64, so it travels as an int64 array."""
    return np.dtype([(name, np.int64) for name in _COUNTS] + [(name, np.int64, (max_batch,)) for name in _PER_SLOT])


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
        decode = engine.decode(tokens, positions, schedule, max(plan.decode_positions))
    return prefill, decode


class PlanChannel:
    """Rank 0 sends plans, the other ranks receive them, over a duplicate of the MPI world
    communicator (so plans never mix with the merges). With one rank it does nothing."""

    def __init__(self, comm: Communicator, max_batch: int, max_idle_sleep: float = 1e-3):
        self.comm, self.max_batch, self.max_idle_sleep = comm, max_batch, max_idle_sleep
        self.dtype = header_dtype(max_batch)
        self.size = self.dtype.itemsize // 8
        """int64 words of the header."""
        mpi = getattr(comm, "mpi", None) or comm  # NCCLComm keeps its MPIComm in .mpi
        self.mpi = mpi.comm.Dup() if comm.world_size > 1 else None

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
        """The header as int64 words, and the prompt tokens (None when nothing is prefilled)."""
        if max(len(plan.moves), len(plan.prompts), len(plan.decode_tokens)) > self.max_batch:
            raise ValueError(f"a step plan exceeds the maximum batch size {self.max_batch}")
        record = np.zeros((), dtype=self.dtype)
        lens = [len(p) for p in plan.prompts]
        record["op"] = OP_STOP if plan.stop else OP_STEP
        record["n_moves"], record["n_prefills"], record["n_decodes"] = (len(plan.moves), len(plan.prompts),
                                                                         len(plan.decode_tokens))
        record["prompt_tokens"] = sum(lens)
        for name, column in zip(("move_src", "move_dst", "move_len"), zip(*plan.moves)):
            record[name][: len(column)] = column
        record["prefill_slots"][: len(plan.prefill_slots)] = plan.prefill_slots
        record["prompt_lens"][: len(lens)] = lens
        record["decode_tokens"][: len(plan.decode_tokens)] = plan.decode_tokens
        record["decode_positions"][: len(plan.decode_positions)] = plan.decode_positions
        tokens = np.fromiter((t for p in plan.prompts for t in p), dtype=np.int64, count=sum(lens)) if lens else None
        return record.reshape(1).view(np.int64), tokens

    # ---- followers --------------------------------------------------------------------------------
    def receive(self, should_give_up=lambda: False) -> StepPlan:
        """The next plan from rank 0. While none is pending, sleep between tests of the nonblocking
        broadcast: 20 us at first, doubling up to `max_idle_sleep` (so a busy server pays at most
        tens of microseconds per step and an idle follower wakes ~1000 times a second)."""
        header = np.empty(self.size, dtype=np.int64)
        request = self.mpi.Ibcast(header, root=0)
        delay = 0.0
        while not request.Test():
            if should_give_up():
                raise TimeoutError("gave up waiting for a step plan from rank 0")
            time.sleep(delay)
            delay = min(max(2 * delay, 2e-5), self.max_idle_sleep)
        self._count(header)
        tokens = None
        n_tokens = int(header.view(self.dtype)[0]["prompt_tokens"])
        if n_tokens > 0:
            tokens = np.empty(n_tokens, dtype=np.int64)
            self.mpi.Bcast(tokens, root=0)
            self._count(tokens)
        return self.decode(header, tokens)

    def decode(self, header: np.ndarray, tokens: np.ndarray | None) -> StepPlan:
        """The plan of a header (int64 words) and its prompt tokens."""
        r = header.view(self.dtype)[0]
        if r["op"] == OP_STOP:
            return StepPlan(stop=True)
        n_moves, n_prefills, n_decodes = int(r["n_moves"]), int(r["n_prefills"]), int(r["n_decodes"])
        moves = list(zip(*(r[name][:n_moves].tolist() for name in ("move_src", "move_dst", "move_len"))))
        flat = tokens.tolist() if tokens is not None else []
        prompts, start = [], 0
        for n in r["prompt_lens"][:n_prefills].tolist():
            prompts.append(flat[start: start + n])
            start += n
        return StepPlan(moves, r["prefill_slots"][:n_prefills].tolist(), prompts,
                        r["decode_tokens"][:n_decodes].tolist(), r["decode_positions"][:n_decodes].tolist())

    def _count(self, array: np.ndarray) -> None:
        self.comm.calls["other"] += 1
        self.comm.bytes["other"] += array.nbytes
