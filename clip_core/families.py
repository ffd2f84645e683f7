"""Model families: which config class a ``config.json`` describes (CLIP or SigLIP)."""
from __future__ import annotations

from typing import Any, Mapping, Union

from .config import CLIPConfig
from .siglip_config import SiglipConfig

__all__ = ["FAMILIES", "ModelConfig", "config_from_dict", "family_of"]

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
