"""The six public classes (Hugging Face names, arguments and outputs) for ViT and ResNet CLIPs."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from clip_core.config import num_labels_of, with_labels
from clip_core.outputs import (BaseModelOutputWithPooling, CLIPOutput, CLIPTextModelOutput,
                               CLIPVisionModelOutput, ImageClassifierOutput)

from .layers import Linear
from .modeling_utils import CLIPPreTrainedModel
from .resnet import ModifiedResNet
from .text import CLIPTextTransformer
from .vision import CLIPVisionTransformer

__all__ = ["CLIPModel", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModel",
           "CLIPVisionModelWithProjection", "CLIPForImageClassification", "clip_loss"]


def clip_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss: mean of the text->image and image->text cross-entropies."""
    labels = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, labels) + F.cross_entropy(logits_per_text.t(), labels)) / 2.0


def _finish(out, return_dict: Optional[bool]):
    return out.to_tuple() if return_dict is False else out


def _vision_tower(config, attn_implementation: str) -> nn.Module:
    if config.is_resnet:
        return ModifiedResNet(config.vision_config)
    return CLIPVisionTransformer(config.vision_config, attn_implementation)


class CLIPTextModel(CLIPPreTrainedModel):
    """The text tower alone: ``last_hidden_state``, ``pooler_output`` (EOT token)."""

    part = "text"

    def __init__(self, config: Any, attn_implementation: str = "sdpa") -> None:
        super().__init__(config, attn_implementation)
        self.text_model = CLIPTextTransformer(self.config.text_config, attn_implementation)

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None
                ) -> BaseModelOutputWithPooling:
        out = self.text_model(input_ids, attention_mask, position_ids, bool(output_attentions),
                              bool(output_hidden_states))
        return _finish(out, return_dict)


class CLIPTextModelWithProjection(CLIPPreTrainedModel):
    """Text tower + ``text_projection``: ``text_embeds`` (projected, not normalized)."""

    part = "text_with_projection"

    def __init__(self, config: Any, attn_implementation: str = "sdpa") -> None:
        super().__init__(config, attn_implementation)
        t = self.config.text_config
        self.text_model = CLIPTextTransformer(t, attn_implementation)
        self.text_projection = Linear(t.hidden_size, self.config.projection_dim, bias=False)

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None
                ) -> CLIPTextModelOutput:
        t = self.text_model(input_ids, attention_mask, position_ids, bool(output_attentions),
                            bool(output_hidden_states))
        out = CLIPTextModelOutput(text_embeds=self.text_projection(t.pooler_output),
                                  last_hidden_state=t.last_hidden_state, hidden_states=t.hidden_states,
                                  attentions=t.attentions)
        return _finish(out, return_dict)


class CLIPVisionModel(CLIPPreTrainedModel):
    """The vision tower alone (ViT or ModifiedResNet): ``last_hidden_state``, ``pooler_output``."""

    part = "vision"

    def __init__(self, config: Any, attn_implementation: str = "sdpa") -> None:
        super().__init__(config, attn_implementation)
        self.vision_model = _vision_tower(self.config, attn_implementation)

    def forward(self, pixel_values: Optional[torch.Tensor] = None, output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, interpolate_pos_encoding: bool = False,
                return_dict: Optional[bool] = None) -> BaseModelOutputWithPooling:
        out = self.vision_model(pixel_values, bool(output_attentions), bool(output_hidden_states),
                                interpolate_pos_encoding)
        return _finish(out, return_dict)


class CLIPVisionModelWithProjection(CLIPPreTrainedModel):
    """Vision tower + ``visual_projection`` (ViT); a ResNet's attention pool already projects."""

    part = "vision_with_projection"

    def __init__(self, config: Any, attn_implementation: str = "sdpa") -> None:
        super().__init__(config, attn_implementation)
        self.vision_model = _vision_tower(self.config, attn_implementation)
        if not self.config.is_resnet:
            self.visual_projection = Linear(self.config.vision_config.hidden_size, self.config.projection_dim,
                                               bias=False)

    def forward(self, pixel_values: Optional[torch.Tensor] = None, output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, interpolate_pos_encoding: bool = False,
                return_dict: Optional[bool] = None) -> CLIPVisionModelOutput:
        v = self.vision_model(pixel_values, bool(output_attentions), bool(output_hidden_states),
                              interpolate_pos_encoding)
        embeds = v.pooler_output if self.config.is_resnet else self.visual_projection(v.pooler_output)
        out = CLIPVisionModelOutput(image_embeds=embeds, last_hidden_state=v.last_hidden_state,
                                    hidden_states=v.hidden_states, attentions=v.attentions)
        return _finish(out, return_dict)


