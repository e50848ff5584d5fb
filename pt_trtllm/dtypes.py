"""The dtypes a checkpoint may hold, by the names config.json, the command lines and safetensors use."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""config.json / --dtype name -> torch dtype."""

SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
"""safetensors header code -> name."""


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16" (KeyError for a dtype outside DTYPES)."""
    return {v: k for k, v in DTYPES.items()}[dtype]
