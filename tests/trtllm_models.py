"""Test models of the TensorRT-LLM engine path and the numeric run of the network definition.

The GPT attention plugin has generation kernels only for head sizes 32, 48, ..., 256
(support.MMHA_HEAD_SIZES); the `tiny` preset (d = 16) and the tamm test model (d = 8) are below
them, so the engine tests use ENGINE_TINY and TAMM_ENGINE (d = 32) instead of changing what the
other tests use. ENGINE_TINY has GQA (2 query heads and 1 KV head per track) and a large
rms_norm_eps, so that a norm built or fused with the wrong eps changes the logits visibly.

`run_network` runs PTForCausalLM.forward of every rank of a per-rank checkpoint on the numeric
stand-in (tests/trtllm_standin.py), all ranks at once as they run in an engine; `reference_logits`
is the PyTorch model's logits for the same packed prompts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import trtllm_standin as standin
from helpers import TAMM_TINY, make_pt_model, make_tamm_checkpoint

from pt_trtllm.convert.writer import convert

ENGINE_TINY = dict(vocab_size=97, hidden_size=64, num_tracks=2, num_hidden_layers=2, block_depth=1,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=32, intermediate_size=128,
                   max_position_embeddings=64, rms_norm_eps=1e-2)
"""Overrides of the `tiny` preset: T=2, L=2, D=1, H=64, d=32, h=2 and g=1 per track, V=97."""
TAMM_ENGINE = {**TAMM_TINY, "hidden_dim": 64, "attention_hidden_dim": 64, "num_heads": 2, "num_kv_heads": 1,
               "local_attention_window_size": 4095}
"""Overrides of helpers.TAMM_TINY with d = attention_hidden_dim / num_heads = 32 (QK-norm, gptj), and
a local-attention window the converted max_position_embeddings (4096) never exceeds, so that its
local attention is the engine's global one."""
PROMPTS = [[5, 17, 33, 2, 90, 11, 7], [40, 3], [8, 8, 61, 25, 70]]
"""Packed prompts of different lengths."""


def engine_checkpoint(root: Path, seed: int = 0, dtype: str = "float32", **overrides):
    """(the PyTorch PTForCausalLM in fp32, its per-rank checkpoint) of `tiny` with ENGINE_TINY and
    `overrides`, under `root`."""
    model = make_pt_model("tiny", seed=seed, **{**ENGINE_TINY, **overrides})
    hf, ckpt = root / "hf", root / "ckpt"
    model.save_pretrained(hf)
    convert(hf, ckpt, dtype=dtype, progress=False)
    return model, ckpt


def tamm_engine_checkpoint(root: Path, seed: int = 0):
    """(tamm's own HF model, the per-rank checkpoint converted from its tamm checkpoint)."""
    src, tamm_model = make_tamm_checkpoint(root / "tamm", seed=seed, **TAMM_ENGINE)
    convert(src, root / "ckpt", dtype="float32", progress=False)
    return tamm_model, root / "ckpt"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Autouse where imported: the tensors are tiny and the ranks run in threads, so torch's
    intra-op threads only add synchronization (3x slower on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@torch.no_grad()
def reference_logits(model, prompts=PROMPTS, schedule: str | None = None) -> torch.Tensor:
    """[tokens, V]: the PyTorch model on each prompt, packed (float32)."""
    return torch.cat([model(torch.tensor([p]), use_cache=False, schedule=schedule).logits[0] for p in prompts])


@dataclass
class NetworkRun:
    models: list
    """Each rank's PTForCausalLM (the stand-in network)."""
    logits: list[torch.Tensor]
    """Each rank's logits [tokens, V] (the padded vocabulary rows dropped)."""
    presents: list[tuple]
    """Each rank's per-layer KV-cache outputs (K and V of its track's heads, [2, tokens, g, d])."""


def network_inputs(prompts, packed: bool) -> dict:
    """The forward inputs of a context-phase batch, as PretrainedModel.prepare_inputs names them."""
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int32)
    if packed:
        ids = torch.tensor([t for p in prompts for t in p], dtype=torch.int32)
        positions = torch.cat([torch.arange(len(p), dtype=torch.int32) for p in prompts])
    else:  # padded at the end to the longest prompt
        width = max(len(p) for p in prompts)
        ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts], dtype=torch.int32)
        positions = torch.arange(width, dtype=torch.int32).repeat(len(prompts), 1)
    zeros = standin.Tensor(torch.zeros(len(prompts), dtype=torch.int32))
    attention = standin.AttentionParams(
        sequence_length=standin.Tensor(lengths), context_lengths=standin.Tensor(lengths),
        host_context_lengths=standin.Tensor(lengths), max_context_length=int(lengths.max()), host_request_types=zeros,
        host_runtime_perf_knobs=zeros, host_context_progress=zeros)
    return {"input_ids": standin.Tensor(ids), "position_ids": standin.Tensor(positions), "attention_params": attention}


def run_network(trt, ckpt, prompts=PROMPTS, *, schedule: str | None = None, merge_impl: str | None = None,
                packed: bool = True, plugins: dict | None = None) -> NetworkRun:
    """Every rank's network made as scripts/build.py makes it (PTPretrainedConfig.from_checkpoint,
    then build_model's deep copy and PTForCausalLM.from_checkpoint), its inputs prepared
    (prepare_inputs: the all-reduce workspace), then PTForCausalLM.forward of all ranks at once."""
    config = trt.PTForCausalLM.config_class.from_checkpoint(ckpt, schedule=schedule, merge_impl=merge_impl)
    world = config.num_tracks
    models = [trt.PTForCausalLM.from_checkpoint(str(ckpt), rank=r, config=copy.deepcopy(config)) for r in range(world)]
    standin.set_plugin_config(standin.PluginConfig(dtype=config.dtype, remove_input_padding=packed, **(plugins or {})))
    for model in models:
        model.prepare_inputs(max_batch_size=4, max_input_len=16, max_seq_len=32, max_num_tokens=64, use_cache=True)
    inputs = network_inputs(prompts, packed)
    standin.ALLREDUCES.clear()
    standin.PT_TRACK_MERGES.clear()
    standin.RMSNORM_CALLS.clear()
    standin.reset_networks()

    def rank_forward(rank):
        model = models[rank]
        kv = standin.KeyValueCacheParams()
        logits, presents, _ = model(**inputs, use_cache=True, last_token_ids=None, kv_cache_params=kv)
        logits = logits.value
        if not packed:
            logits = torch.cat([logits[b, : len(p)] for b, p in enumerate(prompts)])
        return logits[:, : config.vocab_size], tuple(p.value for p in presents)

    results = standin.run_ranks(rank_forward, world)
    return NetworkRun(models, [r[0] for r in results], [r[1] for r in results])
