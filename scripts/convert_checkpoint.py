#!/usr/bin/env python3
"""Convert a checkpoint (this project's HF PT format, an Apple tamm PT model, or a dense HF Llama)
into per-rank TensorRT-LLM checkpoints (default; pt-spec section 5) or the HF PT format (section 4).

  python scripts/convert_checkpoint.py --model_dir SRC --output_dir DST [--output_format {trtllm,hf}]
      [--dtype {auto,float32,float16,bfloat16}] [--num_tracks T] [--block_depth D] [--max_position_embeddings N]
      [--workers N] [--force]
"""

import argparse
import sys
import time

from pt_trtllm.formats import CheckpointError
from pt_trtllm.convert.writer import convert


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_dir", required=True, help="source checkpoint directory (config.json + *.safetensors)")
    p.add_argument("--output_dir", required=True, help="destination directory (written atomically)")
    p.add_argument("--output_format", choices=("trtllm", "hf"), default="trtllm",
                   help="trtllm: config.json + rank{t}.safetensors (default); hf: the HF PT format")
    p.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                   help="output dtype; auto keeps the source's")
    p.add_argument("--num_tracks", type=int, help="tracks T (required for a Llama source; must match otherwise)")
    p.add_argument("--block_depth", type=int, help="block depth D of a Llama source (default 1)")
    p.add_argument("--max_position_embeddings", type=int,
                   help="tamm sources only (tamm has no maximum length): default max(4096, window + 1)")
    p.add_argument("--workers", type=int, default=1, help="ranks converted in parallel")
    p.add_argument("--force", action="store_true", help="replace an existing --output_dir")
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        source = convert(args.model_dir, args.output_dir, args.output_format, args.dtype, args.num_tracks,
                         args.block_depth, args.workers, args.force,
                         max_position_embeddings=args.max_position_embeddings)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = source.config
    print(f"converted {source.kind} checkpoint {args.model_dir} -> {args.output_dir} ({args.output_format}, "
          f"T={cfg.num_tracks}, L={cfg.num_hidden_layers}, D={cfg.block_depth}, schedule={cfg.merge_schedule}) "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
