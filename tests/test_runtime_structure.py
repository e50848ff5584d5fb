"""Structure of the served model without GPUs or MPI (as litgpt's meta-device TP tests): the order
of the sublayers and collectives one rank's forward pass issues for the paper's 30B shape, and unit
tests of the sampler (filters, temperature, top-k and top-p) and the slot KV cache."""

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
    """A rank of a T-rank world whose collectives are only counted (meta tensors carry no data);
    each all-reduce is also appended to `trace`."""

    def __init__(self, rank: int, world_size: int, trace: list):
        super().__init__(rank, world_size)
        self.trace = trace

    def _all_reduce(self, t):
        self.trace.append("merge")
        return t

    def _broadcast(self, t, root):
        return t


def expected_trace(layers: int, depth: int, schedule: str) -> list[str]:
    """What one rank runs, in order, written from pt-spec section 3: each layer's attention then its
    MLP; a merge after every D-th layer's MLP (block), after every attention and every MLP
    (sublayer), or never (none)."""
    trace = []
    for layer in range(layers):
        for kind in ("attn", "mlp"):
            trace.append(f"{kind}{layer}")
            if schedule == "sublayer" or (schedule == "block" and kind == "mlp" and (layer + 1) % depth == 0):
                trace.append("merge")
    return trace


# (L, D, schedule): the 30B preset's three depths under every schedule, plus block shapes where
# merging every D+1 or D-1 layers (rounded either way) changes the count: 48/8 = 6 = ceil(48/9),
# but 48/6 = 8 (not 7 or 6), 48/3 = 16 (not 12 or 24) and 72/8 = 9 (not 8 or 10)
CASES = [(48, D, s) for D in (2, 4, 8) for s in ("block", "sublayer", "none")] + [
    (48, 3, "block"), (48, 6, "block"), (72, 8, "block")]


