"""clip_flax: CLIP (ViT and ModifiedResNet) and SigLIP on JAX / Flax Linen with Hugging Face Flax param paths."""
from __future__ import annotations

from .models import (CLIPForImageClassification, CLIPModel, CLIPTextModel, CLIPTextModelWithProjection,
                     CLIPVisionModel, CLIPVisionModelWithProjection, FlaxCLIPForImageClassification,
                     FlaxCLIPModel, FlaxCLIPPreTrainedModel, FlaxCLIPTextModel, FlaxCLIPTextModelWithProjection,
                     FlaxCLIPVisionModel, FlaxCLIPVisionModelWithProjection)
from .modules import clip_loss, contrastive_loss
from .siglip import (SiglipForImageClassification, SiglipModel, SiglipOutput, SiglipTextModel, SiglipVisionModel,
                     siglip_loss)
from .training import loss_fn, make_train_step, train_step
from . import sharding
from .openai_api import available_models, load, tokenize

__all__ = [
    "CLIPModel", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModel",
    "CLIPVisionModelWithProjection", "CLIPForImageClassification", "FlaxCLIPModel", "FlaxCLIPTextModel",
    "FlaxCLIPTextModelWithProjection", "FlaxCLIPVisionModel", "FlaxCLIPVisionModelWithProjection",
    "FlaxCLIPForImageClassification", "FlaxCLIPPreTrainedModel", "clip_loss", "contrastive_loss", "loss_fn",
    "make_train_step", "train_step", "sharding", "load", "tokenize", "available_models",
    "SiglipModel", "SiglipTextModel", "SiglipVisionModel", "SiglipForImageClassification", "SiglipOutput",
    "siglip_loss",
]
