"""OpenAI's ``clip`` API (``available_models``, ``tokenize``, ``load``) built once for every backend.

Each backend's ``openai_api.py`` is a tensor adapter only: which ``return_tensors`` kind its tensors
are, the token-id dtype OpenAI's package would give, and (torch only) how ``device`` changes the
loading arguments. Name resolution, the ``jit`` warning, tokenization and the image transform live here, so
``import clip_torch as clip`` / ``clip_tf`` / ``clip_flax`` behave the same by construction.
"""
from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np

from clip_core.tensors import convert_to_tensors

__all__ = ["TensorAdapter", "openai_api", "openai_checkpoint", "openai_transform"]

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class TensorAdapter:
    """What differs between backends: ``package`` (``clip_torch`` ...; its ``CLIPModel`` is loaded),
    ``return_tensors`` (``"pt"``, ``"tf"``, ``"jax"``), ``ids_dtype`` of ``tokenize``, and
    ``placement(device, kwargs) -> kwargs`` for ``from_pretrained`` (default: ``device`` is accepted for
    OpenAI's signature and the framework places the computation itself)."""

    package: str
    return_tensors: str
    ids_dtype: Any
    placement: Callable[[Any, dict], dict] = None  # type: ignore[assignment]  # None: framework_placement

    def __post_init__(self) -> None:
        if self.placement is None:
            object.__setattr__(self, "placement", framework_placement)


def framework_placement(device: Any, kwargs: dict) -> dict:
    """TF and JAX place the computation themselves: ``device`` is accepted for OpenAI's signature only."""
    return kwargs


def openai_checkpoint(name: PathLike, jit: bool, download_root: Optional[PathLike], backend: str) -> Path:
    """The local file / directory ``<backend>.load(name, jit=...)`` reads (OpenAI names looked up in
    ``download_root``, default ``~/.cache/clip``; never downloaded). ``jit=True`` warns: the returned model
    is the backend's own, not OpenAI's TorchScript archive."""
    from clip_core.default_model import resolve_checkpoint

    if jit:
        warnings.warn(f"{backend}.load(jit=True): returning the {backend} model (there is no TorchScript "
                      f"version); jit is accepted for compatibility", stacklevel=3)
    return resolve_checkpoint(name, download_root)


def openai_transform(image_size: int) -> Callable[[Any], np.ndarray]:
    """OpenAI's preprocessing (resize the short side, center crop, normalise): PIL image -> (3, H, W) float32."""
    from clip_core.image_processing import CLIPImageProcessor

    processor = CLIPImageProcessor(mode="openai", size=image_size, crop_size=image_size)

    def transform(image: Any) -> np.ndarray:
        return np.asarray(processor(image, return_tensors="np")["pixel_values"][0], np.float32)

    return transform


def openai_api(adapter: TensorAdapter) -> tuple[Callable, Callable, Callable]:
    """``(available_models, tokenize, load)`` for one backend, with OpenAI's signatures."""

    def available_models() -> List[str]:
        """The model names ``load`` knows (OpenAI's, as ``clip.available_models()``, plus clip-zoo's)."""
        from clip_core import available_models as names

        return names()

    def tokenize(texts: Union[str, Sequence[str]], context_length: int = 77, truncate: bool = False):
        """OpenAI's ``clip.tokenize``: (N, context_length) token ids with SOT/EOT, zero padded, as this
        framework's tensor (int64 in torch like OpenAI's package, int32 in TF and JAX)."""
        from clip_core import tokenize as np_tokenize

        ids = np_tokenize(texts, context_length=context_length, truncate=truncate).astype(adapter.ids_dtype)
        return convert_to_tensors(ids, adapter.return_tensors)

    def load(name: PathLike, device: Any = None, jit: bool = False, download_root: Optional[str] = None,
             **kwargs: Any):
        """``(model, preprocess)`` as OpenAI's ``clip.load``: an OpenAI model name (its file must be in
        ``download_root``, default ``~/.cache/clip``: nothing is downloaded), ``"default"``, a Hugging Face id
        in the local cache, or a path to any checkpoint ``conversion`` reads. ``preprocess(pil_image)`` gives
        a (3, H, W) float32 tensor. ``jit=True`` warns and returns the eager model. ``kwargs`` go to
        ``CLIPModel.from_pretrained`` (``dtype`` ...). torch: ``device`` defaults to CUDA when available and,
        like OpenAI, the model is fp16 on CUDA and fp32 on CPU; TF and JAX accept ``device`` for the
        signature and place the computation themselves."""
        path = openai_checkpoint(name, jit, download_root, adapter.package)
        model_class = importlib.import_module(adapter.package).CLIPModel
        model = model_class.from_pretrained(path, **adapter.placement(device, dict(kwargs)))
        transform = openai_transform(model.config.vision_config.image_size)

        def preprocess(image: Any):
            """PIL image -> (3, H, W) float32 tensor, like OpenAI's torchvision transform."""
            return convert_to_tensors(transform(image), adapter.return_tensors)

        return model, preprocess

    for fn in (available_models, tokenize, load):
        fn.__module__ = f"{adapter.package}.openai_api"
        fn.__qualname__ = fn.__name__
    return available_models, tokenize, load
