"""clip_core: the framework-neutral heart of clip-zoo.

Configs and presets, the weight schema and mapping table, output containers, the BPE tokenizer,
image preprocessing and the processor. Never imports torch, tensorflow or jax.
"""
from __future__ import annotations

from .config import CLIPConfig, CLIPResNetVisionConfig, CLIPTextConfig, CLIPVisionConfig
from .outputs import (BaseModelOutputWithPooling, CLIPOutput, CLIPTextModelOutput, CLIPVisionModelOutput,
                      ImageClassifierOutput, ModelOutput)
from .presets import available_models, get_config
from .schema import WeightMismatchError, check_weights, from_backend, parameter_shapes, schema, to_backend
from .siglip_config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

__version__ = "0.1.0"

_LAZY = {
    "CLIPTokenizer": ".tokenizer",
    "CLIPTokenizerFast": ".tokenizer",
    "tokenize": ".tokenizer",
    "CLIPImageProcessor": ".image_processing",
    "CLIPImageProcessorFast": ".image_processing",
    "CLIPFeatureExtractor": ".image_processing",
    "BatchFeature": ".batch",
    "BatchEncoding": ".batch",
    "CLIPProcessor": ".processor",
    "default_model_path": ".default_model",
    "resolve_checkpoint": ".default_model",
    "SiglipTokenizer": ".siglip_tokenizer",
    "GemmaTokenizer": ".siglip_tokenizer",
    "load_tokenizer": ".siglip_tokenizer",
    "SiglipImageProcessor": ".siglip_processing",
    "SiglipProcessor": ".siglip_processing",
}


def __getattr__(name: str):
    # The tokenizer and image processor are loaded on first use to keep `import clip_core` fast.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'clip_core' has no attribute {name!r}")


__all__ = [
    "CLIPConfig", "CLIPTextConfig", "CLIPVisionConfig", "CLIPResNetVisionConfig",
    "SiglipConfig", "SiglipTextConfig", "SiglipVisionConfig",
    "available_models", "get_config", "schema", "parameter_shapes", "to_backend", "from_backend",
    "check_weights", "WeightMismatchError", "ModelOutput", "BaseModelOutputWithPooling",
    "CLIPTextModelOutput", "CLIPVisionModelOutput", "CLIPOutput", "ImageClassifierOutput",
    "CLIPTokenizer", "tokenize", "CLIPImageProcessor", "CLIPProcessor", "default_model_path", "resolve_checkpoint",
    "CLIPTokenizerFast", "CLIPImageProcessorFast", "CLIPFeatureExtractor", "BatchFeature", "BatchEncoding",
    "SiglipTokenizer", "GemmaTokenizer", "load_tokenizer", "SiglipImageProcessor", "SiglipProcessor",
]
