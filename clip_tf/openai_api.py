"""OpenAI's ``clip`` API on clip_tf: ``load``, ``tokenize``, ``available_models``."""
from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Sequence, Union

import tensorflow as tf

from conversion.pretrained import openai_checkpoint, openai_transform

__all__ = ["load", "tokenize", "available_models"]


def available_models() -> List[str]:
    """The model names ``load`` knows (OpenAI's, as ``clip.available_models()``, plus clip-zoo's)."""
    from clip_core import available_models as names

    return names()


def tokenize(texts: Union[str, Sequence[str]], context_length: int = 77, truncate: bool = False) -> tf.Tensor:
    """``clip.tokenize``: (N, context_length) int32 token ids, zero-padded, SOT/EOT included."""
    from clip_core import tokenize as np_tokenize

    return tf.constant(np_tokenize(texts, context_length=context_length, truncate=truncate), tf.int32)


def load(name: Union[str, os.PathLike], device: Any = None, jit: bool = False, download_root: Optional[str] = None,
         **kwargs: Any):
    """``clip.load``: ``(CLIPModel, preprocess)``; ``preprocess(pil_image)`` -> (3, H, W) float32 tensor.

    Names resolve as in clip_torch (nothing is downloaded). ``device`` is accepted for OpenAI's signature
    (TensorFlow places the computation itself); ``jit=True`` warns. ``kwargs`` go to
    :meth:`CLIPModel.from_pretrained` (``dtype``, ``jit_compile``, ``data_format`` ...)."""
    from .models import CLIPModel

    model = CLIPModel.from_pretrained(openai_checkpoint(name, jit, download_root, "clip_tf"), **kwargs)
    return model, _preprocess(model.config.vision_config.image_size)


def _preprocess(image_size: int) -> Callable:
    transform = openai_transform(image_size)

    def preprocess(image) -> tf.Tensor:
        """PIL image -> (3, H, W) float32 tensor (OpenAI's transform)."""
        return tf.constant(transform(image))

    return preprocess
