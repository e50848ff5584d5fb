"""Counting the collective nodes of a network definition (needs tensorrt and tensorrt_llm): the one
helper scripts/trtllm_selftest.py and tests/test_trtllm_engine.py use to check that an engine holds
exactly its merges (L/D per forward under "block", 2L under "sublayer", none with one track).

A merge is one of two kinds of layer:
- an AllReduce plugin node (IPluginV2, tensorrt_llm.functional.allreduce), told by the plugin info
  TensorRT-LLM records for each of its plugin layers (tensorrt_llm.network.get_plugin_info: plugin
  name "allreduce"; an AllGather node is "allgather"). That record exists only for the plugin
  layers TensorRT-LLM's functional API adds (`_add_plugin_info`), so it cannot see the next kind;
- a PTTrackMerge node (merge_impl "pt_plugin", pt_trtllm/trtllm/merges.py): a layer of type
  trt.LayerType.PLUGIN_V3 whose plugin's core capability (IPluginV3.get_capability_interface(
  trt.PluginCapabilityType.CORE), an IPluginV3OneCore) names PTTrackMerge in namespace pt_trtllm.
  INetworkDefinition.get_layer returns a plain ILayer, so the layer is first given its class,
  IPluginV3Layer (whose `plugin` property is the IPluginV3), as TensorRT-LLM's graph_rewriting
  (Layer.as_layer) and Polygraphy do for the other layer types.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tensorrt as trt
from tensorrt_llm.network import get_plugin_info

from pt_trtllm.trtllm.merges import PLUGIN_NAME, PLUGIN_NAMESPACE


@dataclass(frozen=True)
class CollectiveNodes:
    """The collective layers of one rank's network."""

    allreduce: int = 0
    """AllReduce plugin (IPluginV2) layers: the merges of "allreduce" and "allreduce_fused_norm"."""
    pt_track_merge: int = 0
    """PTTrackMerge (IPluginV3) layers: the merges of "pt_plugin"."""
    allgather: int = 0
    """AllGather plugin layers: none in a PT network."""

    @property
    def merges(self) -> int:
        return self.allreduce + self.pt_track_merge

    @classmethod
    def expected(cls, merge_impl: str, merges: int) -> CollectiveNodes:
        """What a network of `merge_impl` with `merges` merges per forward holds, and nothing else."""
        return cls(pt_track_merge=merges) if merge_impl == "pt_plugin" else cls(allreduce=merges)


def plugin_v3_name(layer) -> tuple[str, str] | None:
    """(plugin name, namespace) of a PLUGIN_V3 layer, None for any other layer."""
    if layer.type != trt.LayerType.PLUGIN_V3:
        return None
    layer.__class__ = trt.IPluginV3Layer  # get_layer gives an ILayer; `plugin` belongs to IPluginV3Layer
    core = layer.plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
    return core.plugin_name, core.plugin_namespace


def count_collective_nodes(trt_network) -> CollectiveNodes:
    """The AllReduce, PTTrackMerge and AllGather layers of a TensorRT network that TensorRT-LLM built."""
    allreduce = allgather = pt_track_merge = 0
    for i in range(trt_network.num_layers):
        layer = trt_network.get_layer(i)
        info = get_plugin_info(trt_network, layer.name)
        if info is not None:
            allreduce += info.plugin_name == "allreduce"
            allgather += info.plugin_name == "allgather"
        pt_track_merge += plugin_v3_name(layer) == (PLUGIN_NAME, PLUGIN_NAMESPACE)
    return CollectiveNodes(allreduce=allreduce, pt_track_merge=pt_track_merge, allgather=allgather)


def network_collective_nodes(ckpt: str | Path, schedule: str, merge_impl: str, rank: int = 0) -> CollectiveNodes:
    """The collective layers of rank `rank`'s network of the per-rank checkpoint `ckpt`, built with
    `schedule` and `merge_impl` in this process by TensorRT-LLM's builder.build (a dry run: the
    network, counted when the builder optimizes it, and no engine). For "pt_plugin" the plugin
    library is loaded (merges.pt_track_merge_creator)."""
    from tensorrt_llm import builder

    from pt_trtllm.trtllm.model import PTForCausalLM

    config = PTForCausalLM.config_class.from_checkpoint(ckpt, schedule=schedule, merge_impl=merge_impl)
    model = PTForCausalLM.from_checkpoint(str(ckpt), rank=rank, config=config)  # as TensorRT-LLM's build_model
    counts, optimize = [], builder.optimize

    def inspect(network):
        counts.append(count_collective_nodes(network.trt_network))
        return optimize(network)

    builder.optimize = inspect
    try:
        builder.build(model, builder.BuildConfig(max_batch_size=2, max_input_len=16, max_seq_len=32, dry_run=True,
                                                 output_timing_cache=None))
    finally:
        builder.optimize = optimize
    (result,) = counts
    return result
