"""A Triton model repository for the TensorRT-LLM engines of a PT model, served by Triton's
TensorRT-LLM C++ backend (`tensorrtllm`) of TensorRT-LLM 1.2.1, as its `inflight_batcher_llm`
repository is laid out:

    ensemble        text_input, max_tokens, ... -> text_output, output_ids
      preprocessing   (Python backend, this project's model.py): tokenize
      tensorrt_llm    (backend "tensorrtllm"): in-flight batched generation on the T engines
      postprocessing  (Python backend, this project's model.py): detokenize

Every config.pbtxt is written here from what the backend reads (parameter names and input/output
names as in TensorRT-LLM's `triton_backend/inflight_batcher_llm/src/model_instance_state.cc`,
`model_state.cc` and `all_models/inflight_batcher_llm/*/config.pbtxt`; see docs/serving.md for the
files and commits checked). The engines' tensor-parallel size is T (one track per rank), so the
server runs with `launch_triton_server.py --world_size T` (leader mode: MPI rank 0 serves, the
other ranks run the engine). Engines built with merge_impl "pt_plugin" hold PTTrackMerge nodes,
which the backend's C++ runtime can deserialize only once libpt_trtllm_plugins.so is in every
tritonserver process: their launch command preloads it (LD_PRELOAD, from $PT_TRTLLM_PLUGINS_LIB;
launch_triton_server.py hands its environment to mpirun, which hands it to the T servers). The
plugin's rendezvous needs no setting there: its job id defaults to the PMIX_NAMESPACE that Open
MPI's mpirun gives every rank, its directory to /tmp/pt_trtllm_rendezvous (plugins/README.md;
PT_TRTLLM_JOB_ID and PT_TRTLLM_RENDEZVOUS_DIR override them, docs/trtllm.md).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

MODELS_DIR = Path(__file__).with_name("triton_repo_models")
BATCHING_STRATEGIES = ("inflight_fused_batching", "inflight_batching", "V1")
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16"}
"""Triton data type of an engine's logits_dtype (fill_template's logits_datatype)."""
SCHEDULER_POLICIES = ("guaranteed_no_evict", "max_utilization")


@dataclass
class RepoOptions:
    engine_dir: Path
    tokenizer_dir: Path
    output_dir: Path
    world_size: int
    max_batch_size: int
    decoupled: bool = False
    batching_strategy: str = "inflight_fused_batching"
    batch_scheduler_policy: str = "guaranteed_no_evict"
    kv_cache_free_gpu_mem_fraction: float = 0.9
    max_queue_delay_microseconds: int = 0
    exclude_input_in_output: bool = True
    enable_kv_cache_reuse: bool = False
    enable_chunked_context: bool = False
    preprocessing_instances: int = 1
    postprocessing_instances: int = 1
    add_special_tokens: bool = True
    skip_special_tokens: bool = True
    gpu_device_ids: str | None = None
    logits_dtype: str = "float32"
    """The engine's logits_dtype (pretrained_config.logits_dtype): the type of context_logits and
    generation_logits, as the backend's config.pbtxt declares them (${logits_datatype})."""
    merge_impl: str = "allreduce"
    """The engine's merge_impl (pretrained_config.merge_impl): "pt_plugin" needs the plugin library
    preloaded into the servers (launch_command)."""


