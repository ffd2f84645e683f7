"""SigLIP on JAX / Flax: the four transformers-4.57-shaped classes and the sigmoid loss.

The classes are this backend's CLIP classes with SigLIP towers: the same base class
(:class:`clip_flax.models.FlaxCLIPPreTrainedModel`: strict loading through ``conversion.pretrained``
and the schema table, ``save_pretrained``, jit cache) and the same call / feature methods. Only the
whole-model Linen module is SigLIP's own (``logit_bias``, the sigmoid loss); the towers are in
:mod:`clip_flax.siglip_towers`, built from :mod:`clip_flax.layers`.

    model = clip_flax.SiglipModel.from_pretrained("path/to/siglip")
    out = model(input_ids=ids, pixel_values=pixels)
    probs = jax.nn.sigmoid(out.logits_per_image)   # (B_img, B_txt), independent per pair
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from clip_core import outputs as O

from .layers import Configured
from .models import (FlaxCLIPPreTrainedModel, _ClassifyCall, _DualCall, _ImageFeatures, _TextCall, _TextFeatures,
                     _VisionCall)
from .modules import CLIPForImageClassificationModule, CLIPTextModule, CLIPVisionModule, _normalize
from .siglip_towers import SiglipTextTransformer, SiglipVisionTransformer

__all__ = ["SiglipModel", "SiglipTextModel", "SiglipVisionModel", "SiglipForImageClassification", "SiglipOutput",
           "siglip_loss"]

SiglipOutput = O.CLIPOutput  # same fields: loss, logits_per_image, logits_per_text, text/image embeds, tower outputs


def siglip_loss(logits_per_text: jnp.ndarray) -> jnp.ndarray:
    """The sigmoid loss: ``-mean_i sum_j log sigmoid(z_ij * logits_ij)`` with ``z = 2 I - 1``, (T, I) -> ().

    Text i's positive is image i; transformers' loss for square batches, and with more images than texts
    the extra images are negatives (``eye(T, I)``, as clip_torch and clip_tf)."""
    logits = logits_per_text.astype(jnp.float32)  # (T, I)
    signs = 2.0 * jnp.eye(*logits.shape, dtype=jnp.float32) - 1.0
    return -jnp.mean(jnp.sum(jax.nn.log_sigmoid(signs * logits), axis=-1))


class SiglipModule(Configured):
    """``text_model``, ``vision_model``, ``logit_scale``, ``logit_bias``; logits = cos * exp(scale) + bias."""

    def setup(self):
        c = self.config
        self.text_model = SiglipTextTransformer(c.text_config, self.dtype, self.param_dtype)
        self.vision_model = SiglipVisionTransformer(c.vision_config, self.dtype, self.param_dtype)
        self.logit_scale = self.param("logit_scale", jax.nn.initializers.zeros, (), self.param_dtype)  # log(1)
        self.logit_bias = self.param("logit_bias", jax.nn.initializers.zeros, (), self.param_dtype)

    def __call__(self, input_ids, pixel_values, attention_mask=None, position_ids=None, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False, return_loss: bool = False,
                 interpolate_pos_encoding: bool = False):
        v = self.vision_model(pixel_values, deterministic, output_attentions, output_hidden_states,
                              interpolate_pos_encoding)
        t = self.text_model(input_ids, attention_mask, position_ids, deterministic, output_attentions,
                            output_hidden_states)
        image_embeds, text_embeds = _normalize(v.pooler_output), _normalize(t.pooler_output)  # (Bi, D), (Bt, D)
        scale, bias = jnp.exp(self.logit_scale.astype(jnp.float32)), self.logit_bias.astype(jnp.float32)
        logits_per_text = (text_embeds @ image_embeds.T) * scale + bias  # (Bt, Bi)
        loss = siglip_loss(logits_per_text) if return_loss else None
        return SiglipOutput(loss, logits_per_text.T, logits_per_text, text_embeds, image_embeds, t, v)

    def get_text_features(self, input_ids, attention_mask=None, position_ids=None, deterministic: bool = True):
        return self.text_model(input_ids, attention_mask, position_ids, deterministic).pooler_output

    def get_image_features(self, pixel_values, deterministic: bool = True, interpolate_pos_encoding: bool = False):
        return self.vision_model(pixel_values, deterministic,
                                 interpolate_pos_encoding=interpolate_pos_encoding).pooler_output


class SiglipModel(_DualCall, _TextFeatures, _ImageFeatures, FlaxCLIPPreTrainedModel):
    """transformers' ``SiglipModel``: ``logits_per_image`` / ``logits_per_text`` (sigmoid logits),
    normalised ``text_embeds`` / ``image_embeds``, the tower outputs; ``loss`` (sigmoid) with ``return_loss``.
    ``get_text_features`` / ``get_image_features`` return the pooled (head) outputs, not normalised."""

    module_class = SiglipModule
    part = "model"
    _trim_text = False  # bidirectional attention, last-position pooling: every position counts


class SiglipTextModel(_TextCall, FlaxCLIPPreTrainedModel):
    """The text tower: ``last_hidden_state`` (final-layer-normed), ``pooler_output`` (head of the last
    position), ``hidden_states``, ``attentions``."""

    module_class = CLIPTextModule  # builds the family's tower
    part = "text"


class SiglipVisionModel(_VisionCall, FlaxCLIPPreTrainedModel):
    """The vision tower: ``last_hidden_state`` (post-layernormed), ``pooler_output`` (attention-pooling head)."""

    module_class = CLIPVisionModule  # builds the family's tower
    part = "vision"


class SiglipForImageClassification(_ClassifyCall, FlaxCLIPPreTrainedModel):
    """Mean of the post-layernormed patch tokens -> linear ``classifier``; ``loss`` when ``labels`` are given.
    The attention-pooling head's weights stay part of the checkpoint (unused), as in transformers."""

    module_class = CLIPForImageClassificationModule  # builds the family's tower
    part = "classification"
