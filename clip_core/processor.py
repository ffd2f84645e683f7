"""``CLIPProcessor``: the tokenizer and the image processor behind one HF-style call.

``processor(text=..., images=..., return_tensors="np", padding=True)`` → mapping with
``input_ids``, ``attention_mask`` (when ``text`` is given) and ``pixel_values`` (when ``images``
is given), as ``transformers.CLIPProcessor``. The tokenizer module is imported lazily.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Union

import numpy as np

from .batch import BatchFeature
from .image_processing import CLIPImageProcessor

__all__ = ["CLIPProcessor"]


def _looks_like_text(value: Any) -> bool:
    """A string or a non-empty list/tuple of strings."""
    if isinstance(value, str):
        return True
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, str) for v in value)


def _looks_like_images(value: Any) -> bool:
    """A PIL image / numpy array, or a non-empty list/tuple of them (paths are ambiguous: not images)."""
    from PIL import Image

    kinds = (Image.Image, np.ndarray)
    if isinstance(value, kinds):
        return True
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, kinds) for v in value)


class CLIPProcessor:
    """Tokenizer + image processor. ``CLIPProcessor()`` uses the bundled vocabulary and mode ``"hf"``.

    Args:
        tokenizer: a :class:`clip_core.tokenizer.CLIPTokenizer` (default: bundled vocabulary).
        image_processor: a :class:`CLIPImageProcessor` (default: ``CLIPImageProcessor("hf")``, the
            preprocessing that ``transformers.CLIPProcessor`` applies).
    """

    attributes = ["image_processor", "tokenizer"]

    def __init__(self, tokenizer: Any = None, image_processor: Optional[CLIPImageProcessor] = None, *,
                 feature_extractor: Optional[CLIPImageProcessor] = None) -> None:
        if image_processor is None:  # transformers' deprecated name for the image processor
            image_processor = feature_extractor
        if isinstance(tokenizer, CLIPImageProcessor):  # transformers' positional order (image_processor, tokenizer)
            tokenizer, image_processor = image_processor, tokenizer
        if image_processor is not None and not isinstance(image_processor, CLIPImageProcessor):
            raise TypeError("image_processor must be a clip_core CLIPImageProcessor, "
                            f"got {type(image_processor).__name__}")
        if tokenizer is None:
            from .tokenizer import CLIPTokenizer

            tokenizer = CLIPTokenizer()
        self.tokenizer = tokenizer
        self.image_processor = image_processor if image_processor is not None else CLIPImageProcessor(mode="hf")

    def __call__(self, text: Any = None, images: Any = None, *, return_tensors: Optional[str] = None,
                 padding: Any = False, truncation: Any = None, max_length: Optional[int] = None,
                 return_attention_mask: bool = True, **image_kwargs: Any) -> BatchFeature:
        """Tokenize ``text`` and preprocess ``images`` (either may be omitted, not both).

        As transformers 4.57, which takes ``images`` first, an images-then-text positional call is
        recognised and swapped. Other keywords (``do_resize``, ``size``, ``crop_size``,
        ``image_mean``, ``data_format`` ...) go to the image processor, as transformers routes them.
        Returns a :class:`BatchFeature` (``inputs.to(device)``, ``inputs.pixel_values`` ...).
        """
        if text is not None and images is not None and _looks_like_images(text) and _looks_like_text(images):
            text, images = images, text
        elif images is None and text is not None and _looks_like_images(text):
            text, images = None, text
        if text is None and images is None:
            raise ValueError("CLIPProcessor needs text, images or both; got neither")
        out = BatchFeature()
        if images is not None:
            out.update(self.image_processor(images, return_tensors=return_tensors, **image_kwargs))
        if text is not None:
            out.update(self.tokenizer(text, padding=padding, truncation=truncation, max_length=max_length,
                                      return_tensors=return_tensors, return_attention_mask=return_attention_mask))
        return out

    def batch_decode(self, *args: Any, **kwargs: Any):
        """Forwarded to the tokenizer's ``batch_decode``."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        """Forwarded to the tokenizer's ``decode``."""
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self):
        return list(dict.fromkeys(self.tokenizer.model_input_names + self.image_processor.model_input_names))

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike], **image_kwargs: Any) -> "CLIPProcessor":
        """Load the tokenizer files and ``preprocessor_config.json`` from one directory."""
        from .tokenizer import CLIPTokenizer

        from .default_model import resolve_checkpoint  # "default", a Hugging Face id in the local cache

        revision, cache_dir = image_kwargs.pop("revision", None), image_kwargs.pop("cache_dir", None)
        directory = os.fspath(resolve_checkpoint(directory, revision=revision, cache_dir=cache_dir))
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"processor directory not found: {directory!r}")
        return cls(CLIPTokenizer.from_pretrained(directory),
                   CLIPImageProcessor.from_pretrained(directory, **image_kwargs))

    def save_pretrained(self, directory: Union[str, os.PathLike]) -> list:
        """Write the tokenizer files and ``preprocessor_config.json`` (loadable by transformers)."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        return [*self.tokenizer.save_pretrained(directory), self.image_processor.save_pretrained(directory)]

    def __repr__(self) -> str:
        return f"CLIPProcessor(tokenizer={self.tokenizer!r}, image_processor={self.image_processor!r})"
