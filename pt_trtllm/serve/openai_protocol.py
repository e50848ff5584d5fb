"""The OpenAI adapter of request building: the JSON body of `POST /v1/completions` or
`POST /v1/chat/completions` -> `requests.build_sequences`, with the stop strings and streaming
options. Every problem raises `OpenAIError` with one line naming the field (HTTP 400; an unknown
model 404), as OpenAI's API answers.

Supported: `model`, `prompt` (text, token ids, or a list of either: one choice each) or `messages`
(rendered with the tokenizer's chat template), `max_tokens` (chat: also `max_completion_tokens`;
default: what fits, at most `--max_output_len`), `temperature` (default 1, as OpenAI's), `top_p`,
`seed`, `stop`, `stream`, `stream_options.include_usage`, `user` (ignored), and vLLM's `top_k` and
`ignore_eos`. The fields OpenAI defines that this server does not implement are accepted only with
their neutral value (`n`: 1, penalties: 0, `logprobs`: null/false, `tools`: null/[], ...); any other
value, and any field not listed here, is refused by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .requests import Limits, RequestError, SequenceSpec, build_sequences, prompt_from_ids, prompt_from_text

_SAMPLING = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "stream_options",
             "ignore_eos", "user", "model")
NEUTRAL = {  # unsupported OpenAI fields: the values that ask for nothing (None always does)
    "n": (1,), "presence_penalty": (0,), "frequency_penalty": (0,), "logit_bias": ({},),
    "best_of": (1,), "echo": (False,), "suffix": ("",), "logprobs": (False,),
    "top_logprobs": (0,), "tools": ([],), "tool_choice": ("none",), "functions": ([],), "function_call": ("none",),
    "parallel_tool_calls": (True, False), "response_format": ({"type": "text"},),
}
COMPLETION_FIELDS = {"prompt", *_SAMPLING, "n", "presence_penalty", "frequency_penalty", "logit_bias", "best_of",
                     "echo", "suffix", "logprobs"}
CHAT_FIELDS = {"messages", "max_completion_tokens", *_SAMPLING, "n", "presence_penalty", "frequency_penalty",
               "logit_bias", "logprobs", "top_logprobs", "tools", "tool_choice", "functions", "function_call",
               "parallel_tool_calls", "response_format"}
ROLES = ("system", "developer", "user", "assistant")
MAX_SEED = 2**64


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class GenerateRequest:
    specs: list[SequenceSpec]
    """One per choice (a completions request with a list of prompts has several)."""
    stops: tuple[str, ...]
    stream: bool
    include_usage: bool


def parse_request(body, chat: bool, tokenizer, limits: Limits, model_name: str) -> GenerateRequest:
    """The sequences and options of a completions (`chat=False`) or chat completions request."""
    if not isinstance(body, dict):
        raise OpenAIError("the request body must be a JSON object")
    allowed = CHAT_FIELDS if chat else COMPLETION_FIELDS
    for name, value in body.items():
        if name not in allowed:
            raise OpenAIError(f"unsupported field `{name}`", param=name)
        if name in NEUTRAL and value is not None and not any(_same(value, v) for v in NEUTRAL[name]):
            raise OpenAIError(f"`{name}`={_show(value)} is not supported (only {_show(NEUTRAL[name][0])})",
                              param=name)
    model = _get(body, "model", str)
    if model is not None and model != model_name:
        raise OpenAIError(f"The model `{model}` does not exist.", 404, "model", "model_not_found")
    if chat:
        prompts = [_chat_prompt(body, tokenizer, limits)]
        max_tokens = _get(body, "max_completion_tokens", int)
        max_tokens = _get(body, "max_tokens", int) if max_tokens is None else max_tokens
    else:
        prompts = _prompts(body, tokenizer, limits)
        max_tokens = _get(body, "max_tokens", int)
    temperature = _get(body, "temperature", float)
    top_k = _get(body, "top_k", int)
    seed = _get(body, "seed", int)
    if seed is not None and not 0 <= seed < MAX_SEED:
        raise OpenAIError(f"`seed` must be in [0, 2**64), got {seed}", param="seed")
    sampling = {"temperature": 1.0 if temperature is None else temperature, "top_p": _get(body, "top_p", float),
                "top_k": 0 if top_k in (None, -1) else top_k, "seed": seed}
    end_id = -1 if _get(body, "ignore_eos", bool) else None
    stream = bool(_get(body, "stream", bool))
    options = _get(body, "stream_options", dict)
    if options is not None and not stream:
        raise OpenAIError("`stream_options` can only be given with `stream`: true", param="stream_options")
    include_usage = False
    for key, value in (options or {}).items():
        if key != "include_usage":
            raise OpenAIError(f"unsupported field `stream_options.{key}`", param=f"stream_options.{key}")
        include_usage = bool(_get(options, key, bool, f"stream_options.{key}"))
    try:
        specs = build_sequences(prompts, [_max_tokens(max_tokens, p, limits) for p in prompts],
                                [sampling] * len(prompts), [end_id] * len(prompts), limits)
    except RequestError as e:
        raise OpenAIError(str(e)) from None
    return GenerateRequest(specs, _stops(body), stream, include_usage)


def _max_tokens(given: int | None, prompt: list[int], limits: Limits) -> int:
    """The given max_tokens, or by default as many as fit (at most --max_output_len), as vLLM does."""
    if given is not None:
        return given
    return max(1, min(limits.max_output_len, limits.max_seq_len - len(prompt)))


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b or (type(a) in (int, float) and type(b) in (int, float) and a == b)


def _show(value) -> str:
    return json.dumps(value)


_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", dict: "an object",
          list: "an array"}


def _get(body: dict, name: str, kind: type, shown: str | None = None):
    """body[name] checked to be of `kind` (None when absent or null)."""
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    if not ok:
        raise OpenAIError(f"`{shown or name}` must be {_TYPES[kind]}, got {_show(value)}", param=shown or name)
    return value


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise OpenAIError("`stop` must be a non-empty string or an array of them", param="stop")
    return tuple(stops)


def _prompts(body: dict, tokenizer, limits: Limits) -> list[list[int]]:
    """`prompt`: a string, token ids, or an array of strings or of token-id arrays."""
    prompt = body.get("prompt")
    if prompt is None:
        raise OpenAIError("missing field `prompt`", param="prompt")
    if isinstance(prompt, str):
        return [_text_prompt(prompt, tokenizer, limits, "prompt")]
    if not isinstance(prompt, list) or not prompt:
        raise OpenAIError("`prompt` must be a string, an array of token ids, or a non-empty array of either",
                          param="prompt")
    if all(_is_id(t) for t in prompt):
        return [_id_prompt(prompt, limits, "prompt")]
    prompts = []
    for i, p in enumerate(prompt):
        name = f"prompt[{i}]"
        if isinstance(p, str):
            prompts.append(_text_prompt(p, tokenizer, limits, name))
        elif isinstance(p, list) and p and all(_is_id(t) for t in p):
            prompts.append(_id_prompt(p, limits, name))
        else:
            raise OpenAIError(f"`{name}` must be a string or a non-empty array of token ids", param="prompt")
    return prompts


def _is_id(t) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def _text_prompt(text: str, tokenizer, limits: Limits, name: str) -> list[int]:
    try:
        return prompt_from_text(text, tokenizer, limits, name)
    except RequestError as e:
        raise OpenAIError(str(e), param="prompt") from None


def _id_prompt(ids: list[int], limits: Limits, name: str, param: str = "prompt") -> list[int]:
    try:
        return prompt_from_ids(ids, limits, name)
    except RequestError as e:
        raise OpenAIError(str(e), param=param) from None


def _chat_prompt(body: dict, tokenizer, limits: Limits) -> list[int]:
    """`messages` rendered with the chat template (and the assistant's turn opened), as token ids."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError("`messages` must be a non-empty array", param="messages")
    if getattr(tokenizer, "chat_template", None) is None:
        raise OpenAIError("this model's tokenizer has no chat template: use /v1/completions", param="messages")
    rendered = [_message(m, i) for i, m in enumerate(messages)]
    try:
        text = tokenizer.apply_chat_template(rendered, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # noqa: BLE001 - the template's own checks (e.g. alternating roles)
        message = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise OpenAIError(f"the chat template refused the messages: {message}", param="messages") from None
    ids = tokenizer.encode(text, add_special_tokens=False)  # the template writes the special tokens
    if not ids:
        raise OpenAIError("the messages render to no tokens", param="messages")
    return _id_prompt(ids, limits, "the rendered messages", "messages")


def _message(m, i: int) -> dict:
    name = f"messages[{i}]"
    if not isinstance(m, dict):
        raise OpenAIError(f"`{name}` must be an object with `role` and `content`", param=name)
    for key in m:
        if key not in ("role", "content", "name"):
            raise OpenAIError(f"unsupported field `{name}.{key}`", param=f"{name}.{key}")
    role = _get(m, "role", str, f"{name}.role")
    if role not in ROLES:
        raise OpenAIError(f"`{name}.role` must be one of {', '.join(ROLES)}, got {_show(m.get('role'))}",
                          param=f"{name}.role")
    content = m.get("content")
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            where = f"{name}.content[{j}]"
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else None
                raise OpenAIError(f"`{where}` must be {{\"type\": \"text\", \"text\": ...}}"
                                  + (f" (content type {_show(kind)} is not supported)" if kind else ""), param=where)
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise OpenAIError(f"`{name}.content` must be a string or an array of text parts", param=f"{name}.content")
    out = {"role": role, "content": content}
    if m.get("name") is not None:
        out["name"] = _get(m, "name", str, f"{name}.name")
    return out
