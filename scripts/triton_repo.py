#!/usr/bin/env python3
"""Write a Triton model repository that serves the TensorRT-LLM engines of a PT model with Triton's
TensorRT-LLM backend (1.2.1): ensemble -> preprocessing -> tensorrt_llm -> postprocessing.

  python scripts/triton_repo.py --engine_dir ENGINES --tokenizer_dir HF_DIR --output_dir REPO
      [--max_batch_size N] [--decoupled] [--batching_strategy inflight_fused_batching]
      [--kv_cache_free_gpu_mem_fraction 0.9] [--force]

ENGINES is scripts/build.py's output (config.json + rank{t}.engine for the T tracks). Then, in a
Triton TensorRT-LLM container (see docs/serving.md):

  python3 triton_backend/scripts/launch_triton_server.py --world_size T --model_repo REPO

(for engines built with --merge_impl pt_plugin the printed command starts with LD_PRELOAD of the
plugin library and the plugin's rendezvous variables: docs/trtllm.md).
"""

import argparse
import shutil
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine_dir", required=True, help="TensorRT-LLM engines of a PT model (scripts/build.py)")
    p.add_argument("--tokenizer_dir", required=True, help="HF tokenizer for pre/postprocessing")
    p.add_argument("--output_dir", required=True, help="the model repository to write")
    p.add_argument("--max_batch_size", type=int, help="Triton max_batch_size (default: the engine's)")
    p.add_argument("--decoupled", action="store_true",
                   help="decoupled tensorrt_llm model: streaming (gRPC stream or generate_stream, 'stream': true)")
    p.add_argument("--batching_strategy", default="inflight_fused_batching",
                   choices=("inflight_fused_batching", "inflight_batching", "V1"))
    p.add_argument("--batch_scheduler_policy", default="guaranteed_no_evict",
                   choices=("guaranteed_no_evict", "max_utilization"))
    p.add_argument("--kv_cache_free_gpu_mem_fraction", type=float, default=0.9)
    p.add_argument("--max_queue_delay_microseconds", type=int, default=0)
    p.add_argument("--enable_kv_cache_reuse", action="store_true")
    p.add_argument("--gpu_device_ids", help="e.g. 0,1 (default: the backend picks)")
    p.add_argument("--preprocessing_instances", type=int, default=1)
    p.add_argument("--postprocessing_instances", type=int, default=1)
    p.add_argument("--force", action="store_true", help="replace an existing --output_dir")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from pt_trtllm.trtllm.triton_repo import launch_command, options_from_engine, write_repository

    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()):
        if not args.force:
            print(f"error: --output_dir {out} exists and is not empty (--force replaces it)", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    try:
        options = options_from_engine(
            args.engine_dir, args.tokenizer_dir, out, args.max_batch_size, decoupled=args.decoupled,
            batching_strategy=args.batching_strategy, batch_scheduler_policy=args.batch_scheduler_policy,
            kv_cache_free_gpu_mem_fraction=args.kv_cache_free_gpu_mem_fraction,
            max_queue_delay_microseconds=args.max_queue_delay_microseconds,
            enable_kv_cache_reuse=args.enable_kv_cache_reuse, gpu_device_ids=args.gpu_device_ids,
            preprocessing_instances=args.preprocessing_instances,
            postprocessing_instances=args.postprocessing_instances)
        written = write_repository(options)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"wrote {path}")
    print(f"serve it ({options.world_size} ranks, one track each):\n  {launch_command(options)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
