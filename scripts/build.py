#!/usr/bin/env python3
"""Build the T rank engines of a per-rank PT checkpoint with TensorRT-LLM (1.2.1, TensorRT 10.x).

  python scripts/build.py --checkpoint_dir CKPT --output_dir ENGINES [--schedule {block,sublayer}]
      [--merge_impl {allreduce,allreduce_fused_norm,pt_plugin}] [--max_batch_size B --max_input_len I --max_seq_len S
      --max_num_tokens N ...] [--gather_context_logits]
      [plugin flags of trtllm-build, e.g. --gemm_plugin auto]

It builds rank 0..T-1 one after another on one GPU (or one per MPI rank under mpirun, or --workers
processes), through TensorRT-LLM's Python build API: the same path and the same flags as
trtllm-build where they overlap. The engines follow the checkpoint's merge_schedule and merge_impl;
--schedule overrides the first (a TP baseline from the same checkpoint: --schedule sublayer) and
--merge_impl the second (allreduce_fused_norm: each merge's AllReduce node also applies the next
RMSNorm; pt_plugin: each merge is one node of the project's PTTrackMerge plugin), and the engine's
config.json records both. An engine with merge_impl pt_plugin needs libpt_trtllm_plugins.so
(plugins/, `make plugins`; $PT_TRTLLM_PLUGINS_LIB or plugins/build/, pt_trtllm/plugin_lib.py): it is
loaded before anything is built, and a missing library is a one-line error naming it. Plugins the
PT network cannot take (--lora_plugin, --gemm_allreduce_plugin, --user_buffer) are refused by name
before anything is built. The config is read by PTPretrainedConfig.from_checkpoint (TensorRT-LLM's entry point, with
these overrides) and each rank built by TensorRT-LLM's own PTForCausalLM.from_checkpoint. Without
--schedule and --merge_impl this is equivalent to

  trtllm-build --checkpoint_dir CKPT --output_dir ENGINES \\
      --model_cls_file pt_trtllm/trtllm/model.py --model_cls_name PTForCausalLM --workers 1 [same flags]

(with pt_trtllm importable: `pip install --no-deps -e .` in the TensorRT-LLM environment).
"""

import argparse
import sys
import time

INSTALL_HINT = ("scripts/build.py needs TensorRT-LLM 1.2.1 with TensorRT 10.x: install NVIDIA's "
                "tensorrt_llm==1.2.1 wheel or use its container (docs/trtllm.md)")


def parse_args(argv, build_config_cls, add_plugin_argument) -> argparse.Namespace:
    from pt_trtllm.merge import MERGE_IMPLS
    from pt_trtllm.schedule import CONTEXTS

    d = build_config_cls  # the defaults of trtllm-build are BuildConfig's
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint_dir", required=True, help="per-rank checkpoint from convert_checkpoint.py")
    p.add_argument("--output_dir", default="engine_outputs", help="where config.json and rank{t}.engine go")
    p.add_argument("--schedule", choices=CONTEXTS["engine"], help="merge schedule (default: the checkpoint's)")
    p.add_argument("--merge_impl", choices=MERGE_IMPLS,
                   help="how the ranks merge, pt_trtllm.merge.MERGE_IMPLS (default: the checkpoint's)")
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

    from pt_trtllm.plugin_lib import PluginLibraryError
    from pt_trtllm.schedule import merges_per_forward
    from pt_trtllm.trtllm.model import PTForCausalLM
    from pt_trtllm.trtllm.support import check_plugin_config, load_merge_plugins

    args = parse_args(argv, BuildConfig, add_plugin_argument)
    logger.set_level(args.log_level)
    start = time.perf_counter()
    try:
        config = PTForCausalLM.config_class.from_checkpoint(args.checkpoint_dir, schedule=args.schedule,
                                                            merge_impl=args.merge_impl)
        plugin_config = PluginConfig.from_arguments(args)
        plugin_config.validate()
        check_plugin_config(plugin_config)  # --lora_plugin, --gemm_allreduce_plugin, --user_buffer, by name
        load_merge_plugins(config.merge_impl)  # pt_plugin: libpt_trtllm_plugins.so, before anything is built
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
    except (ValueError, PluginLibraryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"built {config.num_tracks} rank engines of {args.checkpoint_dir} -> {args.output_dir} "
          f"(schedule={config.merge_schedule}, merges/forward="
          f"{merges_per_forward(config.merge_schedule, config.num_hidden_layers, config.block_depth)}, "
          f"merge_impl={config.merge_impl}, dtype={config.dtype}) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
