"""SigLIP's two towers, built from the CLIP layers of this backend (same encoder, attention, MLP, norms).

What is SigLIP's own: bidirectional text attention pooled at the last position then ``head`` (Linear with
bias); a patch embedding with bias, no class token, no pre-norm, a post-layer-normed ``last_hidden_state``
and the multi-head attention-pooling head (learned ``probe``, PyTorch's packed ``in_proj``).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from clip_core.outputs import BaseModelOutputWithPooling

from .layers import CLIPAttention, CLIPEncoder, CLIPMLP
from .primitives import Dense, Embedding, LayerNorm, param, shape_list
from .text import CLIPTextTransformer
from .vision import _PatchConv, resize_positions, to_nchw

__all__ = ["SiglipTextTransformer", "SiglipVisionEmbeddings", "SiglipAttentionPool", "SiglipVisionTransformer"]


class SiglipTextTransformer(CLIPTextTransformer):
    """The CLIP text tower without the causal mask, pooled at the last position through ``head``."""

    causal = False

    def __init__(self, config, name: str = "text_model", dtype=None):
        super().__init__(config, name=name, dtype=dtype)
        self.head = Dense(config.hidden_size, config.projection_size, name="head", dtype=dtype)

    def pool(self, x, input_ids):  # (B, T, D) -> (B, P)
        return tf.cast(self.head(x[:, -1]), tf.float32)  # (B, P), float32 in any precision, as every projection


class SiglipVisionEmbeddings(keras.layers.Layer):
    """Patch conv with bias + position embedding (one per patch, no class token)."""

    def __init__(self, config, name: str = "embeddings", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.cfg = config
        d = config.hidden_size
        self.patch_embedding = _PatchConv(config.num_channels, d, config.patch_size, dtype=dtype, bias=True)
        self.position_embedding = Embedding(config.num_positions, d, leaf="embeddings", name="position_embedding",
                                            dtype=dtype)
        self.built = True

    def _positions(self, gh: int, gw: int, interpolate: bool):  # (1, gh*gw, D)
        table = tf.cast(self.position_embedding.table, self.compute_dtype)
        n, p = self.cfg.image_size // self.cfg.patch_size, self.cfg.patch_size
        if (gh, gw) == (n, n):
            return table[None]
        if not interpolate:
            raise ValueError(f"input image size ({gh * p}x{gw * p}) doesn't match model "
                             f"({self.cfg.image_size}x{self.cfg.image_size}); pass interpolate_pos_encoding=True")
        return resize_positions(table, n, gh, gw)[None]

    def call(self, pixel_values, interpolate_pos_encoding: bool = False):  # (B, C, H, W) -> (B, N, D)
        x = tf.cast(pixel_values, self.compute_dtype)
        _, _, h, w = x.shape.as_list()
        if h is None or w is None:
            raise ValueError("the ViT needs a static image height and width")
        p = self.cfg.patch_size
        return self.patch_embedding(x) + self._positions(h // p, w // p, interpolate_pos_encoding)


class SiglipAttentionPool(keras.layers.Layer):
    """Multi-head attention pooling: the ``probe`` attends to every token; + layer norm -> MLP residual."""

    def __init__(self, config, name: str = "head", dtype=None):
        super().__init__(name=name, dtype=dtype)
        d = config.hidden_size
        param(self, "probe", (1, 1, d), keras.initializers.RandomNormal(stddev=0.02))
        self.attention = CLIPAttention(d, config.num_attention_heads, name="attention", dtype=dtype, packed=True)
        self.layernorm = LayerNorm(d, config.layer_norm_eps, name="layernorm", dtype=dtype)
        self.mlp = CLIPMLP(d, config.intermediate_size, config.hidden_act, dtype=dtype)
        self.built = True

    def call(self, x):  # (B, N, D) -> (B, D)
        probe = tf.broadcast_to(tf.cast(self.probe, x.dtype), [shape_list(x)[0], 1, x.shape[-1]])
        h = self.attention.attend(probe, x)[0]  # (B, 1, D)
        return (h + self.mlp(self.layernorm(h)))[:, 0]


class SiglipVisionTransformer(keras.layers.Layer):
    """Hugging Face's ``SiglipVisionTransformer``: post-layer-normed last_hidden_state, attention-pooled
    pooler_output (None without ``vision_use_head``)."""

    def __init__(self, config, name: str = "vision_model", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.embeddings = SiglipVisionEmbeddings(config, dtype=dtype)
        self.encoder = CLIPEncoder(config, dtype=dtype)
        self.post_layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps, name="post_layernorm", dtype=dtype)
        if config.vision_use_head:
            self.head = SiglipAttentionPool(config, dtype=dtype)
        self.built = True

    def call(self, pixel_values, output_attentions: bool = False, output_hidden_states: bool = False,
             interpolate_pos_encoding: bool = False, training=None, data_format: str = "channels_first"):
        if pixel_values is None:
            raise ValueError("the vision tower needs pixel_values")
        x = self.embeddings(to_nchw(pixel_values, data_format), interpolate_pos_encoding=interpolate_pos_encoding)
        x, hidden, attentions = self.encoder(x, output_attentions=output_attentions,
                                              output_hidden_states=output_hidden_states)
        x = self.post_layernorm(x)
        pooled = tf.cast(self.head(x), tf.float32) if hasattr(self, "head") else None  # float32 in any precision
        return BaseModelOutputWithPooling(x, pooled, hidden, attentions)
