"""The OpenAI-compatible API of scripts/serve.py (`--openai_port`) under `mpiexec -n 2`, queried with
the official `openai` package: completions (text and token ids) and chat completions, plain and
streaming, equal to scripts/run.py (chat: on the prompt the template renders) with the right usage;
stop strings; an abandoned stream freed within the stated number of steps while another request
is unchanged; malformed requests refused with one line in OpenAI's error shape while the server
keeps serving; 500 streaming requests from 16 concurrent clients with rank 0's memory flat. Also
the request parsing and the stop strings without a server."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import make_pt_model, run_clients
from pt_trtllm.convert.writer import convert
from pt_trtllm.serve.openai_protocol import OpenAIError, parse_request
from pt_trtllm.serve.requests import Limits
from pt_trtllm.serve.stop_strings import StopStrings
from pt_trtllm.serve_tools.launcher import ServerProcess
from test_serve_api import run_py

PROMPTS = ["The capital of France is", "Once upon a time, in a land far away,"]
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a red fruit."}]


@pytest.fixture(scope="module")
def served(tmp_path_factory, smollm2_dir):
    """A random 2-track tiny model with SmolLM2's vocabulary and its tokenizer (with a chat template)."""
    root = tmp_path_factory.mktemp("serve_openai")
    make_pt_model("tiny", seed=11, vocab_size=49152, max_position_embeddings=4096).save_pretrained(root / "hf")
    convert(root / "hf", root / "ckpt", progress=False)
    server = ServerProcess(root / "ckpt", 2, ["--tokenizer_dir", str(smollm2_dir), "--max_batch_size", "8",
                                              "--max_seq_len", "2100", "--max_output_len", "2048", "--instances", "1"],
                           log_path=root / "server.log", openai=True)
    with server:
        yield server, root / "ckpt", smollm2_dir


@pytest.fixture(scope="module")
def client(served):
    import openai

    server, _, _ = served
    with openai.OpenAI(base_url=server.openai, api_key="unused", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def tokenizer(served):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(served[2])


@pytest.fixture(scope="module")
def reference(served, tokenizer):
    """scripts/run.py's greedy tokens (16) for PROMPTS, the prompt CHAT renders, and 32 random
    token-id prompts, in one run: {"text": ..., "chat": ..., "random": ...} -> (prompts, ids)."""
    _, ckpt, _ = served
    rng = random.Random(0)
    rendered = tokenizer.encode(tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False),
                                add_special_tokens=False)
    groups = {"text": [tokenizer.encode(p) for p in PROMPTS], "chat": [rendered],
              "random": [[rng.randrange(3, 49152) for _ in range(rng.randint(1, 24))] for _ in range(32)]}
    prompts = [p for group in groups.values() for p in group]
    ids = iter(run_py(ckpt, "--input_ids", ";".join(",".join(map(str, p)) for p in prompts), "--max_output_len",
                      16)["output_ids"])
    return {name: (group, [next(ids) for _ in group]) for name, group in groups.items()}


def stats(server) -> dict:
    with urllib.request.urlopen(f"http://{server.host}:{server.openai_port}/stats", timeout=10) as r:
        return json.loads(r.read())


