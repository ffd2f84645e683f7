"""Model families: which config class a ``config.json`` describes (CLIP or SigLIP)."""
from __future__ import annotations

from typing import Any, Mapping, Union

from .config import CLIPConfig, as_clip_config
from .siglip_config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

__all__ = ["FAMILIES", "ModelConfig", "config_from_dict", "family_of", "as_model_config"]

ModelConfig = Union[CLIPConfig, SiglipConfig]
#: family name -> its whole-model config class
FAMILIES = {"clip": CLIPConfig, "siglip": SiglipConfig}
_SIGLIP_TYPES = ("siglip", "siglip_text_model", "siglip_vision_model")


def config_from_dict(data: Mapping[str, Any]) -> ModelConfig:
    """The whole-model config a Hugging Face ``config.json`` dict describes, by its ``model_type``."""
    if data.get("model_type") in _SIGLIP_TYPES:
        return SiglipConfig.from_dict(data)
    return CLIPConfig.from_dict(data)


def family_of(config: Any) -> str:
    """``"clip"`` or ``"siglip"`` for a whole-model config."""
    return getattr(config, "family", "clip")


def as_model_config(config: Any) -> ModelConfig:
    """A whole-model config from a whole config, a lone tower config (the other tower gets defaults) or
    a ``config.json`` dict, in its own family — what every backend's model constructor accepts."""
    if isinstance(config, SiglipConfig):
        return config
    if isinstance(config, Mapping):
        return config_from_dict(config)
    if isinstance(config, SiglipTextConfig):
        vision = SiglipVisionConfig(hidden_size=config.projection_size, num_attention_heads=1)
        return SiglipConfig(text_config=config, vision_config=vision)
    if isinstance(config, SiglipVisionConfig):
        return SiglipConfig(text_config=SiglipTextConfig(projection_size=config.hidden_size), vision_config=config)
    return as_clip_config(config)
