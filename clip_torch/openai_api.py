"""OpenAI's ``clip`` API on top of :class:`clip_torch.CLIPModel`: ``load``, ``tokenize``,
``available_models``. ``import clip_torch as clip`` runs scripts written for ``import clip``."""
from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Union

import torch

from conversion.pretrained import openai_checkpoint, openai_transform

__all__ = ["load", "tokenize", "available_models"]


def available_models() -> List[str]:
    """The model names ``load`` knows (OpenAI's, as ``clip.available_models()``, plus clip-zoo's)."""
    from clip_core import available_models as names

    return names()


def tokenize(texts: Union[str, List[str]], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
    """OpenAI's ``clip.tokenize``: (N, context_length) ids, zero padded, as a torch int64 tensor
    (the dtype the installed ``clip`` package returns)."""
    from clip_core import tokenize as np_tokenize

    return torch.from_numpy(np_tokenize(texts, context_length=context_length, truncate=truncate)).long()


def load(name: Union[str, os.PathLike], device: Union[str, torch.device, None] = None, jit: bool = False,
         download_root: Optional[str] = None, **kwargs: Any):
    """``(model, preprocess)`` as OpenAI's ``clip.load``: an OpenAI model name (its file must be in
    ``download_root``, default ``~/.cache/clip``: nothing is downloaded), ``"default"``, a Hugging Face id in
    the local cache, or a path to any checkpoint ``conversion`` reads. ``device`` defaults to CUDA when
    available; like OpenAI the model is fp16 on CUDA and fp32 on CPU. ``jit=True`` warns and returns the
    eager model. ``kwargs`` go to :meth:`CLIPModel.from_pretrained` (``dtype`` ...)."""
    from .models import CLIPModel

    path = openai_checkpoint(name, jit, download_root, "clip_torch")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    kwargs.setdefault("dtype", torch.float16 if device.type == "cuda" else torch.float32)
    model = CLIPModel.from_pretrained(path, device=device, **kwargs)
    return model, _preprocess(model.config.vision_config.image_size)


def _preprocess(image_size: int) -> Callable:
    transform = openai_transform(image_size)

    def preprocess(image) -> torch.Tensor:
        """PIL image -> (3, H, W) float32 tensor, like OpenAI's torchvision transform."""
        return torch.from_numpy(transform(image))

    return preprocess
