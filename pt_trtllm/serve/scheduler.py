"""Rank 0's scheduler: in-flight batching over the engine's KV-cache slots.

Sequences arrive from the fronts' threads (`submit`); the scheduler runs on rank 0's main thread. Each
step it (1) admits waiting sequences into free slots, first come first served, up to
`max_prefill_tokens` prompt tokens per step, (2) broadcasts the step plan, (3) prefills the admitted
prompts and samples their first token, (4) runs one decode step of the sequences already running and
samples their next token, and (5) retires finished sequences, moving the last running sequences
into their slots so that the running ones always occupy slots 0..n-1 (what `TrackEngine.decode`
runs). A request arriving while others generate joins at the next step boundary. What it does is
counted in `stats` (stats.py).

Cancellation: a front whose client went away (or whose stop string matched) calls `cancel(seqs)`
from its thread. The scheduler drops those sequences at the next step boundary, before it plans
the step, freeing their slots as (5) does: a sequence runs at most the one decode step that was in
progress when it was cancelled (`cancel_lag_steps` in the statistics counts it).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..runtime.sampling import sample
from .plan import PlanChannel, StepPlan, run_plan
from .requests import SequenceSpec
from .stats import ServerStats


class Sink(Protocol):
    """Where a sequence's tokens go. Called on the scheduler's thread."""

    def tokens(self, ids: list[int]) -> None: ...

    def finish(self, reason: str, error: str | None = None) -> None: ...


@dataclass(eq=False)
class Sequence:
    """A `SequenceSpec` being generated: where its tokens go, and the scheduler's state of it."""
    spec: SequenceSpec
    sink: Sink
    generator: torch.Generator | None = None
    """The sampler's generator, made at admission: `spec.params.generator(engine.device)`, on the
    logits' device, seeded with the request's seed as given (None without a seed)."""
    slot: int = -1
    pos: int = 0
    """Positions in the KV cache (the prompt, then one per decode step)."""
    generated: list[int] = field(default_factory=list)
    cancelled: str | None = None
    """Why a front cancelled it ("client gone" or "stop string"); set from the front's thread."""
    cancelled_after: int = 0
    """The scheduler's completed steps when it was cancelled."""


