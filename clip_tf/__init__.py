"""clip_tf: CLIP (ViT and ModifiedResNet) as Keras 3 models on TensorFlow.

Loads every checkpoint ``conversion`` reads (no torch needed), saves the canonical directory and
Hugging Face's ``tf_model.h5``, compiles inference with XLA, trains with ``model.fit``, exports a
SavedModel with serving signatures, and offers OpenAI's ``clip.load`` API.
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras as _keras  # noqa: E402

if _keras.config.backend() != "tensorflow":
    raise ImportError(f"clip_tf needs Keras on the TensorFlow backend, but KERAS_BACKEND is "
                      f"{_keras.config.backend()!r}; set KERAS_BACKEND=tensorflow before importing keras")

from .export import export_saved_model  # noqa: E402
from .models import (CLIPForImageClassification, CLIPModel, CLIPPreTrainedModel, CLIPTextModel,  # noqa: E402
                     CLIPTextModelWithProjection, CLIPVisionModel, CLIPVisionModelWithProjection, clip_loss,
                     contrastive_loss)
from .openai_api import available_models, load, tokenize  # noqa: E402
from .siglip import (SiglipForImageClassification, SiglipModel, SiglipTextModel, SiglipVisionModel,  # noqa: E402
                     siglip_loss)

TFCLIPModel = CLIPModel
TFCLIPTextModel = CLIPTextModel
TFCLIPTextModelWithProjection = CLIPTextModelWithProjection
TFCLIPVisionModel = CLIPVisionModel
TFCLIPVisionModelWithProjection = CLIPVisionModelWithProjection
TFCLIPForImageClassification = CLIPForImageClassification

__all__ = [
    "CLIPModel", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModel", "CLIPVisionModelWithProjection",
    "CLIPForImageClassification", "CLIPPreTrainedModel", "TFCLIPModel", "TFCLIPTextModel",
    "TFCLIPTextModelWithProjection", "TFCLIPVisionModel", "TFCLIPVisionModelWithProjection",
    "TFCLIPForImageClassification", "clip_loss", "contrastive_loss", "export_saved_model", "load", "tokenize",
    "available_models", "SiglipModel", "SiglipTextModel", "SiglipVisionModel", "SiglipForImageClassification",
    "siglip_loss",
]
