"""What a TensorRT-LLM engine of a PT model can express, which build settings it refuses, and what
an engine directory records. Plain Python (no tensorrt_llm): the network definition,
scripts/build.py, scripts/trtllm_selftest.py and the runner share it.

Spec features and how the engine handles them:
- `rope_style`: "neox" and "gptj" are TensorRT-LLM's rope_gpt_neox and rope_gptj, exactly
  (formats.POSITION_EMBEDDING_TYPES). Without QK-norm, RoPE runs inside the GPT attention plugin.
- `qk_norm`: RoPE, then the per-head RMSNorms of q and k, in the network graph; the plugin gets
  q and k ready and applies no RoPE (pt_trtllm/trtllm/attention.py says why and how).
- `track_dispatch_norm`, `track_combine_norm`: plain RmsNorm layers around each track block, exact.
- schedules: those of schedule.CONTEXTS["engine"] ("block", "sublayer") are built into the network;
  "none" (timing only) is not. schedule.check_schedule decides, as everywhere.
- `merge_impl`: every value of pt_trtllm.merge.MERGE_IMPLS (pt_trtllm/trtllm/merges.py); "pt_plugin"
  needs libpt_trtllm_plugins.so in the process that builds or runs the engine (`load_merge_plugins`).

Refused, each with a one-line error naming it: a head size the GPT attention plugin has no
generation kernel for, a hidden size that is not a multiple of T, a fused merge on a hidden size
the fused kernels cannot vectorize, the parts of the Apple PT architecture the network does not
build (`check_architecture`: NoPE and windowed attention, mixture-of-experts layers, pre-residual
and post norms), and build settings the network does not take (`check_build_settings`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .. import plugin_lib
from ..config import PTConfig
from ..formats import check_rank_config, merge_impl_of, read_json
from ..merge import DEFAULT_MERGE_IMPL, check_merge_impl
from ..schedule import CONTEXTS, check_schedule

MMHA_HEAD_SIZES = (32, 48, 64, 80, 96, 104, 112, 128, 144, 160, 192, 224, 256)
"""Head sizes the GPT attention plugin has generation (masked multi-head attention) kernels for:
MMHA_SUPPORTED_HEAD_SIZES of cpp/tensorrt_llm/kernels/decoderMaskedMultiheadAttention/
decoderMaskedMultiheadAttention.cpp; any other size fails at run time ("unsupported head_size")."""
FUSED_NORM_VECTOR = 8
"""The fused AllReduce + RMSNorm kernels (cpp/tensorrt_llm/kernels/customAllReduceKernels.cu) read
16-byte vectors of the hidden state: hidden_size % (16 / element size) == 0, i.e. 8 in fp16/bf16."""


def check_supported(cfg, schedule: str, merge_impl: str | None = None) -> None:
    """ValueError naming the feature when an engine of `cfg` (a PTConfig, or the engine's
    PTPretrainedConfig, which carries the same fields) under `schedule` and `merge_impl` cannot be
    exact or cannot run."""
    check_schedule(schedule, "engine", cfg)
    if cfg.head_dim not in MMHA_HEAD_SIZES:
        raise ValueError(f"head_dim={cfg.head_dim} is not supported by TensorRT-LLM's GPT attention plugin, "
                         f"whose generation kernels take head sizes {', '.join(map(str, MMHA_HEAD_SIZES))}")
    if cfg.hidden_size % cfg.num_tracks:
        raise ValueError(f"hidden_size={cfg.hidden_size} is not a multiple of num_tracks={cfg.num_tracks}: "
                         "TensorRT-LLM's C++ runtime divides hidden_size by tp_size = num_tracks for its buffers")
    check_architecture(cfg)
    if merge_impl is not None and check_merge_impl(merge_impl) == "allreduce_fused_norm" \
            and cfg.hidden_size % FUSED_NORM_VECTOR:
        raise ValueError(f"merge_impl='allreduce_fused_norm' needs hidden_size % {FUSED_NORM_VECTOR} == 0 (the fused "
                         f"AllReduce + RMSNorm kernels read 16-byte vectors), got hidden_size={cfg.hidden_size}; "
                         "build with --merge_impl allreduce")


def check_architecture(cfg) -> None:
    """ValueError naming the field for the parts of the Apple PT architecture (pt_trtllm.config:
    attention and feed-forward layer patterns, pre-residual and post norms) that the network does
    not build. Every layer is global RoPE attention and a dense SwiGLU, so a "local_rope" pattern is
    exact only while no sequence outgrows its window (max_position_embeddings <= attention_window +
    1: local and global attention then agree). A config.json without these fields has their
    defaults (a plain dense model; formats.OPTIONAL_PT_FIELDS)."""
    pattern = cfg.attention_layer_pattern
    window = cfg.attention_window
    if "global_nope" in pattern:
        raise ValueError(f"attention_layer_pattern={pattern}: global_nope layers (no RoPE) are not built by the "
                         "TensorRT-LLM engine")
    if "local_rope" in pattern and cfg.max_position_embeddings > window + 1:
        raise ValueError(f"attention_layer_pattern={pattern} with attention_window={window}: the TensorRT-LLM engine's "
                         f"attention is global, which equals local attention only up to {window + 1} positions; convert "
                         f"with --max_position_embeddings {window + 1} (max_position_embeddings="
                         f"{cfg.max_position_embeddings})")
    if "sparse" in cfg.feed_forward_layer_pattern:
        raise ValueError(f"feed_forward_layer_pattern={cfg.feed_forward_layer_pattern}: sparse "
                         "(mixture-of-experts) layers are not built by the TensorRT-LLM engine")
    for name in ("pre_residual_norm", "post_norm"):
        if getattr(cfg, name):
            raise ValueError(f"{name}=True is not built by the TensorRT-LLM engine")


PLUGIN_MERGE_IMPLS = ("pt_plugin",)
"""merge_impl values whose engines hold PTTrackMerge nodes: libpt_trtllm_plugins.so must be loaded
before such an engine is built or deserialized."""


def load_merge_plugins(merge_impl: str) -> None:
    """Load libpt_trtllm_plugins.so (pt_trtllm.plugin_lib.load: once per process, RTLD_GLOBAL, so
    that TensorRT's plugin registry has the PTTrackMerge creator) when `merge_impl` needs it:
    scripts/build.py calls this before building, the engine runner before deserializing.
    PluginLibraryError, one line naming the library, when it is missing or cannot be loaded."""
    if check_merge_impl(merge_impl) in PLUGIN_MERGE_IMPLS:
        plugin_lib.load()


def merge_max_tokens(input_ids_profiles) -> int:
    """The most token rows the network can hand one merge in a forward: the largest product of the
    `input_ids` dimensions' maxima over the optimization profiles TensorRT-LLM made for them
    (PretrainedModel.prepare_inputs returns input_ids as a functional.Tensor whose `profiles` are
    DimRange objects with `.max` per dimension, from GenerationMixin.get_profiles_ranges). Every
    hidden state is [tokens, H] (packed input) or [batch, seq, H] (padded input) with those
    dimensions, so this is exactly the bound the PTTrackMerge plugin checks each profile against
    (configurePlugin: rows <= max_tokens). It is the build's max_num_tokens for packed input with
    in-flight batching (the usual build), but max_batch_size * max_input_len with TensorRT-LLM's
    context/generation profiles (e.g. a continuous KV cache without the gemm plugin), and
    max_batch_size * max_beam_width * max_input_len for padded input in one profile."""
    return max(math.prod(profile.max) for profile in input_ids_profiles)


REFUSED_PLUGINS = {
    "lora_plugin": "",
    "gemm_allreduce_plugin": ": TensorRT-LLM's RowLinear would all-reduce inside every track (gemm_allreduce with "
                             "the layers' tp_group None); the merges are the only collectives",
    "user_buffer": ": it turns the merges' AllReduce nodes into userbuffers ones, which TensorRT-LLM supports for "
                   "FP8 Llama only",
}
"""Plugin-config fields the PT network refuses when set, and why (trtllm-build / build.py flag --name)."""


def check_plugin_config(plugin_config) -> None:
    """ValueError naming the flag when TensorRT-LLM's PluginConfig (or anything with its fields)
    sets a plugin the PT network cannot take (REFUSED_PLUGINS)."""
    for name, why in REFUSED_PLUGINS.items():
        value = getattr(plugin_config, name, None)
        if value is not None and value is not False:
            raise ValueError(f"--{name} is not supported by the PT network definition{why}")


def check_build_settings(plugin_config, qk_norm: bool, prompt_embedding_table_size: int = 0,
                         max_draft_len: int = 0, mrope_rotary_cos_sin_size: int | None = None) -> None:
    """ValueError naming the feature for build settings under which TensorRT-LLM's
    DecoderModelForCausalLM would hand PTModel.forward inputs it does not take (prompt tables,
    speculative decoding, mrope, LoRA: the arguments of PretrainedModel.prepare_inputs that create
    them), or that the network cannot be built with (check_plugin_config; the QK-norm attention
    calls the GPT attention plugin itself, as TensorRT-LLM's CogVLMAttention does)."""
    check_plugin_config(plugin_config)
    if prompt_embedding_table_size:
        raise ValueError(f"prompt tables (max_prompt_embedding_table_size={prompt_embedding_table_size}) are not "
                         "supported by the PT network definition")
    if max_draft_len:
        raise ValueError(f"speculative decoding (max_draft_len={max_draft_len}) is not supported by the PT network "
                         "definition")
    if mrope_rotary_cos_sin_size is not None:
        raise ValueError("mrope (multimodal RoPE) is not supported by the PT network definition")
    if qk_norm and not plugin_config.gpt_attention_plugin:
        raise ValueError("qk_norm=True needs the GPT attention plugin (--gpt_attention_plugin auto): the QK-norm "
                         "attention calls it directly")


@dataclass(frozen=True)
class EngineInfo:
    """What an engine directory's config.json records (read without tensorrt_llm)."""

    cfg: PTConfig
    schedule: str
    """The merge schedule the engine was built with (its pretrained_config.merge_schedule)."""
    dtype: str
    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    gather_context_logits: bool
    logits_dtype: str = "float32"
    """The dtype of the engine's logits output (pretrained_config.logits_dtype)."""
    merge_impl: str = DEFAULT_MERGE_IMPL
    """How the engine's ranks merge (pretrained_config.merge_impl): "pt_plugin" needs the plugin
    library loaded before the engine is deserialized (load_merge_plugins)."""


def read_engine_info(engine_dir: str | Path) -> EngineInfo:
    """ValueError (formats.CheckpointError for a missing or unreadable config.json) naming the
    problem for a directory that is not an engine of a PT model."""
    path = Path(engine_dir) / "config.json"
    data = read_json(path, " (is --engine_dir a TensorRT-LLM engine directory?)")
    pretrained, build = data.get("pretrained_config"), data.get("build_config")
    if not isinstance(pretrained, dict) or not isinstance(build, dict):
        raise ValueError(f"{path} is not a TensorRT-LLM engine config (pretrained_config and build_config)")
    if pretrained.get("architecture") != "PTForCausalLM":
        raise ValueError(f"{engine_dir} holds a {pretrained.get('architecture')!r} engine, not PTForCausalLM")
    cfg = check_rank_config(pretrained)
    return EngineInfo(cfg, cfg.merge_schedule, pretrained["dtype"], build["max_batch_size"], build["max_input_len"],
                      build["max_seq_len"], bool(build.get("gather_context_logits")),
                      pretrained.get("logits_dtype", "float32"), merge_impl_of(pretrained))


def engine_schedule(requested: str | None, info: EngineInfo) -> str:
    """The schedule to report for a run: the engine's; a contradicting request is refused."""
    if requested is not None and requested not in CONTEXTS["engine"]:
        raise ValueError(f"--schedule {requested} is not built into engines; run it on the per-rank checkpoint "
                         "with the PyTorch runtime")
    if requested is not None and requested != info.schedule:
        raise ValueError(f"--schedule {requested} contradicts the engine, which was built with schedule "
                         f"{info.schedule}; build one with scripts/build.py --schedule {requested}")
    return info.schedule
