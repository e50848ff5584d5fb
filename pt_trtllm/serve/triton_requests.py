"""The Triton adapter of request building: the input tensors of one Triton request (see
triton_protocol.py) -> `requests.build_sequences`.

Triton itself rejects missing required inputs, unknown inputs, wrong datatypes and wrong shapes
(its error names the input). What it cannot know about the tensors (shapes of the per-row inputs,
padding lengths, text encoding) is checked here; the rest in requests.py.
"""

from __future__ import annotations

import numpy as np

from .requests import (Limits, RequestError, SequenceSpec, build_sequences, prompt_from_ids, prompt_from_text,
                       row_name)
from .triton_protocol import SAMPLING_INPUTS


def parse_triton_request(inputs: dict, tokenizer, limits: Limits) -> list[SequenceSpec]:
    """One `SequenceSpec` per row of the request's batch."""
    prompts = _prompts(inputs, tokenizer, limits)
    batch = len(prompts)
    max_tokens = _scalars(inputs, "max_tokens", batch, int)
    if max_tokens[0] is None:
        raise RequestError("missing input max_tokens (the number of tokens to generate)")
    casts = {"temperature": float, "top_k": int, "top_p": float, "seed": int}
    columns = {name: _scalars(inputs, name, batch, casts[name]) for name in SAMPLING_INPUTS}
    end_ids = _scalars(inputs, "end_id", batch, int)
    sampling = [{name: columns[name][i] for name in SAMPLING_INPUTS} for i in range(batch)]
    return build_sequences(prompts, max_tokens, sampling, end_ids, limits)


def _scalars(inputs: dict, name: str, batch: int, cast):
    """Per-row values of an optional [batch, 1] input (None where absent)."""
    if name not in inputs:
        return [None] * batch
    a = np.asarray(inputs[name])
    if a.ndim == 0 or a.shape[0] != batch or a.size != batch:
        raise RequestError(f"{name} must have shape [{batch}, 1] (one value per prompt), got {list(a.shape)}")
    return [cast(x) for x in a.reshape(batch)]


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
                raise RequestError(f"{row_name('text_input', i, batch)} is not valid UTF-8") from None
            prompts.append(prompt_from_text(text, tokenizer, limits, row_name("text_input", i, batch)))
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
            raise RequestError(f"{row_name('input_lengths', i, batch)}={n} is outside [1, {width}] "
                               f"(the width of input_ids)")
        prompts.append(prompt_from_ids(ids[i, :n].astype(np.int64).tolist(), limits, row_name("input_ids", i, batch)))
    return prompts
