"""The text tower: token + position embeddings, causal transformer, final LayerNorm, EOT pooling."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from clip_core.config import CLIPTextConfig
from clip_core.outputs import BaseModelOutputWithPooling

from .layers import CLIPEncoder, LayerNorm

__all__ = ["CLIPTextEmbeddings", "CLIPTextTransformer", "padding_mask", "pool_positions"]


class CLIPTextEmbeddings(nn.Module):
    """``token_embedding(input_ids) + position_embedding(position_ids)``."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        T = input_ids.shape[-1]
        max_len = self.position_embedding.weight.shape[0]
        if T > max_len:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings {max_len}")
        if position_ids is None:
            pos = self.position_embedding.weight[:T]  # (T, C): no index copy needed
        else:
            pos = self.position_embedding(position_ids)
        return self.token_embedding(input_ids) + pos  # (B, T, C)


def padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) 1/0 mask -> additive (B, 1, S, S): the dtype's minimum where masked (Hugging Face)."""
    B, S = attention_mask.shape
    inverted = 1.0 - attention_mask[:, None, None, :].expand(B, 1, S, S).to(dtype)
    return inverted.masked_fill(inverted.to(torch.bool), torch.finfo(dtype).min)


def pool_positions(input_ids: torch.Tensor, eos_token_id: int, legacy: bool) -> torch.Tensor:
    """(B,) index of the pooled token: first ``eos_token_id``, or ``argmax(input_ids)`` (legacy)."""
    ids = input_ids.to(torch.int)
    if legacy:
        return ids.argmax(dim=-1)
    return (ids == eos_token_id).int().argmax(dim=-1)


class CLIPTextTransformer(nn.Module):
    """Causal text transformer pooled at the EOT token (HF ``CLIPTextTransformer``)."""

    def __init__(self, config: CLIPTextConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config, attn_implementation)
        self.final_layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, output_attentions: bool = False,
                output_hidden_states: bool = False, full_length: bool = True) -> BaseModelOutputWithPooling:
        """``input_ids`` (B, T) -> ``last_hidden_state`` (B, T, C), ``pooler_output`` (B, C).

        ``full_length=False`` (used by ``get_text_features`` / ``encode_text``) runs only the first
        ``max(pool position) + 1`` tokens: under the causal mask later tokens cannot change the
        pooled state, so the pooled output is the same while ``last_hidden_state`` is then
        truncated. Ignored when hidden states or attentions are requested.
        """
        if input_ids is None:
            raise ValueError("input_ids are required")
        input_ids = input_ids.reshape(-1, input_ids.shape[-1])  # (B, T)
        cfg = self.config
        pool = pool_positions(input_ids, cfg.eos_token_id, cfg.legacy_eos_pooling)  # (B,)
        if not full_length and not output_attentions and not output_hidden_states and input_ids.shape[1] > 1:
            n = int(pool.max()) + 1
            if n < input_ids.shape[1]:
                input_ids = input_ids[:, :n]
                attention_mask = None if attention_mask is None else attention_mask[..., :n]
                position_ids = None if position_ids is None else position_ids[..., :n]
        x = self.embeddings(input_ids, position_ids)  # (B, T, C)
        mask, is_causal = None, True
        if attention_mask is not None:
            T = input_ids.shape[1]
            causal = torch.full((T, T), torch.finfo(x.dtype).min, dtype=x.dtype, device=x.device).triu(1)
            mask, is_causal = padding_mask(attention_mask.to(x.device), x.dtype) + causal, False
        last, hidden, attns = self.encoder(x, mask, is_causal, output_attentions, output_hidden_states)
        last = self.final_layer_norm(last)
        pooled = last[torch.arange(last.shape[0], device=last.device), pool.to(last.device)]  # (B, C)
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled,
                                          hidden_states=hidden, attentions=attns)
