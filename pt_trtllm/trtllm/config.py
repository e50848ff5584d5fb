"""`PTPretrainedConfig`: TensorRT-LLM's PretrainedConfig of a PT model (needs tensorrt_llm).

It is made from the per-rank checkpoint's config.json (pt-spec section 5; formats.rank_config):
TensorRT-LLM's own fields, whose totals it divides by tp_size = T, every PT field of section 2
under its spec name (pt_trtllm.config.PT_FIELDS), and `merge_impl` (pt_trtllm.merge.MERGE_IMPLS;
the default for a checkpoint written before the field existed). Every way TensorRT-LLM makes one
(`PretrainedConfig.from_dict` / `from_json_file` through MODEL_MAP, as trtllm-build and the runtime
do, or `PTPretrainedConfig.from_checkpoint`, as scripts/build.py does) runs the constructor, which
refuses a config whose fields are missing or contradict each other (formats.check_rank_config) and
a model the engine cannot express or run (support.check_supported: the schedule, the head size, the
hidden size against T, the merge implementation). The layers read the fields as
attributes (`config.num_tracks`, `config.merge_schedule`, `config.num_blocks`, ...).
"""

from __future__ import annotations

import inspect
from pathlib import Path

from tensorrt_llm.models.modeling_utils import PretrainedConfig

from pt_trtllm.config import PT_FIELDS
from pt_trtllm.formats import check_rank_config, merge_impl_of, read_rank_config
from pt_trtllm.trtllm.support import check_supported

# config.json fields TensorRT-LLM's PretrainedConfig does not take by name; set here as attributes
# (passed on, TensorRT-LLM would set them too, with one "Implicitly setting" warning each).
# rotary_base is read by TensorRT-LLM's Attention.create_attention_const_params.
_TAKEN = inspect.signature(PretrainedConfig.__init__).parameters
OWN_FIELDS = tuple(name for name in (*PT_FIELDS, "rotary_base") if name not in _TAKEN)


class PTPretrainedConfig(PretrainedConfig):
    def __init__(self, **fields):
        pt = check_rank_config(fields)  # ValueError naming a missing PT field, or one contradicting another
        # (optional PT fields a config.json lacks get the PTConfig's defaults)
        own = {name: getattr(pt, name) if name in PT_FIELDS else fields[name] for name in OWN_FIELDS}
        for name in OWN_FIELDS:
            fields.pop(name, None)
        merge_impl = merge_impl_of(fields)
        fields.pop("merge_impl", None)
        super().__init__(**fields)
        for name, value in own.items():
            setattr(self, name, value)
        self.merge_impl = merge_impl
        """How the ranks merge (pt_trtllm.merge.MERGE_IMPLS); the network picks its merge class by it."""
        check_supported(self, self.merge_schedule, self.merge_impl)

    @property
    def num_blocks(self) -> int:
        """L / D: track blocks per track (as PTConfig.num_blocks)."""
        return self.num_hidden_layers // self.block_depth

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str | Path, *, schedule: str | None = None,
                        merge_impl: str | None = None) -> PTPretrainedConfig:
        """The config of a per-rank checkpoint (TensorRT-LLM's PretrainedConfig.from_checkpoint,
        read through formats.read_rank_config, whose one-line errors it raises), with the merge
        schedule and the merge implementation to build when given (scripts/build.py --schedule,
        --merge_impl; the checkpoint's otherwise). The engine's config.json records both."""
        _, data = read_rank_config(ckpt_dir, "--checkpoint_dir")
        overrides = {"merge_schedule": schedule, "merge_impl": merge_impl}
        return cls(**{**data, **{k: v for k, v in overrides.items() if v is not None}})