def post(server, path: str, body) -> tuple[int, dict]:
    """POST raw JSON (or raw bytes) to the OpenAI API: (status, decoded body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{server.openai}{path}", data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def expected(tokenizer, ids: list[int], n: int) -> tuple[str, int, str]:
    """(text, completion tokens, finish reason) of a greedy request for n tokens whose first 16
    greedy tokens (or fewer, ending with EOS) are `ids`."""
    ids = ids[:n]
    return (tokenizer.decode(ids, skip_special_tokens=True), len(ids),
            "stop" if ids and ids[-1] == tokenizer.eos_token_id else "length")


def test_models_and_the_default_name(served, client):
    """/v1/models lists the one model, named --engine_dir as given (no --served_model_name)."""
    server, ckpt, _ = served
    assert [m.id for m in client.models.list().data] == [str(ckpt)]
    assert client.models.retrieve(str(ckpt)).id == str(ckpt)
    with urllib.request.urlopen(f"http://{server.host}:{server.openai_port}/health", timeout=10) as r:
        assert r.status == 200


def test_completions_equal_run_py(served, client, tokenizer, reference):
    """Text and token-id prompts, plain and streaming, greedy: run.py's text, usage counts and
    finish reason; streamed pieces add up to it."""
    server, ckpt, _ = served
    prompts, ref = reference["text"]
    for i, prompt in enumerate(PROMPTS):
        want = expected(tokenizer, ref[i], 12)
        for given in (prompt, prompts[i]):
            r = client.completions.create(model=str(ckpt), prompt=given, max_tokens=12, temperature=0)
            assert (r.choices[0].text, r.usage.completion_tokens, r.choices[0].finish_reason) == want
            assert r.usage.prompt_tokens == len(prompts[i]) and r.usage.total_tokens == len(prompts[i]) + want[1]
            chunks = list(client.completions.create(model=str(ckpt), prompt=given, max_tokens=12, temperature=0,
                                                    stream=True, stream_options={"include_usage": True}))
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            assert (text, chunks[-1].usage.completion_tokens, finishes[-1]) == want
            assert len(chunks) >= 4 and chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == len(prompts[i])
    two = client.completions.create(model=str(ckpt), prompt=PROMPTS, max_tokens=12, temperature=0)
    assert [c.text for c in sorted(two.choices, key=lambda c: c.index)] == [expected(tokenizer, r, 12)[0] for r in ref]
    assert two.usage.completion_tokens == sum(expected(tokenizer, r, 12)[1] for r in ref)


def test_chat_completions_equal_run_py_on_the_rendered_prompt(served, client, tokenizer, reference):
    """Chat, plain and streaming: run.py's text on the token ids of the prompt the chat template
    renders; the role comes first in the stream; usage counts the rendered prompt."""
    server, ckpt, _ = served
    (rendered,), (ref,) = reference["chat"]
    text, tokens, finish = expected(tokenizer, ref, 10)
    r = client.chat.completions.create(model=str(ckpt), messages=CHAT, max_completion_tokens=10, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == text
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.choices[0].finish_reason) == (len(rendered), tokens,
                                                                                              finish)
    chunks = list(client.chat.completions.create(model=str(ckpt), messages=CHAT, max_tokens=10, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == finish


def test_stop_strings_end_the_text_and_free_the_slot(served, client):
    """A stop string taken from the middle of the greedy text: the text ends before it (plain and
    streamed, never sending any of it), finish_reason "stop", and the sequence's slot is freed
    (counted as stop_strings)."""
    server, ckpt, _ = served
    full = client.completions.create(model=str(ckpt), prompt=PROMPTS[1], max_tokens=40, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = full[len(full) // 2: len(full) // 2 + 4]
    assert len(stop) == 4 and full.index(stop) > 0
    before = stats(server)["stop_strings"]
    r = client.completions.create(model=str(ckpt), prompt=PROMPTS[1], max_tokens=40, temperature=0, stop=[stop, "@@@"],
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text == full[: full.index(stop)] and r.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(model=str(ckpt), prompt=PROMPTS[1], max_tokens=40, temperature=0,
                                            stop=stop, stream=True, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks) == full[: full.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"
    deadline = time.monotonic() + 30
    while (s := stats(server))["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s["stop_strings"] == before + 2 and s["running"] == 0


def test_an_abandoned_stream_is_freed_within_one_step(served, client):
    """A stream abandoned after 3 tokens of max_tokens 2000: the server cancels it at the next step
    boundary, so it runs at most 1 more decode step (`cancel_lag_steps`, the scheduler's step
    counter), its slot is freed (`running`, `active_sequences`), it counts as cancelled, and a
    request running meanwhile gives the tokens it gives alone."""
    server, ckpt, _ = served
    alone = client.completions.create(model=str(ckpt), prompt=PROMPTS[0], max_tokens=60, temperature=0,
                                      extra_body={"ignore_eos": True}).choices[0].text
    before = stats(server)
    other = {}
    thread = threading.Thread(target=lambda: other.update(r=client.completions.create(
        model=str(ckpt), prompt=PROMPTS[0], max_tokens=60, temperature=0, extra_body={"ignore_eos": True})))
    thread.start()
    stream = client.completions.create(model=str(ckpt), prompt=PROMPTS[1], max_tokens=2000, temperature=0,
                                       stream=True, extra_body={"ignore_eos": True})
    got = 0
    for chunk in stream:
        got += bool(chunk.choices[0].text)
        if got == 3:
            break
    stream.close()  # closes the connection: the client is gone
    deadline = time.monotonic() + 30
    while (s := stats(server))["cancelled"] == before["cancelled"] and time.monotonic() < deadline:
        time.sleep(0.01)
    thread.join(120)
    print(f"cancelled after {s['steps'] - before['steps']} steps of the server; lag {s['cancel_lag_steps']} step(s)")
    assert s["cancelled"] == before["cancelled"] + 1 and s["cancel_lag_steps"] <= 1
    assert s["decoded_tokens"] - before["decoded_tokens"] < 500  # nowhere near 2000
    assert other["r"].choices[0].text == alone
    deadline = time.monotonic() + 10  # the scheduler counts a finished sequence out just after it answers
    while (after := stats(server))["active_sequences"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert after["running"] == 0 and after["active_sequences"] == 0 and after["failed"] == before["failed"]


BAD = [  # (path, body, status, words the one-line message must contain, param)
    ("/completions", {"max_tokens": 4}, 400, ["missing field `prompt`"], "prompt"),
    ("/completions", {"prompt": "", "max_tokens": 4}, 400, ["prompt is empty"], "prompt"),
    ("/completions", {"prompt": [], "max_tokens": 4}, 400, ["`prompt` must be"], "prompt"),
    ("/completions", {"prompt": [1, 60000], "max_tokens": 4}, 400, ["outside [0, 49152)", "60000"], "prompt"),
    ("/completions", {"prompt": "hi", "max_tokens": 0}, 400, ["max_tokens must be >= 1, got 0"], None),
    ("/completions", {"prompt": "hi", "max_tokens": 4000}, 400, ["max_tokens=4000 exceeds this server's limit of 2048"],
     None),
    ("/completions", {"prompt": [1] * 2090, "max_tokens": 20}, 400, ["2090 tokens", "at most 2080"], None),
    ("/completions", {"prompt": "hi", "temperature": -0.5}, 400, ["temperature must be >= 0, got -0.5"], None),
    ("/completions", {"prompt": "hi", "top_p": 0}, 400, ["top_p must be in (0, 1], got 0.0"], None),
    ("/completions", {"prompt": "hi", "top_p": 1.5}, 400, ["top_p must be in (0, 1], got 1.5"], None),
    ("/completions", {"prompt": "hi", "top_k": -2}, 400, ["top_k must be >= 0, got -2"], None),
    ("/completions", {"prompt": "hi", "seed": -1}, 400, ["`seed` must be in [0, 2**64)"], "seed"),
    ("/completions", {"prompt": "hi", "max_tokens": "8"}, 400, ["`max_tokens` must be an integer"], "max_tokens"),
    ("/completions", {"prompt": "hi", "temperature": "hot"}, 400, ["`temperature` must be a number"], "temperature"),
    ("/completions", {"prompt": 5}, 400, ["`prompt` must be"], "prompt"),
    ("/completions", {"prompt": "hi", "stream": "yes"}, 400, ["`stream` must be a boolean"], "stream"),
    ("/completions", {"prompt": "hi", "stream_options": {"include_usage": True}}, 400,
     ["`stream_options` can only be given with `stream`: true"], "stream_options"),
    ("/completions", {"prompt": "hi", "stop": ""}, 400, ["`stop` must be a non-empty string"], "stop"),
    ("/completions", {"prompt": "hi", "model": "gpt-4"}, 404, ["The model `gpt-4` does not exist."], "model"),
    ("/completions", {"prompt": "hi", "n": 2}, 400, ["`n`=2 is not supported (only 1)"], "n"),
    ("/completions", {"prompt": "hi", "logprobs": 3}, 400, ["`logprobs`=3 is not supported"], "logprobs"),
    ("/completions", {"prompt": "hi", "presence_penalty": 0.5}, 400, ["`presence_penalty`=0.5 is not supported"],
     "presence_penalty"),
    ("/completions", {"prompt": "hi", "echo": True}, 400, ["`echo`=true is not supported"], "echo"),
    ("/completions", {"prompt": "hi", "bogus": 1}, 400, ["unsupported field `bogus`"], "bogus"),
    ("/completions", b"{not json", 400, ["the request body is not valid JSON"], None),
    ("/completions", [1, 2], 400, ["the request body must be a JSON object"], None),
    ("/chat/completions", {"messages": []}, 400, ["`messages` must be a non-empty array"], "messages"),
    ("/chat/completions", {"messages": [{"content": "hi"}]}, 400, ["`messages[0].role` must be one of"],
     "messages[0].role"),
    ("/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, ["`messages[0].content` must be"],
     "messages[0].content"),
    ("/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400,
     ["content type \"image_url\" is not supported"], "messages[0].content[0]"),
    ("/chat/completions", {"messages": CHAT, "tools": [{"type": "function"}]}, 400, ["`tools`=", "is not supported"],
     "tools"),
    ("/chat/completions", {"messages": CHAT, "logprobs": True}, 400, ["`logprobs`=true is not supported"], "logprobs"),
    ("/chat/completions", {"messages": CHAT, "prompt": "hi"}, 400, ["unsupported field `prompt`"], "prompt"),
]


@pytest.mark.parametrize("path,body,status,words,param", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_malformed_requests_get_one_line_in_openais_shape(served, client, path, body, status, words, param):
    """Each malformed request: its 4xx, {"error": {"message", "type", "param", "code"}} with a
    one-line message naming the problem; then a good request succeeds."""
    server, ckpt, _ = served
    code, answer = post(server, path, body)
    error = answer["error"]
    assert code == status and set(error) == {"message", "type", "param", "code"}, answer
    assert "\n" not in error["message"] and "Traceback" not in error["message"]
    for word in words:
        assert word in error["message"], error
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert client.completions.create(model=str(ckpt), prompt="hi", max_tokens=2).usage.completion_tokens >= 1


def test_the_official_client_raises_its_errors(served, client):
    import openai

    server, ckpt, _ = served
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="hi", max_tokens=2)
    assert e.value.status_code == 404 and e.value.body["message"] == "The model `nope` does not exist."
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=str(ckpt), messages=CHAT, n=3)
    assert e.value.body["param"] == "n"
    code, answer = post(server, "/nowhere", {})
    assert code == 404 and answer["error"]["message"] == "POST /v1/nowhere: Not Found"


def rss_kib(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1])


def test_500_streams_from_16_clients(served, client, tokenizer, reference):
    """500 streaming requests (token-id prompts, 1..12 tokens each) from 16 concurrent clients: 0
    failures, run.py's greedy text for each, and rank 0's resident memory (the process with the
    HTTP front) after the run within 10% of what it was after the first 50."""
    server, ckpt, _ = served
    prompts, ref = reference["random"]
    rng = random.Random(1)
    jobs = [(rng.randrange(len(prompts)), rng.randint(1, 12)) for _ in range(500)]
    rank0 = server.rank_pids()[0]
    failures, done, rss = [], [0], {}
    lock = threading.Lock()

    def run(share):
        for p, n in share:
            try:
                stream = client.completions.create(model=str(ckpt), prompt=prompts[p], max_tokens=n, temperature=0,
                                                   stream=True)
                text = "".join(c.choices[0].text for c in stream if c.choices)
                want = expected(tokenizer, ref[p], n)[0]
                error = None if text == want else f"prompt {p}, {n} tokens: {text!r} != {want!r}"
            except Exception as e:  # noqa: BLE001 - every failure is counted
                error = f"prompt {p}, {n} tokens: {e.__class__.__name__}: {e}"
            with lock:
                done[0] += 1
                if done[0] == 50:
                    rss["first"] = rss_kib(rank0)
                if error:
                    failures.append(error)

    elapsed, still_running = run_clients(run, jobs)
    rss["end"] = rss_kib(rank0)
    print(f"500 streams from 16 clients in {elapsed:.1f} s, {len(failures)} failures; rank 0 RSS {rss['first']} KiB "
          f"after 50, {rss['end']} KiB after 500")
    assert done[0] == 500 and still_running == 0
    assert failures == [], failures[:5]
    assert abs(rss["end"] - rss["first"]) <= 0.10 * rss["first"]


# ---- without a server -------------------------------------------------------------------------------
LIMITS = Limits(vocab_size=49152, max_seq_len=64, max_output_len=32, eos_ids=frozenset({2}))


class NoTemplate:
    chat_template = None


def test_request_defaults_and_the_chat_template(tokenizer):
    """Defaults: temperature 1 (OpenAI's), max_tokens what fits (at most --max_output_len), the
    server's EOS ids (ignore_eos: none); the chat prompt is the template's rendering with the
    assistant's turn opened; a tokenizer without a chat template is refused by name."""
    req = parse_request({"prompt": [5, 6, 7]}, False, tokenizer, LIMITS, "m")
    (spec,) = req.specs
    assert spec.params.temperature == 1.0 and spec.max_tokens == 32 and spec.eos_ids == frozenset({2})
    (spec,) = parse_request({"prompt": [5] * 40, "ignore_eos": True, "top_k": -1}, False, tokenizer, LIMITS, "m").specs
    assert spec.max_tokens == 24 and spec.eos_ids == frozenset() and spec.params.top_k == 0
    (spec,) = parse_request({"messages": CHAT, "max_tokens": 3, "max_completion_tokens": 5}, True, tokenizer,
                            LIMITS, "m").specs
    text = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert spec.prompt == tokenizer.encode(text, add_special_tokens=False) and spec.max_tokens == 5
    assert text.endswith("<|im_start|>assistant\n")
    with pytest.raises(OpenAIError, match="this model's tokenizer has no chat template: use /v1/completions"):
        parse_request({"messages": CHAT}, True, NoTemplate(), LIMITS, "m")


def test_stop_strings_hold_back_what_may_start_one():
    stops = StopStrings(["</end>", "xyz"])
    sent = [stops.feed(t) for t in ["Hello <", "/e", "nd wait", "</en", "d> more"]]
    assert sent == ["Hello ", "", "</end wait", "", ""] and stops.matched and stops.finish() == ""
    held = StopStrings(["xyz"])
    assert held.feed("abcx") == "abc" and held.feed("y") == "" and held.finish() == "xy" and not held.matched
    assert StopStrings([]).feed("anything") == "anything"
