"""`TrackEngine`: what one rank runs. It holds its track of a per-rank checkpoint, a preallocated
KV cache, and the communicator; it runs prefill and decode forward passes (merges are the only
collectives inside them) and batched generation in which rank 0 samples and broadcasts each token
(one "other" collective per step), so every rank agrees on every token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..formats import CheckpointError, merge_impl_of, read_rank_config
from ..merge import make_merge
from ..cli import check_prompts
from ..schedule import merges_per_forward
from .cache import SlotKVCache
from .comm import Communicator
from .loader import load_rank
from .sampling import SamplingParams, sample


@dataclass
class Generation:
    output_ids: list[list[int]]
    """Generated tokens of each prompt, ending at and including EOS if it was generated."""
    schedule: str
    merges_per_forward: int
    """Hidden-state collectives counted in each forward pass (prefill and every decode step)."""
    other_collectives_per_step: int
    """Collectives outside the forward pass per generated token (the token broadcast)."""
    other_collectives_per_forward: int
    """Collectives other than merges inside the forward passes (0 by design)."""
    timings: dict = field(default_factory=dict)
    prefill_logits: torch.Tensor | None = None
    """[batch, prompt_len, vocab] float32, when asked for."""


KV_BUCKET = 256
"""Cache positions per KV-length bucket of the bucketed decode graphs (TrackEngine kv_buckets)."""


class TrackEngine:
    """One rank of a PT model served on `comm.world_size` ranks (one track each)."""

    def __init__(self, engine_dir: str | Path, comm: Communicator, device: torch.device, max_batch: int = 8,
                 max_len: int | None = None, dtype: torch.dtype | None = None, cuda_graphs: bool = True,
                 compile: bool = False, kv_buckets: bool = False):
        cfg, raw = read_rank_config(engine_dir)
        if comm.world_size != cfg.num_tracks:
            raise CheckpointError(f"{engine_dir} has {cfg.num_tracks} tracks and needs exactly {cfg.num_tracks} "
                                  f"ranks (mpirun -n {cfg.num_tracks}); this run has {comm.world_size}")
        merge = make_merge(merge_impl_of(raw), cfg.combine_op, cfg.num_tracks, comm)
        model, lm_head, cfg = load_rank(engine_dir, comm.rank, merge, device, dtype)
        self._setup(model, lm_head, comm, device, max_batch, max_len, cuda_graphs, compile, kv_buckets)

    @classmethod
    def from_model(cls, model: torch.nn.Module, lm_head: torch.Tensor, comm: Communicator, device: torch.device,
                   max_batch: int = 8, max_len: int | None = None, cuda_graphs: bool = True,
                   compile: bool = False, kv_buckets: bool = False) -> "TrackEngine":
        """An engine around a one-track `PTModel` built in memory (e.g. random weights on a GPU)."""
        engine = cls.__new__(cls)
        engine._setup(model, lm_head, comm, device, max_batch, max_len, cuda_graphs, compile, kv_buckets)
        return engine

    def _setup(self, model, lm_head, comm, device, max_batch, max_len, cuda_graphs, compile, kv_buckets) -> None:
        self.model, self.lm_head, self.cfg = model, lm_head, model.config
        self.comm, self.device, self.dtype = comm, device, lm_head.dtype
        cfg = self.cfg
        self.max_len = min(max_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
        self.max_batch = max_batch
        self.cache = SlotKVCache(cfg.num_hidden_layers, max_batch, cfg.kv_heads_per_track, self.max_len,
                                 cfg.head_dim, self.dtype, device, [cfg.window(i) for i in range(cfg.num_hidden_layers)])
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        # kv_buckets: one decode graph per batch size AND cache length bucket (KV_BUCKET positions),
        # so a step reads the cache up to the batch's longest sequence, rounded up, instead of all
        # max_len positions; the graphs share one memory pool (they never run at once)
        self.kv_buckets = kv_buckets and self.cuda_graphs
        self._graph_pool = torch.cuda.graph_pool_handle() if self.kv_buckets else None
        self._graphs: dict[tuple[int, str, int], _DecodeGraph] = {}
        # torch.compile fuses each decode step's small ops (merges stay eager: graph breaks); it
        # specializes on shapes, so compiled steps attend to the whole cache length, masked
        self.compiled = compile
        self._decode_fn = self._decode
        if compile:
            from torch import _dynamo

            # every merge is a graph break, and dynamo compiles each resume point: up to 2L of them
            _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit,
                                                  4 * cfg.num_hidden_layers + 8)
            self._decode_fn = torch.compile(self._decode, dynamic=False)

    # ---- forward passes --------------------------------------------------------------------------
    def expected_merges(self, schedule: str) -> int:
        return merges_per_forward(schedule, self.cfg.num_hidden_layers, self.cfg.block_depth)

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], slots: list[int], schedule: str,
                all_logits: bool = False) -> torch.Tensor:
        """Run prompts (right-padded into one batch) into cache `slots`; logits of each prompt's
        last token [b, V] (float32), or of every position [b, S, V] with `all_logits`."""
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        S = int(lens.max())
        ids = torch.zeros(len(prompts), S, dtype=torch.long, device=self.device)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(p, device=self.device)
        positions = torch.arange(S, device=self.device).expand(len(prompts), S)
        self.cache.prefill(torch.tensor(slots, device=self.device), lens)
        hidden = self.model(ids, positions, None, self.cache, schedule)  # [b, S, H]
        if all_logits:
            return F.linear(hidden, self.lm_head).float()
        last = hidden[torch.arange(len(prompts), device=self.device), lens - 1]  # [b, H]
        return F.linear(last, self.lm_head).float()

    def kv_bucket(self, needed: int) -> int:
        """The cache length a bucketed decode graph attends to for `needed` positions: the next
        multiple of KV_BUCKET, at most max_len."""
        return min(self.max_len, -(-needed // KV_BUCKET) * KV_BUCKET)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, schedule: str,
               max_position: int | None = None) -> torch.Tensor:
        """One token for each of slots 0..n-1 (tokens, positions: [n]) -> logits [n, V] (float32).
        `max_position` = max(positions), when the caller knows it (saves a device sync)."""
        if self.cuda_graphs:
            kv_len = self.max_len
            if self.kv_buckets:
                kv_len = self.kv_bucket(1 + (int(positions.max()) if max_position is None else max_position))
            key = (tokens.shape[0], schedule, kv_len)
            if key not in self._graphs:
                self._graphs[key] = _DecodeGraph(self, tokens.shape[0], schedule, kv_len)
            return self._graphs[key].replay(tokens, positions)
        kv_len = self.max_len if self.compiled else int(positions.max()) + 1
        return self._decode_fn(tokens, positions, schedule, kv_len)

    def _decode(self, tokens: torch.Tensor, positions: torch.Tensor, schedule: str, kv_len: int) -> torch.Tensor:
        self.cache.decode(positions, kv_len)
        mask = (torch.arange(kv_len, device=self.device) <= positions[:, None])[:, None, None, :]  # [n, 1, 1, kv]
        hidden = self.model(tokens[:, None], positions[:, None], mask, self.cache, schedule)  # [n, 1, H]
        return F.linear(hidden[:, 0], self.lm_head).float()

    # ---- generation ------------------------------------------------------------------------------
    def check_request(self, prompts: list[list[int]], max_output_len: int) -> None:
        """ValueError naming the problem for a batch this engine cannot run."""
        check_prompts(prompts, max_output_len, self.max_batch, self.max_len - max_output_len, self.cfg.vocab_size,
                      f"max_position_embeddings={self.max_len}")

    def sample_and_broadcast(self, logits: torch.Tensor, params: SamplingParams, generator) -> torch.Tensor:
        """Rank 0 samples, every rank receives its tokens [n] (one counted "other" collective)."""
        tokens = sample(logits, params, generator) if self.comm.rank == 0 else \
            torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
        return self.comm.broadcast(tokens, root=0, kind="other")

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], max_output_len: int, params: SamplingParams = SamplingParams(),
                 schedule: str | None = None, eos_ids: set[int] | None = None,
                 prefill_logits: bool = False) -> Generation:
        schedule = schedule or self.cfg.merge_schedule
        self.check_request(prompts, max_output_len)
        if prefill_logits and len({len(p) for p in prompts}) != 1:
            raise ValueError("prefill logits need prompts of equal length")
        eos = set(eos_ids or ())
        generator = params.generator(self.device) if self.comm.rank == 0 else None
        n = len(prompts)
        self.comm.reset_counts()
        self._sync()
        start = time.perf_counter()
        logits = self.prefill(prompts, list(range(n)), schedule, all_logits=prefill_logits)
        merges, before = self.comm.calls["merge"], self.comm.calls["other"]
        full = logits if prefill_logits else None
        tokens = self.sample_and_broadcast(logits[:, -1] if prefill_logits else logits, params, generator)
        others = self.comm.calls["other"] - before  # per sampled token
        out = [[t] for t in tokens.tolist()]
        done = [t in eos for t in tokens.tolist()]
        self._sync()
        ttft = time.perf_counter() - start
        positions = torch.tensor([len(p) for p in prompts], device=self.device)
        last = max(len(p) for p in prompts)  # max(positions), kept on the host
        steps = []
        for _ in range(max_output_len - 1):
            if all(done):
                break
            t0 = time.perf_counter()
            tokens = self.sample_and_broadcast(self.decode(tokens, positions, schedule, last), params, generator)
            positions += 1
            last += 1
            for i, t in enumerate(tokens.tolist()):
                if not done[i]:
                    out[i].append(t)
                    done[i] = t in eos
            steps.append(time.perf_counter() - t0)
        total = time.perf_counter() - start
        others_in_forward = self.comm.calls["other"] - others * (1 + len(steps))
        decode_merges = (self.comm.calls["merge"] - merges) / max(1, len(steps))
        if steps and decode_merges != merges:
            raise RuntimeError(f"decode steps ran {decode_merges} merges per forward, prefill ran {merges}")
        generated = sum(len(o) for o in out)
        timings = {"ttft_ms": ttft * 1e3, "tpot_ms": 1e3 * sum(steps) / len(steps) if steps else None,
                   "total_ms": total * 1e3, "decode_steps": len(steps), "generated_tokens": generated,
                   "output_tokens_per_s": generated / total}
        return Generation(out, schedule, merges, others, others_in_forward, timings, full)


class _DecodeGraph:
    """A CUDA graph of one decode step for n slots attending to the first kv_len cache positions
    (masked per slot: the whole cache, or a KV-length bucket), so decode steps are not bound by
    Python launch overhead. Collectives recorded at capture are replayed by the graph and counted
    on each replay."""

    def __init__(self, engine: TrackEngine, n: int, schedule: str, kv_len: int):
        self.engine = engine
        comm, device = engine.comm, engine.device
        self.tokens = torch.zeros(n, dtype=torch.long, device=device)
        # warm-up and capture write (garbage) at position kv_len - 1 of slots 0..n-1, which holds no
        # live entry (the batch's sequences are all before it: kv_len > max(positions)) and which
        # every sequence overwrites itself before it attends to it; rings are restored
        self.positions = torch.full((n,), kv_len - 1, dtype=torch.long, device=device)
        rings = [(t, t.clone()) for t in engine.cache.rings()]
        calls, sizes = comm.calls.copy(), comm.bytes.copy()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):  # warm up outside the graph (initializes NCCL, compiles)
            for _ in range(2):
                engine._decode_fn(self.tokens, self.positions, schedule, kv_len)
        torch.cuda.current_stream(device).wait_stream(stream)
        warm_calls, warm_bytes = comm.calls.copy(), comm.bytes.copy()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=engine._graph_pool):
            self.logits = engine._decode_fn(self.tokens, self.positions, schedule, kv_len)
        self.calls, self.bytes = comm.calls - warm_calls, comm.bytes - warm_bytes  # what one replay runs
        comm.calls, comm.bytes = calls, sizes  # count the steps that are served, not the warm-up
        for ring, saved in rings:
            ring.copy_(saved)

    def replay(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.positions.copy_(positions)
        self.graph.replay()
        self.engine.comm.calls.update(self.calls)
        self.engine.comm.bytes.update(self.bytes)
        return self.logits.clone()
