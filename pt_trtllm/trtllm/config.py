"""`PTPretrainedConfig`: TensorRT-LLM's PretrainedConfig of a PT model (needs tensorrt_llm).

It is built from the per-rank checkpoint's config.json (pt-spec section 5; formats.rank_config):
TensorRT-LLM's own fields, whose totals it divides by tp_size = T, plus every PT field of section 2
under its spec name. Both sets are checked against each other at construction
(formats.check_rank_config), so an engine can only be built from a consistent config.
"""

from __future__ import annotations

from tensorrt_llm.models.modeling_utils import PretrainedConfig

from pt_trtllm.config import PTConfig
from pt_trtllm.formats import check_rank_config


class PTPretrainedConfig(PretrainedConfig):
    def __init__(self, *, num_tracks: int, block_depth: int, head_dim: int, rms_norm_eps: float,
                 rope_theta: float, rope_style: str, qk_norm: bool, combine_op: str, track_dispatch_norm: bool,
                 track_combine_norm: bool, merge_schedule: str, tie_word_embeddings: bool,
                 bos_token_id: int | None, eos_token_id: int | list[int] | None, pad_token_id: int | None,
                 rotary_base: float, **kwargs):
        super().__init__(**kwargs)
        self.num_tracks = num_tracks
        self.block_depth = block_depth
        self.head_dim = head_dim
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.rope_style = rope_style
        self.qk_norm = qk_norm
        self.combine_op = combine_op
        self.track_dispatch_norm = track_dispatch_norm
        self.track_combine_norm = track_combine_norm
        self.merge_schedule = merge_schedule
        self.tie_word_embeddings = tie_word_embeddings
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.rotary_base = rotary_base  # read by Attention.create_attention_const_params
        self.pt_config()

    def pt_config(self) -> PTConfig:
        """The PTConfig these fields describe (ValueError naming a field that contradicts another)."""
        return check_rank_config(self.to_dict())
