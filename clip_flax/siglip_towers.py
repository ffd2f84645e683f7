"""SigLIP's two towers (Flax Linen), built from the CLIP layers of this backend.

Only what differs from CLIP lives here: the text tower's bidirectional attention, last-position
pooling and ``head`` (Linear with bias); the vision tower's biased patch embedding without class
token or pre-norm, and the multi-head attention-pooling head (MAP). The encoder, attention core,
MLP, layer norm, embeddings and position interpolation are :mod:`clip_flax.layers`, ``text`` and
``vision``'s. Parameter paths are the schema's flax paths (``vision_model/head/attention/in_proj/kernel``
holds torch's packed q/k/v as (D, 3D)).
"""
from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from clip_core.outputs import BaseModelOutputWithPooling

from .layers import CLIPEncoder, CLIPMLP, Configured, Dtype, attend, dense, layer_norm
from .text import CLIPTextEmbeddings, text_attention_mask, text_positions
from .vision import PatchEmbedding, position_embeddings

__all__ = ["SiglipTextTransformer", "SiglipVisionTransformer", "AttentionPoolingHead"]


class SiglipTextTransformer(Configured):
    """Bidirectional text encoder; ``pooler_output`` = ``head(final_layer_norm(x)[:, -1])``.

    ``config`` is the ``SiglipTextConfig``; the padding mask applies only when ``attention_mask`` is given.
    """

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, position_ids=None, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False):
        c = self.config
        position_ids = text_positions(input_ids, position_ids, c)
        x = CLIPTextEmbeddings(c, self.dtype, self.param_dtype, name="embeddings")(input_ids, position_ids)
        mask = text_attention_mask(attention_mask, input_ids.shape[1], causal=False)  # (B, 1, 1, T) or None
        x, hidden, attns = CLIPEncoder(c, self.dtype, self.param_dtype, name="encoder")(
            x, mask, deterministic, output_attentions, output_hidden_states)
        x = layer_norm(x, c.layer_norm_eps, self.dtype, self.param_dtype, "final_layer_norm")  # (B, T, D)
        pooled = dense(c.projection_size, self.dtype, self.param_dtype, "head")(x[:, -1])  # (B, E)
        return BaseModelOutputWithPooling(x, pooled, hidden, attns)


class _PackedInProjection(nn.Module):
    """torch ``MultiheadAttention``'s packed ``in_proj``: ``kernel`` (D, 3D) and ``bias`` (3D,), q | k | v."""

    hidden_size: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self):
        d = self.hidden_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (d, 3 * d), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (3 * d,), self.param_dtype)
        return kernel, bias


class _CrossAttention(nn.Module):
    """Multi-head attention of ``query`` (B, Tq, D) over ``memory`` (B, Tk, D) with a packed in-projection."""

    hidden_size: int
    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, query, memory):
        d, h = self.hidden_size, self.num_heads
        kernel, bias = _PackedInProjection(d, self.param_dtype, name="in_proj")()
        kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
        heads = lambda x: x.reshape(x.shape[0], x.shape[1], h, d // h)  # noqa: E731  (B, T, H, Dh)
        q = heads(query @ kernel[:, :d] + bias[:d])
        k = heads(memory @ kernel[:, d:2 * d] + bias[d:2 * d])
        v = heads(memory @ kernel[:, 2 * d:] + bias[2 * d:])
        out, _ = attend(q, k, v, None, self.dtype)  # (B, Tq, D)
        return dense(d, self.dtype, self.param_dtype, "out_proj")(out)


class AttentionPoolingHead(Configured):
    """MAP: a learned ``probe`` attends over the tokens; + MLP(layernorm(.)) residual; token 0 -> (B, D)."""

    @nn.compact
    def __call__(self, x):
        c = self.config
        b, _, d = x.shape  # (B, N, D)
        probe = self.param("probe", nn.initializers.normal(1.0), (1, 1, d), self.param_dtype)
        y = _CrossAttention(d, c.num_attention_heads, self.dtype, self.param_dtype, name="attention")(
            jnp.broadcast_to(probe.astype(self.dtype), (b, 1, d)), x)  # (B, 1, D)
        z = layer_norm(y, c.layer_norm_eps, self.dtype, self.param_dtype, "layernorm")
        y = y + CLIPMLP(c.intermediate_size, c.hidden_act, self.dtype, self.param_dtype, name="mlp")(z)
        return y[:, 0]


class SiglipVisionEmbeddings(Configured):
    """Biased patch embedding + positions (no class token); ``config`` is the ``SiglipVisionConfig``."""

    @nn.compact
    def __call__(self, pixel_values, interpolate_pos_encoding: bool = False):
        c = self.config
        patches = PatchEmbedding(c.patch_size, c.num_channels, c.hidden_size, self.dtype, self.param_dtype,
                                 use_bias=True, name="patch_embedding")(pixel_values)  # (B, N, D)
        pos = position_embeddings(c, pixel_values, patches.shape[1], interpolate_pos_encoding, self.dtype,
                                  self.param_dtype, prefix=0)  # (N, D)
        return patches + pos[None]


class SiglipVisionTransformer(Configured):
    """``last_hidden_state`` = post_layernorm(encoder output); ``pooler_output`` = the MAP head's (None
    without ``vision_use_head``)."""

    @nn.compact
    def __call__(self, pixel_values, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False, interpolate_pos_encoding: bool = False):
        c = self.config
        x = SiglipVisionEmbeddings(c, self.dtype, self.param_dtype, name="embeddings")(
            pixel_values, interpolate_pos_encoding)
        x, hidden, attns = CLIPEncoder(c, self.dtype, self.param_dtype, name="encoder")(
            x, None, deterministic, output_attentions, output_hidden_states)
        x = layer_norm(x, c.layer_norm_eps, self.dtype, self.param_dtype, "post_layernorm")  # (B, N, D)
        pooled = AttentionPoolingHead(c, self.dtype, self.param_dtype, name="head")(x) if c.vision_use_head else None
        return BaseModelOutputWithPooling(x, pooled, hidden, attns)
