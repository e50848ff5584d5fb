"""Write a source as an HF PT checkpoint (pt-spec section 4) or as per-rank TensorRT-LLM checkpoints
(section 5). Output is atomic: everything goes to a temporary sibling directory that is renamed
into place at the end, so a failure never leaves a half-written checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ..dtypes import DTYPES, dtype_name
from ..formats import CheckpointError, concat_dim, hf_layout, rank_config, rank_layout, rank_sources
from .sources import Source, open_source

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json")


@contextlib.contextmanager
def atomic_dir(dst: str | Path, force: bool):
    """Yield a fresh temporary directory next to `dst`; on success it replaces `dst`."""
    dst = Path(dst)
    if dst.exists() and not force:
        raise CheckpointError(f"--output_dir {dst} already exists; pass --force to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield tmp
        if dst.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
            os.replace(dst, old / "x")
            os.replace(tmp, dst)
            shutil.rmtree(old)
        else:
            os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _checked(name: str, tensor: torch.Tensor, shape: tuple, dtype: torch.dtype, problems: list[str]) -> torch.Tensor:
    if tuple(tensor.shape) != tuple(shape):
        problems.append(f"{name}: converted shape {list(tensor.shape)}, expected {list(shape)}")
    return tensor.to(dtype, copy=True).contiguous()  # copy: sources may hand out shared storage


def write_hf(source: Source, out: Path, dtype: torch.dtype, progress: bool) -> None:
    cfg = source.config
    layout = hf_layout(cfg)
    problems: list[str] = []
    tensors = {}
    for name, shape in tqdm(layout.items(), desc="convert (hf)", unit="tensor", disable=not progress):
        tensors[name] = _checked(name, source.tensor(name), shape, dtype, problems)
    if problems:
        raise CheckpointError(problems)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg.architectures = ["PTForCausalLM"]
    cfg.dtype = dtype_name(dtype)
    cfg.save_pretrained(out)


def write_ranks(source: Source, out: Path, dtype: torch.dtype, workers: int, progress: bool) -> None:
    """One rank{t}.safetensors per track; each worker holds one rank's tensors at a time."""
    cfg = source.config
    total = sum(len(rank_sources(cfg, t)) for t in range(cfg.num_tracks))
    bar = tqdm(total=total, desc=f"convert ({cfg.num_tracks} ranks)", unit="tensor", disable=not progress)

    def write_rank(rank: int) -> list[str]:
        problems: list[str] = []
        layout = rank_layout(cfg, rank)
        tensors = {}
        for name, srcs in rank_sources(cfg, rank).items():
            parts = [source.tensor(s) for s in srcs]
            tensor = torch.cat(parts, dim=concat_dim(name, len(parts))) if len(parts) > 1 else parts[0]
            tensors[name] = _checked(f"rank{rank} {name}", tensor, layout[name], dtype, problems)
            bar.update(1)
        if not problems:
            save_file(tensors, str(out / f"rank{rank}.safetensors"), metadata={"format": "pt"})
        return problems

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        problems = [p for result in pool.map(write_rank, range(cfg.num_tracks)) for p in result]
    bar.close()
    if problems:
        raise CheckpointError(problems)
    (out / "config.json").write_text(json.dumps(rank_config(cfg, dtype_name(dtype)), indent=2) + "\n")


def convert(model_dir: str | Path, output_dir: str | Path, output_format: str = "trtllm", dtype: str = "auto",
            num_tracks: int | None = None, block_depth: int | None = None, workers: int = 1,
            force: bool = False, progress: bool = True, max_position_embeddings: int | None = None) -> Source:
    """Convert `model_dir` (PT HF, tamm or Llama) into `output_dir`; returns the opened source."""
    if output_format not in ("trtllm", "hf"):
        raise CheckpointError(f"--output_format {output_format!r} is not one of trtllm, hf")
    if dtype != "auto" and dtype not in DTYPES:
        raise CheckpointError(f"--dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    if Path(output_dir).exists() and not force:  # fail before reading anything
        raise CheckpointError(f"--output_dir {output_dir} already exists; pass --force to replace it")
    source = open_source(model_dir, num_tracks, block_depth, max_position_embeddings)
    out_dtype = source.dtype if dtype == "auto" else DTYPES[dtype]
    with atomic_dir(output_dir, force) as tmp:
        if output_format == "hf":
            write_hf(source, tmp, out_dtype, progress)
        else:
            write_ranks(source, tmp, out_dtype, workers, progress)
        for name in TOKENIZER_FILES:
            if (source.path / name).is_file():
                shutil.copy2(source.path / name, tmp / name)
    return source