@pytest.mark.parametrize("layers,depth,schedule", CASES, ids=[f"{s}-L{L}-D{D}" for L, D, s in CASES])
def test_30b_rank_forward_issues_exactly_the_spec_merges(layers, depth, schedule):
    """One rank of the 30B preset (8 tracks; 48 layers, or L layers for the extra shapes), built on
    the meta device: a forward pass runs attention then MLP of each layer in order and issues an
    all-reduce of [tokens, H] after exactly every D-th layer (L/D of them: block), after every
    sublayer (2L, = tensor parallelism) or none (none), and nothing else."""
    preset = f"pt-30b-d{depth}" if layers == 48 and depth in (2, 4, 8) else "pt-30b-d2"
    cfg = PTConfig.from_preset(preset, num_hidden_layers=layers, block_depth=depth)
    trace: list[str] = []
    comm = CountingComm(rank=3, world_size=8, trace=trace)
    with torch.device("meta"):
        model = PTModel(cfg, num_local_tracks=1, merge=AllReduceMerge(cfg.combine_op, cfg.num_tracks, comm))
        for i, layer in enumerate(model.tracks[0].layers):
            for kind, module in (("attn", layer.self_attn), ("mlp", layer.mlp)):
                module.register_forward_hook(lambda *_, step=f"{kind}{i}": trace.append(step))
        ids = torch.zeros(2, 5, dtype=torch.long)
        out = model(ids, torch.arange(5).expand(2, 5), schedule=schedule)
    expected = {"block": layers // depth, "sublayer": 2 * layers, "none": 0}[schedule]
    assert trace == expected_trace(layers, depth, schedule)
    assert out.shape == (2, 5, cfg.hidden_size)
    assert dict(comm.calls) == ({"merge": expected} if expected else {})
    assert comm.bytes["merge"] == expected * 2 * 5 * cfg.hidden_size * 4  # fp32 [B*S, H] per merge
    if layers == 48:
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


def _frequencies(logits: torch.Tensor, params: SamplingParams, draws: int) -> torch.Tensor:
    """How often `sample` draws each token of one row of logits [V], over `draws` seeded draws."""
    gen = params.generator(torch.device("cpu"))
    tokens = sample(logits.expand(draws, -1).contiguous(), params, gen)
    return torch.bincount(tokens, minlength=logits.shape[-1]).double() / draws


@pytest.mark.parametrize("temperature", [0.25, 1.0, 4.0])
def test_sampling_follows_softmax_of_logits_over_temperature(temperature):
    """Without filters, the drawn frequencies match softmax(logits / temperature), computed here
    (within 0.02 over 20000 draws, > 6 standard errors), and differ from those of temperature 1
    (by more than 0.1) unless the temperature is 1."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    freq = _frequencies(logits, SamplingParams(temperature=temperature, seed=1), 20000)
    want = torch.exp(logits.double() / temperature)
    want /= want.sum()
    assert (freq - want).abs().max() <= 0.02, (freq, want)
    at_one = torch.exp(logits.double()) / torch.exp(logits.double()).sum()
    assert temperature == 1.0 or (freq - at_one).abs().max() > 0.1


@pytest.mark.parametrize("top_k,top_p,kept", [(0, 0.45, [0]), (0, 0.55, [0, 1]), (0, 0.75, [0, 1]),
                                              (0, 0.85, [0, 1, 2]), (0, 1.0, [0, 1, 2, 3]), (1, 1.0, [0]),
                                              (2, 1.0, [0, 1]), (3, 0.75, [0, 1]), (2, 0.85, [0, 1])])
def test_top_k_and_top_p_keep_exactly_the_expected_tokens(top_k, top_p, kept):
    """With token probabilities 0.5, 0.3, 0.15, 0.05, top_k keeps the k most likely tokens and top_p
    the most likely ones whose mass before the last one is below p (0.45 keeps 1 token, 0.55 and
    0.75 keep 2, 0.85 keeps 3; with both, the smaller set); each kept token is drawn in proportion
    to its probability among the kept ones (within 0.02 over 20000 seeded draws)."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    params = SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p, seed=2)
    freq = _frequencies(probs.log().float(), params, 20000)
    assert freq.nonzero()[:, 0].tolist() == kept
    want = probs[kept] / probs[kept].sum()
    assert (freq[kept] - want).abs().max() <= 0.02, (freq, want)


@pytest.mark.parametrize("bad", [dict(temperature=-0.1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_sampling_params_are_refused(bad):
    """Negative temperature or top_k, and top_p outside (0, 1], raise ValueError naming the field."""
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)


def test_slot_cache_prefill_then_decode_at_own_positions():
    """A prefill writes positions 0..S-1 of its slots; a decode step writes each slot at its own
    position and returns the first kv_len positions of slots 0..n-1."""
    cache = SlotKVCache(num_layers=2, max_batch=3, kv_heads=1, max_len=8, head_dim=2, dtype=torch.float32,
                        device=torch.device("cpu"))
    k = torch.arange(2 * 1 * 4 * 2, dtype=torch.float32).view(2, 1, 4, 2)
    cache.prefill(torch.tensor([2, 0]), torch.tensor([4, 4]))
    k_out, _ = cache.update(k, -k, 1)
    assert torch.equal(k_out, k) and torch.equal(cache.k[1][2, :, :4], k[0]) and torch.equal(cache.k[1][0, :, :4], k[1])
    step = torch.full((3, 1, 1, 2), 7.0)
    cache.decode(torch.tensor([4, 1, 5]), kv_len=6)
    k_all, v_all = cache.update(step, -step, 1)
    assert k_all.shape == (3, 1, 6, 2)
    assert torch.equal(k_all[0, 0, 4], step[0, 0, 0]) and torch.equal(k_all[1, 0, 1], step[1, 0, 0])
    assert torch.equal(k_all[2, 0, 5], step[2, 0, 0]) and torch.equal(v_all[2, 0, 5], -step[2, 0, 0])
    assert torch.equal(k_all[0, 0, :4], k[1, 0])  # slot 0's prefill is kept
    assert cache.k[0].abs().sum() == 0  # other layers untouched
