"""The six top-level Linen modules (HF Flax layout) and the contrastive loss.

The user-facing wrappers in :mod:`clip_flax.models` hold the params and jit the ``apply`` calls.
"""
from __future__ import annotations

from dataclasses import fields

import jax
import jax.numpy as jnp
import flax.linen as nn

from clip_core import outputs as O
from clip_core.config import CLIPConfig

from .layers import Configured, Dtype, dense
from .resnet import ModifiedResNet
from .siglip_towers import SiglipTextTransformer, SiglipVisionTransformer
from .text import CLIPTextTransformer
from .vision import CLIPVisionTransformer


def _register_outputs() -> None:
    """Make the clip_core output dataclasses pytrees so jitted functions can return them."""
    for cls in (O.BaseModelOutputWithPooling, O.CLIPTextModelOutput, O.CLIPVisionModelOutput, O.CLIPOutput,
                O.ImageClassifierOutput):
        names = tuple(f.name for f in fields(cls))
        try:
            jax.tree_util.register_pytree_node(
                cls, lambda o, names=names: (tuple(getattr(o, n) for n in names), None),
                lambda _, children, cls=cls: cls(*children))
        except ValueError:  # already registered (module reloaded)
            pass


_register_outputs()


def clip_loss(logits_per_text: jnp.ndarray) -> jnp.ndarray:
    """Symmetric InfoNCE: mean of the text->image and image->text cross-entropies, labels arange(B)."""
    logits = logits_per_text.astype(jnp.float32)  # (B, B)
    labels = jnp.arange(logits.shape[0])

    def ce(lg):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(lg, axis=-1), labels[:, None], axis=-1))

    return (ce(logits) + ce(logits.T)) / 2.0


contrastive_loss = clip_loss  # the earlier name, kept as an alias


def _is_siglip(config) -> bool:
    return getattr(config, "family", "clip") == "siglip"


def _vision_tower(config: CLIPConfig, dtype: Dtype, param_dtype: Dtype) -> nn.Module:
    """The family's vision tower (CLIP ViT / ModifiedResNet, SigLIP ViT) at ``vision_model``."""
    cls = SiglipVisionTransformer if _is_siglip(config) else ModifiedResNet if config.is_resnet \
        else CLIPVisionTransformer
    return cls(config.vision_config, dtype, param_dtype, name="vision_model")


def _text_tower(config: CLIPConfig, dtype: Dtype, param_dtype: Dtype) -> nn.Module:
    """The family's text tower (CLIP causal / SigLIP bidirectional) at ``text_model``."""
    cls = SiglipTextTransformer if _is_siglip(config) else CLIPTextTransformer
    return cls(config.text_config, dtype, param_dtype, name="text_model")


def _normalize(x):
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class CLIPModule(Configured):
    """``text_model``, ``vision_model``, ``text_projection``, ``visual_projection`` (ViT), ``logit_scale``."""

    def setup(self):
        c = self.config
        self.text_model = CLIPTextTransformer(c.text_config, self.dtype, self.param_dtype)
        self.vision_model = (ModifiedResNet if c.is_resnet else CLIPVisionTransformer)(
            c.vision_config, self.dtype, self.param_dtype)
        self.text_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype,
                                        param_dtype=self.param_dtype)
        if not c.is_resnet:
            self.visual_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype,
                                              param_dtype=self.param_dtype)
        self.logit_scale = self.param("logit_scale", lambda _, s: jnp.full(s, c.logit_scale_init_value), ())

    def _image(self, vision_out):
        if self.config.is_resnet:
            return vision_out.pooler_output
        return self.visual_projection(vision_out.pooler_output)

    def __call__(self, input_ids, pixel_values, attention_mask=None, position_ids=None, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False, return_loss: bool = False,
                 interpolate_pos_encoding: bool = False):
        v = self.vision_model(pixel_values, deterministic, output_attentions, output_hidden_states,
                              interpolate_pos_encoding)
        t = self.text_model(input_ids, attention_mask, position_ids, deterministic, output_attentions,
                            output_hidden_states)
        image_embeds = _normalize(self._image(v))
        text_embeds = _normalize(self.text_projection(t.pooler_output))
        logits_per_text = jnp.exp(self.logit_scale.astype(jnp.float32)) * text_embeds @ image_embeds.T
        loss = clip_loss(logits_per_text) if return_loss else None
        return O.CLIPOutput(loss, logits_per_text.T, logits_per_text, text_embeds, image_embeds, t, v)

    def get_text_features(self, input_ids, attention_mask=None, position_ids=None, deterministic: bool = True):
        t = self.text_model(input_ids, attention_mask, position_ids, deterministic)
        return self.text_projection(t.pooler_output)

    def get_image_features(self, pixel_values, deterministic: bool = True, interpolate_pos_encoding: bool = False):
        return self._image(self.vision_model(pixel_values, deterministic,
                                             interpolate_pos_encoding=interpolate_pos_encoding))


