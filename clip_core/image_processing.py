"""CLIP image preprocessing that reproduces OpenAI's and Hugging Face's pipelines exactly.

Two modes, each reproducing its reference to <=1e-6 max abs (docs/preprocessing.md):

- ``"openai"``: OpenAI ``clip.clip._transform(n_px)`` = torchvision ``Resize(n_px, BICUBIC)`` on the
  PIL image in its own mode, ``CenterCrop`` (offset ``int(round((h - th) / 2))``, zero padding when
  the image is smaller), ``convert("RGB")`` *after* resize and crop, ``ToTensor``, ``Normalize``.
- ``"hf"``: transformers' slow ``CLIPImageProcessor`` = ``convert("RGB")`` *first*, PIL resize of the
  shortest edge, centre crop with offset ``(h - th) // 2``, ``rescale`` (float64 multiply, cast to
  float32), ``normalize`` in float32. File paths are opened like ``transformers.image_utils.load_image``
  (EXIF orientation applied, then RGB).

Both modes call exactly the PIL operations of their reference; everything after the crop is an
elementwise function of the uint8 pixel value, so it is evaluated once per value with the
reference's arithmetic into a 256-entry table per channel and applied by table lookup. Results are
bit-identical to the references and the batch work runs in a thread pool (PIL releases the GIL
while decoding and resampling; ``np.take`` releases it too).
"""
from __future__ import annotations

import copy
import json
import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .batch import BatchFeature
from .tensors import convert_to_tensors

