"""`PTConfig`: the hyper-parameters of a Parallel Track model (pt-spec section 2), and named presets."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PretrainedConfig

from .schedule import check_schedule

COMBINE_OPS = ("mean", "sum", "residual_sum")
ROPE_STYLES = ("neox", "gptj")
ATTENTION_TYPES = ("global_rope", "local_rope", "global_nope")
FEED_FORWARD_TYPES = ("dense", "sparse")
PRESET_DIR = Path(__file__).resolve().parent / "configs"  # -> the repository's configs/

# The fields of pt-spec section 2, in the order they are documented; converters and the per-rank
# config carry exactly these.
PT_FIELDS = (
    "vocab_size", "hidden_size", "num_tracks", "num_hidden_layers", "block_depth",
    "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size", "rms_norm_eps",
    "max_position_embeddings", "rope_theta", "rope_style", "qk_norm", "combine_op",
    "track_dispatch_norm", "track_combine_norm", "merge_schedule", "tie_word_embeddings",
    "bos_token_id", "eos_token_id", "pad_token_id",
    # the Apple PT architecture (tamm's AFMParallelTrackMoEConfig): optional when a config.json is
    # read, so checkpoints written before these fields existed stay valid, with these defaults
    "attention_layer_pattern", "attention_window", "feed_forward_layer_pattern", "num_experts",
    "num_experts_per_token", "moe_intermediate_size", "router_logits_cap", "pre_residual_norm", "post_norm",
)
OPTIONAL_PT_FIELDS = PT_FIELDS[PT_FIELDS.index("attention_layer_pattern"):]


class PTConfig(PretrainedConfig):
    """A Parallel Track transformer: `num_tracks` narrower Llama-style transformers that share one
    embedding and one LM head and merge their residual streams every `block_depth` layers.

    Totals (`num_attention_heads`, `num_key_value_heads`, `intermediate_size`) are whole-model
    numbers; each track holds 1/T of them. Every invalid combination raises `ValueError` at
    construction, naming the field and the values.
    """

    model_type = "parallel_track"

    def __init__(
        self,
        vocab_size: int = 512,
        hidden_size: int = 128,
        num_tracks: int = 2,
        num_hidden_layers: int = 4,
        block_depth: int = 2,
        num_attention_heads: int = 8,
        num_key_value_heads: int = 4,
        head_dim: int = 16,
        intermediate_size: int = 512,
        rms_norm_eps: float = 1e-5,
        max_position_embeddings: int = 2048,
        rope_theta: float = 10000.0,
        rope_style: str = "neox",
        qk_norm: bool = False,
        combine_op: str = "mean",
        track_dispatch_norm: bool = False,
        track_combine_norm: bool = False,
        merge_schedule: str = "block",
        tie_word_embeddings: bool = False,
        bos_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        attention_layer_pattern: list[str] | tuple[str, ...] = ("global_rope",),
        attention_window: int | None = None,
        feed_forward_layer_pattern: list[str] | tuple[str, ...] = ("dense",),
        num_experts: int = 0,
        num_experts_per_token: int = 0,
        moe_intermediate_size: int = 0,
        router_logits_cap: float | None = None,
        pre_residual_norm: bool = False,
        post_norm: bool = False,
        use_cache: bool = True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        """V: vocabulary size (rows of the embedding and the LM head)."""
        self.hidden_size = hidden_size
        """H: width of the residual stream, the same in every track and in the merged state."""
        self.num_tracks = num_tracks
        """T: number of tracks; one track per rank when served."""
        self.num_hidden_layers = num_hidden_layers
        """L: layers in EACH track."""
        self.block_depth = block_depth
        """D: layers per track block; the tracks merge after layers D-1, 2D-1, ..., L-1."""
        self.num_attention_heads = num_attention_heads
        """Query heads of the whole model; each track has num_attention_heads / T."""
        self.num_key_value_heads = num_key_value_heads
        """KV heads of the whole model; each track has num_key_value_heads / T."""
        self.head_dim = head_dim
        """d: per-head width, explicit (not derived from H), even."""
        self.intermediate_size = intermediate_size
        """SwiGLU width of the whole model; each track has intermediate_size / T."""
        self.rms_norm_eps = rms_norm_eps
        """Epsilon of every RMSNorm (layer norms, QK-norm, dispatch/combine norms, final norm)."""
        self.max_position_embeddings = max_position_embeddings
        """Longest sequence (prompt + generated tokens) the model supports."""
        self.rope_theta = rope_theta
        """RoPE base frequency."""
        self.rope_style = rope_style
        """"neox": rotate halves (HF Llama); "gptj": rotate adjacent pairs (tamm)."""
        self.qk_norm = qk_norm
        """RMSNorm with a learned [d] weight on every query and key head, applied AFTER RoPE."""
        self.combine_op = combine_op
        """How tracks merge: "mean", "sum" or "residual_sum" (x + sum_t(h_t - x))."""
        self.track_dispatch_norm = track_dispatch_norm
        """A per-track RMSNorm on each track block's input."""
        self.track_combine_norm = track_combine_norm
        """A per-track RMSNorm on each track block's output, before the merge."""
        self.merge_schedule = merge_schedule
        """The schedule the weights were made for: "block" (PT) or "sublayer" (dense split in tracks)."""
        self.attention_layer_pattern = list(attention_layer_pattern)
        """Attention of layer l: pattern[l % len(pattern)], one of "global_rope" (causal attention over
        every position, RoPE), "local_rope" (RoPE, a query at p attends to positions p - W .. p) or
        "global_nope" (no positional encoding, no window; QK-norm still applies)."""
        self.attention_window = attention_window
        """W of "local_rope" layers (required when the pattern has one): the past positions a query
        sees besides its own (W + 1 in all, as tamm's local_attention_window_size)."""
        self.feed_forward_layer_pattern = list(feed_forward_layer_pattern)
        """Feed-forward of layer l: pattern[l % len(pattern)], "dense" (SwiGLU of intermediate_size / T
        per track) or "sparse" (a mixture of experts per track)."""
        self.num_experts = num_experts
        """E: experts of EACH track in a sparse layer (tamm's num_experts; not divided by T)."""
        self.num_experts_per_token = num_experts_per_token
        """k: experts each token uses in a sparse layer (top-k of the router, weights renormalized)."""
        self.moe_intermediate_size = moe_intermediate_size
        """SwiGLU width of ONE expert (tamm's sparse_feed_forward_hidden_dim; not divided by T)."""
        self.router_logits_cap = router_logits_cap
        """Soft cap of the router logits, cap * tanh(logits / cap) in float32 (None: no cap)."""
        self.pre_residual_norm = pre_residual_norm
        """An RMSNorm on every attention and feed-forward output before its residual add."""
        self.post_norm = post_norm
        """An RMSNorm on the residual stream after every attention and feed-forward residual add."""
        self.use_cache = use_cache
        """Whether `PTForCausalLM.forward` returns a KV cache by default (as in HF models)."""
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **kwargs,
        )
        self.check_fields()

    # ---- derived per-track sizes -------------------------------------------------------------
    @property
    def heads_per_track(self) -> int:
        """h: query heads in one track."""
        return self.num_attention_heads // self.num_tracks

    @property
    def kv_heads_per_track(self) -> int:
        """g: KV heads in one track."""
        return self.num_key_value_heads // self.num_tracks

    @property
    def ffn_per_track(self) -> int:
        """f: SwiGLU width of one track."""
        return self.intermediate_size // self.num_tracks

    def attention_type(self, layer: int) -> str:
        """"global_rope", "local_rope" or "global_nope" for layer `layer` of every track."""
        return self.attention_layer_pattern[layer % len(self.attention_layer_pattern)]

    def is_sparse(self, layer: int) -> bool:
        """Whether layer `layer` of every track has a mixture of experts as its feed-forward."""
        return self.feed_forward_layer_pattern[layer % len(self.feed_forward_layer_pattern)] == "sparse"

    def window(self, layer: int) -> int | None:
        """W of a "local_rope" layer, None for the others."""
        return self.attention_window if self.attention_type(layer) == "local_rope" else None

    @property
    def num_blocks(self) -> int:
        """L / D: track blocks per track, and merges per forward pass under the block schedule."""
        return self.num_hidden_layers // self.block_depth

    # ---- validation --------------------------------------------------------------------------
    def check_fields(self) -> None:
        """Raise ValueError naming the field and the values for every invalid setting (the first)."""
        for name in ("vocab_size", "hidden_size", "num_tracks", "num_hidden_layers", "block_depth",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("rms_norm_eps", "rope_theta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        t = self.num_tracks
        for name in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
            if getattr(self, name) % t:
                raise ValueError(f"{name}={getattr(self, name)} is not divisible by num_tracks={t}")
        if self.heads_per_track % self.kv_heads_per_track:
            raise ValueError(
                f"query heads per track (num_attention_heads/num_tracks = {self.num_attention_heads}/{t} = "
                f"{self.heads_per_track}) are not divisible by KV heads per track (num_key_value_heads/num_tracks"
                f" = {self.num_key_value_heads}/{t} = {self.kv_heads_per_track})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.num_hidden_layers % self.block_depth:
            raise ValueError(f"num_hidden_layers={self.num_hidden_layers} is not divisible by "
                             f"block_depth={self.block_depth}")
        for name, allowed in (("combine_op", COMBINE_OPS), ("rope_style", ROPE_STYLES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        for name, allowed in (("attention_layer_pattern", ATTENTION_TYPES),
                              ("feed_forward_layer_pattern", FEED_FORWARD_TYPES)):
            pattern = getattr(self, name)
            if not pattern or any(p not in allowed for p in pattern):
                raise ValueError(f"{name}={pattern!r} must be a non-empty list of {allowed}")
        if "local_rope" in self.attention_layer_pattern and not _positive_int(self.attention_window):
            raise ValueError(f"attention_window must be a positive integer when attention_layer_pattern has "
                             f"'local_rope', got {self.attention_window!r}")
        if "sparse" in self.feed_forward_layer_pattern:
            for name in ("num_experts", "num_experts_per_token", "moe_intermediate_size"):
                if not _positive_int(getattr(self, name)):
                    raise ValueError(f"{name} must be a positive integer when feed_forward_layer_pattern has "
                                     f"'sparse', got {getattr(self, name)!r}")
            if self.num_experts_per_token > self.num_experts:
                raise ValueError(f"num_experts_per_token={self.num_experts_per_token} exceeds num_experts="
                                 f"{self.num_experts}")
        if self.router_logits_cap is not None and not self.router_logits_cap > 0:
            raise ValueError(f"router_logits_cap must be positive or null, got {self.router_logits_cap!r}")
        try:
            check_schedule(self.merge_schedule, "checkpoint", self)
        except ValueError as e:
            raise ValueError(f"merge_schedule={self.merge_schedule!r}: {e}") from None
        if self.combine_op == "residual_sum" and self.track_dispatch_norm:
            raise ValueError("combine_op='residual_sum' cannot be used with track_dispatch_norm=True: "
                             "the block input x of x + sum_t(h_t - x) would be ambiguous")

    def pt_dict(self) -> dict:
        """The spec's PT fields and their values (what the per-rank config.json carries)."""
        return {name: getattr(self, name) for name in PT_FIELDS}

    # ---- presets -----------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "PTConfig":
        """A named preset from `configs/` (e.g. "tiny", "bench-tiny", "pt-30b-d8"), with overrides."""
        path = PRESET_DIR / f"{name}.json"
        if not path.is_file():
            raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(cls.preset_names())}")
        fields = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
        return cls(**{**fields, **overrides})

    @staticmethod
    def preset_names() -> list[str]:
        return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
