"""PTConfig validation (pt-spec section 2): every invalid setting is refused at construction with one
ValueError that names the field(s) and the value(s); every preset is valid."""

import pytest

from pt_trtllm import PTConfig
from pt_trtllm.config import PT_FIELDS

SIZE_FIELDS = ("vocab_size", "hidden_size", "num_tracks", "num_hidden_layers", "block_depth",
               "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
               "max_position_embeddings")

# (case id, overrides of the tiny preset, substrings the message must contain)
INVALID = [
    ("q_heads_not_divisible_by_T", dict(num_attention_heads=9), ["num_attention_heads", "9", "num_tracks", "2"]),
    ("kv_heads_not_divisible_by_T", dict(num_key_value_heads=3), ["num_key_value_heads", "3", "num_tracks", "2"]),
    ("ffn_not_divisible_by_T", dict(intermediate_size=511), ["intermediate_size", "511", "num_tracks", "2"]),
    ("h_not_divisible_by_g", dict(num_attention_heads=8, num_key_value_heads=6),
     ["num_attention_heads", "8", "num_key_value_heads", "6", "4", "3"]),
    ("g_larger_than_h", dict(num_attention_heads=4, num_key_value_heads=8),
     ["num_attention_heads", "4", "num_key_value_heads", "8"]),
    ("odd_head_dim", dict(head_dim=15), ["head_dim", "15"]),
    ("L_not_divisible_by_D", dict(num_hidden_layers=4, block_depth=3), ["num_hidden_layers", "4", "block_depth", "3"]),
    ("unknown_combine_op", dict(combine_op="max"), ["combine_op", "'max'", "mean", "sum", "residual_sum"]),
    ("unknown_rope_style", dict(rope_style="yarn"), ["rope_style", "'yarn'", "neox", "gptj"]),
    ("unknown_merge_schedule", dict(merge_schedule="none"), ["merge_schedule", "'none'", "block", "sublayer"]),
    ("residual_sum_with_dispatch_norm", dict(combine_op="residual_sum", track_dispatch_norm=True),
     ["combine_op", "residual_sum", "track_dispatch_norm", "True"]),
    ("zero_eps", dict(rms_norm_eps=0.0), ["rms_norm_eps", "0.0"]),
    ("negative_rope_theta", dict(rope_theta=-1.0), ["rope_theta", "-1.0"]),
]

NON_POSITIVE = [(f"{name}={value}", {name: value}, [name, str(value)])
                for name in SIZE_FIELDS for value in (0, -2)]
NON_INTEGER = [("hidden_size_float", dict(hidden_size=128.0), ["hidden_size", "128.0"]),
               ("num_tracks_bool", dict(num_tracks=True), ["num_tracks", "True"])]


@pytest.mark.parametrize("case, overrides, needles", INVALID + NON_POSITIVE + NON_INTEGER,
                         ids=[c[0] for c in INVALID + NON_POSITIVE + NON_INTEGER])
def test_invalid_config_raises_one_valueerror_naming_field_and_values(case, overrides, needles):
    """Each invalid PTConfig raises ValueError at construction whose message names the field(s) and
    the offending value(s) (pt-spec section 2, 'Refused at construction')."""
    with pytest.raises(ValueError) as info:
        PTConfig.from_preset("tiny", **overrides)
    message = str(info.value)
    print(f"{case}: {message}")
    missing = [n for n in needles if n not in message]
    assert not missing, f"{case}: message {message!r} does not mention {missing}"


def test_valid_gqa_split_and_derived_sizes():
    """A valid config: per-track sizes are the totals divided by T (h, g, f) and L/D blocks."""
    cfg = PTConfig.from_preset("tiny", num_attention_heads=9, num_key_value_heads=3, num_tracks=3,
                               intermediate_size=510, num_hidden_layers=6, block_depth=3)
    assert (cfg.heads_per_track, cfg.kv_heads_per_track, cfg.ffn_per_track, cfg.num_blocks) == (3, 1, 170, 2)


@pytest.mark.parametrize("name", PTConfig.preset_names())
def test_every_preset_is_valid_and_carries_every_pt_field(name):
    """Every shipped preset constructs (so it passes validation) and exposes every spec-2 field."""
    cfg = PTConfig.from_preset(name)
    assert set(cfg.pt_dict()) == set(PT_FIELDS)
    assert cfg.num_hidden_layers % cfg.block_depth == 0


def test_unknown_preset_is_refused_by_name():
    """An unknown preset name is a ValueError that names it and lists the known ones."""
    with pytest.raises(ValueError, match="nope.*tiny"):
        PTConfig.from_preset("nope")


def test_config_json_round_trip_keeps_every_pt_field(tmp_path):
    """save_pretrained / from_pretrained of the config keeps every spec-2 field and its value."""
    cfg = PTConfig.from_preset("tiny", rope_style="gptj", qk_norm=True, combine_op="sum", track_dispatch_norm=True,
                               track_combine_norm=True, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                               pad_token_id=0)
    cfg.save_pretrained(tmp_path)
    again = PTConfig.from_pretrained(tmp_path)
    assert again.pt_dict() == cfg.pt_dict()