# ---- pbtxt --------------------------------------------------------------------------------------------
def _q(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor(name, dtype, dims, optional=False, reshape=None, ragged=False) -> str:
    lines = [f"    name: {_q(name)}", f"    data_type: {dtype}", f"    dims: [ {', '.join(map(str, dims))} ]"]
    if reshape is not None:
        lines.append(f"    reshape: {{ shape: [ {', '.join(map(str, reshape))} ] }}")
    if ragged:
        lines.append("    allow_ragged_batch: true")
    if optional:
        lines.append("    optional: true")
    return "  {\n" + "\n".join(lines) + "\n  }"


def _io(kind: str, tensors: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]\n"


def _params(params: dict[str, object], notes: dict[str, str] | None = None) -> str:
    out = []
    for key, value in params.items():
        if notes and key in notes:
            out.append(f"# {notes[key]}")
        if isinstance(value, bool):
            value = "true" if value else "false"
        out.append(f"parameters: {{\n  key: {_q(key)}\n  value: {{ string_value: {_q(value)} }}\n}}")
    return "\n".join(out) + "\n"


def _instances(count: int, kind: str = "KIND_CPU") -> str:
    return f"instance_group [\n  {{\n    count: {count}\n    kind: {kind}\n  }}\n]\n"


def _header(name: str, backend: str | None, max_batch_size: int, platform: str | None = None) -> str:
    lines = ["# Written by pt_trtllm (scripts/triton_repo.py) for Triton's TensorRT-LLM backend 1.2.1.",
             f"name: {_q(name)}"]
    if platform:
        lines.append(f"platform: {_q(platform)}")
    if backend:
        lines.append(f"backend: {_q(backend)}")
    lines.append(f"max_batch_size: {max_batch_size}")
    return "\n".join(lines) + "\n"


def _dynamic_batching(o: RepoOptions, preferred: bool = True) -> str:
    if not preferred:
        return "dynamic_batching {}\n"
    return (f"dynamic_batching {{\n  preferred_batch_size: [ {o.max_batch_size} ]\n"
            f"  max_queue_delay_microseconds: {o.max_queue_delay_microseconds}\n}}\n")


def preprocessing_config(o: RepoOptions) -> str:
    inputs = [_tensor("QUERY", "TYPE_STRING", [1]), _tensor("REQUEST_OUTPUT_LEN", "TYPE_INT32", [1]),
              _tensor("END_ID", "TYPE_INT32", [1], optional=True), _tensor("PAD_ID", "TYPE_INT32", [1], optional=True)]
    outputs = [_tensor("INPUT_ID", "TYPE_INT32", [-1]), _tensor("REQUEST_INPUT_LEN", "TYPE_INT32", [1]),
               _tensor("REQUEST_OUTPUT_LEN", "TYPE_INT32", [1]), _tensor("OUT_END_ID", "TYPE_INT32", [1]),
               _tensor("OUT_PAD_ID", "TYPE_INT32", [1])]
    return (_header("preprocessing", "python", o.max_batch_size) + _dynamic_batching(o) + _io("input", inputs)
            + _io("output", outputs)
            + _params({"tokenizer_dir": str(o.tokenizer_dir), "add_special_tokens": o.add_special_tokens})
            + _instances(o.preprocessing_instances))


def postprocessing_config(o: RepoOptions) -> str:
    inputs = [_tensor("TOKENS_BATCH", "TYPE_INT32", [-1, -1]), _tensor("SEQUENCE_LENGTH", "TYPE_INT32", [-1])]
    outputs = [_tensor("OUTPUT", "TYPE_STRING", [-1])]
    return (_header("postprocessing", "python", o.max_batch_size) + _dynamic_batching(o, preferred=False)
            + _io("input", inputs) + _io("output", outputs)
            + _params({"tokenizer_dir": str(o.tokenizer_dir), "skip_special_tokens": o.skip_special_tokens})
            + _instances(o.postprocessing_instances))


def tensorrt_llm_config(o: RepoOptions) -> str:
    scalar = dict(dims=[1], reshape=[])
    inputs = [
        _tensor("input_ids", "TYPE_INT32", [-1], ragged=True),
        _tensor("input_lengths", "TYPE_INT32", **scalar),
        _tensor("request_output_len", "TYPE_INT32", **scalar),
        _tensor("end_id", "TYPE_INT32", optional=True, **scalar),
        _tensor("pad_id", "TYPE_INT32", optional=True, **scalar),
        _tensor("beam_width", "TYPE_INT32", optional=True, **scalar),
        _tensor("temperature", "TYPE_FP32", optional=True, **scalar),
        _tensor("runtime_top_k", "TYPE_INT32", optional=True, **scalar),
        _tensor("runtime_top_p", "TYPE_FP32", optional=True, **scalar),
        _tensor("seed", "TYPE_UINT64", optional=True, **scalar),
        _tensor("return_log_probs", "TYPE_BOOL", optional=True, **scalar),
        _tensor("exclude_input_in_output", "TYPE_BOOL", optional=True, **scalar),
        _tensor("stop", "TYPE_BOOL", optional=True, **scalar),
        _tensor("streaming", "TYPE_BOOL", optional=True, **scalar),
    ]
    outputs = [_tensor("output_ids", "TYPE_INT32", [-1, -1]), _tensor("sequence_length", "TYPE_INT32", [-1]),
               _tensor("cum_log_probs", "TYPE_FP32", [-1]), _tensor("output_log_probs", "TYPE_FP32", [-1, -1]),
               _tensor("context_logits", TRITON_DTYPES[o.logits_dtype], [-1, -1]),
               _tensor("generation_logits", TRITON_DTYPES[o.logits_dtype], [-1, -1, -1]),
               _tensor("batch_index", "TYPE_INT32", [1]), _tensor("sequence_index", "TYPE_INT32", [1])]
    params = {
        "gpt_model_type": o.batching_strategy,
        "gpt_model_path": str(o.engine_dir),
        "max_beam_width": "1",
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
        "batch_scheduler_policy": o.batch_scheduler_policy,
        "kv_cache_free_gpu_mem_fraction": str(o.kv_cache_free_gpu_mem_fraction),
        "enable_kv_cache_reuse": o.enable_kv_cache_reuse,
        "enable_chunked_context": o.enable_chunked_context,
        "exclude_input_in_output": o.exclude_input_in_output,
        "normalize_log_probs": True,
        "cancellation_check_period_ms": "100",
        "stats_check_period_ms": "100",
        "executor_worker_path": "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker",
        "tokenizer_dir": str(o.tokenizer_dir),
        "guided_decoding_backend": "",
        "xgrammar_tokenizer_info_path": "",
    }
    if o.gpu_device_ids:
        params["gpu_device_ids"] = o.gpu_device_ids
    notes = {
        "gpt_model_type": "batching strategy (fill_template's batching_strategy): inflight_fused_batching, "
                          "inflight_batching or V1",
        "gpt_model_path": f"the {o.world_size} engines (rank0.engine ..): tensor-parallel size {o.world_size} = one "
                          f"track per rank; launch with launch_triton_server.py --world_size {o.world_size}",
        "tokenizer_dir": "read unconditionally by the backend (guided decoding), as are the two below",
    }
    return (_header("tensorrt_llm", "tensorrtllm", o.max_batch_size)
            + f"model_transaction_policy {{\n  decoupled: {'true' if o.decoupled else 'false'}\n}}\n"
            + _dynamic_batching(o) + _io("input", inputs) + _io("output", outputs)
            + _instances(1) + _params(params, notes))


def ensemble_config(o: RepoOptions) -> str:
    inputs = [_tensor("text_input", "TYPE_STRING", [1]), _tensor("max_tokens", "TYPE_INT32", [1]),
              _tensor("end_id", "TYPE_INT32", [1], optional=True), _tensor("pad_id", "TYPE_INT32", [1], optional=True),
              _tensor("top_k", "TYPE_INT32", [1], optional=True), _tensor("top_p", "TYPE_FP32", [1], optional=True),
              _tensor("temperature", "TYPE_FP32", [1], optional=True),
              _tensor("seed", "TYPE_UINT64", [1], optional=True), _tensor("stream", "TYPE_BOOL", [1], optional=True)]
    outputs = [_tensor("text_output", "TYPE_STRING", [-1]), _tensor("output_ids", "TYPE_INT32", [-1, -1])]

    def step(model, inputs, outputs):
        maps = [f"      input_map {{ key: {_q(k)} value: {_q(v)} }}" for k, v in inputs.items()]
        maps += [f"      output_map {{ key: {_q(k)} value: {_q(v)} }}" for k, v in outputs.items()]
        return "    {\n" + f"      model_name: {_q(model)}\n      model_version: -1\n" + "\n".join(maps) + "\n    }"

    steps = [
        step("preprocessing", {"QUERY": "text_input", "REQUEST_OUTPUT_LEN": "max_tokens", "END_ID": "end_id",
                               "PAD_ID": "pad_id"},
             {"INPUT_ID": "_INPUT_ID", "REQUEST_INPUT_LEN": "_REQUEST_INPUT_LEN",
              "REQUEST_OUTPUT_LEN": "_REQUEST_OUTPUT_LEN", "OUT_END_ID": "_PREPROCESSOR_END_ID",
              "OUT_PAD_ID": "_PREPROCESSOR_PAD_ID"}),
        step("tensorrt_llm", {"input_ids": "_INPUT_ID", "input_lengths": "_REQUEST_INPUT_LEN",
                              "request_output_len": "_REQUEST_OUTPUT_LEN", "end_id": "_PREPROCESSOR_END_ID",
                              "pad_id": "_PREPROCESSOR_PAD_ID", "runtime_top_k": "top_k", "runtime_top_p": "top_p",
                              "temperature": "temperature", "seed": "seed", "streaming": "stream"},
             {"output_ids": "output_ids", "sequence_length": "_SEQUENCE_LENGTH"}),
        step("postprocessing", {"TOKENS_BATCH": "output_ids", "SEQUENCE_LENGTH": "_SEQUENCE_LENGTH"},
             {"OUTPUT": "text_output"}),
    ]
    return (_header("ensemble", None, o.max_batch_size, platform="ensemble") + _io("input", inputs)
            + _io("output", outputs) + "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n")


PLUGIN_LAUNCH_ENV = 'LD_PRELOAD="$PT_TRTLLM_PLUGINS_LIB" '
"""What the launch command of a pt_plugin engine starts with: the plugin library preloaded into
every process of the launch (PT_TRTLLM_PLUGINS_LIB: its path in the serving container)."""


def launch_command(o: RepoOptions) -> str:
    from .support import PLUGIN_MERGE_IMPLS

    env = PLUGIN_LAUNCH_ENV if o.merge_impl in PLUGIN_MERGE_IMPLS else ""
    return (f"{env}python3 triton_backend/scripts/launch_triton_server.py --world_size {o.world_size} "
            f"--model_repo {o.output_dir.resolve()}")


def write_repository(o: RepoOptions) -> dict[str, Path]:
    """Write the four models (configs, the Python models, empty version folders); returns the
    config paths by model name."""
    if o.batching_strategy not in BATCHING_STRATEGIES:
        raise ValueError(f"--batching_strategy must be one of {BATCHING_STRATEGIES}, got {o.batching_strategy!r}")
    if o.batch_scheduler_policy not in SCHEDULER_POLICIES:
        raise ValueError(f"--batch_scheduler_policy must be one of {SCHEDULER_POLICIES}")
    if not 0 < o.kv_cache_free_gpu_mem_fraction <= 1:
        raise ValueError(f"--kv_cache_free_gpu_mem_fraction must be in (0, 1], got {o.kv_cache_free_gpu_mem_fraction}")
    if o.max_batch_size < 1:
        raise ValueError(f"--max_batch_size must be >= 1, got {o.max_batch_size}")
    configs = {"ensemble": ensemble_config(o), "preprocessing": preprocessing_config(o),
               "tensorrt_llm": tensorrt_llm_config(o), "postprocessing": postprocessing_config(o)}
    written = {}
    for name, text in configs.items():
        folder = o.output_dir / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(text)
        written[name] = folder / "config.pbtxt"
    for name in ("preprocessing", "postprocessing"):
        shutil.copyfile(MODELS_DIR / f"{name}.py", o.output_dir / name / "1" / "model.py")
    return written


def options_from_engine(engine_dir: str | Path, tokenizer_dir: str | Path, output_dir: str | Path,
                        max_batch_size: int | None = None, **kwargs) -> RepoOptions:
    """Options with the world size and batch size read from the engine directory (ValueError
    naming the problem for a directory that is not a PT engine)."""
    from .support import read_engine_info

    engine_dir, tokenizer_dir = Path(engine_dir).resolve(), Path(tokenizer_dir).resolve()
    info = read_engine_info(engine_dir)
    world = info.cfg.num_tracks
    missing = [f"rank{r}.engine" for r in range(world) if not (engine_dir / f"rank{r}.engine").is_file()]
    if missing:
        raise ValueError(f"{engine_dir} lacks {', '.join(missing)} (an engine of {world} tracks has one per rank)")
    if not (tokenizer_dir / "tokenizer_config.json").is_file() and not (tokenizer_dir / "tokenizer.json").is_file():
        raise ValueError(f"--tokenizer_dir {tokenizer_dir} holds no HF tokenizer (tokenizer.json / tokenizer_config.json)")
    batch = max_batch_size or info.max_batch_size
    if batch > info.max_batch_size:
        raise ValueError(f"--max_batch_size {batch} exceeds the engine's max_batch_size {info.max_batch_size}")
    return RepoOptions(engine_dir, tokenizer_dir, Path(output_dir), world, batch, logits_dtype=info.logits_dtype,
                       merge_impl=info.merge_impl, **kwargs)
