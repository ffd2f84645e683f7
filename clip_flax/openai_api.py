"""OpenAI's ``clip`` API on clip_flax: ``load``, ``tokenize``, ``available_models``.

``model, preprocess = clip_flax.load(path)``; ``model.encode_image(images)``,
``model.encode_text(tokens)`` and ``model(images, tokens) -> (logits_per_image, logits_per_text)``.
Nothing is ever downloaded: a model name needs its file in ``download_root`` (``~/.cache/clip``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np
import jax.numpy as jnp

__all__ = ["load", "tokenize", "available_models"]



def available_models() -> List[str]:
    """Model names clip-zoo knows (OpenAI, Hugging Face and open_clip names)."""
    from clip_core import available_models as names

    return names()


def tokenize(texts: Union[str, Sequence[str]], context_length: int = 77, truncate: bool = False) -> jnp.ndarray:
    """OpenAI's ``clip.tokenize`` as a jax int32 array (N, context_length), zero padded."""
    from clip_core import tokenize as np_tokenize

    return jnp.asarray(np_tokenize(texts, context_length=context_length, truncate=truncate), jnp.int32)


def _resolve(name: str, download_root: Optional[str]) -> Path:
    from clip_core.default_model import resolve_checkpoint

    return resolve_checkpoint(name, download_root)


def _preprocess(image_size: int) -> Callable[[Any], jnp.ndarray]:
    from clip_core import CLIPImageProcessor

    proc = CLIPImageProcessor(mode="openai", size=image_size, crop_size=image_size)

    def preprocess(image: Any) -> jnp.ndarray:
        """PIL image -> (3, H, W) float32 jax array (OpenAI's transform)."""
        return jnp.asarray(np.asarray(proc(image, return_tensors="np")["pixel_values"][0], np.float32))

    return preprocess


def load(name: str, device: Any = None, jit: bool = True, download_root: Optional[str] = None,
         dtype: Any = jnp.float32):
    """``(model, preprocess)`` from a local checkpoint of any format (or a model name whose file
    is in ``download_root``). ``device`` / ``jit`` are accepted for drop-in compatibility
    (clip_flax always runs jit-compiled on jax's default device)."""
    from .models import CLIPModel

    model = CLIPModel.from_pretrained(_resolve(name, download_root), dtype=dtype)
    return model, _preprocess(model.config.vision_config.image_size)
