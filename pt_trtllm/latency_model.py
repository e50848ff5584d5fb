"""Latency model: a PT (`block`) or TP (`sublayer`) forward on N = T GPUs from one GPU's per-track step times.

Per GPU, `block` and `sublayer` run the same track (TP on the PT weights puts one track's slice of every layer on each
GPU), so the two differ only in the collectives: L/D merges (`block`) vs 2L (`sublayer`), each an all-reduce of
tokens x H x 2 bytes (bf16). So, with every input a measurement or a published figure:

  TPOT(context) = step x (measured GPU's HBM spec / target's)          decode step, scaled by the HBM bandwidth ratio
                  + (context - measured context) x KV bytes per token / target HBM   (first principles: extra KV read)
                  + merges x all_reduce(batch x H x 2 B, N)
  TTFT(S)       = prefill(S) + merges x all_reduce(S x H x 2 B, N)
                  prefill(S): a measured prefill time x the peak-FLOP/s ratio when the input has one at S tokens,
                  else FLOPs(S) / the target's dense bf16 peak (first principles: a lower bound, 100% of peak)
  throughput    = batch / TPOT at that batch

all_reduce(bytes, N) interpolates a published table linearly in bytes; above its largest size it adds
(bytes - largest) x 2(N-1)/N / a published bus bandwidth; below its smallest it takes the smallest size's time.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path

from pt_trtllm.config import PTConfig
from pt_trtllm.schedule import merges_per_forward

STEP_MODES = ("compile_cuda_graph", "cuda_graph", "eager")
DEFAULT_MEASURED_CONTEXT = 64  # scripts/gpu_check.py decodes after 64-token prompts; its JSON does not record it
_TRACK_FIELDS = ("hidden_size", "num_hidden_layers", "head_dim", "heads_per_track", "kv_heads_per_track",
                 "ffn_per_track", "vocab_size")


@dataclass(frozen=True)
class AllReduceTable:
    """Published all-reduce times (us) of one backend at one GPU count, by message size, plus a bus bandwidth."""

    backend: str
    gpus: int
    sizes: tuple[int, ...]
    us: tuple[float, ...]
    busbw_GBps: float | None

    def latency_us(self, nbytes: int) -> float:
        if nbytes <= self.sizes[0]:
            return self.us[0]
        if nbytes > self.sizes[-1]:
            if self.busbw_GBps is None:
                raise ValueError(f"{self.backend} at {self.gpus} GPUs: no published figure at {nbytes} B "
                                 f"(table ends at {self.sizes[-1]} B and no bus bandwidth is cited)")
            extra = (nbytes - self.sizes[-1]) * 2 * (self.gpus - 1) / self.gpus / (self.busbw_GBps * 1e3)
            return self.us[-1] + extra
        i = bisect_left(self.sizes, nbytes)
        if self.sizes[i] == nbytes:
            return self.us[i]
        s0, s1, t0, t1 = self.sizes[i - 1], self.sizes[i], self.us[i - 1], self.us[i]
        return t0 + (t1 - t0) * (nbytes - s0) / (s1 - s0)


def allreduce_table(published: dict, backend: str, gpus: int) -> AllReduceTable:
    rows = sorted((r["bytes"], r["us"]) for r in published["allreduce"]
                  if r["backend"] == backend and r["gpus"] == gpus)
    if not rows:
        raise ValueError(f"no published all-reduce figures for backend {backend!r} at {gpus} GPUs")
    bw = [r["GBps"] for r in published.get("busbw_GBps", []) if r["backend"] == backend and r["gpus"] == gpus]
    return AllReduceTable(backend, gpus, tuple(s for s, _ in rows), tuple(t for _, t in rows), bw[0] if bw else None)


def gpu_spec(published: dict, name: str) -> dict:
    for key, spec in published["gpus"].items():
        if key == name or re.search(rf"\b{re.escape(key)}\b", name):
            return spec
    raise ValueError(f"GPU {name!r} has no cited spec (known: {', '.join(published['gpus'])})")


def track_shape(cfg: PTConfig) -> tuple:
    if cfg.num_experts:
        raise ValueError("MoE presets are not modelled (the routed-expert bytes per step need their own rule)")
    return tuple(getattr(cfg, f) for f in _TRACK_FIELDS)


def measured_preset(entry: dict) -> str:
    """The preset a measured entry ran: its "preset" field, or gpu_check.py's "one track of <preset> ..." label."""
    if "preset" in entry:
        return entry["preset"]
    m = re.match(r"one track of (\S+)", entry.get("model", ""))
    return m.group(1) if m else ""


@dataclass(frozen=True)
class Measured:
    """The per-track measurements that apply to one preset (any measured preset with the same track shape)."""

    gpu: str
    source_preset: str
    decode: dict[int, tuple[float, int]]  # batch -> (step ms, context)
    prefill: dict[int, float]  # tokens -> ms


