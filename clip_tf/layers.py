"""The transformer shared by the text and ViT towers: attention, MLP, encoder layer, encoder."""
from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

from .primitives import Dense, LayerNorm, activation, linear, matmul, reshape, shape_list, split_heads

__all__ = ["CLIPAttention", "CLIPMLP", "CLIPEncoderLayer", "CLIPEncoder"]


class CLIPAttention(keras.layers.Layer):
    """Multi-head self-attention; scores and softmax in float32; ``attn_mask`` is boolean (True = attend).
    ``packed=True`` holds q/k/v in one ``in_proj`` (D, 3D), as PyTorch's ``nn.MultiheadAttention`` (SigLIP's head)."""

    def __init__(self, dim: int, heads: int, name: str = "self_attn", dtype=None, packed: bool = False):
        super().__init__(name=name, dtype=dtype)
        self.heads, self.head_dim, self.packed = heads, dim // heads, packed
        self.scale = self.head_dim ** -0.5
        for proj in ("in_proj",) if packed else ("q_proj", "k_proj", "v_proj"):
            setattr(self, proj, Dense(dim, 3 * dim if packed else dim, name=proj, dtype=dtype))
        self.out_proj = Dense(dim, dim, name="out_proj", dtype=dtype)
        self.built = True

    def _project(self, xq, xkv):
        """Scaled queries of ``xq`` (B, Tq, D), keys and values of ``xkv`` (B, Tk, D)."""
        if self.packed:
            d, w, bias = self.heads * self.head_dim, self.in_proj.kernel, self.in_proj.bias
            q = linear(xq, w[:, :d], bias[:d])
            k, v = tf.split(linear(xkv, w[:, d:], bias[d:]), 2, axis=-1)
        else:
            q, k, v = self.q_proj(xq), self.k_proj(xkv), self.v_proj(xkv)
        return q * tf.constant(self.scale, q.dtype), k, v

    def attend(self, xq, xkv, attn_mask: Optional[tf.Tensor] = None):
        """Queries of ``xq`` (B, Tq, D) against ``xkv`` (B, Tk, D) -> (output (B, Tq, D), probs (B, H, Tq, Tk))."""
        b, tq, d = shape_list(xq)
        tk = shape_list(xkv)[1]
        q, k, v = self._project(xq, xkv)
        h, hd = self.heads, self.head_dim
        q, k, v = split_heads(q, b, tq, h, hd), split_heads(k, b, tk, h, hd), split_heads(v, b, tk, h, hd)
        scores = tf.cast(matmul(q, k, transpose_b=True), tf.float32)  # (B, H, Tq, Tk)
        if attn_mask is not None:  # boolean "may attend" (Keras would autocast a float mask)
            scores = tf.where(attn_mask, scores, tf.float32.min)
        probs = tf.cast(tf.nn.softmax(scores, axis=-1), v.dtype)  # returned in the compute dtype, as torch's
        out = matmul(probs, v)  # (B, H, Tq, hd)
        return self.out_proj(reshape(tf.transpose(out, [0, 2, 1, 3]), [b, tq, d])), probs

    def call(self, x, attn_mask: Optional[tf.Tensor] = None, output_attentions: bool = False):
        out, probs = self.attend(x, x, attn_mask)
        return out, (probs if output_attentions else None)

    def first_query(self, x):
        """Attention output of the first token only (B, 1, D): its query against every key."""
        return self.attend(x[:, :1], x)[0]


class CLIPMLP(keras.layers.Layer):
    """fc1 -> activation -> fc2."""

    def __init__(self, dim: int, hidden: int, act: str, name: str = "mlp", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.act_name = act
        self._act = activation(act)
        self.fc1 = Dense(dim, hidden, name="fc1", dtype=dtype)
        self.fc2 = Dense(hidden, dim, name="fc2", dtype=dtype)
        self.built = True

    def call(self, x):
        return self.fc2(self._act(self.fc1(x)))


class CLIPEncoderLayer(keras.layers.Layer):
    """Pre-norm residual block: x + attn(ln1(x)); x + mlp(ln2(x))."""

    def __init__(self, config, name: str = "layer", dtype=None):
        super().__init__(name=name, dtype=dtype)
        d, eps = config.hidden_size, config.layer_norm_eps
        self.self_attn = CLIPAttention(d, config.num_attention_heads, dtype=dtype)
        self.layer_norm1 = LayerNorm(d, eps, name="layer_norm1", dtype=dtype)
        self.mlp = CLIPMLP(d, config.intermediate_size, config.hidden_act, dtype=dtype)
        self.layer_norm2 = LayerNorm(d, eps, name="layer_norm2", dtype=dtype)
        self.built = True

    def call(self, x, attn_mask=None, output_attentions: bool = False):
        h, probs = self.self_attn(self.layer_norm1(x), attn_mask=attn_mask, output_attentions=output_attentions)
        x = x + h
        return x + self.mlp(self.layer_norm2(x)), probs


    def first_token(self, x):
        """The block's output for the first token only (B, 1, D) — all a pooled ViT needs at the end."""
        h = x[:, :1] + self.self_attn.first_query(self.layer_norm1(x))
        return h + self.mlp(self.layer_norm2(h))


class CLIPEncoder(keras.layers.Layer):
    """A stack of :class:`CLIPEncoderLayer`; collects hidden states and attentions on request."""

    def __init__(self, config, name: str = "encoder", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.layers = [CLIPEncoderLayer(config, name=f"layers_._{i}", dtype=dtype)
                       for i in range(config.num_hidden_layers)]
        self.built = True

    def call(self, x, attn_mask=None, output_attentions: bool = False, output_hidden_states: bool = False):
        hidden, attentions = [], []
        for layer in self.layers:
            if output_hidden_states:
                hidden.append(x)
            x, probs = layer(x, attn_mask=attn_mask, output_attentions=output_attentions)
            if output_attentions:
                attentions.append(probs)
        if output_hidden_states:
            hidden.append(x)
        return x, (tuple(hidden) if output_hidden_states else None), (tuple(attentions) if output_attentions else None)
