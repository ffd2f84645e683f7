"""OpenAI's ``clip`` API on clip_tf: ``load``, ``tokenize``, ``available_models``."""
from __future__ import annotations

import os
from typing import Callable, Sequence, Union

import numpy as np
import tensorflow as tf

__all__ = ["load", "tokenize", "available_models"]


def available_models() -> list[str]:
    """Model names clip-zoo knows (a local checkpoint is still needed: nothing is downloaded)."""
    from clip_core import available_models as names

    return names()


def tokenize(texts: Union[str, Sequence[str]], context_length: int = 77, truncate: bool = False) -> tf.Tensor:
    """``clip.tokenize``: (N, context_length) int32 token ids, zero-padded, SOT/EOT included."""
    from clip_core import tokenize as core_tokenize

    return tf.constant(np.asarray(core_tokenize(texts, context_length=context_length, truncate=truncate)), tf.int32)


def load(name_or_path: Union[str, os.PathLike], jit_compile: Union[bool, str] = "auto", dtype=None, **kwargs):
    """``clip.load``: ``(CLIPModel, preprocess)``; ``preprocess(pil_image)`` -> (3, H, W) float32 tensor."""
    from clip_core import CLIPImageProcessor

    from .models import CLIPModel

    from clip_core.default_model import resolve_checkpoint

    path = resolve_checkpoint(name_or_path, kwargs.pop("download_root", None))
    model = CLIPModel.from_pretrained(path, jit_compile=jit_compile, dtype=dtype, **kwargs)
    size = model.config.vision_config.image_size
    processor = CLIPImageProcessor(mode="openai", size=size, crop_size=size)
    return model, _preprocess_fn(processor)


def _preprocess_fn(processor) -> Callable:
    def preprocess(image):
        out = processor(image)
        array = out["pixel_values"] if isinstance(out, dict) else out
        array = np.asarray(array, np.float32)
        return tf.constant(array[0] if array.ndim == 4 else array)

    return preprocess
