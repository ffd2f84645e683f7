"""The text tower (Flax Linen): token + position embeddings, causal encoder, EOT pooling."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from clip_core.outputs import BaseModelOutputWithPooling

from .layers import CLIPEncoder, Configured, layer_norm


def text_attention_mask(attention_mask: Optional[jnp.ndarray], t: int, causal: bool = True) -> Optional[jnp.ndarray]:
    """Causal mask (CLIP; none for SigLIP's bidirectional text) combined with an optional padding mask:
    boolean (B|1, 1, T, T), True = attend; None when there is nothing to mask."""
    mask = jnp.tril(jnp.ones((t, t), dtype=bool))[None, None] if causal else None  # (1, 1, T, T)
    if attention_mask is None:
        return mask
    padding = attention_mask[:, None, None, :] > 0  # (B, 1, 1, T)
    return padding if mask is None else mask & padding  # (B, 1, T, T)


def text_positions(input_ids: jnp.ndarray, position_ids: Optional[jnp.ndarray], config) -> jnp.ndarray:
    """``position_ids`` or (B, T) ``0 .. T-1``; a concrete T beyond the position table is an error."""
    t = input_ids.shape[1]
    if isinstance(t, int) and t > config.max_position_embeddings:  # symbolic t (export): checked by the exporter
        raise ValueError(f"sequence length {t} exceeds max_position_embeddings {config.max_position_embeddings}")
    if position_ids is None:
        position_ids = jax.lax.broadcasted_iota(jnp.int32, input_ids.shape, 1)  # (B, T); exportable (jax2onnx)
    return position_ids


def pool_positions(input_ids: jnp.ndarray, eos_token_id: int, legacy: bool) -> jnp.ndarray:
    """(B,) index of the pooled token: first ``eos_token_id``, or ``argmax(input_ids)`` (legacy)."""
    if legacy:
        return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax((input_ids == eos_token_id).astype(jnp.int32), axis=-1)


class CLIPTextEmbeddings(Configured):
    """Token + position embeddings; ``config`` is the ``CLIPTextConfig``."""

    @nn.compact
    def __call__(self, input_ids, position_ids):
        c, init = self.config, nn.initializers.normal(0.02)
        tok = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                       embedding_init=init, name="token_embedding")(input_ids)
        pos = nn.Embed(c.max_position_embeddings, c.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                       embedding_init=init, name="position_embedding")(position_ids)
        return tok + pos  # (B, T, D)


class CLIPTextTransformer(Configured):
    """Returns ``BaseModelOutputWithPooling``: final-layer-normed states and the EOT-pooled state."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, position_ids=None, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False):
        c = self.config
        t = input_ids.shape[1]
        position_ids = text_positions(input_ids, position_ids, c)
        x = CLIPTextEmbeddings(c, self.dtype, self.param_dtype, name="embeddings")(input_ids, position_ids)
        mask = text_attention_mask(attention_mask, t)
        x, hidden, attns = CLIPEncoder(c, self.dtype, self.param_dtype, name="encoder")(
            x, mask, deterministic, output_attentions, output_hidden_states)
        x = layer_norm(x, c.layer_norm_eps, self.dtype, self.param_dtype, "final_layer_norm")  # (B, T, D)
        pool = pool_positions(input_ids, c.eos_token_id, c.legacy_eos_pooling)  # (B,)
        pooled = jnp.take_along_axis(x, jnp.expand_dims(pool, (1, 2)), axis=1).squeeze(1)  # (B, D), exportable
        return BaseModelOutputWithPooling(x, pooled, hidden, attns)
