"""What a TensorRT-LLM engine of a PT model can express, and what an engine directory records.
Plain Python (no tensorrt_llm): the network definition, scripts/build.py and the runner share it.

Spec features and how the engine handles them:
- `rope_style`: "neox" and "gptj" are TensorRT-LLM's rope_gpt_neox and rope_gptj, exactly
  (formats.POSITION_EMBEDDING_TYPES); RoPE runs inside the GPT attention plugin.
- `track_dispatch_norm`, `track_combine_norm`: plain RmsNorm layers around each track block, exact.
- `qk_norm`: refused. The spec applies it AFTER RoPE, but RoPE runs inside the attention plugin and
  TensorRT-LLM's own qk_layernorm runs before the plugin; the two differ unless each norm weight is
  equal within every rotated pair.
- schedules: "block" and "sublayer" are built into the network; "none" (timing only) is not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import PTConfig
from ..formats import check_rank_config

ENGINE_SCHEDULES = ("block", "sublayer")


def check_supported(cfg: PTConfig, schedule: str) -> None:
    """ValueError naming the feature when an engine of `cfg` under `schedule` cannot be exact."""
    if schedule not in ENGINE_SCHEDULES:
        raise ValueError(f"schedule {schedule!r} cannot be built into an engine; use one of {ENGINE_SCHEDULES}")
    if cfg.qk_norm:
        raise ValueError("qk_norm=True is not supported by the TensorRT-LLM engine: the spec applies QK-norm "
                         "after RoPE, which runs inside TensorRT-LLM's attention plugin")
    if schedule == "sublayer" and (cfg.track_dispatch_norm or cfg.track_combine_norm):
        raise ValueError("the sublayer schedule is undefined for models with track_dispatch_norm or "
                         "track_combine_norm (those norms belong to track blocks)")


@dataclass(frozen=True)
class EngineInfo:
    """What an engine directory's config.json records (read without tensorrt_llm)."""

    cfg: PTConfig
    schedule: str
    """The merge schedule the engine was built with (its pretrained_config.merge_schedule)."""
    dtype: str
    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    gather_context_logits: bool


def read_engine_info(engine_dir: str | Path) -> EngineInfo:
    """ValueError naming the problem for a directory that is not an engine of a PT model."""
    path = Path(engine_dir) / "config.json"
    try:
        data = json.loads(path.read_text())
        pretrained, build = data["pretrained_config"], data["build_config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not a TensorRT-LLM engine config (pretrained_config and build_config)") from None
    if pretrained.get("architecture") != "PTForCausalLM":
        raise ValueError(f"{engine_dir} holds a {pretrained.get('architecture')!r} engine, not PTForCausalLM")
    cfg = check_rank_config(pretrained)
    return EngineInfo(cfg, cfg.merge_schedule, pretrained["dtype"], build["max_batch_size"], build["max_input_len"],
                      build["max_seq_len"], bool(build.get("gather_context_logits")))


def engine_schedule(requested: str | None, info: EngineInfo) -> str:
    """The schedule to report for a run: the engine's; a contradicting request is refused."""
    if requested is not None and requested not in ENGINE_SCHEDULES:
        raise ValueError(f"--schedule {requested} is not built into engines; run it on the per-rank checkpoint "
                         "with the PyTorch runtime")
    if requested is not None and requested != info.schedule:
        raise ValueError(f"--schedule {requested} contradicts the engine, which was built with schedule "
                         f"{info.schedule}; build one with scripts/build.py --schedule {requested}")
    return info.schedule
