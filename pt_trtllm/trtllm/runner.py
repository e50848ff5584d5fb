"""Run a PT engine directory through TensorRT-LLM's C++ runtime (ModelRunnerCpp), one MPI rank per
track: `mpirun -n T python scripts/run.py --engine_dir ENGINES ...` calls `run_engine(args)` with
the parsed arguments of pt-spec section 7. This module imports without tensorrt_llm; `run_engine`
imports it (and the network definition, which registers PTForCausalLM for the engine's config).

Rank 0 enqueues the requests, prints the result and writes --output_json / --output_logits (the
same fields as the PyTorch runtime); the other ranks serve inside the TensorRT-LLM executor. Every
rank loads libpt_trtllm_plugins.so before the engines are deserialized when their config.json says
merge_impl "pt_plugin" (support.load_merge_plugins; a missing library is a one-line error naming it).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

from ..cli import check_prompts, end_ids, load_tokenizer, npy_bytes, parse_prompts, report, write_atomic
from ..plugin_lib import PluginLibraryError
from ..schedule import merges_per_forward
from .support import EngineInfo, engine_schedule, load_merge_plugins, read_engine_info

JOB_ID = "PT_TRTLLM_JOB_ID"
"""The variable the PTTrackMerge rendezvous keys its files by (plugins/README.md); rank 0's fresh uuid
when the user has not set it."""
OTHER_COLLECTIVES_NOTE = ("other_collectives_per_step is null: collectives outside the engine are internal to "
                          "the TensorRT-LLM runtime and not counted; the engine itself holds only the merges")
INSTALL_HINT = ("engine directories need TensorRT-LLM 1.2.1 with TensorRT 10.x: install NVIDIA's tensorrt_llm==1.2.1 "
                "wheel or use its container (docs/trtllm.md)")
NO_EOS = -1  # end_id when neither the model nor --end_id gives one: generation runs to --max_output_len


def run_engine(args) -> int:
    """Generate with the engines in args.engine_dir; the exit status (2: a one-line error)."""
    try:
        from tensorrt_llm._utils import mpi_broadcast, mpi_rank, mpi_world_size
    except ImportError:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    import pt_trtllm.trtllm.model  # noqa: F401  (registers PTForCausalLM in MODEL_MAP)

    rank = mpi_rank()
    try:
        info = read_engine_info(args.engine_dir)
        schedule = engine_schedule(args.schedule, info)
        load_merge_plugins(info.merge_impl)  # pt_plugin: the PTTrackMerge creator, before deserializing
        tokenizer = load_tokenizer(args.tokenizer_dir)
        prompts = parse_prompts(args, tokenizer)
        check_request(info, prompts, args.max_output_len, mpi_world_size(), bool(args.output_logits))
        eos_ids = end_ids(args.end_id, info.cfg.eos_token_id, tokenizer)
    except (ValueError, PluginLibraryError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    if info.merge_impl == "pt_plugin" and mpi_world_size() > 1 and not os.environ.get(JOB_ID):
        # the PTTrackMerge nodes meet in a file store keyed by a job id; MPICH's launcher exports none
        os.environ[JOB_ID] = mpi_broadcast(uuid.uuid4().hex if rank == 0 else None, root=0)
    result = generate(info, prompts, args, eos_ids, rank)
    if rank != 0:
        return 0
    text = [tokenizer.decode(ids, skip_special_tokens=True) for ids in result["output_ids"]] if tokenizer else None
    record = {**result, "text": text, "schedule": schedule,
              "merges_per_forward": merges_per_forward(schedule, info.cfg.num_hidden_layers, info.cfg.block_depth),
              "other_collectives_per_step": None, "world_size": info.cfg.num_tracks, "runtime": "tensorrt_llm",
              "dtype": info.dtype, "note": OTHER_COLLECTIVES_NOTE}
    logits = record.pop("prefill_logits")
    report(record, prompts, "runtime=tensorrt_llm")
    if args.output_json:
        write_atomic(args.output_json, (json.dumps(record, indent=2) + "\n").encode())
    if args.output_logits:
        write_atomic(args.output_logits, npy_bytes(logits))
    return 0


# ---- inputs --------------------------------------------------------------------------------------
def check_request(info: EngineInfo, prompts: list[list[int]], max_output_len: int, world_size: int,
                  want_logits: bool) -> None:
    """ValueError naming the problem for a run these engines cannot do."""
    cfg = info.cfg
    if world_size != cfg.num_tracks:
        raise ValueError(f"the engines have {cfg.num_tracks} ranks and need exactly {cfg.num_tracks} processes "
                         f"(mpirun -n {cfg.num_tracks}); this run has {world_size}")
    limit = min(info.max_input_len, info.max_seq_len - max_output_len, cfg.max_position_embeddings - max_output_len)
    check_prompts(prompts, max_output_len, info.max_batch_size, limit, cfg.vocab_size,
                  f"max_input_len={info.max_input_len}, max_seq_len={info.max_seq_len}, "
                  f"max_position_embeddings={cfg.max_position_embeddings}")
    if want_logits:
        if not info.gather_context_logits:
            raise ValueError("--output_logits needs engines built with --gather_context_logits")
        if len({len(p) for p in prompts}) != 1:
            raise ValueError("--output_logits needs prompts of equal length")


def sampling_kwargs(args) -> dict:
    """ModelRunnerCpp.generate's sampling arguments: greedy is top_k=1 (temperature 0 in the spec)."""
    if args.temperature == 0:
        return {"top_k": 1}
    out = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    if args.seed is not None:
        out["random_seed"] = args.seed
    return out


