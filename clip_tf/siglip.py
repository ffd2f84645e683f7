"""SigLIP's public classes as Keras 3 models: the CLIP classes' surface, loading, saving and ``fit``.

They subclass this backend's CLIP classes (config handling, the schema-driven strict loading and saving
of :class:`CLIPPreTrainedModel`, the Keras ``train_step``); the towers come from :mod:`.siglip_towers`.
"""
from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from clip_core.outputs import CLIPOutput
from conversion.pretrained import finish, output_flags

from .models import CLIPForImageClassification, CLIPPreTrainedModel, CLIPTextModel, CLIPVisionModel, _normalize
from .primitives import param
from .siglip_towers import SiglipTextTransformer, SiglipVisionTransformer

__all__ = ["SiglipModel", "SiglipTextModel", "SiglipVisionModel", "SiglipForImageClassification", "SiglipOutput",
           "siglip_loss"]

_serializable = keras.saving.register_keras_serializable(package="clip_tf")
SiglipOutput = CLIPOutput  # the same fields as transformers' SiglipOutput


def siglip_loss(logits_per_text: tf.Tensor) -> tf.Tensor:
    """The sigmoid loss: ``-mean_rows sum_cols log sigmoid(z * logits)``, ``z = 2 I - 1`` (matching pairs +1)."""
    logits = tf.cast(logits_per_text, tf.float32)  # (B, B)
    signs = 2.0 * tf.eye(tf.shape(logits)[0], dtype=tf.float32) - 1.0
    return -tf.reduce_mean(tf.reduce_sum(tf.math.log_sigmoid(signs * logits), axis=-1))


@_serializable
class SiglipModel(CLIPPreTrainedModel):
    """Text and vision towers, ``logit_scale`` and ``logit_bias`` (both shape (1,)); ``return_loss`` is the
    sigmoid loss, so ``model.fit`` trains SigLIP through the inherited ``train_step``."""

    family = "siglip"
    part = "model"
    _top = ("text_model", "vision_model", "logit_scale", "logit_bias")

    def __init__(self, config: Any, **kwargs):
        super().__init__(config, **kwargs)
        c, dt = self.config, self.dtype_policy
        self.text_model = SiglipTextTransformer(c.text_config, dtype=dt)
        self.vision_model = SiglipVisionTransformer(c.vision_config, dtype=dt)
        param(self, "logit_scale", (1,), "zeros", autocast=False, dtype="float32")  # float32 in any precision
        param(self, "logit_bias", (1,), "zeros", autocast=False, dtype="float32")
        self.built = True

    def get_text_features(self, input_ids, attention_mask=None, position_ids=None, output_attentions=None,
                          output_hidden_states=None, return_dict=None, training=False):
        """The text tower's pooled, head-projected output (B, D), float32, not normalised."""
        out = self.text_model(input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return tf.cast(out.pooler_output, tf.float32)

    def get_image_features(self, pixel_values, output_attentions=None, output_hidden_states=None,
                           interpolate_pos_encoding: bool = False, return_dict=None, training=False):
        """The attention-pooled image embedding (B, D), float32, not normalised."""
        out = self.vision_model(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding),
                                data_format=self.data_format)
        return tf.cast(out.pooler_output, tf.float32)

    def encode_text(self, text):
        """OpenAI-style ``model.encode_text(tokens)``."""
        return self.get_text_features(text)

    def encode_image(self, image):
        """OpenAI-style ``model.encode_image(pixels)``."""
        return self.get_image_features(image)

    def call(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, return_loss=None,
             output_attentions=None, output_hidden_states=None, interpolate_pos_encoding=False, return_dict=None,
             training=None):
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        vision = self._vision(pixel_values, oa, oh, interpolate_pos_encoding, training)
        text = self._text(input_ids, attention_mask, position_ids, oa, oh)
        image_embeds = _normalize(tf.cast(vision.pooler_output, tf.float32))  # (B_img, D)
        text_embeds = _normalize(tf.cast(text.pooler_output, tf.float32))  # (B_txt, D)
        scale, bias = (tf.cast(v, tf.float32) for v in (self.logit_scale, self.logit_bias))
        logits_per_text = tf.matmul(text_embeds, image_embeds, transpose_b=True) * tf.exp(scale) + bias
        loss = siglip_loss(logits_per_text) if return_loss else None
        return finish(SiglipOutput(loss, tf.transpose(logits_per_text), logits_per_text, text_embeds, image_embeds,
                                   text, vision), rd)


@_serializable
class SiglipTextModel(CLIPTextModel):
    """The SigLIP text tower alone: last_hidden_state, last-position pooler_output through ``head``."""

    family = "siglip"

    def __init__(self, config: Any, **kwargs):
        CLIPPreTrainedModel.__init__(self, config, **kwargs)
        self.text_model = SiglipTextTransformer(self.config.text_config, dtype=self.dtype_policy)
        self.built = True


@_serializable
class SiglipVisionModel(CLIPVisionModel):
    """The SigLIP vision tower alone: post-layer-normed last_hidden_state, attention-pooled pooler_output."""

    family = "siglip"

    def __init__(self, config: Any, **kwargs):
        CLIPPreTrainedModel.__init__(self, config, **kwargs)
        self.vision_model = SiglipVisionTransformer(self.config.vision_config, dtype=self.dtype_policy)
        self.built = True


@_serializable
class SiglipForImageClassification(CLIPForImageClassification):
    """Mean of all post-layer-normed patch tokens -> ``classifier`` (the pooling head's weights stay in the
    checkpoint and the model, unused, as transformers keeps them)."""

    family = "siglip"

    def _build_vision(self) -> keras.layers.Layer:
        return SiglipVisionTransformer(self.config.vision_config, dtype=self.dtype_policy)

    def _features(self, h):  # (B, N, D) -> (B, D)
        return tf.reduce_mean(h, axis=1)