class Scheduler:
    def __init__(self, engine, channel: PlanChannel, schedule: str, max_prefill_tokens: int = 4096,
                 idle_check=None, idle_wait: float = 0.05):
        self.engine, self.channel, self.schedule = engine, channel, schedule
        self.max_batch = engine.max_batch
        self.max_prefill_tokens = max_prefill_tokens
        self.idle_check = idle_check or (lambda: True)
        """Called while idle; returning False stops the scheduler (e.g. the Triton server died)."""
        self.idle_wait = idle_wait
        self._inbox: queue.SimpleQueue[list[Sequence]] = queue.SimpleQueue()
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []  # running[i].slot == i
        self._moves: list[tuple[int, int, int]] = []
        self._stop = threading.Event()
        self._drain_deadline: float | None = None
        self.step_started: float | None = None
        """perf_counter() when the current step began (None between steps): the watchdog reads it."""
        self.steps_done = 0
        """Completed steps (what `cancel` records)."""
        self.stats = ServerStats(engine, schedule)

    # ---- called from any thread ---------------------------------------------------------------------
    def submit(self, sequences: list[Sequence]) -> None:
        if self._stop.is_set():
            for s in sequences:
                s.sink.finish("error", "the server is shutting down")
            return
        self._inbox.put(sequences)

    def cancel(self, sequences: list[Sequence], why: str = "client gone") -> None:
        """Stop generating `sequences` at the next step boundary (their sinks get "cancelled"); a
        sequence already finished is left alone. `why`: "client gone" (counted as `cancelled`) or
        "stop string" (counted as `stop_strings`)."""
        for s in sequences:
            if s.cancelled is None:
                s.cancelled_after = self.steps_done
                s.cancelled = why
        self._inbox.put([])  # wake an idle loop

    def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop admitting; finish running sequences for up to `drain_timeout` s, then fail them."""
        if not self._stop.is_set():
            self._drain_deadline = time.monotonic() + drain_timeout
            self._stop.set()
            self._inbox.put([])  # wake the loop

    # ---- rank 0's main thread -------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until `stop()` (and the drain) or until `idle_check()` fails; the caller then sends
        the followers the stop plan."""
        while True:
            self._collect(block=not self.running and not self.waiting)
            self.drop_cancelled()
            if self._stop.is_set():
                for s in self.waiting:
                    self._fail(s, "the server is shutting down")
                self.waiting.clear()
                if self.running and time.monotonic() > self._drain_deadline:
                    for s in self.running:
                        self._fail(s, "the server shut down before this request finished")
                    self.running.clear()
                if not self.running:
                    self._count_active()
                    return
            if not self.running and not self.waiting:
                if not self.idle_check():
                    self.stop(0.0)
                continue
            self.step()

    def _collect(self, block: bool) -> None:
        try:
            batch = self._inbox.get(timeout=self.idle_wait) if block else self._inbox.get_nowait()
            while True:
                self.waiting.extend(batch)
                self.stats.add(sequences=len(batch))
                batch = self._inbox.get_nowait()
        except queue.Empty:
            pass
        self._count_active()

    def drop_cancelled(self) -> None:
        """Finish the cancelled sequences (waiting or running) and free their slots."""
        gone = [s for s in self.waiting if s.cancelled]
        running = [s for s in self.running if s.cancelled]
        if not gone and not running:
            return
        self.waiting = [s for s in self.waiting if not s.cancelled]
        for s in gone + running:
            self.stats.add(**{"cancelled" if s.cancelled == "client gone" else "stop_strings": 1})
            s.sink.finish("cancelled")
        if running:
            self.stats.raise_to(cancel_lag_steps=max(self.steps_done - s.cancelled_after for s in running))
            self._release(running)
        self._count_active()

    def _count_active(self) -> None:
        self.stats.set(running=len(self.running), active_sequences=len(self.running) + len(self.waiting))

    def _admit(self) -> list[Sequence]:
        admitted, tokens = [], 0
        while self.waiting and len(self.running) + len(admitted) < self.max_batch:
            n = len(self.waiting[0].spec.prompt)
            if admitted and tokens + n > self.max_prefill_tokens:
                break
            seq = self.waiting.pop(0)
            seq.slot = len(self.running) + len(admitted)
            seq.generator = seq.spec.params.generator(self.engine.device)
            admitted.append(seq)
            tokens += n
        return admitted

    def step(self) -> None:
        admitted = self._admit()
        decoding = list(self.running)
        plan = StepPlan(self._moves, [s.slot for s in admitted], [s.spec.prompt for s in admitted],
                        [s.generated[-1] for s in decoding], [s.pos for s in decoding])
        self._moves = []
        self.step_started = time.perf_counter()
        self.channel.send(plan)
        for src, dst, length in plan.moves:
            self.engine.cache.move(src, dst, length)
        plan.moves = []
        forward, forwards = 0.0, 0
        if admitted:  # prefill first, and deliver first tokens before the decode step
            prefill_plan = StepPlan(prefill_slots=plan.prefill_slots, prompts=plan.prompts)
            t0 = time.perf_counter()
            logits, _ = run_plan(self.engine, prefill_plan, self.schedule)
            forward += time.perf_counter() - t0
            forwards += 1
            for s in admitted:
                s.pos = len(s.spec.prompt)
            self.running.extend(admitted)
            self._advance(admitted, logits)
        if decoding:
            t0 = time.perf_counter()
            _, logits = run_plan(self.engine, StepPlan(decode_tokens=plan.decode_tokens,
                                                       decode_positions=plan.decode_positions), self.schedule)
            forward += time.perf_counter() - t0
            forwards += 1
            for s in decoding:
                s.pos += 1
            self._advance(decoding, logits)
        self.stats.raise_to(max_running=len(self.running))
        self._retire()
        self.steps_done += 1
        self._count_active()
        self.stats.add(steps=1, prefill_steps=int(bool(admitted)), prefilled_tokens=sum(map(len, plan.prompts)),
                       decoded_tokens=len(decoding), forward_passes=forwards, forward_s=forward,
                       step_s=time.perf_counter() - self.step_started)
        self.step_started = None

    def _advance(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """Sample one token for each of `seqs` (rows of `logits`) and deliver it."""
        tokens = self._sample(seqs, logits)
        for s, t in zip(seqs, tokens):
            s.generated.append(t)
            s.sink.tokens([t])

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
        greedy = [i for i, s in enumerate(seqs) if s.spec.params.temperature == 0]
        out = [0] * len(seqs)
        if len(greedy) == len(seqs):
            return logits.argmax(dim=-1).tolist()
        if greedy:
            for i, t in zip(greedy, logits[greedy].argmax(dim=-1).tolist()):
                out[i] = t
        for i, s in enumerate(seqs):
            if s.spec.params.temperature != 0:
                out[i] = int(sample(logits[i: i + 1], s.spec.params, s.generator)[0])
        return out

    def _retire(self) -> None:
        """Finish sequences that hit EOS or max_tokens; keep the rest in slots 0..n-1."""
        done = [s for s in self.running
                if s.generated[-1] in s.spec.eos_ids or len(s.generated) >= s.spec.max_tokens]
        if not done:
            return
        for s in done:
            s.sink.finish("stop" if s.generated[-1] in s.spec.eos_ids else "length")
        self._release(done)

    def _release(self, done: list[Sequence]) -> None:
        """Free the slots of `done` (running sequences): the last running sequences move into them."""
        keep = [s for s in self.running if s not in done]
        holes = sorted(s.slot for s in done if s.slot < len(keep))
        movers = [s for s in keep if s.slot >= len(keep)]  # as many as holes; disjoint slots
        for hole, s in zip(holes, movers):
            self._moves.append((s.slot, hole, s.pos))
            s.slot = hole
        self.running = sorted(keep, key=lambda s: s.slot)

    def _fail(self, s: Sequence, error: str) -> None:
        self.stats.add(failed=1)
        s.sink.finish("error", error)
