"""OpenAI's ``clip`` API on top of :class:`clip_torch.CLIPModel`: ``load``, ``tokenize``,
``available_models``. ``import clip_torch as clip`` runs scripts written for ``import clip``."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, List, Optional, Union

import torch

__all__ = ["load", "tokenize", "available_models"]

# OpenAI's download file names, looked up (never downloaded) in ``download_root``.


def available_models() -> List[str]:
    """The names of the OpenAI CLIP architectures (as ``clip.available_models()``)."""
    from clip_core import available_models as names

    return names()


def tokenize(texts: Union[str, List[str]], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
    """OpenAI's ``clip.tokenize``: (N, context_length) ids, zero padded, as a torch int64 tensor
    (the dtype the installed ``clip`` package returns)."""
    from clip_core import tokenize as np_tokenize

    return torch.from_numpy(np_tokenize(texts, context_length=context_length, truncate=truncate)).long()


def _resolve(name: str, download_root: Optional[str]) -> Path:
    from clip_core.default_model import resolve_checkpoint

    return resolve_checkpoint(name, download_root)


def _preprocess(image_size: int) -> Callable:
    from clip_core import CLIPImageProcessor

    proc = CLIPImageProcessor(mode="openai", size=image_size, crop_size=image_size)

    def preprocess(image) -> torch.Tensor:
        """PIL image -> (3, H, W) float32 tensor, like OpenAI's torchvision transform."""
        return torch.from_numpy(proc(image, return_tensors="np")["pixel_values"][0])

    return preprocess


def load(name: str, device: Union[str, torch.device] = "cuda" if torch.cuda.is_available() else "cpu",
         jit: bool = False, download_root: Optional[str] = None):
    """``(model, preprocess)`` from an OpenAI model name (file must be local), or a path to any
    checkpoint format ``conversion.load_checkpoint`` reads (OpenAI TorchScript / state dict, HF,
    open_clip, canonical). ``jit=True`` is accepted and ignored (the eager model is returned);
    like OpenAI, the model is in fp16 on CUDA and fp32 on CPU."""
    from .models import CLIPModel

    if jit:
        warnings.warn("clip_torch.load(jit=True): returning the eager model (no TorchScript)", stacklevel=2)
    path = _resolve(name, download_root)
    device = torch.device(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = CLIPModel.from_pretrained(path, dtype=dtype, device=device)
    return model, _preprocess(model.config.vision_config.image_size)