__all__ = ["CLIPImageProcessor", "CLIPImageProcessorFast", "CLIPFeatureExtractor", "BatchFeature",
           "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "ImageTooLargeError", "convert_to_tensors"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_NAME = "preprocessor_config.json"
MODES = ("openai", "hf")
ImageLike = Union[Image.Image, np.ndarray, str, os.PathLike]
# Settings transformers lets every preprocess() call override.
_SETTINGS = ("size", "crop_size", "do_resize", "resample", "do_center_crop", "do_rescale", "rescale_factor",
             "do_normalize", "image_mean", "image_std", "do_convert_rgb")
# Keys of transformers' preprocessor_config.json / constructor that carry no preprocessing setting here.
_IGNORED_INIT_KEYS = ("image_processor_type", "feature_extractor_type", "processor_class", "use_square_size",
                      "_processor_class", "input_data_format", "data_format", "return_tensors", "device",
                      "disable_grouping", "default_to_square", "pad_size", "do_pad")
_CHANNEL_FORMATS = ("channels_first", "channels_last")


class ImageTooLargeError(ValueError):
    """An image exceeds ``PIL.Image.MAX_IMAGE_PIXELS`` (PIL's decompression-bomb limit)."""


# ----------------------------------------------------------------------------------------------
# Sizes and crops
# ----------------------------------------------------------------------------------------------
def _size_dict(size: Any, name: str, default_to_square: bool) -> Dict[str, int]:
    """Normalise an int / (h, w) / HF size dict into ``{"shortest_edge": n}`` or ``{"height", "width"}``."""
    if isinstance(size, dict):
        out = {k: int(v) for k, v in size.items() if k in ("shortest_edge", "height", "width")}
        if "shortest_edge" in out and not default_to_square:
            out = {"shortest_edge": out["shortest_edge"]}
        elif "height" in out and "width" in out:
            out = {"height": out["height"], "width": out["width"]}
        elif "shortest_edge" in out:  # a square crop given as shortest_edge
            out = {"height": out["shortest_edge"], "width": out["shortest_edge"]}
        else:
            raise ValueError(f"{name} must hold 'shortest_edge' or 'height' and 'width'; got {size!r}")
    elif isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        n = int(size)
        out = {"height": n, "width": n} if default_to_square else {"shortest_edge": n}
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        out = {"height": int(size[0]), "width": int(size[1])}
    else:
        raise ValueError(f"{name} must be an int, a (height, width) pair or a size dict; got {size!r}")
    if any(v <= 0 for v in out.values()):
        raise ValueError(f"{name} must be positive; got {size!r}")
    return out


def _default_crop(size: Dict[str, int]) -> Dict[str, int]:
    n = size.get("shortest_edge", min(size.get("height", 224), size.get("width", 224)))
    return {"height": n, "width": n}


def _channel_values(values: Any) -> List[float]:
    """``image_mean`` / ``image_std``: one number for every channel or one per channel (as transformers)."""
    if isinstance(values, (int, float, np.number)) and not isinstance(values, bool):
        return [float(values)] * 3
    return [float(x) for x in values]


def _channel_format(value: Any, name: str, allow_none: bool) -> Optional[str]:
    """``"channels_first"`` / ``"channels_last"`` from a string or transformers' ``ChannelDimension``."""
    value = getattr(value, "value", value)
    if value is None and allow_none:
        return None
    if value not in _CHANNEL_FORMATS:
        raise ValueError(f"{name} must be one of {list(_CHANNEL_FORMATS)}; got {value!r}")
    return value


def _ignore_kwargs(kwargs: Dict[str, Any], known: Sequence[str]) -> None:
    """transformers warns about (and ignores) keyword arguments it does not know; so do we."""
    unknown = sorted(k for k in kwargs if k not in known)
    if unknown:
        warnings.warn(f"CLIPImageProcessor: unused or unrecognized kwargs: {', '.join(unknown)}", stacklevel=3)


def resized_hw(h: int, w: int, size: Dict[str, int]) -> Tuple[int, int]:
    """Output (height, width) of the resize; shortest edge as torchvision and transformers compute it."""
    if "shortest_edge" not in size:
        return size["height"], size["width"]
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def _openai_crop(img: Image.Image, ch: int, cw: int) -> Image.Image:
    """torchvision ``CenterCrop`` on a PIL image: zero padding first if needed, then round() offsets."""
    w, h = img.size
    if cw > w or ch > h:
        left = (cw - w) // 2 if cw > w else 0
        top = (ch - h) // 2 if ch > h else 0
        right = (cw - w + 1) // 2 if cw > w else 0
        bottom = (ch - h + 1) // 2 if ch > h else 0
        img = _pad_pil(img, left, top, right, bottom)
        w, h = img.size
        if (w, h) == (cw, ch):
            return img
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return img.crop((left, top, left + cw, top + ch))


def _pad_pil(img: Image.Image, left: int, top: int, right: int, bottom: int) -> Image.Image:
    """Zero padding like torchvision's ``pad(fill=0)`` (``ImageOps.expand``, palette kept for "P")."""
    palette = img.getpalette() if img.mode == "P" else None
    out = ImageOps.expand(img, border=(left, top, right, bottom), fill=0)
    if palette is not None:
        out.putpalette(palette)
    return out


def _hf_crop(arr: np.ndarray, ch: int, cw: int) -> np.ndarray:
    """transformers ``center_crop`` on an (H, W, C) array: floor offsets, ceil-centred zero padding."""
    h, w = arr.shape[:2]
    top, left = (h - ch) // 2, (w - cw) // 2
    if top >= 0 and left >= 0 and top + ch <= h and left + cw <= w:
        return arr[top:top + ch, left:left + cw]
    nh, nw = max(ch, h), max(cw, w)
    top_pad, left_pad = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
    padded = np.zeros((nh, nw) + arr.shape[2:], dtype=arr.dtype)
    padded[top_pad:top_pad + h, left_pad:left_pad + w] = arr
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top):min(nh, top + ch), max(0, left):min(nw, left + cw)]


# ----------------------------------------------------------------------------------------------
# Look-up tables: the reference arithmetic evaluated once for every uint8 value
# ----------------------------------------------------------------------------------------------
def _openai_lut(mean: Sequence[float], std: Sequence[float], do_normalize: bool) -> np.ndarray:
    """(3, 256) float32: torchvision ``ToTensor`` (float32 / 255) then ``Normalize`` in float32."""
    v = np.arange(256, dtype=np.float32) / np.float32(255)  # (256,)
    if not do_normalize:
        return np.stack([v, v, v])
    m, s = np.asarray(mean, np.float32)[:, None], np.asarray(std, np.float32)[:, None]
    return ((v[None, :] - m) / s).astype(np.float32)


def _hf_lut(mean: Sequence[float], std: Sequence[float], do_rescale: bool, factor: float,
            do_normalize: bool, prescaled: bool) -> np.ndarray:
    """(3, 256) float32: transformers ``rescale`` (float64 multiply → float32) then ``normalize``.

    ``prescaled``: the image was a float array in [0, 1] that transformers' ``resize`` scaled to
    uint8 and back (``rescale(x, 1/255)``), so the processor's own rescale is applied a second time.
    """
    v = np.arange(256, dtype=np.uint8)
    x = (v.astype(np.float64) * (1 / 255)).astype(np.float32) if prescaled else v
    if do_rescale:
        x = (x.astype(np.float64) * factor).astype(np.float32)
    x = np.asarray(x, dtype=np.float32) if not np.issubdtype(x.dtype, np.floating) else x
    if not do_normalize:
        return np.stack([x, x, x]).astype(np.float32)
    m, s = np.asarray(mean, x.dtype)[:, None], np.asarray(std, x.dtype)[:, None]
    return ((x[None, :] - m) / s).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Input loading and validation
