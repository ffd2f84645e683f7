"""The six public classes (Hugging Face names, arguments and outputs) for ViT and ResNet CLIPs."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from conversion.pretrained import finish, output_flags
from clip_core.config import num_labels_of, with_labels
from clip_core.outputs import (BaseModelOutputWithPooling, CLIPOutput, CLIPTextModelOutput,
                               CLIPVisionModelOutput, ImageClassifierOutput)

from .layers import Linear
from .modeling_utils import CLIPPreTrainedModel
from .resnet import ModifiedResNet
from .text import CLIPTextTransformer
from .vision import CLIPVisionTransformer

__all__ = ["CLIPModel", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModel",
           "CLIPVisionModelWithProjection", "CLIPForImageClassification", "clip_loss", "contrastive_loss"]


def clip_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss: mean of the text->image and image->text cross-entropies."""
    labels = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, labels) + F.cross_entropy(logits_per_text.t(), labels)) / 2.0


contrastive_loss = clip_loss  # the earlier name, kept as an alias


def _vision_tower(config, attn_implementation: str) -> nn.Module:
    if config.is_resnet:
        return ModifiedResNet(config.vision_config)
    return CLIPVisionTransformer(config.vision_config, attn_implementation)


class _TextFeatures:
    """``get_text_features`` / OpenAI's ``encode_text`` (classes with a text projection)."""

    def _text_embeds(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.text_projection(pooled)  # (B, projection_dim)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                          position_ids: Optional[torch.Tensor] = None, output_attentions: Optional[bool] = None,
                          output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None
                          ) -> torch.Tensor:
        """(B, T) ids -> (B, projection_dim) projected, NOT normalized (runs only up to the last EOT);
        the flags are accepted for transformers' signature and change nothing."""
        t = self.text_model(input_ids, attention_mask, position_ids, full_length=False)
        return self._text_embeds(t.pooler_output)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """OpenAI's name for :meth:`get_text_features`."""
        return self.get_text_features(text)


class _ImageFeatures:
    """``get_image_features`` / OpenAI's ``encode_image`` (classes with an image embedding)."""

    def _image_embeds(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled if self.config.is_resnet else self.visual_projection(pooled)

    def get_image_features(self, pixel_values: torch.Tensor, output_attentions: Optional[bool] = None,
                           output_hidden_states: Optional[bool] = None, interpolate_pos_encoding: bool = False,
                           return_dict: Optional[bool] = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, projection_dim) projected, NOT normalized (a ViT runs its last layer for the
        class token only); the flags are accepted for transformers' signature and change nothing."""
        pooled_only = {} if self.config.is_resnet else {"pooled_only": True}
        v = self.vision_model(pixel_values, False, False, interpolate_pos_encoding, **pooled_only)
        return self._image_embeds(v.pooler_output)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """OpenAI's name for :meth:`get_image_features`."""
        return self.get_image_features(image)


class CLIPTextModel(CLIPPreTrainedModel):
    """The text tower alone: ``last_hidden_state``, ``pooler_output`` (EOT token)."""

    part = "text"

    def __init__(self, config: Any, attn_implementation: Optional[str] = "sdpa") -> None:
        super().__init__(config, attn_implementation)
        self.text_model = CLIPTextTransformer(self.config.text_config, self.attn_implementation)

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None
                ) -> BaseModelOutputWithPooling:
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        return finish(self.text_model(input_ids, attention_mask, position_ids, oa, oh), rd)


class CLIPTextModelWithProjection(_TextFeatures, CLIPPreTrainedModel):
    """Text tower + ``text_projection``: ``text_embeds`` (projected, not normalized)."""

    part = "text_with_projection"

    def __init__(self, config: Any, attn_implementation: Optional[str] = "sdpa") -> None:
        super().__init__(config, attn_implementation)
        t = self.config.text_config
        self.text_model = CLIPTextTransformer(t, self.attn_implementation)
        self.text_projection = Linear(t.hidden_size, self.config.projection_dim, bias=False)

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None
                ) -> CLIPTextModelOutput:
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        t = self.text_model(input_ids, attention_mask, position_ids, oa, oh)
        return finish(CLIPTextModelOutput(text_embeds=self._text_embeds(t.pooler_output),
                                          last_hidden_state=t.last_hidden_state, hidden_states=t.hidden_states,
                                          attentions=t.attentions), rd)


class CLIPVisionModel(CLIPPreTrainedModel):
    """The vision tower alone (ViT or ModifiedResNet): ``last_hidden_state``, ``pooler_output``."""

    part = "vision"

    def __init__(self, config: Any, attn_implementation: Optional[str] = "sdpa") -> None:
        super().__init__(config, attn_implementation)
        self.vision_model = _vision_tower(self.config, self.attn_implementation)

    def forward(self, pixel_values: Optional[torch.Tensor] = None, output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, interpolate_pos_encoding: bool = False,
                return_dict: Optional[bool] = None) -> BaseModelOutputWithPooling:
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        return finish(self.vision_model(pixel_values, oa, oh, interpolate_pos_encoding), rd)


