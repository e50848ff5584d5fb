"""Plain helpers shared by the tests: tiny random checkpoints (PT, tamm, Llama) with non-degenerate
weights, conversions (the converter's functions; scripts as subprocesses), and comparisons.

Random weights follow std ~ 1/sqrt(fan_in) for every linear map (so activations keep their scale
through the layers and random models produce varied text), norm weights ~ 1 + 0.1 * randn (so a
norm applied to the wrong tensor, or dropped, changes the output), embeddings std 1, or H**-0.5
when the LM head is tied to them (otherwise the greedy next token is just the input token).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
CONVERT_SCRIPT = REPO / "scripts" / "convert_checkpoint.py"
EXPORT_SMOLLM2_SCRIPT = REPO / "scripts" / "export_smollm2.py"


# ---- random weights --------------------------------------------------------------------------
def _is_norm(name: str) -> bool:
    return "norm" in name.rsplit(".", 1)[0].lower()


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int, tied: bool = False, fan_in_dim: int = -1) -> torch.nn.Module:
    """Fill every parameter of `module` in place: norms ~ 1 + 0.1 randn, embeddings ~ N(0, 1)
    (N(0, 1/H) when `tied`), matrices ~ N(0, 1/fan_in) with fan_in = shape[fan_in_dim]
    (-1 for torch [out, in] weights, -2 for tamm's vectorized [tracks, in, out] ones)."""
    gen = torch.Generator().manual_seed(seed)
    seen = set()
    for name, p in module.named_parameters(remove_duplicate=True):
        if id(p) in seen:
            continue
        seen.add(id(p))
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if _is_norm(name):
            p.copy_(1.0 + 0.1 * noise)
        elif "embed" in name:
            p.copy_(noise * (p.shape[-1] ** -0.5 if tied else 1.0))
        elif p.dim() >= 2:
            p.copy_(noise * p.shape[fan_in_dim] ** -0.5)
        else:
            raise AssertionError(f"unexpected 1-d parameter {name}")
    return module


# ---- PT checkpoints --------------------------------------------------------------------------
def make_pt_model(preset: str = "tiny", seed: int = 0, **overrides):
    """A random `PTForCausalLM` (eval mode, fp32) of a preset with overrides, filled by `randomize_`."""
    from pt_trtllm.convert.random_checkpoint import random_model

    return random_model(preset, seed, lambda m: randomize_(m, seed, tied=m.config.tie_word_embeddings), **overrides)


def make_pt_checkpoint(path: str | Path, preset: str = "tiny", seed: int = 0, **overrides) -> Path:
    """Save `make_pt_model(preset, seed, **overrides)` as a PT HF checkpoint (pt-spec section 4,
    safetensors, fp32) into `path` and return it."""
    from pt_trtllm.convert.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(path, preset, seed, "hf",
                                   lambda m: randomize_(m, seed, tied=m.config.tie_word_embeddings), **overrides)


# ---- tamm checkpoints ------------------------------------------------------------------------
TAMM_TINY = dict(vocab_size=97, num_tracks=2, num_layers_per_track=4, num_layers_per_track_per_sync_point=2,
                 hidden_dim=32, attention_hidden_dim=32, dense_feed_forward_hidden_dim=48, num_heads=4,
                 num_kv_heads=2, rope_theta=10000.0, attention_layer_pattern=("local_rope",),
                 feed_forward_layer_pattern=("dense",), local_attention_window_size=23)


def make_tamm_checkpoint(path: str | Path, seed: int = 0, **overrides):
    """A random tamm `AFMParallelTrackMoEConfig` model saved as a tamm HF checkpoint
    (`TammCausalLMForCausalLM.save_pretrained`). Returns (path, the tamm HF model in eval mode)."""
    from tamm.hf.transformers.models.causal_lm.modeling_causal_lm import TammCausalLMForCausalLM
    from tamm.models.afm_text.afm_pt_moe import AFMParallelTrackMoEConfig

    cfg = AFMParallelTrackMoEConfig(**{**TAMM_TINY, **overrides})
    torch.manual_seed(seed)
    model = cfg.create_model()
    randomize_(model, seed, fan_in_dim=-2)  # tamm vectorized weights are [tracks, in, out]
    hf = TammCausalLMForCausalLM.from_tamm_config(cfg, state_dict=model.state_dict())
    hf.save_pretrained(path, safe_serialization=True)
    return Path(path), hf.eval()


# ---- Llama checkpoints -----------------------------------------------------------------------
LLAMA_TINY = dict(vocab_size=128, hidden_size=48, num_attention_heads=8, num_key_value_heads=4, head_dim=8,
                  intermediate_size=96, num_hidden_layers=3, rms_norm_eps=1e-5, rope_theta=5000.0,
                  max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def make_llama_checkpoint(path: str | Path, seed: int = 0, safe: bool = True, **overrides):
    """A random transformers `LlamaForCausalLM` (fp32, eager attention) saved into `path`.
    Returns (path, model in eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**LLAMA_TINY, **overrides})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    randomize_(model, seed, tied=cfg.tie_word_embeddings)
    model.tie_weights()
    model.save_pretrained(path, safe_serialization=safe)
    return Path(path), model.eval()


def edit_config(path: str | Path, **changes) -> dict:
    """Rewrite `path`/config.json with `changes` (a value of `...` deletes the field)."""
    file = Path(path) / "config.json"
    data = json.loads(file.read_text())
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    file.write_text(json.dumps(data, indent=2))
    return data


# ---- conversions ------------------------------------------------------------------------------
def convert_ok(src: str | Path, dst: str | Path, **options) -> Path:
    """`pt_trtllm.convert.writer.convert(src, dst, **options)` (no progress bar); returns `dst`."""
    from pt_trtllm.convert.writer import convert

    convert(src, dst, progress=False, **options)
    return Path(dst)


def convert_refused(src: str | Path, dst: str | Path, **options) -> str:
    """Convert `src` into `dst`, which must fail with ONE one-line CheckpointError (the command line
    prints it as one `error:` line) and write nothing: no `dst` (unless it existed before) and no
    temporary directory beside it. Returns the message."""
    from pt_trtllm.convert.writer import convert
    from pt_trtllm.formats import CheckpointError

    dst = Path(dst)
    existed = dst.exists()
    try:
        convert(src, dst, progress=False, **options)
    except CheckpointError as e:
        message = str(e)
    else:
        raise AssertionError(f"converting {src} -> {dst} {options} did not fail")
    print(message)
    assert "\n" not in message, f"not one line: {message!r}"
    assert existed or not dst.exists(), f"{dst} was created"
    assert not leftovers(dst.parent, dst.name), f"temporary directories left behind: {leftovers(dst.parent, dst.name)}"
    return message


def run_script(script: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a script of this repository in a fresh Python process (the real command line)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def leftovers(parent: Path, name: str) -> list[str]:
    """Temporary siblings an atomic write of `parent/name` may leave behind (it must not)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


# ---- comparisons ------------------------------------------------------------------------------
def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str) -> None:
    """`torch.testing.assert_close(actual, expected, atol=atol, rtol=0)`, printing the max |diff|."""
    report(what, max_diff(actual, expected))
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0, msg=lambda m: f"{what}: {m}")


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    return (a.float() - b.float()).abs().max().item()


def report(what: str, diff: float) -> str:
    line = f"{what}: max |logit diff| = {diff:.3e}"
    print(line)
    return line


def random_ids(vocab: int, shape: tuple[int, ...], seed: int = 0, low: int = 3) -> torch.Tensor:
    """Token ids avoiding the few special ids at the bottom of the vocabulary."""
    return torch.randint(low, vocab, shape, generator=torch.Generator().manual_seed(seed))


def run_clients(client, jobs: list, clients: int = 16, timeout: float = 600) -> tuple[float, int]:
    """`client(share)` on `clients` threads, thread i taking jobs[i::clients]: the seconds they took
    and how many threads were still running (each is joined for at most `timeout`, so a load test's
    loop stays bounded)."""
    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(jobs[i::clients],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return time.monotonic() - start, sum(t.is_alive() for t in threads)
