"""Structure of the served model without GPUs or MPI (as litgpt's meta-device TP tests): count the
collectives one rank's forward pass issues for the paper's 30B shape, and unit-test the sampler and
the slot KV cache."""

from __future__ import annotations

import pytest
import torch

from pt_trtllm import PTConfig
from pt_trtllm.merge import AllReduceMerge
from pt_trtllm.modeling import PTModel
from pt_trtllm.runtime.cache import SlotKVCache
from pt_trtllm.runtime.comm import Communicator
from pt_trtllm.runtime.sampling import SamplingParams, sample


class CountingComm(Communicator):
    """A rank of a T-rank world whose collectives are only counted (meta tensors carry no data)."""

    def _all_reduce(self, t):
        return t

    def _broadcast(self, t, root):
        return t


@pytest.mark.parametrize("depth", [2, 4, 8])
@pytest.mark.parametrize("schedule", ["block", "sublayer", "none"])
def test_30b_rank_forward_issues_exactly_the_spec_merges(depth, schedule):
    """One rank of the 30B preset (48 layers, 8 tracks), built on the meta device: a forward pass
    issues 48/D all-reduces of [tokens, H] (block), 96 (sublayer, = tensor parallelism) or 0
    (none), and nothing else."""
    cfg = PTConfig.from_preset(f"pt-30b-d{depth}")
    comm = CountingComm(rank=3, world_size=8)
    with torch.device("meta"):
        model = PTModel(cfg, num_local_tracks=1, merge=AllReduceMerge(cfg.combine_op, cfg.num_tracks, comm))
        ids = torch.zeros(2, 5, dtype=torch.long)
        out = model(ids, torch.arange(5).expand(2, 5), schedule=schedule)
    expected = {"block": 48 // depth, "sublayer": 96, "none": 0}[schedule]
    assert out.shape == (2, 5, cfg.hidden_size)
    assert dict(comm.calls) == ({"merge": expected} if expected else {})
    assert comm.bytes["merge"] == expected * 2 * 5 * cfg.hidden_size * 4  # fp32 [B*S, H] per merge
    per_track = sum(p.numel() for p in model.tracks[0].parameters() if p.ndim == 2)
    assert per_track == 48 * (2304 + 3 * 3200) * 6144  # the preset's stated assumptions


def test_sampling_filters():
    """Greedy is argmax; top_k=1 and a tiny top_p keep only the best token; a seed reproduces."""
    logits = torch.randn(4, 50)
    best = logits.argmax(-1)
    assert torch.equal(sample(logits, SamplingParams(), None), best)
    assert torch.equal(sample(logits, SamplingParams(temperature=1.0, top_k=1), None), best)
    assert torch.equal(sample(logits, SamplingParams(temperature=1.0, top_p=1e-6), None), best)
    p = SamplingParams(temperature=0.7, top_k=10, top_p=0.9, seed=5)
    assert torch.equal(sample(logits, p, p.generator(torch.device("cpu"))),
                       sample(logits, p, p.generator(torch.device("cpu"))))
    top10 = logits.topk(10).indices
    drawn = sample(logits.expand(4, 50).repeat(50, 1), SamplingParams(temperature=5.0, top_k=10), None)
    assert all(t in top10[i % 4] for i, t in enumerate(drawn.tolist()))


@pytest.mark.parametrize("bad", [dict(temperature=-0.1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_sampling_params_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)


def test_slot_cache_prefill_then_decode_at_own_positions():
    """A prefill writes positions 0..S-1 of its slots; a decode step writes each slot at its own
    position and returns the first kv_len positions of slots 0..n-1."""
    cache = SlotKVCache(num_layers=2, max_batch=3, kv_heads=1, max_len=8, head_dim=2, dtype=torch.float32,
                        device=torch.device("cpu"))
    k = torch.arange(2 * 1 * 4 * 2, dtype=torch.float32).view(2, 1, 4, 2)
    cache.prefill(torch.tensor([2, 0]))
    k_out, _ = cache.update(k, -k, 1)
    assert torch.equal(k_out, k) and torch.equal(cache.k[1, 2, :, :4], k[0]) and torch.equal(cache.k[1, 0, :, :4], k[1])
    step = torch.full((3, 1, 1, 2), 7.0)
    cache.decode(torch.tensor([4, 1, 5]), kv_len=6)
    k_all, v_all = cache.update(step, -step, 1)
    assert k_all.shape == (3, 1, 6, 2)
    assert torch.equal(k_all[0, 0, 4], step[0, 0, 0]) and torch.equal(k_all[1, 0, 1], step[1, 0, 0])
    assert torch.equal(k_all[2, 0, 5], step[2, 0, 0]) and torch.equal(v_all[2, 0, 5], -step[2, 0, 0])
    assert torch.equal(k_all[0, 0, :4], k[1, 0])  # slot 0's prefill is kept
    assert cache.k[0].abs().sum() == 0  # other layers untouched
