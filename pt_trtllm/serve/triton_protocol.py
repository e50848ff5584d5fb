"""The Triton models' names and tensors: one table that the server binds (triton_models.py) and the
clients build their requests from (serve_tools/client.py). numpy only, so clients import it
without the server's dependencies.

Every input has the batch dimension first, as Triton's TensorRT-LLM ensemble takes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GENERATE_MODEL = "pt"
"""Request/response: the whole generation of every row of a request in one response."""
STREAM_MODEL = "pt_stream"
"""Decoupled: one response per decode step (gRPC streaming, or HTTP generate_stream)."""
STATS_MODEL = "pt_stats"
"""No inputs; output `stats`: the server's statistics as one JSON document (serve/stats.py)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: type
    """numpy dtype; np.bytes_ is Triton's BYTES (object arrays on the client side)."""
    shape: tuple[int, ...]
    """Without the batch dimension."""
    optional: bool = False


TEXT_INPUT = TensorSpec("text_input", np.bytes_, (1,), optional=True)
"""The prompt as text: only on servers with a tokenizer."""
INPUTS = (
    TEXT_INPUT,
    TensorSpec("input_ids", np.int32, (-1,), optional=True),
    TensorSpec("input_lengths", np.int32, (1,), optional=True),
    TensorSpec("max_tokens", np.int32, (1,)),
    TensorSpec("temperature", np.float32, (1,), optional=True),
    TensorSpec("top_k", np.int32, (1,), optional=True),
    TensorSpec("top_p", np.float32, (1,), optional=True),
    TensorSpec("seed", np.uint64, (1,), optional=True),
    TensorSpec("end_id", np.int32, (1,), optional=True),
)
SAMPLING_INPUTS = ("temperature", "top_k", "top_p", "seed")
"""The optional inputs that make the sampling parameters of a row."""
TEXT_OUTPUT = TensorSpec("text_output", np.bytes_, (-1,))
"""The generated text: only on servers with a tokenizer."""
OUTPUT_IDS = TensorSpec("output_ids", np.int32, (-1,))
SEQUENCE_LENGTH = TensorSpec("sequence_length", np.int32, (1,))
"""Generated tokens of each row (`pt` only: its rows are padded with -1 after it)."""
STATS_OUTPUT = TensorSpec("stats", np.bytes_, (1,))


def input_dtype(name: str) -> type:
    """The numpy dtype of input `name` (KeyError for an unknown one)."""
    return {t.name: t.dtype for t in INPUTS}[name]
