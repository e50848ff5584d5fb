"""A random PT model of a named preset, written as a checkpoint: what the benchmarks, the serving
benchmark and the tests run when no trained weights are needed (pt-spec sections 4 and 5)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import torch


def random_model(preset: str = "tiny", seed: int = 0, randomize: Callable | None = None, **overrides):
    """A `PTForCausalLM` of `preset` with `overrides`, initialized from `seed` (std ~ 1/sqrt(fan_in);
    `randomize(model)` may refill it), tied weights tied, in eval mode."""
    from .. import PTConfig, PTForCausalLM

    torch.manual_seed(seed)
    model = PTForCausalLM(PTConfig.from_preset(preset, **overrides))
    if randomize is not None:
        randomize(model)
    model.tie_weights()
    return model.eval()


def write_random_checkpoint(out_dir: str | Path, preset: str = "tiny", seed: int = 0, output_format: str = "trtllm",
                            randomize: Callable | None = None, **overrides) -> Path:
    """`random_model(...)` saved into `out_dir`: the HF PT format (`output_format="hf"`) or a
    per-rank checkpoint ("trtllm", through the converter). Returns `out_dir`."""
    from .writer import convert

    out_dir = Path(out_dir)
    model = random_model(preset, seed, randomize, **overrides)
    if output_format == "hf":
        model.save_pretrained(out_dir, safe_serialization=True)
        return out_dir
    with tempfile.TemporaryDirectory(prefix="pt-random-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        convert(tmp, out_dir, output_format=output_format, progress=False)
    return out_dir
