"""The merges of the TensorRT-LLM network definition: pt_trtllm/merge.py's interface as network
nodes (needs tensorrt_llm), one class per `merge_impl` (MERGES).

    merged, normed = merge(x, hs, norm=None)

x is the segment's input (the merged state the tracks started from), hs this rank's one track
output, norm the RmsNorm that runs next on the merged state (the network always has one: one track
per rank); normed is norm(merged), or None without a norm. Each merge is ONE collective node, so an
engine has L/D of them per forward under "block" and 2L under "sublayer", whichever implementation
it was built with (none with one track: a single track merges with itself).

- "allreduce" (AllReduceMerge): the AllReduce plugin (tensorrt_llm.functional.allreduce), a sum,
  then the combine op and the norm as separate nodes.
- "allreduce_fused_norm" (FusedNormAllReduceMerge): the AllReduce plugin with
  AllReduceFusionOp.RESIDUAL_RMS_NORM, which returns (RMSNorm(sum + residual) * w, sum + residual)
  from the same node, the residual being x.
- "pt_plugin" (PluginMerge): the project's own TensorRT plugin PTTrackMerge (IPluginV3, in
  libpt_trtllm_plugins.so, plugins/): the all-reduce, the combine op and the next norm in one node.

The AllReduce strategy (all_reduce_params): AUTO, as TensorRT-LLM's Llama, when T is a rank count
the custom all-reduce kernels dispatch on; NCCL otherwise. Never NCCL_SYMMETRIC (see there).
"""

from __future__ import annotations

import numpy as np
import tensorrt as trt
from tensorrt_llm._common import default_trtnet
from tensorrt_llm.functional import AllReduceFusionOp, AllReduceParams, AllReduceStrategy, _create_tensor, allreduce
from tensorrt_llm.layers import RmsNorm

from pt_trtllm import plugin_lib
from pt_trtllm.merge import check_merge_impl

CUSTOM_KERNEL_RANKS = (2, 4, 6, 8, 16)
"""Ranks per node the custom all-reduce kernels (ONESHOT, TWOSHOT, and their fused-norm forms)
dispatch on: customAllReduceKernels.cu throws "Custom all reduce only supported on {2, 4, 6, 8, 16}
GPUs per node" for any other count, and the AllReduce plugin's AUTO selection
(allreducePlugin.cpp, selectImplementation) picks ONESHOT without checking the count."""


def all_reduce_params(num_tracks: int, **fusion) -> AllReduceParams:
    """A fresh AllReduceParams for one merge node (allreduce() mutates the one it is given), with
    `fusion` (fusion_op, residual, norm_weight, eps) when the node fuses the next norm.

    Strategy AUTO for T in CUSTOM_KERNEL_RANKS: the plugin picks ONESHOT/TWOSHOT or NCCL by message
    size at run time; all of them fuse the residual and the norm, each rank normalizing the whole
    reduced tensor with its own weight. NCCL for any other T, where AUTO could pick a custom kernel
    that throws. Never NCCL_SYMMETRIC: allreduce() falls back to it only without the all-reduce
    workspace, which PretrainedModel.prepare_inputs always creates when tp_size = T > 1."""
    strategy = AllReduceStrategy.AUTO if num_tracks in CUSTOM_KERNEL_RANKS else AllReduceStrategy.NCCL
    return AllReduceParams(strategy=strategy, **fusion)


class Merge:
    """The merge interface (see the module docstring): normed = norm(merged), computed after the
    merge. A fused implementation overrides __call__ and returns `normed` from its own node."""

    max_tokens: int | None = None
    """The most token rows one forward can hand a merge, set by PTForCausalLM.prepare_inputs (the
    largest input_ids shape of the build's optimization profiles, support.merge_max_tokens) before
    the network is defined; PluginMerge passes it to its node (it sizes the plugin's buffers, and
    the plugin refuses a profile with more rows), the AllReduce merges do not read it."""

    def __init__(self, combine_op: str, num_tracks: int):
        self.combine_op, self.num_tracks = combine_op, num_tracks

    def __call__(self, x, hs: list, norm: RmsNorm | None = None):
        merged = self.combine(x, hs)
        return merged, (norm(merged) if norm is not None else None)

    def combine(self, x, hs: list):
        raise NotImplementedError


class AllReduceMerge(Merge):
    """merge_impl "allreduce": ONE AllReduce (sum) of the [tokens, H] hidden state over the ranks
    of `group`, then the 1/T scale for "mean", or x + allreduce(h - x) for "residual_sum". A single
    track merges with itself: no node."""

    def __init__(self, combine_op: str, num_tracks: int, group: list[int], rank: int | None = None):
        super().__init__(combine_op, num_tracks)
        self.group, self.rank = group, rank

    def combine(self, x, hs: list):
        (h,) = hs
        if self.num_tracks == 1:
            return h
        if self.combine_op == "residual_sum":
            # never sum_t(h_t) - (T-1) x: it cancels badly in low precision
            return x + self._sum(h - x)
        total = self._sum(h)
        return total * (1.0 / self.num_tracks) if self.combine_op == "mean" else total

    def _sum(self, h):
        return allreduce(h, self.group, all_reduce_params=all_reduce_params(self.num_tracks))


