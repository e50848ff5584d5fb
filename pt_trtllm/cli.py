"""What the command-line entry points share (scripts/run.py on the PyTorch runtime and on
TensorRT-LLM engines, scripts/serve.py, the benchmarks): the device flags, the tokenizer and EOS ids,
prompts from the command line and their limits, the printed result, and atomic output files."""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path

import numpy as np


COMMUNICATORS = ("mpi4py", "nccl", "pt_plugin")


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    """--device, --threads, --comm, --plugin_transport, --no_cuda_graphs and --kv_buckets (read by
    runtime.launch.setup and TrackEngine)."""
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    parser.add_argument("--threads", type=int, help="torch threads per rank on CPU (default: cores / local ranks)")
    parser.add_argument("--comm", choices=COMMUNICATORS,
                        help="the communicator: mpi4py (CPU), nccl (CUDA; torch.distributed) or pt_plugin (CUDA: the "
                             "merges through libpt_trtllm_plugins.so, the rest through mpi4py); default: mpi4py on "
                             "CPU, nccl on CUDA")
    parser.add_argument("--plugin_transport", choices=("auto", "nccl", "oneshot"), default="auto",
                        help="--comm pt_plugin: the library's all-reduce (auto: one-shot over peer memory for small "
                             "messages, NCCL otherwise; oneshot also lets ranks share one GPU)")
    parser.add_argument("--no_cuda_graphs", action="store_true", help="run CUDA decode steps eagerly")
    parser.add_argument("--kv_buckets", action="store_true",
                        help="CUDA: one decode graph per cache-length bucket of 256 positions, so a step reads the KV "
                             "cache up to the batch's longest sequence instead of all of it (default: one graph per "
                             "batch size over the whole cache)")


def load_tokenizer(path):
    """The HF tokenizer in `path` (None for None); ValueError naming --tokenizer_dir if it fails."""
    if path is None:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any failure is a bad --tokenizer_dir
        raise ValueError(f"--tokenizer_dir {path}: cannot load a tokenizer ({e.__class__.__name__}: {e})") from None


def parse_prompts(args, tokenizer) -> list[list[int]]:
    """Token ids of every prompt, from --input_text (with the tokenizer) or --input_ids "1,2;3"."""
    if (args.input_text is None) == (args.input_ids is None):
        raise ValueError("give exactly one of --input_text or --input_ids")
    if args.input_text is not None:
        if tokenizer is None:
            raise ValueError("--input_text needs --tokenizer_dir")
        return [tokenizer.encode(t) for t in args.input_text]
    try:
        return [[int(x) for x in part.split(",") if x.strip()] for part in args.input_ids.split(";")]
    except ValueError:
        raise ValueError(f"--input_ids {args.input_ids!r} is not a list like \"1,2,3;4,5\"") from None


def check_prompts(prompts: list[list[int]], max_output_len: int, max_batch: int, max_prompt_len: int,
                  vocab_size: int, limits: str) -> None:
    """ValueError naming the problem: no prompts, more than max_batch, max_output_len < 1, an empty
    prompt, one longer than max_prompt_len (`limits` says where that comes from), or token ids
    outside the vocabulary."""
    if not prompts:
        raise ValueError("no prompts given")
    if len(prompts) > max_batch:
        raise ValueError(f"{len(prompts)} prompts exceed the maximum batch size {max_batch}")
    if max_output_len < 1:
        raise ValueError(f"max_output_len must be >= 1, got {max_output_len}")
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty")
        if len(p) > max_prompt_len:
            raise ValueError(f"prompt {i} has {len(p)} tokens; with max_output_len={max_output_len} the limit is "
                             f"{max_prompt_len} ({limits})")
        bad = [t for t in p if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab_size}): {bad[:5]}")


def end_ids(end_id: int | None, model_eos, tokenizer) -> list[int]:
    """The EOS ids: --end_id, else the model's eos_token_id (an id or a list), else the tokenizer's."""
    eos = end_id if end_id is not None else model_eos
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return list(eos) if isinstance(eos, list) else [eos]


def report(record: dict, prompts: list[list[int]], runtime: str) -> None:
    """Print a run's record (scripts/run.py's --output_json fields): one line per prompt, then the
    schedule, merge counts and timings; `runtime` names what ran it (e.g. "comm=mpi4py device=cpu")."""
    for i, ids in enumerate(record["output_ids"]):
        shown = repr(record["text"][i]) if record["text"] else ids
        print(f"[{i}] prompt {len(prompts[i])} tokens -> {len(ids)} generated: {shown}")
    t = record["timings"]
    tpot = f"{t['tpot_ms']:.2f} ms" if t["tpot_ms"] is not None else "n/a"
    others = record.get("other_collectives_per_step")
    others = f" other collectives/step={others}" if others is not None else ""
    print(f"schedule={record['schedule']} merges/forward={record['merges_per_forward']}{others} "
          f"ranks={record['world_size']} {runtime} TTFT={t['ttft_ms']:.1f} ms TPOT={tpot}")


def npy_bytes(array: np.ndarray) -> bytes:
    """A float32 .npy file's bytes."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32))
    return buffer.getvalue()


def write_atomic(path: str, data: bytes) -> None:
    """Write through a temporary file in the same directory, renamed at the end."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