# ---- generation ----------------------------------------------------------------------------------
def generate(info: EngineInfo, prompts: list[list[int]], args, eos_ids: list[int], rank: int) -> dict:
    """Every rank calls this; rank 0 gets {"output_ids", "timings", "prefill_logits"}, the others {}."""
    import torch
    from tensorrt_llm.runtime import ModelRunnerCpp

    runner = ModelRunnerCpp.from_dir(engine_dir=str(args.engine_dir), rank=rank, max_batch_size=len(prompts),
                                     max_input_len=max(len(p) for p in prompts),
                                     max_output_len=args.max_output_len, max_beam_width=1)
    end_id = eos_ids[0] if eos_ids else NO_EOS
    pad_id = info.cfg.pad_token_id if info.cfg.pad_token_id is not None else end_id
    batch = [torch.tensor(p, dtype=torch.int32) for p in prompts]

    def run(max_new_tokens: int):
        with torch.no_grad():
            return runner.generate(batch, max_new_tokens=max_new_tokens, end_id=end_id, pad_id=pad_id, num_beams=1,
                                   output_sequence_lengths=True, return_dict=True, **sampling_kwargs(args))

    start = time.perf_counter()
    first = run(1)  # the time to first token, measured by a request of one token
    ttft = time.perf_counter() - start
    start = time.perf_counter()
    out = run(args.max_output_len)
    total = time.perf_counter() - start
    if rank != 0:
        return {}
    ids, lengths = out["output_ids"].cpu(), out["sequence_lengths"].cpu()
    output_ids = [generated_tokens(ids[i, 0].tolist(), len(p), int(lengths[i, 0]), eos_ids, args.max_output_len)
                  for i, p in enumerate(prompts)]
    steps = max(len(o) for o in output_ids) - 1
    generated = sum(len(o) for o in output_ids)
    timings = {"ttft_ms": ttft * 1e3, "tpot_ms": 1e3 * (total - ttft) / steps if steps > 0 else None,
               "total_ms": total * 1e3, "decode_steps": steps, "generated_tokens": generated,
               "output_tokens_per_s": generated / total}
    logits = None
    if args.output_logits:
        logits = first["context_logits"][..., : info.cfg.vocab_size].float().cpu().numpy()
    return {"output_ids": output_ids, "timings": timings, "prefill_logits": logits}


def generated_tokens(ids: list[int], prompt_len: int, seq_len: int, eos_ids: list[int], max_output_len: int) -> list[int]:
    """The generated tokens of one request (ModelRunnerCpp returns prompt + output, padded with end_id),
    ending at and including the first EOS. A request that stopped early stopped on EOS: if the
    runtime left that EOS out, it is put back, so the record reads the same as the PyTorch runtime's."""
    out = ids[prompt_len:seq_len]
    for i, t in enumerate(out):
        if t in eos_ids:
            return out[: i + 1]
    if eos_ids and len(out) < max_output_len:
        return [*out, eos_ids[0]]
    return out
