"""The Vision Transformer tower (Flax Linen), HF Flax parameter names.

``pixel_values`` arrive NCHW; the patch embedding cuts patches straight from NCHW and applies the
HWIO ``patch_embedding/kernel`` as one matmul (same result as the stride-P conv, no NHWC copy).
"""
from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from clip_core.interpolate import bicubic_matrix
from clip_core.outputs import BaseModelOutputWithPooling

from .layers import CLIPEncoder, Configured, Dtype, layer_norm


class PatchEmbedding(nn.Module):
    """Stride-P "valid" conv as a matmul; param ``kernel`` HWIO (P, P, C, D), ``bias`` (D,) with ``use_bias``
    (SigLIP). Pixels past the last whole patch are ignored, as the conv does."""

    patch_size: int
    num_channels: int
    hidden_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    use_bias: bool = False

    @nn.compact
    def __call__(self, pixel_values):
        p, c, d = self.patch_size, self.num_channels, self.hidden_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, c, d), self.param_dtype)
        b, _, h, w = pixel_values.shape  # (B, C, H, W)
        gh, gw = h // p, w // p
        if (gh * p, gw * p) != (h, w):
            pixel_values = pixel_values[:, :, :gh * p, :gw * p]
        x = pixel_values.astype(self.dtype).reshape(b, c, gh, p, gw, p)
        x = x.transpose(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, p * p * c)  # (B, N, P*P*C)
        x = jnp.matmul(x, kernel.astype(self.dtype).reshape(p * p * c, d),
                       preferred_element_type=jnp.float32).astype(self.dtype)  # (B, N, D)
        if self.use_bias:
            x = x + self.param("bias", nn.initializers.zeros, (d,), self.param_dtype).astype(self.dtype)
        return x


class CLIPVisionEmbeddings(Configured):
    """Class token + patch embedding + positions; ``config`` is the ``CLIPVisionConfig``."""

    @nn.compact
    def __call__(self, pixel_values, interpolate_pos_encoding: bool = False):
        c = self.config
        cls = self.param("class_embedding", nn.initializers.normal(0.02), (c.hidden_size,), self.param_dtype)
        patches = PatchEmbedding(c.patch_size, c.num_channels, c.hidden_size, self.dtype, self.param_dtype,
                                 name="patch_embedding")(pixel_values)  # (B, N, D)
        b, n, d = patches.shape
        pos = position_embeddings(c, pixel_values, n, interpolate_pos_encoding, self.dtype, self.param_dtype,
                                  prefix=1)  # (N+1, D)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d)), patches], axis=1)
        return x + pos[None]  # (B, N+1, D)


def position_embeddings(c, pixel_values, n: int, interpolate: bool, dtype: Dtype, param_dtype: Dtype,
                        prefix: int):
    """The ``position_embedding`` table (prefix + N, D) for this image: ``prefix`` leading rows (CLIP's class
    token: 1, SigLIP: 0) kept, the patch grid bicubic-resized when the image's grid differs (and
    ``interpolate`` allows it). Call inside a compact method (it creates the ``nn.Embed``)."""
    table = nn.Embed(c.num_positions, c.hidden_size, dtype=dtype, param_dtype=param_dtype,
                     embedding_init=nn.initializers.normal(0.02), name="position_embedding")
    pos = table(jnp.arange(c.num_positions))  # (prefix + P, D)
    h, w = pixel_values.shape[2] // c.patch_size, pixel_values.shape[3] // c.patch_size
    if n != c.num_patches or h != w:
        if not interpolate:
            raise ValueError(f"input image size ({pixel_values.shape[2]}*{pixel_values.shape[3]}) doesn't "
                             f"match model ({c.image_size}*{c.image_size}); pass interpolate_pos_encoding=True")
        pos = interpolate_positions(pos, h, w, prefix)
    return pos


def interpolate_positions(pos, h: int, w: int, prefix: int):
    """Bicubic resize of the patch position grid (after ``prefix`` rows) to (h, w) like HF/PyTorch."""
    g = int(round((pos.shape[0] - prefix) ** 0.5))
    grid = pos[prefix:].reshape(g, g, -1).astype(jnp.float32)  # (g, g, D)
    mh = jnp.asarray(bicubic_matrix(g, h), jnp.float32)
    mw = jnp.asarray(bicubic_matrix(g, w), jnp.float32)
    grid = jnp.einsum("ig,jk,gkd->ijd", mh, mw, grid).reshape(h * w, -1)
    return jnp.concatenate([pos[:prefix], grid.astype(pos.dtype)], axis=0)


class CLIPVisionTransformer(Configured):
    """``last_hidden_state`` = encoder output; ``pooler_output`` = post_layernorm(class token)."""

    @nn.compact
    def __call__(self, pixel_values, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False, interpolate_pos_encoding: bool = False):
        c = self.config
        x = CLIPVisionEmbeddings(c, self.dtype, self.param_dtype, name="embeddings")(
            pixel_values, interpolate_pos_encoding)
        x = layer_norm(x, c.layer_norm_eps, self.dtype, self.param_dtype, "pre_layrnorm")
        x, hidden, attns = CLIPEncoder(c, self.dtype, self.param_dtype, name="encoder")(
            x, None, deterministic, output_attentions, output_hidden_states)
        pooled = layer_norm(x[:, 0], c.layer_norm_eps, self.dtype, self.param_dtype, "post_layernorm")
        return BaseModelOutputWithPooling(x.astype(self.dtype), pooled, hidden, attns)  # x: float32 in bf16
