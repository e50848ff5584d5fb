#!/usr/bin/env python3
"""Build the T rank engines of a per-rank PT checkpoint with TensorRT-LLM (1.2.1, TensorRT 10.x).

  python scripts/build.py --checkpoint_dir CKPT --output_dir ENGINES [--schedule {block,sublayer}]
      [--max_batch_size B --max_input_len I --max_seq_len S --max_num_tokens N ...]
      [--gather_context_logits] [plugin flags of trtllm-build, e.g. --gemm_plugin auto]

It builds rank 0..T-1 one after another on one GPU (or one per MPI rank under mpirun, or --workers
processes), through TensorRT-LLM's Python build API: the same path and the same flags as
trtllm-build where they overlap. The engines follow the checkpoint's merge_schedule; --schedule
overrides it (a TP baseline from the same checkpoint: --schedule sublayer), and the engine's
config.json records the schedule it was built with. Without --schedule this is equivalent to

  trtllm-build --checkpoint_dir CKPT --output_dir ENGINES \\
      --model_cls_file pt_trtllm/trtllm/model.py --model_cls_name PTForCausalLM --workers 1 [same flags]

(with pt_trtllm importable: `pip install --no-deps -e .` in the TensorRT-LLM environment).
"""

import argparse
import json
import sys
import time
from pathlib import Path

INSTALL_HINT = ("scripts/build.py needs TensorRT-LLM 1.2.1 with TensorRT 10.x: install NVIDIA's "
                "tensorrt_llm==1.2.1 wheel or use its container (docs/trtllm.md)")


def parse_args(argv, build_config_cls, add_plugin_argument) -> argparse.Namespace:
    from pt_trtllm.trtllm.support import ENGINE_SCHEDULES

    d = build_config_cls  # the defaults of trtllm-build are BuildConfig's
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint_dir", required=True, help="per-rank checkpoint from convert_checkpoint.py")
    p.add_argument("--output_dir", default="engine_outputs", help="where config.json and rank{t}.engine go")
    p.add_argument("--schedule", choices=ENGINE_SCHEDULES, help="merge schedule (default: the checkpoint's)")
    p.add_argument("--max_batch_size", type=int, default=d.max_batch_size)
    p.add_argument("--max_input_len", type=int, default=d.max_input_len)
    p.add_argument("--max_seq_len", type=int, default=d.max_seq_len,
                   help="prompt + output tokens (default: max_position_embeddings)")
    p.add_argument("--max_beam_width", type=int, default=d.max_beam_width)
    p.add_argument("--max_num_tokens", type=int, default=d.max_num_tokens)
    p.add_argument("--opt_num_tokens", type=int, default=d.opt_num_tokens)
    p.add_argument("--gather_context_logits", action="store_true",
                   help="let the runtime return prefill logits (run.py --output_logits needs it)")
    p.add_argument("--logits_dtype", choices=("float16", "float32"), help="default: the config's (float32)")
    p.add_argument("--output_timing_cache", default=d.output_timing_cache, help="TensorRT timing cache file to write")
    p.add_argument("--workers", type=int, default=1, help="ranks built in parallel (at most the GPU count)")
    p.add_argument("--log_level", default="info")
    add_plugin_argument(p.add_argument_group("Plugin config arguments (as trtllm-build)"))
    return p.parse_args(argv)


def load_config(checkpoint_dir: str, schedule: str | None):
    """The checkpoint's PTPretrainedConfig with the schedule to build (ValueError naming the problem)."""
    from pt_trtllm.trtllm.model import PTForCausalLM
    from pt_trtllm.trtllm.support import check_supported

    path = Path(checkpoint_dir) / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ValueError(f"{path} is not a readable config.json of a per-rank checkpoint") from None
    if data.get("architecture") != "PTForCausalLM":
        raise ValueError(f"{path} has architecture {data.get('architecture')!r}, not PTForCausalLM: convert it "
                         "with scripts/convert_checkpoint.py first")
    config = PTForCausalLM.config_class(**data)
    if schedule is not None:
        config.merge_schedule = schedule
    check_supported(config.pt_config(), config.merge_schedule)
    return config


def main(argv=None) -> int:
    try:
        from tensorrt_llm.builder import BuildConfig
        from tensorrt_llm.commands.build import parallel_build
        from tensorrt_llm.logger import logger
        from tensorrt_llm.plugin import PluginConfig, add_plugin_argument
    except ImportError:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    import torch

    from pt_trtllm.schedule import merges_per_forward
    from pt_trtllm.trtllm.model import PTForCausalLM

    args = parse_args(argv, BuildConfig, add_plugin_argument)
    logger.set_level(args.log_level)
    start = time.perf_counter()
    try:
        config = load_config(args.checkpoint_dir, args.schedule)
        plugin_config = PluginConfig.from_arguments(args)
        plugin_config.validate()
        if plugin_config.lora_plugin is not None:
            raise ValueError("--lora_plugin is not supported by the PT network definition")
        build_config = BuildConfig.from_dict(
            {"max_input_len": args.max_input_len, "max_seq_len": args.max_seq_len,
             "max_batch_size": args.max_batch_size, "max_beam_width": args.max_beam_width,
             "max_num_tokens": args.max_num_tokens, "opt_num_tokens": args.opt_num_tokens,
             "gather_context_logits": args.gather_context_logits, "output_timing_cache": args.output_timing_cache,
             "strongly_typed": True},
            plugin_config=plugin_config)
        workers = max(1, min(torch.cuda.device_count(), args.workers))
        parallel_build(config, args.checkpoint_dir, build_config, args.output_dir, workers, args.log_level,
                       PTForCausalLM, logits_dtype=args.logits_dtype)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = config.pt_config()
    print(f"built {cfg.num_tracks} rank engines of {args.checkpoint_dir} -> {args.output_dir} "
          f"(schedule={cfg.merge_schedule}, merges/forward="
          f"{merges_per_forward(cfg.merge_schedule, cfg.num_hidden_layers, cfg.block_depth)}, "
          f"dtype={config.dtype}) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
