"""The nine OpenAI CLIP architectures, with Hugging Face and open_clip names as aliases."""
from __future__ import annotations

from typing import Optional

from .config import CLIPConfig, CLIPResNetVisionConfig, CLIPTextConfig, CLIPVisionConfig

__all__ = ["available_models", "get_config", "resolve_name"]

# name: (embed_dim, image_size, vision layers, vision width, patch (None = ResNet), text width, text heads)
_OPENAI = {
    "RN50": (1024, 224, (3, 4, 6, 3), 64, None, 512, 8),
    "RN101": (512, 224, (3, 4, 23, 3), 64, None, 512, 8),
    "RN50x4": (640, 288, (4, 6, 10, 6), 80, None, 640, 10),
    "RN50x16": (768, 384, (6, 8, 18, 8), 96, None, 768, 12),
    "RN50x64": (1024, 448, (3, 15, 36, 10), 128, None, 1024, 16),
    "ViT-B/32": (512, 224, 12, 768, 32, 512, 8),
    "ViT-B/16": (512, 224, 12, 768, 16, 512, 8),
    "ViT-L/14": (768, 224, 24, 1024, 14, 768, 12),
    "ViT-L/14@336px": (768, 336, 24, 1024, 14, 768, 12),
}

_HF_IDS = {
    "openai/clip-vit-base-patch32": "ViT-B/32",
    "openai/clip-vit-base-patch16": "ViT-B/16",
    "openai/clip-vit-large-patch14": "ViT-L/14",
    "openai/clip-vit-large-patch14-336": "ViT-L/14@336px",
}

_OPEN_CLIP = {
    "ViT-B-32": "ViT-B/32",
    "ViT-B-16": "ViT-B/16",
    "ViT-L-14": "ViT-L/14",
    "ViT-L-14-336": "ViT-L/14@336px",
    **{n: n for n in ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64")},
}


def available_models() -> list[str]:
    """The OpenAI architecture names, as OpenAI's ``clip.available_models()`` lists them."""
    return list(_OPENAI)


def resolve_name(name: str) -> tuple[str, Optional[str]]:
    """Map an OpenAI, Hugging Face or open_clip name to ``(openai_name, hidden_act)``.

    OpenAI and Hugging Face names mean QuickGELU. open_clip names mean GELU unless they end in
    ``-quickgelu`` (open_clip's own convention, for ResNets and ViTs alike).
    """
    if not isinstance(name, str):
        raise TypeError(f"a model name must be a string, got {type(name).__name__}")
    if name in _OPENAI:
        return name, "quick_gelu"
    if name in _HF_IDS:
        return _HF_IDS[name], "quick_gelu"
    base, act = name, "gelu"
    if name.endswith("-quickgelu"):
        base, act = name[: -len("-quickgelu")], "quick_gelu"
    if base in _OPEN_CLIP:
        return _OPEN_CLIP[base], act
    known = ", ".join(available_models() + sorted(_HF_IDS) + sorted(_OPEN_CLIP))
    raise ValueError(f"unknown CLIP model name {name!r}; known names: {known}")


def get_config(name: str):
    """The exact architecture of an OpenAI CLIP model (or its HF / open_clip alias), or of a released
    SigLIP / SigLIP 2 model (``google/siglip-base-patch16-224``, ``ViT-B-16-SigLIP`` ...)."""
    from .siglip_presets import get_siglip_config, resolve_siglip_name

    if resolve_siglip_name(name) is not None:
        return get_siglip_config(name)
    openai_name, act = resolve_name(name)
    embed, image, vlayers, vwidth, patch, twidth, theads = _OPENAI[openai_name]
    text = CLIPTextConfig(
        vocab_size=49408, hidden_size=twidth, intermediate_size=4 * twidth, projection_dim=embed,
        num_hidden_layers=12, num_attention_heads=theads, max_position_embeddings=77,
        hidden_act=act, eos_token_id=49407,
    )
    if patch is None:
        vision = CLIPResNetVisionConfig(layers=vlayers, width=vwidth, num_attention_heads=vwidth * 32 // 64,
                                        projection_dim=embed, image_size=image)
    else:
        vision = CLIPVisionConfig(hidden_size=vwidth, intermediate_size=4 * vwidth, projection_dim=embed,
                                  num_hidden_layers=vlayers, num_attention_heads=vwidth // 64,
                                  image_size=image, patch_size=patch, hidden_act=act)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed)