class CLIPForImageClassification(CLIPPreTrainedModel):
    """Mean of the patch tokens (ViT) or of the last feature map (ResNet) -> linear ``classifier``."""

    part = "classification"

    def __init__(self, config: Any, attn_implementation: str = "sdpa") -> None:
        super().__init__(config, attn_implementation)
        self._num_labels = num_labels_of(self.config)
        self.vision_model = _vision_tower(self.config, attn_implementation)
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
        v = self.vision_model(pixel_values, bool(output_attentions), bool(output_hidden_states),
                              interpolate_pos_encoding)
        x = v.last_hidden_state
        feats = x.mean(dim=(2, 3)) if self.config.is_resnet else x[:, 1:].mean(dim=1)  # (B, D)
        logits = self.classifier(feats)  # (B, num_labels)
        loss = None if labels is None else self._loss(logits, labels)
        out = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=v.hidden_states, attentions=v.attentions)
        return _finish(out, return_dict)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """MSE for one label (regression), cross-entropy for integer labels, BCE for multi-label."""
        labels = labels.to(logits.device)
        if self._num_labels == 1:
            return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).reshape(-1))
        if not labels.is_floating_point():
            return F.cross_entropy(logits.view(-1, self._num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def _is_openai_call(args: tuple) -> bool:
    """OpenAI's ``model(image, text)``: a float 4-D image batch then integer token ids."""
    return (len(args) == 2 and torch.is_tensor(args[0]) and args[0].is_floating_point() and args[0].dim() == 4
            and torch.is_tensor(args[1]) and not args[1].is_floating_point())


class CLIPModel(CLIPPreTrainedModel):
    """Both towers, both projections and ``logit_scale``; also OpenAI's ``encode_image`` /
    ``encode_text`` / ``model(image, text)``."""

    part = "model"

    def __init__(self, config: Any, attn_implementation: str = "sdpa") -> None:
        super().__init__(config, attn_implementation)
        c = self.config
        self.text_model = CLIPTextTransformer(c.text_config, attn_implementation)
        self.vision_model = _vision_tower(c, attn_implementation)
        self.text_projection = Linear(c.text_config.hidden_size, c.projection_dim, bias=False)
        if not c.is_resnet:
            self.visual_projection = Linear(c.vision_config.hidden_size, c.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(c.logit_scale_init_value)))

    # ------------------------------------------------------------------ features
    def _image_embeds(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled if self.config.is_resnet else self.visual_projection(pooled)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                          position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, T) ids -> (B, projection_dim) projected, NOT normalized (runs only up to the last EOT)."""
        t = self.text_model(input_ids, attention_mask, position_ids, full_length=False)
        return self.text_projection(t.pooler_output)

    def get_image_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """(B, C, H, W) -> (B, projection_dim) projected, NOT normalized (a ViT runs its last layer
        for the class token only)."""
        if self.config.is_resnet:
            pooled = self.vision_model(pixel_values, False, False, interpolate_pos_encoding).pooler_output
        else:
            pooled = self.vision_model(pixel_values, False, False, interpolate_pos_encoding, pooled_only=True).pooler_output
        return self._image_embeds(pooled)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """OpenAI name for :meth:`get_image_features`."""
        return self.get_image_features(image)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """OpenAI name for :meth:`get_text_features`."""
        return self.get_text_features(text)

    @property
    def visual(self) -> nn.Module:
        """OpenAI's name for the vision tower."""
        return self.vision_model

    def _logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image_embeds = image_embeds / image_embeds.norm(p=2, dim=-1, keepdim=True)
        text_embeds = text_embeds / text_embeds.norm(p=2, dim=-1, keepdim=True)
        logits_per_text = torch.matmul(text_embeds, image_embeds.t()) * self.logit_scale.exp()
        return logits_per_text.t(), logits_per_text

    # ------------------------------------------------------------------ forward
    def forward(self, *args: Any, input_ids: Optional[torch.Tensor] = None,
                pixel_values: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, return_loss: Optional[bool] = None,
                output_attentions: Optional[bool] = None, output_hidden_states: Optional[bool] = None,
                interpolate_pos_encoding: bool = False, return_dict: Optional[bool] = None):
        """HF keyword call -> :class:`CLIPOutput`; OpenAI positional ``model(image, text)`` ->
        ``(logits_per_image, logits_per_text)``. HF's positional order ``(input_ids, pixel_values)``
        is accepted too."""
        if _is_openai_call(args):
            return self._logits(self.get_image_features(args[0]), self.get_text_features(args[1]))
        names = ("input_ids", "pixel_values", "attention_mask", "position_ids")
        if len(args) > len(names):
            raise TypeError(f"CLIPModel.forward takes at most {len(names)} positional arguments")
        given = dict(zip(names, args))
        input_ids = given.get("input_ids", input_ids)
        pixel_values = given.get("pixel_values", pixel_values)
        attention_mask = given.get("attention_mask", attention_mask)
        position_ids = given.get("position_ids", position_ids)
        if input_ids is None or pixel_values is None:
            raise ValueError("CLIPModel needs both input_ids and pixel_values (or call get_text_features / "
                             "get_image_features)")
        oa, oh = bool(output_attentions), bool(output_hidden_states)
        v = self.vision_model(pixel_values, oa, oh, interpolate_pos_encoding)
        t = self.text_model(input_ids, attention_mask, position_ids, oa, oh)
        image_embeds = self._image_embeds(v.pooler_output)
        text_embeds = self.text_projection(t.pooler_output)
        image_embeds = image_embeds / image_embeds.norm(p=2, dim=-1, keepdim=True)
        text_embeds = text_embeds / text_embeds.norm(p=2, dim=-1, keepdim=True)
        logits_per_text = torch.matmul(text_embeds, image_embeds.t()) * self.logit_scale.exp()
        out = CLIPOutput(loss=clip_loss(logits_per_text) if return_loss else None,
                         logits_per_image=logits_per_text.t(), logits_per_text=logits_per_text,
                         text_embeds=text_embeds, image_embeds=image_embeds, text_model_output=t,
                         vision_model_output=v)
        return _finish(out, return_dict)
