#!/usr/bin/env python3
"""Generate text with a PT model served on T ranks, one track per rank (pt-spec section 7).

  mpirun -n T python scripts/run.py --engine_dir DIR --max_output_len N
      (--input_text TEXT [TEXT ...] --tokenizer_dir TOK | --input_ids "1,2,3;4,5")
      [--schedule {block,sublayer,none}] [--temperature F --top_k K --top_p P --seed S]
      [--output_json PATH] [--output_logits PATH.npy]

DIR is a per-rank checkpoint from convert_checkpoint.py (run by the PyTorch runtime: MPI on CPU,
NCCL on GPUs) or an engine directory from build.py (run by TensorRT-LLM).
"""

import argparse
import hashlib
import json
import sys
import traceback

from pt_trtllm.cli import add_device_flags, end_ids, load_tokenizer, npy_bytes, parse_prompts, report, write_atomic
from pt_trtllm.formats import CheckpointError
from pt_trtllm.plugin_lib import PluginLibraryError
from pt_trtllm.runtime.launch import setup, start_on_all_ranks
from pt_trtllm.runtime.sampling import SamplingParams
from pt_trtllm.schedule import CONTEXTS

NONE_NOTE = "schedule 'none' never merges the tracks: a timing-only upper bound, NOT a model output"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine_dir", required=True, help="per-rank checkpoint or TensorRT-LLM engine directory")
    p.add_argument("--max_output_len", type=int, required=True, help="tokens to generate (at most)")
    p.add_argument("--input_text", nargs="+", help="prompt(s); needs --tokenizer_dir")
    p.add_argument("--tokenizer_dir", help="HF tokenizer directory")
    p.add_argument("--input_ids", help='token ids: "1,2,3;4,5" (prompts separated by ";")')
    p.add_argument("--schedule", choices=CONTEXTS["runtime"], help="merge schedule (default: the checkpoint's merge_schedule)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top_k", type=int, default=0, help="0 = no top-k filter")
    p.add_argument("--top_p", type=float, default=1.0, help="1 = no nucleus filter")
    p.add_argument("--seed", type=int, help="sampling seed")
    p.add_argument("--end_id", type=int, help="EOS token id (default: the model's eos_token_id)")
    p.add_argument("--output_json", help="write ids, text, merge counts and timings here (rank 0)")
    p.add_argument("--output_logits", help="write the prefill logits [batch, prompt_len, vocab] as float32 .npy")
    add_device_flags(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (fuses small ops)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from pt_trtllm.trtllm.detect import is_engine_dir

    if is_engine_dir(args.engine_dir):
        from pt_trtllm.trtllm.runner import run_engine

        return run_engine(args)

    try:
        device, comm = setup(args.device, args.threads, args.comm, args.plugin_transport)
    except (ValueError, PluginLibraryError) as e:  # the same on every rank
        print(f"error: {e}", file=sys.stderr)
        return 2

    def start():
        from pt_trtllm.runtime.engine import TrackEngine

        params = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
        tokenizer = load_tokenizer(args.tokenizer_dir)
        prompts = parse_prompts(args, tokenizer)
        longest = max((len(p) for p in prompts), default=0)
        engine = TrackEngine(args.engine_dir, comm, device, max_batch=max(1, len(prompts)),
                             max_len=longest + args.max_output_len, cuda_graphs=not args.no_cuda_graphs,
                             compile=args.compile, kv_buckets=args.kv_buckets)
        engine.check_request(prompts, args.max_output_len)
        if args.output_logits and len({len(p) for p in prompts}) != 1:
            raise ValueError("--output_logits needs prompts of equal length")
        eos_ids = set(end_ids(args.end_id, engine.cfg.eos_token_id, tokenizer))
        return engine, tokenizer, prompts, params, eos_ids

    engine, tokenizer, prompts, params, eos_ids = start_on_all_ranks(comm, start, (ValueError, CheckpointError))
    try:
        gen = engine.generate(prompts, args.max_output_len, params, args.schedule, eos_ids,
                              prefill_logits=bool(args.output_logits))
    except Exception:  # a failure here can differ between ranks: take them all down
        traceback.print_exc()
        sys.stderr.flush()
        comm.abort(1)
        return 1
    # every rank's digest of the ids it generated: they agree unless a rank used its own tokens
    digests = comm.all_gather_object(ids_digest(gen.output_ids), kind="digest")
    comm.close()
    if comm.rank != 0:
        return 0
    text = [tokenizer.decode(ids, skip_special_tokens=True) for ids in gen.output_ids] if tokenizer else None
    if gen.schedule == "none":
        print(f"[{NONE_NOTE}]")
    record = {"output_ids": gen.output_ids, "text": text, "schedule": gen.schedule,
              "merges_per_forward": gen.merges_per_forward,
              "other_collectives_per_step": gen.other_collectives_per_step,
              "other_collectives_per_forward": gen.other_collectives_per_forward, "timings": gen.timings,
              "world_size": comm.world_size, "communicator": comm.name, "device": str(device),
              "dtype": str(engine.dtype).removeprefix("torch."), "rank_digests": digests}
    report(record, prompts, f"comm={comm.name} device={device}")
    if len(set(digests)) != 1:
        print(f"error: the ranks generated different tokens (digests {digests})", file=sys.stderr)
    if args.output_json:
        if gen.schedule == "none":
            record["note"] = NONE_NOTE
        write_atomic(args.output_json, (json.dumps(record, indent=2) + "\n").encode())
    if args.output_logits:
        write_atomic(args.output_logits, npy_bytes(gen.prefill_logits.cpu().numpy()))
    return 0 if len(set(digests)) == 1 else 1


def ids_digest(output_ids: list[list[int]]) -> str:
    """A short hash of every prompt's generated ids."""
    return hashlib.sha256(json.dumps(output_ids).encode()).hexdigest()[:16]


if __name__ == "__main__":
    sys.exit(main())
