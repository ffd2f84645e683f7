"""Transformer building blocks (Flax Linen), named like Hugging Face's Flax CLIP.

Parameter paths: ``self_attn/{q,k,v,out}_proj/{kernel,bias}``, ``layer_norm1``, ``mlp/fc1``,
``mlp/fc2``, ``layer_norm2`` under ``encoder/layers/<i>``. Layer norms and the softmax run in
float32 whatever the compute ``dtype``.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

Dtype = Any


class Configured(nn.Module):
    """Base of the modules built from one config (a tower's, or the whole ``CLIPConfig``) with a
    compute ``dtype`` and a parameter dtype: the three fields every such module shares."""

    config: Any
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32


def activation(name: str):
    """The activation function a config names (exact erf gelu, OpenAI's quick_gelu)."""
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu
    raise ValueError(f"unsupported activation {name!r}")


def layer_norm(x, eps: float, dtype: Dtype, param_dtype: Dtype, name: str):
    """Layer norm in float32 with the config's eps (params at ``<name>/{scale,bias}``), cast to ``dtype``.

    Must be called inside a compact method (it creates the ``nn.LayerNorm`` submodule).
    """
    y = nn.LayerNorm(epsilon=eps, dtype=jnp.float32, param_dtype=param_dtype, name=name)(x.astype(jnp.float32))
    return y.astype(dtype)


def dot_f32(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
    """``lax.dot_general`` accumulating in and returning float32 (the bf16 path's products): XLA's CPU
    bf16 x bf16 -> bf16 dot runs several times slower than the same dot with a float32 result. Bias,
    activation and the residual stream then stay float32; the next product casts its input to bf16."""
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=jnp.float32, **kwargs)


def dense(features: int, dtype: Dtype, param_dtype: Dtype, name: str, use_bias: bool = True) -> nn.Dense:
    """``nn.Dense`` with the tower's init; in bfloat16 its products accumulate in float32 (:func:`dot_f32`)."""
    extra = {"dot_general": dot_f32} if jnp.dtype(dtype) == jnp.bfloat16 else {}
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                    kernel_init=nn.initializers.normal(0.02), **extra)


class CLIPAttention(nn.Module):
    """Multi-head self-attention with an additive boolean mask (True = attend)."""

    hidden_size: int
    num_heads: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True, output_attentions: bool = False):
        b, t, d = x.shape  # (B, T, D)
        h = self.num_heads
        proj = lambda n: dense(d, self.dtype, self.param_dtype, n)(x).reshape(b, t, h, d // h)
        q, k, v = proj("q_proj"), proj("k_proj"), proj("v_proj")  # (B, T, H, Dh)
        drop = None
        if self.dropout > 0.0 and not deterministic:
            drop = lambda w: nn.Dropout(self.dropout)(w, deterministic=False)  # noqa: E731
        out, weights = attend(q, k, v, mask, self.dtype, drop)
        out = dense(d, self.dtype, self.param_dtype, "out_proj")(out)
        return out, (weights if output_attentions else None)


def attend(q, k, v, mask, dtype: Dtype, dropout=None):
    """Scaled dot-product attention over heads: q (B, Tq, H, Dh), k / v (B, Tk, H, Dh), boolean ``mask``
    broadcastable to (B, H, Tq, Tk) (True = attend); softmax in float32. Returns ``(out (B, Tq, H*Dh),
    weights (B, H, Tq, Tk))``. Shared by the encoder's self-attention and SigLIP's attention-pooling head."""
    b, tq, h, dh = q.shape
    q, k, v = (t.astype(dtype) for t in (q, k, v))
    q = q * jnp.asarray(dh ** -0.5, q.dtype)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)  # (B, H, Tq, Tk)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1)
    if dropout is not None:
        weights = dropout(weights)
    weights = weights.astype(dtype)  # returned in the compute dtype, as torch's and TF's
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, preferred_element_type=jnp.float32)
    out = out.astype(dtype).reshape(b, tq, h * dh)  # (B, Tq, H*Dh)
    return out, weights


class CLIPMLP(nn.Module):
    intermediate_size: int
    hidden_act: str
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        x = dense(self.intermediate_size, self.dtype, self.param_dtype, "fc1")(x)
        x = activation(self.hidden_act)(x)
        return dense(d, self.dtype, self.param_dtype, "fc2")(x)


class CLIPEncoderLayer(Configured):
    """Pre-norm residual block: x + attn(ln1(x)); x + mlp(ln2(x))."""

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True, output_attentions: bool = False):
        c = self.config
        y = layer_norm(x, c.layer_norm_eps, self.dtype, self.param_dtype, "layer_norm1")
        y, attn = CLIPAttention(c.hidden_size, c.num_attention_heads, c.attention_dropout, self.dtype,
                                self.param_dtype, name="self_attn")(y, mask, deterministic, output_attentions)
        x = x + y
        y = layer_norm(x, c.layer_norm_eps, self.dtype, self.param_dtype, "layer_norm2")
        x = x + CLIPMLP(c.intermediate_size, c.hidden_act, self.dtype, self.param_dtype, name="mlp")(y)
        return x, attn


class _LayerCollection(Configured):
    """Holds the layers as children ``0 .. N-1`` (the HF Flax ``encoder/layers/<i>`` paths)."""

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False):
        hidden, attns = [], []  # states in the compute dtype (bf16 keeps a float32 residual stream: dot_f32)
        for i in range(self.config.num_hidden_layers):
            if output_hidden_states:
                hidden.append(x.astype(self.dtype))
            x, attn = CLIPEncoderLayer(self.config, self.dtype, self.param_dtype, name=str(i))(
                x, mask, deterministic, output_attentions)
            if output_attentions:
                attns.append(attn)
        if output_hidden_states:
            hidden.append(x.astype(self.dtype))
        return x, (tuple(hidden) if output_hidden_states else None), (tuple(attns) if output_attentions else None)


class CLIPEncoder(Configured):
    """The stack of encoder layers; returns ``(last, hidden_states, attentions)``."""

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False):
        return _LayerCollection(self.config, self.dtype, self.param_dtype, name="layers")(
            x, mask, deterministic, output_attentions, output_hidden_states)
