"""OpenAI's ``clip`` API on clip_torch (``import clip_torch as clip``): the torch tensor adapter of
:func:`conversion.openai_api.openai_api`, which builds ``available_models``, ``tokenize`` and ``load``."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from conversion.openai_api import TensorAdapter, openai_api

__all__ = ["load", "tokenize", "available_models"]


def _placement(device: Any, kwargs: dict) -> dict:
    """OpenAI's placement: CUDA when available, and fp16 there (fp32 on the CPU) unless ``dtype`` is given."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    kwargs.setdefault("dtype", torch.float16 if device.type == "cuda" else torch.float32)
    return {**kwargs, "device": device}


available_models, tokenize, load = openai_api(TensorAdapter("clip_torch", "pt", np.int64, _placement))
