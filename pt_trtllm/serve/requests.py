"""Turn the inputs of one Triton request into validated sequences.

Triton itself rejects missing required inputs, unknown inputs, wrong datatypes and wrong shapes
(its error names the input). What it cannot know is checked here, and every problem raises
`RequestError` with one line that names the input and the value.

Inputs (every one with the batch dimension first, as Triton's TensorRT-LLM ensemble takes them):
`text_input` BYTES [1] (servers with a tokenizer) or `input_ids` INT32 [-1] (+ optional
`input_lengths` INT32 [1] for right-padded rows), `max_tokens` INT32 [1], and optional
`temperature` FP32, `top_k` INT32, `top_p` FP32, `seed` UINT64, `end_id` INT32 (-1: no end id).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..runtime.sampling import SamplingParams


class RequestError(Exception):
    """A request this server cannot run; the message is what the client sees.

    Triton's Python proxy formats errors with their traceback; this one has none to show."""

    @property
    def __traceback__(self):  # noqa: D105 - hide the frames from traceback.format_exception
        return None

    @__traceback__.setter
    def __traceback__(self, value):
        pass


@dataclass(frozen=True)
class Limits:
    vocab_size: int
    max_seq_len: int
    """Positions of the KV cache: prompt + generated tokens."""
    max_output_len: int
    """The largest max_tokens this server accepts."""
    eos_ids: frozenset[int]
    """End ids used when a request gives no end_id."""


@dataclass
class SequenceSpec:
    prompt: list[int]
    max_tokens: int
    params: SamplingParams
    eos_ids: frozenset[int]


def _name(name: str, i: int, batch: int) -> str:
    return f"{name}[{i}]" if batch > 1 else name


def _scalars(inputs: dict, name: str, batch: int, cast):
    """Per-row values of an optional [batch, 1] input (None where absent)."""
    if name not in inputs:
        return [None] * batch
    a = np.asarray(inputs[name])
    if a.ndim == 0 or a.shape[0] != batch or a.size != batch:
        raise RequestError(f"{name} must have shape [{batch}, 1] (one value per prompt), got {list(a.shape)}")
    return [cast(x) for x in a.reshape(batch)]


def parse_request(inputs: dict, tokenizer, limits: Limits) -> list[SequenceSpec]:
    """One `SequenceSpec` per row of the request's batch."""
    prompts = _prompts(inputs, tokenizer, limits)
    batch = len(prompts)
    max_tokens = _scalars(inputs, "max_tokens", batch, int)
    if max_tokens[0] is None:
        raise RequestError("missing input max_tokens (the number of tokens to generate)")
    temperature = _scalars(inputs, "temperature", batch, float)
    top_k = _scalars(inputs, "top_k", batch, int)
    top_p = _scalars(inputs, "top_p", batch, float)
    seed = _scalars(inputs, "seed", batch, int)
    end_id = _scalars(inputs, "end_id", batch, int)
    specs = []
    for i, prompt in enumerate(prompts):
        n = max_tokens[i]
        if n < 1:
            raise RequestError(f"{_name('max_tokens', i, batch)} must be >= 1, got {n}")
        if n > limits.max_output_len:
            raise RequestError(f"{_name('max_tokens', i, batch)}={n} exceeds this server's limit of "
                               f"{limits.max_output_len} (serve.py --max_output_len)")
        room = limits.max_seq_len - n
        if len(prompt) > room:
            raise RequestError(f"{_name('the prompt', i, batch)} has {len(prompt)} tokens; with max_tokens={n} "
                               f"it may have at most {room} (this server's max_seq_len is {limits.max_seq_len})")
        t = 0.0 if temperature[i] is None else temperature[i]
        if math.isnan(t):
            raise RequestError(f"{_name('temperature', i, batch)} must be >= 0, got nan")
        try:
            params = SamplingParams(t, 0 if top_k[i] is None else top_k[i], 1.0 if top_p[i] is None else top_p[i],
                                    seed[i])
        except ValueError as e:
            raise RequestError(str(e) if batch == 1 else f"row {i}: {e}") from None
        if end_id[i] is None:
            eos = limits.eos_ids
        elif end_id[i] == -1:
            eos = frozenset()
        elif 0 <= end_id[i] < limits.vocab_size:
            eos = frozenset({end_id[i]})
        else:
            raise RequestError(f"{_name('end_id', i, batch)}={end_id[i]} is outside [0, {limits.vocab_size}) "
                               f"(-1: no end id)")
        specs.append(SequenceSpec(prompt, n, params, eos))
    return specs


def _prompts(inputs: dict, tokenizer, limits: Limits) -> list[list[int]]:
    has_text, has_ids = "text_input" in inputs, "input_ids" in inputs
    if has_text and has_ids:
        raise RequestError("send either text_input or input_ids, not both")
    if not has_text and not has_ids:
        what = "text_input or input_ids" if tokenizer is not None else "input_ids"
        raise RequestError(f"the request has no prompt: send {what}")
    if has_text:
        if tokenizer is None:
            raise RequestError("this server has no tokenizer (serve.py --tokenizer_dir): send input_ids")
        texts = np.asarray(inputs["text_input"], dtype=object)
        if texts.ndim == 0 or texts.size != texts.shape[0]:
            raise RequestError(f"text_input must have shape [batch, 1], got {list(texts.shape)}")
        batch = texts.shape[0]
        prompts = []
        for i, raw in enumerate(texts.reshape(batch)):
            try:
                text = raw.decode("utf-8") if isinstance(raw, (bytes, np.bytes_)) else str(raw)
            except UnicodeDecodeError:
                raise RequestError(f"{_name('text_input', i, batch)} is not valid UTF-8") from None
            if not text:
                raise RequestError(f"{_name('text_input', i, batch)} is empty")
            ids = tokenizer.encode(text)
            if not ids:
                raise RequestError(f"{_name('text_input', i, batch)} encodes to no tokens")
            bad = [t for t in ids if not 0 <= t < limits.vocab_size]
            if bad:  # a tokenizer that does not belong to the model
                raise RequestError(f"the server's tokenizer gave ids outside the model's vocabulary [0, "
                                   f"{limits.vocab_size}): {bad[:5]}")
            prompts.append(ids)
        return prompts
    ids = np.asarray(inputs["input_ids"])
    if ids.ndim != 2:
        raise RequestError(f"input_ids must have shape [batch, tokens], got {list(ids.shape)}")
    batch, width = ids.shape
    if width == 0:
        raise RequestError("input_ids is empty")
    lengths = _scalars(inputs, "input_lengths", batch, int)
    prompts = []
    for i in range(batch):
        n = width if lengths[i] is None else lengths[i]
        if not 1 <= n <= width:
            raise RequestError(f"{_name('input_lengths', i, batch)}={n} is outside [1, {width}] "
                               f"(the width of input_ids)")
        row = ids[i, :n].astype(np.int64)
        bad = row[(row < 0) | (row >= limits.vocab_size)]
        if bad.size:
            raise RequestError(f"{_name('input_ids', i, batch)} has token ids outside [0, {limits.vocab_size}): "
                               f"{bad[:5].tolist()}")
        prompts.append(row.tolist())
    return prompts


def make_generator(params: SamplingParams) -> torch.Generator | None:
    """The sampler's generator of one sequence (seeded ones reproduce run.py's tokens)."""
    if params.temperature == 0 or params.seed is None:
        return None
    return torch.Generator().manual_seed(params.seed % 2**64)