# ----------------------------------------------------------------------------------------------
def _describe(index: int, image: Any) -> str:
    return f"image {index} ({image!s})" if isinstance(image, (str, os.PathLike)) else f"image {index}"


def _check_pixels(w: int, h: int, what: str) -> None:
    """Reject zero-size images and images above PIL's decompression-bomb limit."""
    if w <= 0 or h <= 0:
        raise ValueError(f"{what} has zero size ({w}x{h}); every image needs at least 1x1 pixels")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        raise ImageTooLargeError(
            f"{what} has {w}x{h} = {w * h} pixels, more than PIL.Image.MAX_IMAGE_PIXELS = {limit} "
            "(decompression-bomb limit); raise that limit only for files you trust")


def _validate(index: int, image: Any) -> None:
    """Type and size checks done up front, in the calling thread."""
    if image is None:
        raise TypeError(f"image {index} is None; expected a PIL image, a numpy array or a file path")
    if isinstance(image, Image.Image):
        _check_pixels(*image.size, what=f"image {index}")
    elif isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(f"image {index}: numpy images must be (H, W) or (H, W, C) with C in 1, 3, 4; "
                             f"got shape {image.shape}")
        if not (image.dtype == np.uint8 or np.issubdtype(image.dtype, np.floating)):
            raise TypeError(f"image {index}: numpy images must be uint8 or floating point; got {image.dtype}")
        _check_pixels(image.shape[1], image.shape[0], what=f"image {index}")
    elif not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"image {index} has unsupported type {type(image).__name__}; expected a PIL image, "
                        "a numpy (H, W[, C]) array or a file path (str / pathlib.Path)")