class FusedNormAllReduceMerge(AllReduceMerge):
    """merge_impl "allreduce_fused_norm": ONE AllReduce plugin node per merge that also adds the
    residual x and applies `norm` (AllReduceFusionOp.RESIDUAL_RMS_NORM, eps = the norm's, i.e.
    config.norm_epsilon, not the plugin's 1e-6 default). The node computes x + allreduce(delta),
    and delta is chosen so that this is the combine op's merged state:

        residual_sum: delta = h - x          x + sum_t(h_t - x)       = x + sum_t(h_t - x)
        mean:         delta = (h - x) / T    x + sum_t((h_t - x) / T) = mean_t(h_t)
        sum:          delta = h - x / T      x + sum_t(h_t - x / T)   = sum_t(h_t)

    The norm is whichever RmsNorm the network says runs next: the next layer's input_layernorm,
    post_layernorm after an attention merge under "sublayer", ln_f after the last merge, and the
    next block's dispatch norm too. The dispatch norm is fused like the others, although it is a
    per-track norm: in an engine every norm of a track is per-track (its layer norms as well) and
    each rank holds one track, so the weight handed to the plugin is always this rank's own, and
    every strategy of the plugin (NCCL + residualRmsNorm, ONESHOT, lamport ONESHOT, TWOSHOT +
    rms_norm_kernel; allreducePlugin.cpp, customAllReduceKernels.cu) normalizes the whole reduced
    tensor on each rank with the weight that rank passed. (Only a process holding several tracks,
    as modeling.PTModel can, has no single next norm.) Without a norm, or with one track, it is the
    unfused merge."""

    def __call__(self, x, hs: list, norm: RmsNorm | None = None):
        (h,) = hs
        if norm is None or self.num_tracks == 1:
            return super().__call__(x, hs, norm)
        T = self.num_tracks
        if self.combine_op == "residual_sum":
            delta = h - x
        elif self.combine_op == "mean":
            delta = (h - x) * (1.0 / T)
        else:
            delta = h - x * (1.0 / T)
        params = all_reduce_params(T, fusion_op=AllReduceFusionOp.RESIDUAL_RMS_NORM, residual=x,
                                   norm_weight=norm.weight.value, eps=norm.eps)
        normed, merged = allreduce(delta, self.group, all_reduce_params=params)  # outputs 0 and 1 of the plugin
        return merged, normed


PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE = "PTTrackMerge", "1", "pt_trtllm"
"""The creator of the PT track-merge plugin in TensorRT's plugin registry (libpt_trtllm_plugins.so
registers it when loaded; pt_trtllm.plugin_lib)."""
COMBINE_OPS = {"mean": 0, "sum": 1, "residual_sum": 2}
"""The plugin's "combine_op" field of each combine op (pt_merge.h: pt_merge_combine_op)."""
TRANSPORTS = {"auto": 0, "nccl": 1, "oneshot": 2}
"""The plugin's "transport" field (pt_merge.h: pt_merge_transport)."""


def pt_track_merge_creator():
    """The PTTrackMerge creator (IPluginCreatorV3One) from TensorRT's plugin registry. When it is
    not there yet, libpt_trtllm_plugins.so is loaded first (pt_trtllm.plugin_lib.load(): a build
    through trtllm-build --model_cls_file, or in a --workers process, has nobody else to load it);
    PluginLibraryError, one line naming the library, when it is missing or registers no creator."""
    registry = trt.get_plugin_registry()
    creator = registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE)
    if creator is None:
        plugin_lib.load()
        creator = registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE)
        if creator is None:
            raise plugin_lib.PluginLibraryError(
                f"{plugin_lib.library_path()} is loaded but TensorRT's plugin registry has no {PLUGIN_NAME} creator (version "
                f"{PLUGIN_VERSION}, namespace {PLUGIN_NAMESPACE}): was the library built with TensorRT (-DTensorRT_ROOT)?")
    return creator


def plugin_fields(**values) -> list:
    """The PluginFields of `values`: floats as FLOAT32, everything else as INT32, one element each
    (the fields of PTTrackMerge, PluginMerge's docstring). A PluginField keeps its numpy data alive
    only while the Python object lives (pyPlugin.cpp: keep_alive), and a PluginFieldCollection is a
    plain vector of them: keep this list until create_plugin has returned."""
    fields = []
    for name, value in values.items():
        if isinstance(value, float):
            fields.append(trt.PluginField(name, np.array([value], dtype=np.float32), trt.PluginFieldType.FLOAT32))
        else:
            fields.append(trt.PluginField(name, np.array([int(value)], dtype=np.int32), trt.PluginFieldType.INT32))
    return fields


