"""The Vision Transformer tower: patch embedding, class token, pre/post LayerNorm (HF names)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clip_core.config import CLIPVisionConfig
from clip_core.outputs import BaseModelOutputWithPooling

from .layers import CLIPEncoder, LayerNorm, normal_parameter

__all__ = ["CLIPVisionEmbeddings", "CLIPVisionTransformer"]


class CLIPVisionEmbeddings(nn.Module):
    """Patch embedding (a stride = kernel conv, run as one matmul), class token, positions.

    SigLIP builds it with ``class_token=False`` (one position per patch) and ``patch_bias=True``."""

    def __init__(self, config: CLIPVisionConfig, class_token: bool = True, patch_bias: bool = False) -> None:
        super().__init__()
        self.config = config
        d, p = config.hidden_size, config.patch_size
        self.patch_size, self.image_size = p, config.image_size
        self.class_token = class_token
        if class_token:
            self.class_embedding = normal_parameter(d, std=d ** -0.5)  # HF init
        self.patch_embedding = nn.Conv2d(config.num_channels, d, kernel_size=p, stride=p, bias=patch_bias)
        self.position_embedding = nn.Embedding(config.num_positions, d)
        self.patch_proj: Optional[nn.Module] = None  # the patch matmul as one module, set by the int8 path

    def patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, D): the conv as a matmul over flattened patches (exact)."""
        w = self.patch_embedding.weight  # (D, C, p, p)
        x = pixel_values.to(w.dtype)
        B, C, H, W = x.shape
        p = self.patch_size
        gh, gw = H // p, W // p
        x = x[:, :, : gh * p, : gw * p].reshape(B, C, gh, p, gw, p)
        x = x.permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C * p * p)  # (B, N, C*p*p)
        if self.patch_proj is not None:
            return self.patch_proj(x)
        out = torch.matmul(x, w.reshape(w.shape[0], -1).t())  # (B, N, D)
        bias = self.patch_embedding.bias
        return out if bias is None else out + bias

    def interpolate_pos_encoding(self, num_patches: int, height: int, width: int) -> torch.Tensor:
        """Position embeddings (1, 1 + N, D) (no class token: (1, N, D)) for an image of ``height`` x
        ``width`` (HF 4.57 bicubic)."""
        k = int(self.class_token)
        pos = self.position_embedding.weight.unsqueeze(0)  # (1, k+P, D)
        num_positions = pos.shape[1] - k
        if num_patches == num_positions and height == width:
            return pos
        dim = pos.shape[-1]
        side = int(num_positions ** 0.5)
        grid = pos[:, k:].reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, D, s, s)
        grid = F.interpolate(grid, size=(height // self.patch_size, width // self.patch_size),
                             mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat([pos[:, :k], grid], dim=1)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be (B, C, H, W), got shape {tuple(pixel_values.shape)}")
        B, C, H, W = pixel_values.shape
        if C != self.config.num_channels:
            raise ValueError(f"pixel_values have {C} channels, the model expects {self.config.num_channels}")
        if not interpolate_pos_encoding and (H != self.image_size or W != self.image_size):
            raise ValueError(f"Input image size ({H}*{W}) doesn't match model ({self.image_size}*{self.image_size}); "
                             "pass interpolate_pos_encoding=True for other sizes")
        patches = self.patchify(pixel_values)  # (B, N, D)
        x = patches
        if self.class_token:
            cls = self.class_embedding.to(patches.dtype).expand(B, 1, -1)
            x = torch.cat([cls, patches], dim=1)  # (B, 1 + N, D)
        if interpolate_pos_encoding:
            return x + self.interpolate_pos_encoding(patches.shape[1], H, W)
        return x + self.position_embedding.weight  # (1+N, D) broadcast


class CLIPVisionTransformer(nn.Module):
    """ViT: embeddings -> pre_layrnorm -> encoder; pooled = post_layernorm(class token)."""

    def __init__(self, config: CLIPVisionConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config, attn_implementation)
        self.post_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor, output_attentions: bool = False,
                output_hidden_states: bool = False, interpolate_pos_encoding: bool = False,
                pooled_only: bool = False) -> BaseModelOutputWithPooling:
        """``pixel_values`` (B, C, H, W) -> ``last_hidden_state`` (B, 1 + N, D) (encoder output, as HF),
        ``pooler_output`` (B, D).

        ``pooled_only=True`` (used by ``get_image_features`` / ``encode_image``) runs the last
        encoder layer for the class token only — the pooled output reads nothing else — so
        ``last_hidden_state`` is then (B, 1, D). Ignored when hidden states or attentions are asked for.
        """
        x = self.pre_layrnorm(self.embeddings(pixel_values, interpolate_pos_encoding))
        last, hidden, attns = self.encoder(x, None, False, output_attentions, output_hidden_states,
                                           first_token_only=pooled_only)
        pooled = self.post_layernorm(last[:, 0])
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled,
                                          hidden_states=hidden, attentions=attns)
