"""The Vision Transformer tower: patch embedding, class token, position embedding, pre/post norm."""
from __future__ import annotations

import keras
import tensorflow as tf

from clip_core.interpolate import bicubic_matrix
from clip_core.outputs import BaseModelOutputWithPooling

from .layers import CLIPEncoder
from .primitives import Embedding, LayerNorm, linear, param, policy_dtype, reshape, shape_list

__all__ = ["CLIPVisionEmbeddings", "CLIPVisionTransformer", "resize_positions", "to_nchw"]


def to_nchw(pixel_values, data_format: str):
    """Pixels as a float tensor in NCHW, whatever layout the model was built for."""
    x = tf.convert_to_tensor(pixel_values)
    return tf.transpose(x, [0, 3, 1, 2]) if data_format == "channels_last" else x


class CLIPVisionEmbeddings(keras.layers.Layer):
    """Non-overlapping patches -> one GEMM with the conv kernel; class token; position embedding."""

    def __init__(self, config, name: str = "embeddings", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.cfg = config
        d, p, c = config.hidden_size, config.patch_size, config.num_channels
        param(self, "class_embedding", (d,), keras.initializers.RandomNormal(stddev=0.02))
        self.patch_embedding = _PatchConv(c, d, p, dtype=dtype)
        self.position_embedding = Embedding(config.num_positions, d, leaf="embeddings", name="position_embedding",
                                            dtype=dtype)
        self.built = True

    def _positions(self, gh: int, gw: int, interpolate: bool):  # (1, 1 + gh*gw, D)
        table = tf.cast(self.position_embedding.table, self.compute_dtype)
        n = self.cfg.image_size // self.cfg.patch_size
        if (gh, gw) == (n, n):
            return table[None]
        if not interpolate:
            raise ValueError(f"input image size ({gh * self.cfg.patch_size}x{gw * self.cfg.patch_size}) doesn't match "
                             f"model ({self.cfg.image_size}x{self.cfg.image_size}); pass interpolate_pos_encoding=True")
        return tf.concat([table[:1], resize_positions(table[1:], n, gh, gw)], 0)[None]

    def call(self, pixel_values, interpolate_pos_encoding: bool = False):  # (B, C, H, W) -> (B, 1+N, D)
        x = tf.cast(pixel_values, self.compute_dtype)
        _, _, h, w = x.shape.as_list()
        p = self.cfg.patch_size
        if h is None or w is None:
            raise ValueError("the ViT needs a static image height and width")
        patches = self.patch_embedding(x)  # (B, N, D)
        b = shape_list(patches)[0]
        cls = tf.broadcast_to(tf.cast(self.class_embedding, patches.dtype), [b, 1, patches.shape[-1]])
        x = tf.concat([cls, patches], axis=1)
        return x + self._positions(h // p, w // p, interpolate_pos_encoding)


def resize_positions(table, n: int, gh: int, gw: int):
    """(n*n, D) patch position embeddings -> (gh*gw, D), PyTorch's bicubic resize (``interpolate_pos_encoding``)."""
    grid = tf.reshape(tf.cast(table, tf.float32), [n, n, -1])  # (n, n, D)
    mh = tf.constant(bicubic_matrix(n, gh), tf.float32)
    mw = tf.constant(bicubic_matrix(n, gw), tf.float32)
    grid = tf.einsum("hi,ijd,wj->hwd", mh, grid, mw)
    return tf.cast(tf.reshape(grid, [gh * gw, -1]), table.dtype)


class _PatchConv(keras.layers.Layer):
    """A stride = size conv (kernel HWIO; bias-free unless ``bias``: SigLIP) as a reshape + GEMM from NCHW input."""

    def __init__(self, c: int, d: int, p: int, dtype=None, bias: bool = False):
        super().__init__(name="patch_embedding", dtype=policy_dtype(dtype))
        self.p = p
        param(self, "kernel", (p, p, c, d), "he_normal")
        if bias:
            param(self, "bias", (d,))
        self.built = True

    def call(self, x):  # (B, C, H, W) -> (B, gh*gw, D)
        p = self.p
        b, c, h, w = shape_list(x)
        gh, gw = h // p, w // p
        x = x[:, :, :gh * p, :gw * p]  # a conv with stride p drops the remainder
        x = reshape(x, [b, c, gh, p, gw, p])
        x = tf.transpose(x, [0, 2, 4, 3, 5, 1])  # (B, gh, gw, p, p, C) ~ kernel HWIO order
        x = reshape(x, [b, gh * gw, p * p * c])
        k = tf.reshape(self.kernel, [p * p * c, -1])
        y = linear(tf.reshape(x, [-1, p * p * c]), k, getattr(self, "bias", None))  # (B*N, D)
        return reshape(y, [b, gh * gw, k.shape[-1]])


class CLIPVisionTransformer(keras.layers.Layer):
    """Hugging Face's ``CLIPVisionTransformer``: last_hidden_state (no post norm) and the
    post-layer-normed class token as pooler_output."""

    def __init__(self, config, name: str = "vision_model", dtype=None):
        super().__init__(name=name, dtype=dtype)
        d, eps = config.hidden_size, config.layer_norm_eps
        self.embeddings = CLIPVisionEmbeddings(config, dtype=dtype)
        self.pre_layrnorm = LayerNorm(d, eps, name="pre_layrnorm", dtype=dtype)
        self.encoder = CLIPEncoder(config, dtype=dtype)
        self.post_layernorm = LayerNorm(d, eps, name="post_layernorm", dtype=dtype)
        self.built = True

    def call(self, pixel_values, output_attentions: bool = False, output_hidden_states: bool = False,
             interpolate_pos_encoding: bool = False, training=None, data_format: str = "channels_first"):
        if pixel_values is None:
            raise ValueError("the vision tower needs pixel_values")
        pixel_values = to_nchw(pixel_values, data_format)
        x = self.pre_layrnorm(self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding))
        x, hidden, attentions = self.encoder(x, output_attentions=output_attentions,
                                              output_hidden_states=output_hidden_states)
        pooled = self.post_layernorm(x[:, 0])
        return BaseModelOutputWithPooling(x, pooled, hidden, attentions)

    def pooled(self, pixel_values, data_format: str = "channels_first"):
        """Only the post-layer-normed class token (B, D): the last block runs for that token alone."""
        x = self.pre_layrnorm(self.embeddings(to_nchw(pixel_values, data_format)))
        *body, last = self.encoder.layers
        for layer in body:
            x, _ = layer(x)
        return self.post_layernorm(last.first_token(x)[:, 0])
