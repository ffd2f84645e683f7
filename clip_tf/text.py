"""The text tower: token + position embeddings, causal transformer, final layer norm, EOT pooling."""
from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

from clip_core.outputs import BaseModelOutputWithPooling

from .layers import CLIPEncoder
from .primitives import Embedding, LayerNorm, shape_list

__all__ = ["CLIPTextEmbeddings", "CLIPTextTransformer", "pool_positions", "text_attention_mask"]


class CLIPTextEmbeddings(keras.layers.Layer):
    """``token_embedding(ids) + position_embedding(position_ids)``."""

    def __init__(self, config, name: str = "embeddings", dtype=None):
        super().__init__(name=name, dtype=dtype)
        d = config.hidden_size
        self.token_embedding = Embedding(config.vocab_size, d, leaf="weight", name="token_embedding", dtype=dtype)
        self.position_embedding = Embedding(config.max_position_embeddings, d, leaf="embeddings",
                                            name="position_embedding", dtype=dtype)
        self.built = True

    def call(self, input_ids, position_ids=None):  # (B, T) -> (B, T, D)
        x = self.token_embedding(input_ids)
        if position_ids is None:
            t = shape_list(input_ids)[1]
            pos = tf.cast(self.position_embedding.table, x.dtype)[:t][None]  # (1, T, D)
        else:
            pos = self.position_embedding(position_ids)
        return x + pos


def text_attention_mask(attention_mask: Optional[tf.Tensor], t, causal: bool = True) -> Optional[tf.Tensor]:
    """Boolean "may attend" mask (B|1, 1, T|1, T): causal (unless ``causal=False``: SigLIP), and no padded keys
    when ``attention_mask`` is given; None when nothing is masked. Masked scores become float32's minimum,
    as Hugging Face's additive mask makes them."""
    allowed = tf.linalg.band_part(tf.ones([t, t], tf.bool), -1, 0)[None, None] if causal else None  # lower triangle
    if attention_mask is not None:
        # expand a float mask with expand_dims: a strided slice of a bool tensor needs a LiteRT Flex op
        keys = tf.expand_dims(tf.expand_dims(tf.cast(attention_mask, tf.float32), 1), 1) > 0.5  # (B, 1, 1, T)
        allowed = keys if allowed is None else tf.logical_and(allowed, keys)  # (B, 1, T, T)
    return allowed


def pool_positions(input_ids: tf.Tensor, eos_token_id: int, legacy: bool) -> tf.Tensor:
    """(B,) position of the first EOT token (first ``argmax(input_ids)`` when ``legacy``; 0 if none)."""
    ids = tf.cast(input_ids, tf.int32)
    target = tf.reduce_max(ids, axis=-1, keepdims=True) if legacy else tf.constant(eos_token_id, tf.int32)
    t = tf.shape(ids)[-1]
    positions = tf.where(tf.equal(ids, target), tf.range(t)[None], t)
    first = tf.reduce_min(positions, axis=-1)
    return tf.where(first == t, 0, first)


class CLIPTextTransformer(keras.layers.Layer):
    """Hugging Face's ``CLIPTextTransformer``: returns last_hidden_state (final-layer-normed) and the
    EOT-pooled state. A subclass changes ``causal`` and :meth:`pool` (SigLIP)."""

    causal = True

    def __init__(self, config, name: str = "text_model", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.cfg = config
        self.embeddings = CLIPTextEmbeddings(config, dtype=dtype)
        self.encoder = CLIPEncoder(config, dtype=dtype)
        self.final_layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps, name="final_layer_norm",
                                          dtype=dtype)
        self.built = True

    def call(self, input_ids, attention_mask=None, position_ids=None, output_attentions: bool = False,
             output_hidden_states: bool = False, training=None):
        if input_ids is None:
            raise ValueError("the text tower needs input_ids")
        input_ids = tf.convert_to_tensor(input_ids)
        x = self.embeddings(input_ids, position_ids=position_ids)
        mask = text_attention_mask(attention_mask, shape_list(input_ids)[1], self.causal)
        x, hidden, attentions = self.encoder(x, attn_mask=mask, output_attentions=output_attentions,
                                              output_hidden_states=output_hidden_states)
        x = self.final_layer_norm(x)
        return BaseModelOutputWithPooling(x, self.pool(x, input_ids), hidden, attentions)

    def pool(self, x, input_ids):
        """(B, T, D) final-layer-normed states -> (B, D) state at the EOT token."""
        idx = pool_positions(input_ids, self.cfg.eos_token_id, self.cfg.legacy_eos_pooling)
        return tf.gather(x, idx, batch_dims=1)