class CLIPTextModule(Configured):
    @nn.compact
    def __call__(self, input_ids, attention_mask=None, position_ids=None, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False):
        return _text_tower(self.config, self.dtype, self.param_dtype)(
            input_ids, attention_mask, position_ids, deterministic, output_attentions, output_hidden_states)


class CLIPTextModelWithProjectionModule(Configured):
    def setup(self):
        self.text_model = CLIPTextTransformer(self.config.text_config, self.dtype, self.param_dtype)
        self.text_projection = nn.Dense(self.config.projection_dim, use_bias=False, dtype=self.dtype,
                                        param_dtype=self.param_dtype)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False):
        t = self.text_model(input_ids, attention_mask, position_ids, deterministic, output_attentions,
                            output_hidden_states)
        embeds = self.text_projection(t.pooler_output)
        return O.CLIPTextModelOutput(embeds, t.last_hidden_state, t.hidden_states, t.attentions)

    def get_text_features(self, input_ids, attention_mask=None, position_ids=None, deterministic: bool = True):
        return self.text_projection(self.text_model(input_ids, attention_mask, position_ids, deterministic).pooler_output)


class CLIPVisionModule(Configured):
    @nn.compact
    def __call__(self, pixel_values, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False, interpolate_pos_encoding: bool = False):
        return _vision_tower(self.config, self.dtype, self.param_dtype)(
            pixel_values, deterministic, output_attentions, output_hidden_states, interpolate_pos_encoding)


class CLIPVisionModelWithProjectionModule(Configured):
    def setup(self):
        c = self.config
        self.vision_model = (ModifiedResNet if c.is_resnet else CLIPVisionTransformer)(
            c.vision_config, self.dtype, self.param_dtype)
        if not c.is_resnet:
            self.visual_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype,
                                              param_dtype=self.param_dtype)

    def _image(self, vision_out):
        return vision_out.pooler_output if self.config.is_resnet else self.visual_projection(vision_out.pooler_output)

    def __call__(self, pixel_values, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False, interpolate_pos_encoding: bool = False):
        v = self.vision_model(pixel_values, deterministic, output_attentions, output_hidden_states,
                              interpolate_pos_encoding)
        return O.CLIPVisionModelOutput(self._image(v), v.last_hidden_state, v.hidden_states, v.attentions)

    def get_image_features(self, pixel_values, deterministic: bool = True, interpolate_pos_encoding: bool = False):
        return self._image(self.vision_model(pixel_values, deterministic,
                                             interpolate_pos_encoding=interpolate_pos_encoding))


class CLIPForImageClassificationModule(Configured):
    """Mean of the patch tokens (ViT: ``last_hidden_state[:, 1:]``; SigLIP: all tokens; ResNet: over H, W)
    -> ``classifier``."""

    num_labels: int = 2

    @nn.compact
    def __call__(self, pixel_values, labels=None, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False, interpolate_pos_encoding: bool = False):
        v = _vision_tower(self.config, self.dtype, self.param_dtype)(
            pixel_values, deterministic, output_attentions, output_hidden_states, interpolate_pos_encoding)
        h = v.last_hidden_state
        skip = 0 if _is_siglip(self.config) else 1  # CLIP's class token
        feats = h.mean(axis=(2, 3)) if self.config.is_resnet else h[:, skip:].mean(axis=1)  # (B, D)
        logits = dense(self.num_labels, self.dtype, self.param_dtype, "classifier")(feats)
        loss = None if labels is None else classification_loss(logits, labels, self.num_labels)
        return O.ImageClassifierOutput(loss, logits, v.hidden_states, v.attentions)


def classification_loss(logits, labels, num_labels: int):
    """HF's problem-type rule: 1 label -> MSE; integer labels -> cross-entropy; float -> BCE."""
    logits = logits.astype(jnp.float32)
    if num_labels == 1:
        return jnp.mean((logits[:, 0] - labels.astype(jnp.float32)) ** 2)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))
    y = labels.astype(jnp.float32)
    return jnp.mean(jnp.maximum(logits, 0) - logits * y + jnp.log1p(jnp.exp(-jnp.abs(logits))))
