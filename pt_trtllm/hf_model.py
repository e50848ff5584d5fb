"""`PTForCausalLM`: the PT model as a `transformers.PreTrainedModel` (one process, all tracks).

It saves and loads the safetensors layout of pt-spec section 4, works with `generate()` (greedy and
sampling, HF's dynamic KV cache, left-padded batches), and takes the merge schedule at run time:
`model(ids, schedule="sublayer")` or `model.generate(ids, schedule="sublayer")`; the default is
`config.merge_schedule`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from .config import PTConfig
from .modeling import Experts, PTModel, RMSNorm, Rotary


def attention_mask_4d(attention_mask: torch.Tensor, q_len: int) -> torch.Tensor:
    """[B, kv_len] padding mask (1 = token) -> boolean [B, 1, q_len, kv_len] causal mask for the
    last q_len positions. Rows with nothing to attend to (queries at padding) attend to everything:
    their outputs are discarded, and this keeps them finite."""
    kv_len = attention_mask.shape[1]
    q_pos = torch.arange(kv_len - q_len, kv_len, device=attention_mask.device)
    causal = torch.arange(kv_len, device=attention_mask.device)[None, :] <= q_pos[:, None]
    mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
    return mask | ~mask.any(dim=-1, keepdim=True)


def key_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, kv_len] padding mask -> the position of each key (what local layers measure distances
    from); padding gets -2**30, outside every window."""
    return torch.where(attention_mask.bool(), attention_mask.long().cumsum(-1) - 1, -(2**30))


def fit_cache(cache, num_layers: int) -> None:
    """HF creates caches with one layer per `num_hidden_layers`; a PT model keeps one per (track,
    layer), indexed track * L + layer: add the missing ones to an empty cache."""
    layers = getattr(cache, "layers", None)
    if layers is not None and len(layers) < num_layers and cache.get_seq_length() == 0:
        layers.extend(DynamicLayer() for _ in range(num_layers - len(layers)))


class PTPreTrainedModel(PreTrainedModel):
    config_class = PTConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Random init with std ~ 1/sqrt(fan_in) (random models then produce varied text). Tensors
        that transformers 5 has already loaded carry `_is_hf_initialized` and are kept."""

        def fill(tensor: torch.Tensor, init) -> None:
            if not getattr(tensor, "_is_hf_initialized", False):
                init(tensor)

        if isinstance(module, nn.Linear):
            fill(module.weight, lambda w: w.normal_(0.0, module.in_features**-0.5))
        elif isinstance(module, nn.Embedding):
            fill(module.weight, lambda w: w.normal_(0.0, 1.0))
        elif isinstance(module, Experts):  # [E, out, in] per expert
            for w in (module.gate_proj, module.up_proj, module.down_proj):
                fill(w, lambda w: w.normal_(0.0, w.shape[-1] ** -0.5))
        elif isinstance(module, RMSNorm):
            fill(module.weight, lambda w: w.fill_(1.0))
        elif isinstance(module, Rotary):  # a buffer, not in checkpoints
            module.inv_freq.copy_(module.frequencies())


class PTForCausalLM(PTPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # a dict for transformers 5; 4.x reads its keys

    def __init__(self, config: PTConfig):
        super().__init__(config)
        self.model = PTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
        schedule: str | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        B, S = input_ids.shape
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        if past_key_values is not None:
            fit_cache(past_key_values, self.config.num_tracks * self.config.num_hidden_layers)
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(B, past + S, dtype=torch.long, device=input_ids.device)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -S:]
        mask = None
        if not bool(attention_mask.all()) or (past > 0 and S > 1):
            mask = attention_mask_4d(attention_mask, S)
        hidden = self.model(input_ids, position_ids, mask, past_key_values, schedule,
                            key_positions(attention_mask))  # [B, S, H]
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden).float()
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits,
                                      past_key_values=past_key_values if use_cache else None)
