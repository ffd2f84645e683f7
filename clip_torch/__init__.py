"""clip_torch: the CLIP family (ViT and ModifiedResNet) in PyTorch, plus OpenAI's ``clip`` API.

``import clip_torch as clip`` runs scripts written for OpenAI's package (``clip.load``,
``clip.tokenize``, ``clip.available_models``) once the checkpoint file is local.
"""
from __future__ import annotations

from .models import (CLIPForImageClassification, CLIPModel, CLIPTextModel, CLIPTextModelWithProjection,
                     CLIPVisionModel, CLIPVisionModelWithProjection, clip_loss,
                     contrastive_loss)
from .modeling_utils import CLIPPreTrainedModel
from .openai_api import available_models, load, tokenize
from .siglip import (SiglipForImageClassification, SiglipModel, SiglipPreTrainedModel, SiglipTextModel,
                     SiglipVisionModel, siglip_loss)

__all__ = [
    "CLIPModel", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModel",
    "CLIPVisionModelWithProjection", "CLIPForImageClassification", "CLIPPreTrainedModel", "clip_loss", "contrastive_loss",
    "load", "tokenize", "available_models",
    "SiglipModel", "SiglipTextModel", "SiglipVisionModel", "SiglipForImageClassification", "SiglipPreTrainedModel",
    "siglip_loss",
]
