"""OpenAI's ``clip`` API on clip_flax: ``load``, ``tokenize``, ``available_models``.

``model, preprocess = clip_flax.load(name)``; ``model.encode_image(images)``,
``model.encode_text(tokens)`` and ``model(images, tokens) -> (logits_per_image, logits_per_text)``.
Nothing is ever downloaded: a model name needs its file in ``download_root`` (``~/.cache/clip``).
"""
from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Sequence, Union

import jax.numpy as jnp

from conversion.pretrained import openai_checkpoint, openai_transform

__all__ = ["load", "tokenize", "available_models"]


def available_models() -> List[str]:
    """The model names ``load`` knows (OpenAI's, as ``clip.available_models()``, plus clip-zoo's)."""
    from clip_core import available_models as names

    return names()


def tokenize(texts: Union[str, Sequence[str]], context_length: int = 77, truncate: bool = False) -> jnp.ndarray:
    """OpenAI's ``clip.tokenize`` as a jax int32 array (N, context_length), zero padded."""
    from clip_core import tokenize as np_tokenize

    return jnp.asarray(np_tokenize(texts, context_length=context_length, truncate=truncate), jnp.int32)


def load(name: Union[str, os.PathLike], device: Any = None, jit: bool = False, download_root: Optional[str] = None,
         **kwargs: Any):
    """``(model, preprocess)`` as OpenAI's ``clip.load`` (names resolve as in clip_torch; nothing is
    downloaded). ``device`` is accepted for OpenAI's signature (jax runs on its default device); every call
    is jit-compiled whatever ``jit`` says (``jit=True`` warns). ``kwargs`` go to
    :meth:`CLIPModel.from_pretrained` (``dtype``, ``param_dtype`` ...)."""
    from .models import CLIPModel

    model = CLIPModel.from_pretrained(openai_checkpoint(name, jit, download_root, "clip_flax"), **kwargs)
    return model, _preprocess(model.config.vision_config.image_size)


def _preprocess(image_size: int) -> Callable[[Any], jnp.ndarray]:
    transform = openai_transform(image_size)

    def preprocess(image: Any) -> jnp.ndarray:
        """PIL image -> (3, H, W) float32 jax array (OpenAI's transform)."""
        return jnp.asarray(transform(image))

    return preprocess