def open_image(path: Union[str, os.PathLike], exif_transpose: bool = False, draft: Optional[Tuple[int, int]] = None
               ) -> Image.Image:
    """Open and decode an image file, with clear errors naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path!r}")
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image file {path!r}: {exc}") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image file {path!r}: {exc}") from exc
    with img:  # closes the file once decoded (multi-frame formats keep it open otherwise)
        _check_pixels(*img.size, what=f"image file {path!r}")
        if draft is not None and img.format == "JPEG":
            img.draft(None, draft)  # DCT-domain downscale; keeps the mode
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"cannot decode image file {path!r}: {exc}") from exc
    if exif_transpose:
        ImageOps.exif_transpose(img, in_place=True)  # same pixels as transformers' load_image, no copy
    return img


def _float_to_uint8_openai(arr: np.ndarray, index: int) -> np.ndarray:
    """torchvision ``ToPILImage`` on a float tensor: ``(x * 255).byte()`` in float32 (truncating)."""
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"image {index}: float images must hold values in [0, 1] in mode 'openai'")
    return (arr.astype(np.float32) * np.float32(255)).astype(np.uint8)


def _float_to_uint8_hf(arr: np.ndarray, index: int) -> Tuple[np.ndarray, bool]:
    """transformers' float → PIL rule: integer-valued [0, 255] kept, [0, 1] scaled by 255 (flag True)."""
    if not np.isfinite(arr).all():
        raise ValueError(f"image {index}: float image contains NaN or infinity")
    if np.allclose(arr, arr.astype(int)):
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError(f"image {index}: integer-valued float image outside [0, 255]")
        return arr.astype(np.uint8), False
    if arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"image {index}: float image must be in [0, 1] or integer-valued in [0, 255]; "
                         f"got [{arr.min()}, {arr.max()}]")
    return (arr.astype(np.float64) * 255).astype(np.float32).astype(np.uint8), True


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    """uint8 (H, W[, C]) → PIL image in mode L / RGB / RGBA."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(arr))


# ----------------------------------------------------------------------------------------------
# The processor
# ----------------------------------------------------------------------------------------------
class CLIPImageProcessor:
    """CLIP image preprocessing: resize shortest edge, centre crop, RGB, rescale, normalize.

    ``proc(images, return_tensors="np")`` → :class:`BatchFeature` with ``pixel_values``
    float32 ``(N, 3, crop_h, crop_w)``. ``images``: a PIL image (any mode), a numpy ``(H, W)`` /
    ``(H, W, C)`` uint8 or float array, a file path, a list of these, or an ``(N, H, W, C)`` array.

    Args:
        mode: ``"hf"`` (default: transformers' ``CLIPImageProcessor``) or ``"openai"`` (OpenAI's
            torchvision ``_transform``, what ``clip.load`` returns); see docs/preprocessing.md.
        size: shortest edge (int), ``{"shortest_edge": n}`` or ``{"height": h, "width": w}``.
        crop_size: int, ``(h, w)`` or ``{"height": h, "width": w}``; defaults to ``size``.
        exif_transpose: rotate images loaded from *file paths* by their EXIF orientation. Default:
            as the reference (True in mode "hf", like ``transformers.image_utils.load_image``;
            False in mode "openai"). In-memory PIL images are never rotated.
        num_threads: worker threads for a batch (default ``min(8, os.cpu_count())``).
        fast: decode JPEG files at a reduced DCT scale (``Image.draft``) — faster, NOT bit-exact.
        Other keywords mirror transformers (``do_resize``, ``resample``, ``do_center_crop``,
        ``do_rescale``, ``rescale_factor``, ``do_normalize``, ``image_mean``, ``image_std``,
        ``do_convert_rgb``); each can also be overridden per call of :meth:`preprocess`.
        ``do_convert_rgb=False`` processes RGB images as usual and refuses others (as transformers
        fails on them).
    """

    model_input_names = ["pixel_values"]

    def __init__(self, mode: str = "hf", size: Any = 224, crop_size: Any = None, *,
                 do_resize: bool = True, resample: int = 3, do_center_crop: bool = True,
                 do_rescale: bool = True, rescale_factor: float = 1 / 255, do_normalize: bool = True,
                 image_mean: Any = OPENAI_CLIP_MEAN, image_std: Any = OPENAI_CLIP_STD,
                 do_convert_rgb: bool = True, exif_transpose: Optional[bool] = None,
                 num_threads: Optional[int] = None, fast: bool = False, **kwargs: Any) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        _ignore_kwargs(kwargs, _IGNORED_INIT_KEYS)
        self.mode = mode
        size = _size_dict(size, "size", default_to_square=False)
        self._configure(size=size, crop_size=crop_size if crop_size is not None else _default_crop(size),
                        do_resize=do_resize, resample=resample, do_center_crop=do_center_crop,
                        do_rescale=do_rescale, rescale_factor=rescale_factor, do_normalize=do_normalize,
                        image_mean=image_mean, image_std=image_std, do_convert_rgb=do_convert_rgb)
        self.exif_transpose = (mode == "hf") if exif_transpose is None else bool(exif_transpose)
        self.num_threads = max(1, num_threads if num_threads is not None else min(8, os.cpu_count() or 1))
        self.fast = bool(fast)
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pool_lock = threading.Lock()

    def _configure(self, *, size: Any, crop_size: Any, do_resize: bool, resample: Any, do_center_crop: bool,
                   do_rescale: bool, rescale_factor: float, do_normalize: bool, image_mean: Any, image_std: Any,
                   do_convert_rgb: bool) -> None:
        """Validate and set the preprocessing settings (constructor and per-call overrides)."""
        if self.mode == "openai" and (not do_rescale or not math.isclose(rescale_factor, 1 / 255)):
            raise ValueError("mode 'openai' always rescales by 1/255 (torchvision ToTensor)")
        image_mean, image_std = _channel_values(image_mean), _channel_values(image_std)
        if len(image_mean) != 3 or len(image_std) != 3 or min(image_std) <= 0:
            raise ValueError(f"image_mean / image_std need 3 values (or one for all channels), std > 0; "
                             f"got {image_mean}, {image_std}")
        self.size = _size_dict(size, "size", default_to_square=False)
        self.crop_size = _size_dict(crop_size, "crop_size", default_to_square=True)
        self.do_resize, self.resample, self.do_center_crop = bool(do_resize), int(resample), bool(do_center_crop)
        self.do_rescale, self.rescale_factor = bool(do_rescale), float(rescale_factor)
        self.do_normalize, self.image_mean, self.image_std = bool(do_normalize), image_mean, image_std
        self.do_convert_rgb = bool(do_convert_rgb)
        self._luts: Dict[bool, np.ndarray] = {}

    def _with(self, overrides: Dict[str, Any]) -> "CLIPImageProcessor":
        """A copy with per-call ``overrides`` applied (validated), sharing this processor's thread pool."""
        settings = {k: getattr(self, k) for k in _SETTINGS}
        settings.update(overrides)
        new = copy.copy(self)  # __getstate__: no pool, no lock
        new._configure(**settings)
        new._executor = self._executor  # type: ignore[method-assign]
        return new

    def __repr__(self) -> str:
        return f"CLIPImageProcessor(mode={self.mode!r}, size={self.size}, crop_size={self.crop_size})"

    # -- per-image work -------------------------------------------------------------------------
    def _lut(self, prescaled: bool) -> np.ndarray:
        if prescaled not in self._luts:
            if self.mode == "openai":
                lut = _openai_lut(self.image_mean, self.image_std, self.do_normalize)
            else:
                lut = _hf_lut(self.image_mean, self.image_std, self.do_rescale, self.rescale_factor,
                              self.do_normalize, prescaled)
            self._luts[prescaled] = np.ascontiguousarray(lut)
        return self._luts[prescaled]

    def _to_pil(self, index: int, image: ImageLike) -> Tuple[Image.Image, bool]:
        """Load ``image`` as a PIL image; flag = float [0, 1] input in mode 'hf' (double rescale)."""
        if isinstance(image, Image.Image):
            return image, False
        if isinstance(image, np.ndarray):
            if image.dtype == np.uint8:
                return _array_to_pil(image), False
            if self.mode == "openai":
                return _array_to_pil(_float_to_uint8_openai(image, index)), False
            arr, prescaled = _float_to_uint8_hf(image, index)
            return _array_to_pil(arr), prescaled
        draft = None
        if self.fast:  # decode JPEGs at the smallest DCT scale that still covers the resize target
            n = self.size.get("shortest_edge")
            draft = (n, n) if n is not None else (self.size["width"], self.size["height"])
        return open_image(image, exif_transpose=self.exif_transpose, draft=draft), False

    def _resize(self, img: Image.Image) -> Image.Image:
        if not self.do_resize:
            return img
        h, w = resized_hw(img.height, img.width, self.size)
        if (h, w) == (img.height, img.width):
            return img
        if Image.MAX_IMAGE_PIXELS is not None and h * w > Image.MAX_IMAGE_PIXELS:  # a 1x100000 strip, size=1e5
            raise ImageTooLargeError(
                f"resizing a {img.width}x{img.height} image to {w}x{h} (size={self.size}) would make {w * h} "
                f"pixels, more than PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}; check the image's "
                "aspect ratio and the processor's size")
        return img.resize((w, h), resample=self.resample)

    def _rgb(self, index: int, img: Image.Image) -> Image.Image:
        if img.mode == "RGB":
            return img
        if not self.do_convert_rgb:
            raise ValueError(f"image {index}: do_convert_rgb=False needs RGB images, got PIL mode {img.mode!r} "
                             "(transformers' CLIPImageProcessor cannot process it either); "
                             "use do_convert_rgb=True")
        return img.convert("RGB")

    def _pixels(self, index: int, image: ImageLike) -> Tuple[np.ndarray, bool]:
        """One image → cropped uint8 (H, W, 3) and the double-rescale flag."""
        img, prescaled = self._to_pil(index, image)
        if self.mode == "hf":
            arr = np.asarray(self._resize(self._rgb(index, img)))  # (H, W, 3) uint8
            if self.do_center_crop:
                arr = _hf_crop(arr, self.crop_size["height"], self.crop_size["width"])
            return arr, prescaled
        if not self.do_convert_rgb:
            self._rgb(index, img)  # refuse non-RGB images before the work
        img = self._resize(img)
        if self.do_center_crop:
            img = _openai_crop(img, self.crop_size["height"], self.crop_size["width"])
        return np.asarray(self._rgb(index, img)), False  # (H, W, 3) uint8

    def _process_into(self, index: int, image: ImageLike, out: Optional[np.ndarray]) -> np.ndarray:
        """Process one image into ``out`` (3, H, W) float32 (or a new array) by table lookup."""
        arr, prescaled = self._pixels(index, image)
        lut = self._lut(prescaled)
        if out is None:
            out = np.empty((3,) + arr.shape[:2], dtype=np.float32)
        for c in range(3):  # uint8 indices never leave the 256-entry table: "clip" skips the bounds
            np.take(lut[c], arr[:, :, c], out=out[c], mode="clip")  # check ("raise") and is ~2x faster
        return out

    # -- batch ------------------------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="clip-preprocess")
            return self._pool

    def _run(self, images: List[ImageLike], outs: List[Optional[np.ndarray]]) -> List[np.ndarray]:
        if self.num_threads == 1 or len(images) == 1:
            return [self._process_into(i, im, o) for i, (im, o) in enumerate(zip(images, outs))]
        pool = self._executor()
        futures = [pool.submit(self._process_into, i, im, o) for i, (im, o) in enumerate(zip(images, outs))]
        return [f.result() for f in futures]

    def preprocess(self, images: Any, do_resize: Optional[bool] = None, size: Any = None, resample: Any = None,
                   do_center_crop: Optional[bool] = None, crop_size: Any = None, do_rescale: Optional[bool] = None,
                   rescale_factor: Optional[float] = None, do_normalize: Optional[bool] = None,
                   image_mean: Any = None, image_std: Any = None, do_convert_rgb: Optional[bool] = None,
                   return_tensors: Any = "np", data_format: Any = "channels_first",
                   input_data_format: Any = None, **kwargs: Any) -> BatchFeature:
        """Preprocess one image or a batch; see the class docstring.

        Every setting can be overridden for this call, as in transformers' ``preprocess``
        (``None`` keeps the processor's value). ``data_format="channels_last"`` returns
        ``(N, H, W, 3)``; ``input_data_format`` tells how numpy / tensor images are laid out
        (default: channels-last, or channels-first when only that reading fits the shape).
        ``return_tensors``: ``"np"`` (default), ``"pt"``, ``"tf"``, ``"jax"`` or ``None``.
        """
        _ignore_kwargs(kwargs, ())
        overrides = {k: v for k, v in (("do_resize", do_resize), ("size", size), ("resample", resample),
                                       ("do_center_crop", do_center_crop), ("crop_size", crop_size),
                                       ("do_rescale", do_rescale), ("rescale_factor", rescale_factor),
                                       ("do_normalize", do_normalize), ("image_mean", image_mean),
                                       ("image_std", image_std), ("do_convert_rgb", do_convert_rgb))
                     if v is not None}
        proc = self._with(overrides) if overrides else self
        data_format = _channel_format(data_format, "data_format", allow_none=False)
        input_data_format = _channel_format(input_data_format, "input_data_format", allow_none=True)
        batch = [_to_channels_last(image, input_data_format) for image in _as_list(images)]
        for i, image in enumerate(batch):
            _validate(i, image)
        out = proc._preprocess(batch, return_tensors is not None)
        # transformers returns the uint8 pixels when it neither rescales nor normalizes
        if (proc.mode == "hf" and not proc.do_rescale and not proc.do_normalize
                and not any(isinstance(im, np.ndarray) and im.dtype != np.uint8 for im in batch)):
            out = out.astype(np.uint8) if isinstance(out, np.ndarray) else [a.astype(np.uint8) for a in out]
        if data_format == "channels_last":
            out = out.transpose(0, 2, 3, 1) if isinstance(out, np.ndarray) else [a.transpose(1, 2, 0) for a in out]
        return BatchFeature(pixel_values=out).convert_to_tensors(return_tensors)

    def _preprocess(self, batch: List[ImageLike], tensors: bool) -> Any:
        """Validated images → float32 (N, 3, H, W) (or a list of (3, H, W) of different sizes)."""
        if self.do_center_crop:
            pixel_values = np.empty((len(batch), 3, self.crop_size["height"], self.crop_size["width"]),
                                    dtype=np.float32)  # (N, 3, H, W)
            self._run(batch, list(pixel_values))
            value: Any = pixel_values
        else:
            arrays = self._run(batch, [None] * len(batch))
            same = len({a.shape for a in arrays}) == 1
            value = np.stack(arrays) if same else arrays
            if not same and tensors:
                raise ValueError("images have different sizes after resizing (do_center_crop=False); "
                                 "use return_tensors=None to get a list")
        return value

    __call__ = preprocess

    # -- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """The Hugging Face ``preprocessor_config.json`` content (plus ``clip_zoo_mode``)."""
        return {
            "crop_size": dict(self.crop_size), "do_center_crop": self.do_center_crop,
            "do_convert_rgb": self.do_convert_rgb, "do_normalize": self.do_normalize,
            "do_rescale": self.do_rescale, "do_resize": self.do_resize, "image_mean": list(self.image_mean),
            "image_processor_type": "CLIPImageProcessor", "image_std": list(self.image_std),
            "resample": self.resample, "rescale_factor": self.rescale_factor, "size": dict(self.size),
            "clip_zoo_mode": self.mode,
        }

    @classmethod
    def from_dict(cls, config: Dict[str, Any], **overrides: Any) -> "CLIPImageProcessor":
        """Build from a ``preprocessor_config.json`` dict; mode 'hf' unless it says otherwise."""
        keys = ("do_resize", "resample", "do_center_crop", "do_rescale", "rescale_factor", "do_normalize",
                "image_mean", "image_std", "do_convert_rgb")
        kwargs: Dict[str, Any] = {k: config[k] for k in keys if k in config}
        kwargs["mode"] = config.get("clip_zoo_mode", "hf")
        kwargs["size"] = config.get("size", 224)
        kwargs["crop_size"] = config.get("crop_size", None)
        if config.get("use_square_size") and isinstance(kwargs["size"], dict) and "shortest_edge" in kwargs["size"]:
            n = kwargs["size"]["shortest_edge"]
            kwargs["size"] = {"height": n, "width": n}
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike], **overrides: Any) -> "CLIPImageProcessor":
        """Read ``preprocessor_config.json`` from ``directory`` (or the file itself); ``directory`` may also
        be a name: ``"default"`` or a Hugging Face id in the local cache (see ``resolve_checkpoint``)."""
        from .default_model import ModelNotFoundError, NotInHubCacheError, resolve_checkpoint

        revision, cache_dir = overrides.pop("revision", None), overrides.pop("cache_dir", None)
        path = Path(directory)
        if not path.exists():
            try:
                path = resolve_checkpoint(directory, revision=revision, cache_dir=cache_dir)
            except NotInHubCacheError:
                raise
            except ModelNotFoundError:  # not a name either: report the missing file below
                pass
        path = path / CONFIG_NAME if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} at {os.fspath(directory)!r}")
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh), **overrides)

    def save_pretrained(self, directory: Union[str, os.PathLike]) -> str:
        """Write ``preprocessor_config.json`` (loadable by transformers); returns its path."""
        from .io import atomic_write_bytes

        path = Path(directory) / CONFIG_NAME
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(path, text.encode("utf-8"))
        return os.fspath(path)

    def __getstate__(self) -> Dict[str, Any]:
        """Picklable (e.g. for DataLoader workers): the thread pool and its lock are not copied."""
        state = dict(self.__dict__)
        state.update(_pool=None, _pool_lock=None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool_lock = threading.Lock()

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)


