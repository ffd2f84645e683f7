"""The released SigLIP and SigLIP 2 (fixed resolution) architectures, by Hugging Face id and open_clip name.

Shapes are those of the published ``config.json`` files (``google/siglip-*``, ``google/siglip2-*``):
vocabulary 32,000 (SigLIP's English SentencePiece), 250,000 (the multilingual SigLIP) or 256,000
(SigLIP 2's Gemma tokenizer); text context 64 (16 for ``so400m-patch14-224``).
"""
from __future__ import annotations

from .siglip_config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

__all__ = ["siglip_models", "get_siglip_config", "resolve_siglip_name"]

# tower size: (width, mlp, layers, heads)
_SIZES = {
    "B": (768, 3072, 12, 12),
    "L": (1024, 4096, 24, 16),
    "So400m": (1152, 4304, 27, 16),
    "g": (1536, 6144, 40, 16),
}
# HF id (without "google/") -> (vision size, text size, patch, image, vocab, context)
_PRESETS = {
    **{f"siglip-base-patch16-{r}": ("B", "B", 16, r, 32000, 64) for r in (224, 256, 384, 512)},
    "siglip-base-patch16-256-multilingual": ("B", "B", 16, 256, 250000, 64),
    **{f"siglip-large-patch16-{r}": ("L", "L", 16, r, 32000, 64) for r in (256, 384)},
    "siglip-so400m-patch14-224": ("So400m", "So400m", 14, 224, 32000, 16),
    "siglip-so400m-patch14-384": ("So400m", "So400m", 14, 384, 32000, 64),
    **{f"siglip2-base-patch16-{r}": ("B", "B", 16, r, 256000, 64) for r in (224, 256, 384, 512)},
    **{f"siglip2-large-patch16-{r}": ("L", "L", 16, r, 256000, 64) for r in (256, 384, 512)},
    **{f"siglip2-so400m-patch14-{r}": ("So400m", "So400m", 14, r, 256000, 64) for r in (224, 384)},
    **{f"siglip2-so400m-patch16-{r}": ("So400m", "So400m", 16, r, 256000, 64) for r in (256, 384, 512)},
    **{f"siglip2-giant-opt-patch16-{r}": ("g", "So400m", 16, r, 256000, 64) for r in (256, 384)},
}
# open_clip names -> HF ids
_OPEN_CLIP = {
    "ViT-B-16-SigLIP": "siglip-base-patch16-224",
    **{f"ViT-B-16-SigLIP-{r}": f"siglip-base-patch16-{r}" for r in (256, 384, 512)},
    "ViT-B-16-SigLIP-i18n-256": "siglip-base-patch16-256-multilingual",
    **{f"ViT-L-16-SigLIP-{r}": f"siglip-large-patch16-{r}" for r in (256, 384)},
    "ViT-SO400M-14-SigLIP": "siglip-so400m-patch14-224",
    "ViT-SO400M-14-SigLIP-384": "siglip-so400m-patch14-384",
    "ViT-B-16-SigLIP2": "siglip2-base-patch16-224",
    **{f"ViT-B-16-SigLIP2-{r}": f"siglip2-base-patch16-{r}" for r in (256, 384, 512)},
    **{f"ViT-L-16-SigLIP2-{r}": f"siglip2-large-patch16-{r}" for r in (256, 384, 512)},
    "ViT-SO400M-14-SigLIP2": "siglip2-so400m-patch14-224",
    "ViT-SO400M-14-SigLIP2-378": "siglip2-so400m-patch14-384",
    **{f"ViT-SO400M-16-SigLIP2-{r}": f"siglip2-so400m-patch16-{r}" for r in (256, 384, 512)},
    **{f"ViT-gopt-16-SigLIP2-{r}": f"siglip2-giant-opt-patch16-{r}" for r in (256, 384)},
}


def siglip_models() -> list[str]:
    """The SigLIP / SigLIP 2 preset names (Hugging Face ids without ``google/``)."""
    return list(_PRESETS)


def resolve_siglip_name(name: str):
    """The preset key of a SigLIP name (``google/…`` id, bare id or open_clip name), or None."""
    if not isinstance(name, str):
        return None
    key = name[len("google/"):] if name.startswith("google/") else name
    key = _OPEN_CLIP.get(key, key)
    return key if key in _PRESETS else None


def get_siglip_config(name: str) -> SiglipConfig:
    """The architecture of a released SigLIP / SigLIP 2 model (fixed resolution)."""
    key = resolve_siglip_name(name)
    if key is None:
        raise ValueError(f"unknown SigLIP model name {name!r}; known names: {', '.join(siglip_models())}")
    vsize, tsize, patch, image, vocab, context = _PRESETS[key]
    vw, vff, vl, vh = _SIZES[vsize]
    tw, tff, tl, th = _SIZES[tsize]
    text = SiglipTextConfig(vocab_size=vocab, hidden_size=tw, intermediate_size=tff, num_hidden_layers=tl,
                            num_attention_heads=th, max_position_embeddings=context, projection_size=vw)
    vision = SiglipVisionConfig(hidden_size=vw, intermediate_size=vff, num_hidden_layers=vl, num_attention_heads=vh,
                                image_size=image, patch_size=patch)
    return SiglipConfig(text_config=text, vision_config=vision)