def measured_for(steps: dict, cfg: PTConfig, mode: str) -> Measured:
    shape = track_shape(cfg)
    decode, prefill, source = {}, {}, None
    for kind in ("decode", "prefill"):
        for e in steps.get(kind, []):
            name = measured_preset(e)
            try:
                same = track_shape(PTConfig.from_preset(name)) == shape
            except ValueError:
                continue
            key = f"{mode}_step_ms" if kind == "decode" else "eager_ms"  # prefill is never captured or compiled
            if not same or key not in e:
                continue
            source = source or name
            if kind == "decode":
                decode[e["batch"]] = (e[key], e.get("context", DEFAULT_MEASURED_CONTEXT))
            else:
                prefill[e["tokens"]] = e[key]
    if 1 not in decode:
        raise ValueError(f"no batch-1 decode step ({mode}) measured for a track of this shape in the input")
    return Measured(steps["gpu"], source, decode, prefill)


def kv_bytes_per_token(cfg: PTConfig) -> int:
    """K and V of one track's KV heads in every layer, bf16."""
    return 2 * cfg.kv_heads_per_track * cfg.head_dim * cfg.num_hidden_layers * 2


def prefill_flops(cfg: PTConfig, tokens: int) -> float:
    """One track's prefill FLOPs: 2 x params per token in its layers, causal attention, the LM head on the last token."""
    h, d = cfg.hidden_size, cfg.head_dim
    attn_params = h * d * (2 * cfg.heads_per_track + 2 * cfg.kv_heads_per_track)
    layer_params = attn_params + 3 * h * cfg.ffn_per_track
    causal_attention = 2 * tokens * tokens * cfg.heads_per_track * d  # QK^T and PV, 2 FLOPs each, half the square
    return cfg.num_hidden_layers * (2 * tokens * layer_params + causal_attention) + 2 * cfg.vocab_size * h


class LatencyModel:
    """TTFT, TPOT and throughput of one preset on N = T GPUs of `target`, from `steps` measured on another GPU."""

    def __init__(self, preset: str, gpus: int, steps: dict, published: dict, target: str = "H100",
                 mode: str = "compile_cuda_graph", allreduce: str = "nccl", prefill_allreduce: str = "nccl"):
        self.cfg = PTConfig.from_preset(preset)
        if gpus != self.cfg.num_tracks:
            raise ValueError(f"N={gpus} GPUs but preset {preset} has T={self.cfg.num_tracks} tracks "
                             "(the model is one track per GPU: N must equal T)")
        if mode not in STEP_MODES:
            raise ValueError(f"unknown step mode {mode!r} (known: {', '.join(STEP_MODES)})")
        self.measured = measured_for(steps, self.cfg, mode)
        self.src, self.dst = gpu_spec(published, self.measured.gpu), gpu_spec(published, target)
        self.decode_ar = allreduce_table(published, allreduce, gpus)
        self.prefill_ar = allreduce_table(published, prefill_allreduce, gpus)

    def merges(self, schedule: str) -> int:
        return merges_per_forward(schedule, self.cfg.num_hidden_layers, self.cfg.block_depth)

    def message_bytes(self, tokens: int) -> int:
        return tokens * self.cfg.hidden_size * 2

    def step_ms(self, batch: int, context: int) -> float:
        if batch not in self.measured.decode:
            raise ValueError(f"no decode step measured at batch {batch} (measured: {sorted(self.measured.decode)})")
        step, measured_context = self.measured.decode[batch]
        hbm = self.dst["hbm_TBps"] * 1e9  # bytes per ms
        kv = (context - measured_context) * batch * kv_bytes_per_token(self.cfg) / hbm
        return step * self.src["hbm_TBps"] / self.dst["hbm_TBps"] + kv

    def tpot_ms(self, schedule: str, context: int, batch: int = 1) -> float:
        comm = self.merges(schedule) * self.decode_ar.latency_us(self.message_bytes(batch)) / 1e3
        return self.step_ms(batch, context) + comm

    def prefill_ms(self, tokens: int) -> tuple[float, str]:
        if tokens in self.measured.prefill:
            ratio = self.src["bf16_dense_TFLOPs"] / self.dst["bf16_dense_TFLOPs"]
            return self.measured.prefill[tokens] * ratio, "measured"
        return prefill_flops(self.cfg, tokens) / (self.dst["bf16_dense_TFLOPs"] * 1e9), "FLOPs/peak"

    def ttft_ms(self, schedule: str, tokens: int) -> float:
        comm = self.merges(schedule) * self.prefill_ar.latency_us(self.message_bytes(tokens)) / 1e3
        return self.prefill_ms(tokens)[0] + comm

    def throughput(self, schedule: str, context: int, batch: int) -> float:
        """Output tokens/s at a fixed batch (every sequence decoding)."""
        return batch * 1e3 / self.tpot_ms(schedule, context, batch)


def load_json(path: str | Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {path}: cannot read it ({type(e).__name__})") from None
