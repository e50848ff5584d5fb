"""Building validated sequences from what a request asks for, whatever protocol it came in: the
prompts (token ids, or text with the server's tokenizer), max_tokens, the sampling parameters and
the end id of each row. Every problem raises `RequestError` with one line that names the value
(fronts pass the names their protocol uses, e.g. `input_ids[1]`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..runtime.sampling import SamplingParams


class RequestError(Exception):
    """A request this server cannot run; the message is what the client sees (HTTP 400).

    PyTriton formats a handler's error with its traceback; this one has none to show, so it arrives
    in tritonserver as one line `pt_trtllm.serve.requests.RequestError: message`, which the patched
    proxy (pytriton_env.py) answers as Triton's INVALID_ARG with just the message."""

    @property
    def __traceback__(self):  # noqa: D105 - hide the frames from traceback.format_exception
        return None

    @__traceback__.setter
    def __traceback__(self, value):
        pass


class Unavailable(RequestError):
    """A request the server cannot run now (it is shutting down): HTTP 503 rather than 400."""


@dataclass(frozen=True)
class Limits:
    vocab_size: int
    max_seq_len: int
    """Positions of the KV cache: prompt + generated tokens."""
    max_output_len: int
    """The largest max_tokens this server accepts."""
    eos_ids: frozenset[int]
    """End ids used when a request gives no end_id."""


@dataclass(frozen=True)
class SequenceSpec:
    """One sequence to generate, validated: what the scheduler's `Sequence` runs."""
    prompt: list[int]
    max_tokens: int
    params: SamplingParams
    eos_ids: frozenset[int]


def row_name(name: str, i: int, batch: int) -> str:
    """How messages name row i of a value: `name[i]` in a batched request, `name` otherwise."""
    return f"{name}[{i}]" if batch > 1 else name


def prompt_from_ids(ids: list[int], limits: Limits, name: str) -> list[int]:
    """A prompt given as token ids (not empty); RequestError naming ids outside the vocabulary."""
    bad = [t for t in ids if not 0 <= t < limits.vocab_size]
    if bad:
        raise RequestError(f"{name} has token ids outside [0, {limits.vocab_size}): {bad[:5]}")
    return list(ids)


def prompt_from_text(text: str, tokenizer, limits: Limits, name: str) -> list[int]:
    """A prompt given as text, encoded with the server's tokenizer; RequestError for empty text, no
    tokens, or ids outside the model's vocabulary (a tokenizer that does not belong to the model)."""
    if not text:
        raise RequestError(f"{name} is empty")
    ids = tokenizer.encode(text)
    if not ids:
        raise RequestError(f"{name} encodes to no tokens")
    bad = [t for t in ids if not 0 <= t < limits.vocab_size]
    if bad:
        raise RequestError(f"the server's tokenizer gave ids outside the model's vocabulary [0, "
                           f"{limits.vocab_size}): {bad[:5]}")
    return ids


def build_sequences(prompt_ids: list[list[int]], max_tokens: list[int], sampling: list[dict],
                    end_ids: list[int | None], limits: Limits) -> list[SequenceSpec]:
    """One `SequenceSpec` per row. `prompt_ids` come from `prompt_from_ids`/`prompt_from_text`;
    `sampling[i]` holds the row's temperature, top_k, top_p and seed (None or absent: greedy, all
    tokens, all mass, unseeded); `end_ids[i]` is None (the server's EOS ids), -1 (no end id) or a
    token id."""
    batch = len(prompt_ids)
    specs = []
    for i, prompt in enumerate(prompt_ids):
        n = max_tokens[i]
        if n < 1:
            raise RequestError(f"{row_name('max_tokens', i, batch)} must be >= 1, got {n}")
        if n > limits.max_output_len:
            raise RequestError(f"{row_name('max_tokens', i, batch)}={n} exceeds this server's limit of "
                               f"{limits.max_output_len} (serve.py --max_output_len)")
        room = limits.max_seq_len - n
        if len(prompt) > room:
            raise RequestError(f"{row_name('the prompt', i, batch)} has {len(prompt)} tokens; with max_tokens={n} "
                               f"it may have at most {room} (this server's max_seq_len is {limits.max_seq_len})")
        specs.append(SequenceSpec(prompt, n, _sampling_params(sampling[i], i, batch),
                                  _eos_ids(end_ids[i], limits, i, batch)))
    return specs


def _sampling_params(row: dict, i: int, batch: int) -> SamplingParams:
    t = row.get("temperature")
    t = 0.0 if t is None else t
    if math.isnan(t):
        raise RequestError(f"{row_name('temperature', i, batch)} must be >= 0, got nan")
    top_k, top_p = row.get("top_k"), row.get("top_p")
    try:
        return SamplingParams(t, 0 if top_k is None else top_k, 1.0 if top_p is None else top_p, row.get("seed"))
    except ValueError as e:
        raise RequestError(str(e) if batch == 1 else f"row {i}: {e}") from None


def _eos_ids(end_id: int | None, limits: Limits, i: int, batch: int) -> frozenset[int]:
    if end_id is None:
        return limits.eos_ids
    if end_id == -1:
        return frozenset()
    if 0 <= end_id < limits.vocab_size:
        return frozenset({end_id})
    raise RequestError(f"{row_name('end_id', i, batch)}={end_id} is outside [0, {limits.vocab_size}) "
                       f"(-1: no end id)")
