"""scripts/serve.py serving a tamm PT-MoE model whose attention window is smaller than the requests:
in-flight batching moves running sequences between KV-cache slots (the local layers' ring caches
move with them), and every request still gets tamm's greedy tokens."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import convert_ok, make_tamm_checkpoint, random_ids
from pt_trtllm.serve_tools.client import infer, request_inputs
from pt_trtllm.serve_tools.launcher import ServerProcess
from test_core_pt_moe import CASES, tamm_greedy

CASE = "afm_defaults_shrunk_T2_mean_weightless_qknorm"  # tamm's default layer patterns, window 5, 8 experts top-2
MAX_TOKENS = [3, 12, 4, 10]  # the first to finish holds slot 0: the next running sequence moves into it


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_moe")
    overrides, seed = CASES[CASE]
    src, tamm_model = make_tamm_checkpoint(root / "tamm", seed=seed, **overrides)
    ckpt = convert_ok(src, root / "ckpt", max_position_embeddings=64)
    server = ServerProcess(ckpt, 2, ["--max_batch_size", "2", "--max_seq_len", "64", "--threads", "1"],
                           log_path=root / "server.log")
    with server:
        yield server, tamm_model


def test_requests_longer_than_the_window_get_tamm_tokens_while_slots_move(served):
    """Four requests on two slots, sent 0.2 s apart, prompts of 7-13 tokens (window 5) and 3-12
    new tokens: a sequence in slot 0 finishes while the one in slot 1 still decodes, which then
    moves to slot 0 with its ring caches; every request's tokens equal tamm's greedy tokens."""
    server, tamm_model = served
    ids = random_ids(97, (4, 13), seed=21)
    batch = [ids[i, : 13 - 2 * i].tolist() for i in range(4)]

    def send(i):
        time.sleep(0.2 * i)
        return infer(server.http, request_inputs(input_ids=batch[i], max_tokens=MAX_TOKENS[i])).output_ids

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(send, range(4)))
    assert got == [tamm_greedy(tamm_model, p, n) for p, n in zip(batch, MAX_TOKENS)]
