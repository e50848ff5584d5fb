"""The engine in one process (T=1, no MPI): the same tokens and logits as PTForCausalLM, eager and
torch.compile'd decode steps."""

from __future__ import annotations

import torch

from helpers import make_pt_model
from pt_trtllm.convert.writer import convert
from pt_trtllm.runtime.comm import Communicator
from pt_trtllm.runtime.engine import TrackEngine
from pt_trtllm.runtime.sampling import SamplingParams

T1 = dict(num_tracks=1, num_attention_heads=4, num_key_value_heads=2, intermediate_size=256, qk_norm=True)


def test_compiled_decode_gives_the_eager_tokens(tmp_path):
    """torch.compile'd decode steps (which attend to the whole cache, masked) give the eager
    engine's greedy tokens, and both give PTForCausalLM's prefill logits and tokens."""
    model = make_pt_model("tiny", seed=3, **T1)
    model.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "ckpt", progress=False)
    prompts = [[3, 14, 15, 92, 65], [35, 89, 79, 32, 38]]
    runs = {}
    for compiled in (False, True):
        engine = TrackEngine(tmp_path / "ckpt", Communicator(0, 1), torch.device("cpu"), max_batch=2, max_len=32,
                             compile=compiled)
        runs[compiled] = engine.generate(prompts, 10, SamplingParams(), prefill_logits=True)
    with torch.no_grad():
        ref_logits = model(torch.tensor(prompts)).logits
        ref_tokens = model.generate(torch.tensor(prompts), max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert (runs[False].prefill_logits - ref_logits).abs().max() <= 1e-4
    assert runs[False].output_ids == ref_tokens[:, 5:].tolist()
    assert runs[True].output_ids == runs[False].output_ids
