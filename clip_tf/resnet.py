"""OpenAI's ModifiedResNet tower: 3-conv stem, anti-aliased Bottlenecks, attention pooling (NHWC inside)."""
from __future__ import annotations

import keras
import tensorflow as tf

from clip_core.outputs import BaseModelOutputWithPooling
from clip_core.schema import resnet_blocks

from .primitives import BatchNorm, Conv2D, Dense, conv_bn, param, reshape, shape_list, split_heads

__all__ = ["Bottleneck", "AttentionPool2d", "ModifiedResNet", "avg_pool"]


def avg_pool(x, k: int):
    """Exact ``AvgPool2d(k)`` (kernel = stride = k, no padding) on NHWC."""
    return x if k == 1 else tf.nn.avg_pool2d(x, k, k, "VALID")


class Bottleneck(keras.layers.Layer):
    """1x1 -> 3x3 -> avgpool(stride) -> 1x1 (x4), with an avgpool + 1x1 + BN shortcut when shapes change."""

    def __init__(self, inplanes: int, planes: int, stride: int, eps: float, name: str, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.stride = stride
        self.conv1 = Conv2D(inplanes, planes, 1, name="conv1", dtype=dtype)
        self.bn1 = BatchNorm(planes, eps, name="bn1", dtype=dtype)
        self.conv2 = Conv2D(planes, planes, 3, padding=1, name="conv2", dtype=dtype)
        self.bn2 = BatchNorm(planes, eps, name="bn2", dtype=dtype)
        self.conv3 = Conv2D(planes, planes * 4, 1, name="conv3", dtype=dtype)
        self.bn3 = BatchNorm(planes * 4, eps, name="bn3", dtype=dtype)
        if stride > 1 or inplanes != planes * 4:
            self.downsample = [Conv2D(inplanes, planes * 4, 1, name="downsample_._0", dtype=dtype),
                               BatchNorm(planes * 4, eps, name="downsample_._1", dtype=dtype)]
        self.built = True

    def call(self, x, training=False):  # (B, H, W, C_in) -> (B, H/s, W/s, 4*planes)
        out = conv_bn(self.conv1, self.bn1, x, training)
        out = avg_pool(conv_bn(self.conv2, self.bn2, out, training), self.stride)
        identity = x
        if hasattr(self, "downsample"):
            conv, bn = self.downsample
            identity = conv_bn(conv, bn, avg_pool(x, self.stride), training, relu=False)
        return conv_bn(self.conv3, self.bn3, out, training, add=identity)


class AttentionPool2d(keras.layers.Layer):
    """OpenAI's AttentionPool2d: mean token prepended, positional embedding added, multi-head
    attention with the mean token as the only query, then ``c_proj``."""

    def __init__(self, spatial: int, dim: int, heads: int, out_dim: int, name: str = "attnpool", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.heads, self.head_dim = heads, dim // heads
        param(self, "positional_embedding", (spatial ** 2 + 1, dim),
              keras.initializers.RandomNormal(stddev=dim ** -0.5))
        for proj in ("q_proj", "k_proj", "v_proj"):
            setattr(self, proj, Dense(dim, dim, name=proj, dtype=dtype))
        self.c_proj = Dense(dim, out_dim, name="c_proj", dtype=dtype)
        self.built = True

    def call(self, x):  # (B, H, W, C) -> (B, out_dim)
        b, h, w, c = shape_list(x)
        x = reshape(x, [b, h * w, c])
        x = tf.concat([tf.reduce_mean(x, axis=1, keepdims=True), x], axis=1)  # (B, 1+HW, C)
        x = x + tf.cast(self.positional_embedding, x.dtype)[None]
        t = shape_list(x)[1]
        n, hd = self.heads, self.head_dim
        q = split_heads(self.q_proj(x[:, :1]) * tf.constant(hd ** -0.5, x.dtype), b, 1, n, hd)  # (B, n, 1, hd)
        k, v = split_heads(self.k_proj(x), b, t, n, hd), split_heads(self.v_proj(x), b, t, n, hd)  # (B, n, T, hd)
        probs = tf.nn.softmax(tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32), axis=-1)  # (B, H, 1, T)
        out = tf.matmul(tf.cast(probs, v.dtype), v)  # (B, H, 1, hd)
        return tf.cast(self.c_proj(reshape(out, [b, c])), tf.float32)  # (B, out_dim), float32 in any precision


class ModifiedResNet(keras.layers.Layer):
    """The whole ResNet tower; ``last_hidden_state`` and ``hidden_states`` are NCHW like PyTorch."""

    def __init__(self, config, name: str = "vision_model", dtype=None):
        super().__init__(name=name, dtype=dtype)
        w, eps, ch = config.width, config.batch_norm_eps, config.num_channels
        self.conv1 = Conv2D(ch, w // 2, 3, stride=2, padding=1, name="conv1", dtype=dtype)
        self.bn1 = BatchNorm(w // 2, eps, name="bn1", dtype=dtype)
        self.conv2 = Conv2D(w // 2, w // 2, 3, padding=1, name="conv2", dtype=dtype)
        self.bn2 = BatchNorm(w // 2, eps, name="bn2", dtype=dtype)
        self.conv3 = Conv2D(w // 2, w, 3, padding=1, name="conv3", dtype=dtype)
        self.bn3 = BatchNorm(w, eps, name="bn3", dtype=dtype)
        stages: dict[int, list] = {1: [], 2: [], 3: [], 4: []}
        for stage, block, inplanes, planes, stride in resnet_blocks(config):
            stages[stage].append(Bottleneck(inplanes, planes, stride, eps, f"layer{stage}_._{block}", dtype=dtype))
        self.layer1, self.layer2, self.layer3, self.layer4 = (stages[i] for i in range(1, 5))
        self.attnpool = AttentionPool2d(config.grid_size, config.embed_dim, config.num_attention_heads,
                                        config.projection_dim, dtype=dtype)
        self.built = True

    def call(self, pixel_values, output_attentions: bool = False, output_hidden_states: bool = False,
             interpolate_pos_encoding: bool = False, training=False, data_format: str = "channels_first"):
        if pixel_values is None:
            raise ValueError("the vision tower needs pixel_values")
        x = tf.cast(pixel_values, self.compute_dtype)
        x = x if data_format == "channels_last" else tf.transpose(x, [0, 2, 3, 1])  # NCHW -> NHWC
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = conv_bn(conv, bn, x, training)
        x = avg_pool(x, 2)
        hidden = [x]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x, training=training)
            hidden.append(x)
        pooled = self.attnpool(x)
        nchw = lambda t: tf.transpose(t, [0, 3, 1, 2])  # noqa: E731
        return BaseModelOutputWithPooling(
            nchw(x), pooled, tuple(nchw(h) for h in hidden) if output_hidden_states else None,
            () if output_attentions else None)

