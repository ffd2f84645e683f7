"""SigLIP's image processor (resize to a square, no crop, mean = std = 0.5) and processor.

``SiglipImageProcessor`` is :class:`clip_core.image_processing.CLIPImageProcessor` in mode ``"hf"``
with transformers' ``SiglipImageProcessor`` defaults: ``size={"height": 224, "width": 224}``, PIL
resample from the config (bicubic when unset, as transformers), no centre crop, rescale 1/255,
normalize with 0.5. The same PIL calls and float arithmetic as transformers make it exact (docs/preprocessing.md).

Difference: transformers' ``SiglipImageProcessor`` leaves ``do_convert_rgb`` unset and then fails
on (or keeps the channels of) grayscale / RGBA images; here they are converted to RGB unless the
config sets ``do_convert_rgb: false``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

from .image_processing import CLIPImageProcessor
from .processor import CLIPProcessor

__all__ = ["SiglipImageProcessor", "SiglipProcessor", "SIGLIP_MEAN", "SIGLIP_STD"]

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
_BICUBIC = 3


class SiglipImageProcessor(CLIPImageProcessor):
    """transformers' ``SiglipImageProcessor``: square resize, rescale, normalize; ``(N, 3, H, W)`` float32."""

    def __init__(self, size: Any = None, *, resample: int = _BICUBIC, do_center_crop: bool = False,
                 image_mean: Any = SIGLIP_MEAN, image_std: Any = SIGLIP_STD, **kwargs: Any) -> None:
        size = {"height": 224, "width": 224} if size is None else size
        if isinstance(size, int) and not isinstance(size, bool):
            size = {"height": size, "width": size}  # transformers' SigLIP sizes are always square
        kwargs.pop("mode", None)
        kwargs.setdefault("crop_size", size if isinstance(size, dict) and "height" in size else None)
        super().__init__("hf", size, resample=resample, do_center_crop=do_center_crop, image_mean=image_mean,
                         image_std=image_std, **kwargs)

    def __repr__(self) -> str:
        return f"SiglipImageProcessor(size={self.size}, resample={self.resample})"

    def to_dict(self) -> Dict[str, Any]:
        """The ``preprocessor_config.json`` transformers' ``SiglipImageProcessor`` reads."""
        return {"do_convert_rgb": self.do_convert_rgb, "do_normalize": self.do_normalize,
                "do_rescale": self.do_rescale, "do_resize": self.do_resize, "image_mean": list(self.image_mean),
                "image_processor_type": "SiglipImageProcessor", "image_std": list(self.image_std),
                "processor_class": "SiglipProcessor", "resample": self.resample,
                "rescale_factor": self.rescale_factor, "size": dict(self.size)}

    @classmethod
    def from_dict(cls, config: Dict[str, Any], **overrides: Any) -> "SiglipImageProcessor":
        """Build from a ``preprocessor_config.json`` dict (SigLIP or fixed-resolution SigLIP 2)."""
        keys = ("size", "do_resize", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                "image_std")
        kwargs: Dict[str, Any] = {k: config[k] for k in keys if k in config}
        if config.get("do_convert_rgb") is not None:
            kwargs["do_convert_rgb"] = config["do_convert_rgb"]
        kwargs.update(overrides)
        return cls(**kwargs)


class SiglipProcessor(CLIPProcessor):
    """SigLIP's tokenizer (SentencePiece or Gemma) and :class:`SiglipImageProcessor` behind one call.

    ``text_defaults`` are the tokenizer arguments used when a call does not give them: none for
    SigLIP (as ``transformers.SiglipProcessor``), ``padding="max_length", truncation=True,
    max_length=64`` for SigLIP 2's Gemma tokenizer (as ``transformers.Siglip2Processor``).
    """

    def __init__(self, tokenizer: Any, image_processor: Optional[SiglipImageProcessor] = None,
                 text_defaults: Optional[Dict[str, Any]] = None) -> None:
        if tokenizer is None:
            raise TypeError("SiglipProcessor needs a tokenizer; use SiglipProcessor.from_pretrained(directory)")
        super().__init__(tokenizer, image_processor if image_processor is not None else SiglipImageProcessor())
        if text_defaults is None:
            from .siglip_tokenizer import GemmaTokenizer

            gemma = isinstance(tokenizer, GemmaTokenizer)
            text_defaults = dict(padding="max_length", truncation=True, max_length=64) if gemma else {}
        self.text_defaults = dict(text_defaults)

    def __call__(self, text: Any = None, images: Any = None, **kwargs: Any):
        """Tokenize ``text`` and preprocess ``images`` like transformers' SigLIP processors."""
        for key, value in self.text_defaults.items():
            if kwargs.get(key) is None:
                kwargs[key] = value
        return super().__call__(text, images, **kwargs)

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike], **image_kwargs: Any) -> "SiglipProcessor":
        """Load the tokenizer (picked by its files) and ``preprocessor_config.json`` of ``directory``."""
        from .siglip_tokenizer import load_tokenizer

        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"processor directory not found: {directory!r}")
        return cls(load_tokenizer(directory), SiglipImageProcessor.from_pretrained(directory, **image_kwargs))

    def __repr__(self) -> str:
        return f"SiglipProcessor(tokenizer={self.tokenizer!r}, image_processor={self.image_processor!r})"
