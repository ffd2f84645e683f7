"""SigLIP's two towers, built from the CLIP layers of this backend (no second encoder).

- text: CLIP's token + position embeddings and encoder, run bidirectionally (the padding mask only
  when ``attention_mask`` is given, never a causal one), ``final_layer_norm``, then the LAST position
  through ``head`` (a Linear with bias) — as transformers 4.57's ``SiglipTextTransformer``;
- vision: CLIP's patch embedding with a bias and without the class token, the encoder,
  ``post_layernorm`` over every token, then the multi-head attention-pooling head (MAP: a learned
  probe query over torch's packed-projection ``nn.MultiheadAttention``, residual + LayerNorm + MLP).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from clip_core.outputs import BaseModelOutputWithPooling
from clip_core.siglip_config import SiglipTextConfig, SiglipVisionConfig

from .layers import CLIPEncoder, CLIPMLP, LayerNorm, Linear, normal_parameter
from .text import CLIPTextEmbeddings, padding_mask
from .vision import CLIPVisionEmbeddings

__all__ = ["SiglipTextTransformer", "SiglipVisionTransformer", "SiglipMultiheadAttentionPoolingHead"]


class SiglipTextTransformer(nn.Module):
    """Bidirectional text transformer pooled at the last position, then ``head`` (HF ``SiglipTextTransformer``)."""

    def __init__(self, config: SiglipTextConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config, attn_implementation)
        self.final_layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = Linear(config.hidden_size, config.projection_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, output_attentions: bool = False,
                output_hidden_states: bool = False) -> BaseModelOutputWithPooling:
        """``input_ids`` (B, T) -> ``last_hidden_state`` (B, T, C) (final-layer-normed), ``pooler_output``
        (B, projection_size) = ``head`` of the last position (which may be padding, as in transformers)."""
        if input_ids is None:
            raise ValueError("input_ids are required")
        input_ids = input_ids.reshape(-1, input_ids.shape[-1])  # (B, T)
        x = self.embeddings(input_ids, position_ids)  # (B, T, C)
        mask = None if attention_mask is None else padding_mask(attention_mask.to(x.device), x.dtype)
        last, hidden, attns = self.encoder(x, mask, False, output_attentions, output_hidden_states)
        last = self.final_layer_norm(last)
        pooled = self.head(last[:, -1])  # (B, P)
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled,
                                          hidden_states=hidden, attentions=attns)


class SiglipMultiheadAttentionPoolingHead(nn.Module):
    """MAP head: a learned ``probe`` attends over the tokens, then ``x + mlp(layernorm(x))``; token 0."""

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.probe = normal_parameter(1, 1, d, std=1.0)
        self.attention = nn.MultiheadAttention(d, config.num_attention_heads, batch_first=True)
        self.layernorm = LayerNorm(d, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(d, config.intermediate_size, config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, D)."""
        probe = self.probe.to(x.dtype).expand(x.shape[0], -1, -1)  # (B, 1, D)
        h = self.attention(probe, x, x, need_weights=False)[0]  # (B, 1, D)
        return (h + self.mlp(self.layernorm(h)))[:, 0]


class SiglipVisionTransformer(nn.Module):
    """ViT without class token or pre-norm: embeddings -> encoder -> post_layernorm -> MAP head."""

    def __init__(self, config: SiglipVisionConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.embeddings = CLIPVisionEmbeddings(config, class_token=False, patch_bias=True)
        self.encoder = CLIPEncoder(config, attn_implementation)
        self.post_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.use_head = bool(config.vision_use_head)
        if self.use_head:
            self.head = SiglipMultiheadAttentionPoolingHead(config)

    def forward(self, pixel_values: torch.Tensor, output_attentions: bool = False,
                output_hidden_states: bool = False, interpolate_pos_encoding: bool = False,
                with_head: bool = True) -> BaseModelOutputWithPooling:
        """``pixel_values`` (B, C, H, W) -> ``last_hidden_state`` (B, N, D) (post-layernormed, as HF),
        ``pooler_output`` (B, D) from the head (None without a head, or with ``with_head=False``)."""
        x = self.embeddings(pixel_values, interpolate_pos_encoding)  # (B, N, D)
        last, hidden, attns = self.encoder(x, None, False, output_attentions, output_hidden_states)
        last = self.post_layernorm(last)
        pooled = self.head(last) if self.use_head and with_head else None
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled,
                                          hidden_states=hidden, attentions=attns)
