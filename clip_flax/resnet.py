"""OpenAI's ModifiedResNet (Flax Linen), NHWC inside, OpenAI's attribute names.

Params at ``vision_model/{conv1,bn1,...,layer1/0/conv1,...,attnpool/...}``; BatchNorm running
statistics in the separate ``batch_stats`` collection (``mean``, ``var``). BatchNorm always uses
the running statistics (inference mode, also while fine-tuning: "frozen BN").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from clip_core.outputs import BaseModelOutputWithPooling
from clip_core.schema import resnet_blocks

from .layers import Configured, Dtype, dense


class Conv(nn.Module):
    """Bias-free NHWC convolution, kernel ``HWIO`` under ``kernel`` (``nn.Conv``'s parameter), symmetric
    padding ``kernel_size // 2`` (PyTorch's, not TF 'SAME'). A 1x1 stride-1 kernel runs as a matmul:
    XLA's CPU convolution does those at 20-90 GFLOP/s, its dot at 100-140 (same sums, other rounding)."""

    features: int
    kernel_size: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # (B, H, W, C) -> (B, H / stride, W / stride, features)
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features),
                            self.param_dtype)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if k == 1 and self.stride == 1:
            return jnp.dot(x, kernel[0, 0])  # (B, H, W, C) @ (C, O)
        pad = k // 2
        return jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride), ((pad, pad), (pad, pad)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv(features: int, kernel: int, stride: int, dtype: Dtype, param_dtype: Dtype, name: str) -> Conv:
    return Conv(features, kernel, stride, dtype=dtype, param_dtype=param_dtype, name=name)


def batch_norm(eps: float, param_dtype: Dtype, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=True, epsilon=eps, momentum=0.9, dtype=jnp.float32,
                        param_dtype=param_dtype, name=name)


def avg_pool(x, s: int):
    """OpenAI's anti-aliasing ``AvgPool2d(s)`` (kernel = stride = s) on NHWC."""
    return x if s == 1 else nn.avg_pool(x, window_shape=(s, s), strides=(s, s))  # keyword: jax2onnx patches it so


class _Downsample(nn.Module):
    """``downsample`` = AvgPool(stride) -> ``0`` (1x1 conv) -> ``1`` (BatchNorm)."""

    features: int
    stride: int
    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = conv(self.features, 1, 1, self.dtype, self.param_dtype, "0")(avg_pool(x, self.stride))
        return batch_norm(self.eps, self.param_dtype, "1")(x).astype(self.dtype)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> AvgPool(stride) -> 1x1 (x4 channels) with an anti-aliased downsample path."""

    inplanes: int
    planes: int
    stride: int
    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # (B, H, W, Cin)
        dt, pdt, eps = self.dtype, self.param_dtype, self.eps
        bn = lambda n, y: batch_norm(eps, pdt, n)(y).astype(dt)
        out = jax.nn.relu(bn("bn1", conv(self.planes, 1, 1, dt, pdt, "conv1")(x)))
        out = jax.nn.relu(bn("bn2", conv(self.planes, 3, 1, dt, pdt, "conv2")(out)))
        out = bn("bn3", conv(self.planes * 4, 1, 1, dt, pdt, "conv3")(avg_pool(out, self.stride)))
        if self.stride > 1 or self.inplanes != self.planes * 4:
            x = _Downsample(self.planes * 4, self.stride, eps, dt, pdt, name="downsample")(x)
        return jax.nn.relu(out + x)


class AttentionPool2d(nn.Module):
    """OpenAI's attention pool: mean token prepended, positional embedding, query = mean token only."""

    grid: int
    embed_dim: int
    num_heads: int
    output_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # (B, H, W, C)
        b, h, w, c = x.shape
        if h * w != self.grid ** 2:
            raise ValueError(f"the attention pool was built for a {self.grid}x{self.grid} grid "
                             f"(image_size {self.grid * 32}); got a {h}x{w} feature map")
        pos = self.param("positional_embedding", nn.initializers.normal(c ** -0.5), (self.grid ** 2 + 1, c),
                         self.param_dtype)
        x = x.reshape(b, h * w, c)
        x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1) + pos.astype(self.dtype)[None]  # (B, HW+1, C)
        nh, dh = self.num_heads, c // self.num_heads
        lin = lambda n, y: dense(c, self.dtype, self.param_dtype, n)(y)
        q = lin("q_proj", x[:, :1]).reshape(b, 1, nh, dh) * jnp.asarray(dh ** -0.5, self.dtype)
        k = lin("k_proj", x).reshape(b, -1, nh, dh)
        v = lin("v_proj", x).reshape(b, -1, nh, dh)
        weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32), axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), v).reshape(b, c)
        return dense(self.output_dim, self.dtype, self.param_dtype, "c_proj")(out)  # (B, output_dim)


class _Stage(nn.Module):
    """``layer<k>``: Bottlenecks as children ``0 .. n-1``."""

    blocks: tuple  # ((inplanes, planes, stride), ...)
    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i, (inplanes, planes, stride) in enumerate(self.blocks):
            x = Bottleneck(inplanes, planes, stride, self.eps, self.dtype, self.param_dtype, name=str(i))(x)
        return x


class ModifiedResNet(Configured):
    """Stem (3 convs, AvgPool 2) -> 4 stages -> attention pool.

    ``last_hidden_state`` is the last stage's map NCHW; ``hidden_states`` = (stem output,
    stage1..stage4 outputs), NCHW; ``pooler_output`` the attention-pool output; no attentions.
    """

    @nn.compact
    def __call__(self, pixel_values, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False, interpolate_pos_encoding: bool = False):
        c, dt, pdt, eps = self.config, self.dtype, self.param_dtype, self.config.batch_norm_eps
        x = jnp.transpose(pixel_values, (0, 2, 3, 1)).astype(dt)  # NCHW -> (B, H, W, 3)
        w = c.width
        for i, (feat, stride) in enumerate(((w // 2, 2), (w // 2, 1), (w, 1)), start=1):
            x = conv(feat, 3, stride, dt, pdt, f"conv{i}")(x)
            x = jax.nn.relu(batch_norm(eps, pdt, f"bn{i}")(x).astype(dt))
        x = avg_pool(x, 2)
        hidden = [x]
        stages: dict[int, list] = {}
        for stage, _, inplanes, planes, stride in resnet_blocks(c):
            stages.setdefault(stage, []).append((inplanes, planes, stride))
        for stage in sorted(stages):
            x = _Stage(tuple(stages[stage]), eps, dt, pdt, name=f"layer{stage}")(x)
            hidden.append(x)
        pooled = AttentionPool2d(c.grid_size, c.embed_dim, c.num_attention_heads, c.projection_dim, dt, pdt,
                                 name="attnpool")(x)
        nchw = lambda y: jnp.transpose(y, (0, 3, 1, 2))
        hidden_states = tuple(nchw(h) for h in hidden) if output_hidden_states else None
        return BaseModelOutputWithPooling(nchw(x), pooled, hidden_states, () if output_attentions else None)