def _to_numpy(image: Any) -> Any:
    """torch / tf / jax arrays as numpy (transformers accepts them as images); anything else unchanged."""
    if isinstance(image, (np.ndarray, Image.Image, str, os.PathLike, list, tuple)) or image is None:
        return image
    if hasattr(image, "detach") and hasattr(image, "cpu"):  # torch
        return image.detach().cpu().numpy()
    if hasattr(image, "__array__") and hasattr(image, "shape"):
        return np.asarray(image)
    return image


def _to_channels_last(image: Any, input_data_format: Optional[str]) -> Any:
    """A 3-D array in (H, W, C); ``input_data_format`` None reads (C, H, W) only when (H, W, C) cannot fit."""
    image = _to_numpy(image)
    if not isinstance(image, np.ndarray) or image.ndim != 3 or input_data_format == "channels_last":
        return image
    if input_data_format == "channels_first" or (image.shape[2] not in (1, 3, 4) and image.shape[0] in (1, 3)):
        return image.transpose(1, 2, 0)
    return image


def _as_list(images: Any) -> List[Any]:
    """A single image, a (nested) list/tuple of images or an (N, H, W, C) array → list of images."""
    images = _to_numpy(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given (empty list)")
        if all(isinstance(x, (list, tuple)) for x in images):  # nested batches, flattened as transformers does
            return [x for group in images for x in group]
        return list(images)
    return [images]


CLIPImageProcessorFast = CLIPImageProcessor  # transformers' torchvision variant: same preprocessing here
CLIPFeatureExtractor = CLIPImageProcessor  # transformers' deprecated name