class PluginMerge(AllReduceMerge):
    """merge_impl "pt_plugin": ONE PTTrackMerge node per merge (the project's TensorRT plugin,
    IPluginV3, creator "PTTrackMerge" version "1" namespace "pt_trtllm" in libpt_trtllm_plugins.so,
    plugins/): the sum all-reduce over the T ranks, the combine op, and the next RMSNorm (`norm`'s
    weight and eps) in one node, with outputs (merged, next_normed). Without a norm the node has the
    one output merged; with one track there is no node, as for the other merges (the unfused
    identity merge, the norm applied as its own layer).

    The node's fields (PluginFields, INT32 unless said): combine_op (0 mean, 1 sum, 2 residual_sum),
    residual_form 0 (mean and sum reduce h and scale; residual_sum always reduces h - x and adds x
    back), num_ranks T, rank (this rank's track, mapping.tp_rank), has_combine_norm 0,
    has_dispatch_norm 0, has_next_norm (1 with a norm), combine_eps, dispatch_eps, next_eps
    (FLOAT32; the next norm's eps = norm_epsilon, 0.0 for the absent norms), transport 0 (auto:
    one-shot over peer memory for small messages, NCCL otherwise), max_tokens (the most token rows
    of one forward: Merge.max_tokens, the input_ids profiles' largest shape; the build's
    max_num_tokens in the usual packed build), oneshot_max_bytes 0 (the library's default). Its
    inputs, in order, all of the model dtype: h [.., H]; x [.., H] for residual_sum only; the next
    norm's weight [H] when there is a norm.

    The combine norm and the dispatch norm are not handed to the node in this version: the merge
    interface carries only the norm that runs next on the merged state, so a track's combine norm
    stays its own RmsNorm layer before the merge (PTModel.track), and a dispatch norm is fused only
    as that next norm. With one track per rank the dispatch norm of the next block IS the norm that
    runs next (PTModel._next_norm hands it over as the next segment's entry norm), and the node
    applies it exactly as the next norm, with this rank's own weight."""

    transport: str = "auto"
    """The plugin's transport (TRANSPORTS): auto picks one-shot or NCCL by message size at run time."""
    oneshot_max_bytes: int = 0
    """The largest message auto sends one-shot; 0 is the library's default (pt_merge.h)."""

    def __init__(self, combine_op: str, num_tracks: int, group: list[int], rank: int | None = None):
        super().__init__(combine_op, num_tracks, group, rank)
        if num_tracks > 1 and (rank is None or not 0 <= rank < num_tracks or len(group) != num_tracks):
            raise ValueError(f"merge_impl='pt_plugin' needs this rank's track (0..{num_tracks - 1}) and a group of "
                             f"the {num_tracks} ranks, got rank={rank}, group={group}")

    def __call__(self, x, hs: list, norm: RmsNorm | None = None):
        (h,) = hs
        if self.num_tracks == 1:
            return super().__call__(x, hs, norm)
        if self.max_tokens is None:
            raise ValueError("merge_impl='pt_plugin' needs the most token rows of a forward: PTForCausalLM.prepare_inputs "
                             "sets Merge.max_tokens from the input profiles before the network is defined")
        residual = self.combine_op == "residual_sum"
        fields = plugin_fields(
            combine_op=COMBINE_OPS[self.combine_op], residual_form=0, num_ranks=self.num_tracks, rank=self.rank,
            has_combine_norm=0, has_dispatch_norm=0, has_next_norm=int(norm is not None), combine_eps=0.0,
            dispatch_eps=0.0, next_eps=float(norm.eps) if norm is not None else 0.0,
            transport=TRANSPORTS[self.transport], max_tokens=self.max_tokens, oneshot_max_bytes=self.oneshot_max_bytes)
        plugin = pt_track_merge_creator().create_plugin("pt_track_merge", trt.PluginFieldCollection(fields),
                                                        trt.TensorRTPhase.BUILD)  # `fields` alive until here
        if plugin is None:
            raise ValueError(f"{PLUGIN_NAME} refused its fields (combine_op={self.combine_op}, T={self.num_tracks}, "
                             f"rank={self.rank}, max_tokens={self.max_tokens})")
        inputs = [h, *([x] if residual else []), *([norm.weight.value] if norm is not None else [])]
        layer = default_trtnet().add_plugin_v3([t.trt_tensor for t in inputs], [], plugin)
        outputs = [_create_tensor(layer.get_output(i), layer) for i in range(layer.num_outputs)]
        if norm is None:
            (merged,) = outputs
            return merged, None
        merged, normed = outputs  # outputs 0 and 1 of the plugin: merged, next_normed
        return merged, normed


MERGES = {"allreduce": AllReduceMerge, "allreduce_fused_norm": FusedNormAllReduceMerge, "pt_plugin": PluginMerge}
"""The merge class of each `merge_impl` (pt_trtllm.merge.MERGE_IMPLS)."""


def make_merge(impl: str, combine_op: str, num_tracks: int, group: list[int], rank: int | None = None) -> Merge:
    """The merge of `merge_impl` = `impl` for rank `rank` of `group` (ValueError naming an unknown
    one). Only PluginMerge reads the rank (its node's "rank" field); the AllReduce plugin takes its
    rank from the runtime's communicator."""
    return MERGES[check_merge_impl(impl)](combine_op, num_tracks, group, rank)