class CLIPVisionModelWithProjection(_ImageFeatures, CLIPPreTrainedModel):
    """Vision tower + ``visual_projection`` (ViT); a ResNet's attention pool already projects."""

    part = "vision_with_projection"

    def __init__(self, config: Any, attn_implementation: Optional[str] = "sdpa") -> None:
        super().__init__(config, attn_implementation)
        self.vision_model = _vision_tower(self.config, self.attn_implementation)
        if not self.config.is_resnet:
            self.visual_projection = Linear(self.config.vision_config.hidden_size, self.config.projection_dim,
                                            bias=False)

    def forward(self, pixel_values: Optional[torch.Tensor] = None, output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, interpolate_pos_encoding: bool = False,
                return_dict: Optional[bool] = None) -> CLIPVisionModelOutput:
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        v = self.vision_model(pixel_values, oa, oh, interpolate_pos_encoding)
        return finish(CLIPVisionModelOutput(image_embeds=self._image_embeds(v.pooler_output),
                                            last_hidden_state=v.last_hidden_state, hidden_states=v.hidden_states,
                                            attentions=v.attentions), rd)


class CLIPForImageClassification(CLIPPreTrainedModel):
    """Mean of the patch tokens (ViT) or of the last feature map (ResNet) -> linear ``classifier``."""

    part = "classification"

    def __init__(self, config: Any, attn_implementation: Optional[str] = "sdpa") -> None:
        super().__init__(config, attn_implementation)
        self._num_labels = num_labels_of(self.config)
        self.vision_model = _vision_tower(self.config, self.attn_implementation)
        self.classifier = Linear(self.config.vision_config.hidden_size, self._num_labels)

    @property
    def num_labels(self) -> int:
        return self._num_labels

    def _config_to_save(self):
        return with_labels(self.config, self._num_labels)

    def forward(self, pixel_values: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                output_attentions: Optional[bool] = None, output_hidden_states: Optional[bool] = None,
                interpolate_pos_encoding: bool = False, return_dict: Optional[bool] = None
                ) -> ImageClassifierOutput:
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        v = self.vision_model(pixel_values, oa, oh, interpolate_pos_encoding)
        x = v.last_hidden_state
        feats = x.mean(dim=(2, 3)) if self.config.is_resnet else x[:, 1:].mean(dim=1)  # (B, D)
        logits = self.classifier(feats)  # (B, num_labels)
        loss = None if labels is None else self._loss(logits, labels)
        return finish(ImageClassifierOutput(loss=loss, logits=logits, hidden_states=v.hidden_states,
                                            attentions=v.attentions), rd)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return classification_loss(logits, labels)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers' image-classification loss of ``logits`` (B, num_labels): MSE for one label (regression),
    cross-entropy for integer labels, BCE for multi-label."""
    num_labels = logits.shape[-1]
    labels = labels.to(logits.device)
    if num_labels == 1:
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).reshape(-1))
    if not labels.is_floating_point():
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def _is_openai_call(image: Any, text: Any) -> bool:
    """OpenAI's ``model(image, text)``: a float 4-D image batch first, then integer token ids."""
    return (torch.is_tensor(image) and image.is_floating_point() and image.dim() == 4
            and torch.is_tensor(text) and not text.is_floating_point())


class CLIPModel(_TextFeatures, _ImageFeatures, CLIPPreTrainedModel):
    """Both towers, both projections and ``logit_scale``; also OpenAI's ``encode_image`` /
    ``encode_text`` / ``model(image, text)``."""

    part = "model"

    def __init__(self, config: Any, attn_implementation: Optional[str] = "sdpa") -> None:
        super().__init__(config, attn_implementation)
        c = self.config
        self.text_model = CLIPTextTransformer(c.text_config, self.attn_implementation)
        self.vision_model = _vision_tower(c, self.attn_implementation)
        self.text_projection = Linear(c.text_config.hidden_size, c.projection_dim, bias=False)
        if not c.is_resnet:
            self.visual_projection = Linear(c.vision_config.hidden_size, c.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(c.logit_scale_init_value)))

    @property
    def visual(self) -> nn.Module:
        """OpenAI's name for the vision tower."""
        return self.vision_model

    def _logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized embeddings -> ``(logits_per_image, logits_per_text)``."""
        logits_per_text = torch.matmul(text_embeds, image_embeds.t()) * self.logit_scale.exp()
        return logits_per_text.t(), logits_per_text

    def forward(self, input_ids: Optional[torch.Tensor] = None, pixel_values: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
                return_loss: Optional[bool] = None, output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, interpolate_pos_encoding: bool = False,
                return_dict: Optional[bool] = None):
        """HF call -> :class:`CLIPOutput`; OpenAI's positional ``model(image, text)`` ->
        ``(logits_per_image, logits_per_text)``."""
        if _is_openai_call(input_ids, pixel_values):
            return self._logits(_unit(self.get_image_features(input_ids)), _unit(self.get_text_features(pixel_values)))
        if input_ids is None or pixel_values is None:
            raise ValueError("CLIPModel needs both input_ids and pixel_values (or call get_text_features / "
                             "get_image_features)")
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        v = self.vision_model(pixel_values, oa, oh, interpolate_pos_encoding)
        t = self.text_model(input_ids, attention_mask, position_ids, oa, oh)
        image_embeds = _unit(self._image_embeds(v.pooler_output))
        text_embeds = _unit(self._text_embeds(t.pooler_output))
        logits_per_image, logits_per_text = self._logits(image_embeds, text_embeds)
        out = CLIPOutput(loss=clip_loss(logits_per_text) if return_loss else None,
                         logits_per_image=logits_per_image, logits_per_text=logits_per_text,
                         text_embeds=text_embeds, image_embeds=image_embeds, text_model_output=t,
                         vision_model_output=v)
        return finish(out, rd)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(p=2, dim=-1, keepdim=True)
