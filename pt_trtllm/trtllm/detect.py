"""Tell a TensorRT-LLM engine directory from a per-rank checkpoint without importing tensorrt_llm."""

from pathlib import Path


def is_engine_dir(path) -> bool:
    return any(Path(path).glob("rank*.engine"))
