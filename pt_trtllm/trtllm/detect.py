"""Tell a TensorRT-LLM engine directory from a per-rank checkpoint without importing tensorrt_llm."""

from __future__ import annotations

from pathlib import Path


def is_engine_dir(path: str | Path) -> bool:
    """True for what scripts/build.py (or trtllm-build) writes: config.json and rank{t}.engine files.
    A per-rank checkpoint has config.json and rank{t}.safetensors instead."""
    path = Path(path)
    return (path / "config.json").is_file() and any(path.glob("rank*.engine"))
