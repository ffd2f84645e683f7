"""The SigLIP family in PyTorch: transformers 4.57's ``SiglipModel``, ``SiglipTextModel``,
``SiglipVisionModel``, ``SiglipForImageClassification`` (names, arguments, outputs) and the sigmoid loss.

Loading and saving are the CLIP classes' (:class:`~clip_torch.modeling_utils.CLIPPreTrainedModel`: the
``clip_core.schema`` table, ``conversion.pretrained``); the towers reuse CLIP's layers
(:mod:`clip_torch.siglip_towers`).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from clip_core.config import num_labels_of, with_labels
from clip_core.outputs import BaseModelOutputWithPooling, CLIPOutput, ImageClassifierOutput
from conversion.pretrained import finish, output_flags

from .layers import Linear
from .modeling_utils import CLIPPreTrainedModel
from .models import _unit, classification_loss
from .siglip_towers import SiglipTextTransformer, SiglipVisionTransformer

__all__ = ["SiglipPreTrainedModel", "SiglipModel", "SiglipTextModel", "SiglipVisionModel",
           "SiglipForImageClassification", "SiglipOutput", "siglip_loss"]

#: transformers' ``SiglipOutput`` has exactly CLIP's fields.
SiglipOutput = CLIPOutput


def siglip_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Sigmoid loss (Zhai et al. 2023, as transformers): ``-mean_rows(sum_cols(logsigmoid(labels * logits)))``
    with ``labels = 2 I - 1`` (+1 for the matching pair on the diagonal, -1 elsewhere). (T, I) -> scalar."""
    n, m = logits_per_text.shape
    labels = 2 * torch.eye(n, m, device=logits_per_text.device, dtype=logits_per_text.dtype) - 1  # (T, I)
    return -F.logsigmoid(labels * logits_per_text).sum(dim=-1).mean()


class SiglipPreTrainedModel(CLIPPreTrainedModel):
    """Base of the four SigLIP classes: CLIP's loading / saving / switches for the SigLIP family."""

    family = "siglip"


class SiglipTextModel(SiglipPreTrainedModel):
    """The text tower: ``last_hidden_state``, ``pooler_output`` (``head`` of the last position)."""

    part = "text"

    def __init__(self, config: Any, attn_implementation: Optional[str] = "sdpa") -> None:
        super().__init__(config, attn_implementation)
        self.text_model = SiglipTextTransformer(self.config.text_config, self.attn_implementation)

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None
                ) -> BaseModelOutputWithPooling:
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        return finish(self.text_model(input_ids, attention_mask, position_ids, oa, oh), rd)


class SiglipVisionModel(SiglipPreTrainedModel):
    """The vision tower: ``last_hidden_state`` (post-layernormed), ``pooler_output`` (attention-pooling head)."""

    part = "vision"

    def __init__(self, config: Any, attn_implementation: Optional[str] = "sdpa") -> None:
        super().__init__(config, attn_implementation)
        self.vision_model = SiglipVisionTransformer(self.config.vision_config, self.attn_implementation)

    def forward(self, pixel_values: Optional[torch.Tensor] = None, output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, interpolate_pos_encoding: bool = False,
                return_dict: Optional[bool] = None) -> BaseModelOutputWithPooling:
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        return finish(self.vision_model(pixel_values, oa, oh, interpolate_pos_encoding), rd)


class SiglipModel(SiglipPreTrainedModel):
    """Both towers, ``logit_scale`` and ``logit_bias``: ``logits = cos * exp(logit_scale) + logit_bias``;
    ``return_loss=True`` adds the sigmoid loss (:func:`siglip_loss`). Probabilities are ``sigmoid(logits)``."""

    part = "model"

    def __init__(self, config: Any, attn_implementation: Optional[str] = "sdpa") -> None:
        super().__init__(config, attn_implementation)
        self.text_model = SiglipTextTransformer(self.config.text_config, self.attn_implementation)
        self.vision_model = SiglipVisionTransformer(self.config.vision_config, self.attn_implementation)
        self.logit_scale = nn.Parameter(torch.zeros(1))  # log(1), as transformers initialises it
        self.logit_bias = nn.Parameter(torch.zeros(1))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                          position_ids: Optional[torch.Tensor] = None, output_attentions: Optional[bool] = None,
                          output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None
                          ) -> torch.Tensor:
        """(B, T) ids -> (B, D) text embeddings (the head's output), NOT normalized; the flags are accepted
        for transformers' signature and change nothing."""
        return self.text_model(input_ids, attention_mask, position_ids).pooler_output

    def get_image_features(self, pixel_values: torch.Tensor, output_attentions: Optional[bool] = None,
                           output_hidden_states: Optional[bool] = None, interpolate_pos_encoding: bool = False,
                           return_dict: Optional[bool] = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, D) image embeddings (the attention-pooling head's output), NOT normalized."""
        return self.vision_model(pixel_values, False, False, interpolate_pos_encoding).pooler_output

    def _logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized embeddings -> ``(logits_per_image (I, T), logits_per_text (T, I))``."""
        logits_per_text = torch.matmul(text_embeds, image_embeds.t()) * self.logit_scale.exp() + self.logit_bias
        return logits_per_text.t(), logits_per_text

    def forward(self, input_ids: Optional[torch.Tensor] = None, pixel_values: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
                return_loss: Optional[bool] = None, output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, interpolate_pos_encoding: bool = False,
                return_dict: Optional[bool] = None) -> SiglipOutput:
        if input_ids is None or pixel_values is None:
            raise ValueError("SiglipModel needs both input_ids and pixel_values (or call get_text_features / "
                             "get_image_features)")
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        v = self.vision_model(pixel_values, oa, oh, interpolate_pos_encoding)
        t = self.text_model(input_ids, attention_mask, position_ids, oa, oh)
        image_embeds, text_embeds = _unit(v.pooler_output), _unit(t.pooler_output)  # (I, D), (T, D)
        logits_per_image, logits_per_text = self._logits(image_embeds, text_embeds)
        out = SiglipOutput(loss=siglip_loss(logits_per_text) if return_loss else None,
                           logits_per_image=logits_per_image, logits_per_text=logits_per_text,
                           text_embeds=text_embeds, image_embeds=image_embeds, text_model_output=t,
                           vision_model_output=v)
        return finish(out, rd)


class SiglipForImageClassification(SiglipPreTrainedModel):
    """Mean of the post-layernormed patch tokens -> linear ``classifier`` (the attention-pooling head's
    weights stay in the model and its checkpoints, as transformers keeps them, but are not run)."""

    part = "classification"

    def __init__(self, config: Any, attn_implementation: Optional[str] = "sdpa") -> None:
        super().__init__(config, attn_implementation)
        self._num_labels = num_labels_of(self.config)
        self.vision_model = SiglipVisionTransformer(self.config.vision_config, self.attn_implementation)
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
        v = self.vision_model(pixel_values, oa, oh, interpolate_pos_encoding, with_head=False)
        logits = self.classifier(v.last_hidden_state.mean(dim=1))  # (B, num_labels)
        loss = None if labels is None else classification_loss(logits, labels)
        return finish(ImageClassifierOutput(loss=loss, logits=logits, hidden_states=v.hidden_states,
                                            attentions=v.attentions), rd)
