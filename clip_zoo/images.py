"""Decode + preprocess images in a thread pool, one at a time so a bad file is skipped, not fatal.

Before an image is decoded its header is read (``Image.open(...).size``, no pixel data) and the
image is refused when it, or the image the resize step would make of it (a 1x100000 strip resized
to 224 px on its short side is 224x22400000), has more than ``max_pixels`` pixels (default 40
megapixels, ``--max-pixels``). With ``fingerprints=True`` each load also returns the file's
:func:`fingerprint` (size, mtime and SHA-256 of the bytes), taken in the same worker thread.
With ``background=True`` (``clip-zoo embed``) the workers run at a lower CPU priority on Linux, so
the model's threads win the cores when both want them (docs/design.md, end-to-end embed).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np

from .inputs import is_image_name

__all__ = ["ImageLoader", "describe_error", "fingerprint", "BACKGROUND_NICE", "DEFAULT_MAX_PIXELS", "max_pixels_arg"]

#: Largest image (and largest resized image) the CLI decodes: 40 megapixels, ~120 MB as RGB.
DEFAULT_MAX_PIXELS = 40_000_000
#: Times a load is retried when the file changes while it is read.
_RETRIES = 3


#: How much ``background`` workers raise their nice value: enough that the model's threads win the
#: cores (a third of their CPU share under contention), not so much that other processes starve the
#: decoding. At +19 a busy machine slowed an embed 5x (docs/design.md, end-to-end embed).
BACKGROUND_NICE = 5


def _lower_priority() -> None:
    """Thread-pool initializer: the calling worker thread's nice value rises by ``BACKGROUND_NICE``.

    Linux keeps a nice value per thread, so this lowers the worker alone; elsewhere ``PRIO_PROCESS``
    with a thread id would name a process, so nothing is done. Best effort: errors are ignored."""
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICE))
    except OSError:
        pass


def max_pixels_arg(text: str) -> int:
    """argparse type of ``--max-pixels``: a positive whole number (``40000000``, ``4e7``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of pixels, got {text!r}") from None
    if not value >= 1 or value != int(value) or value > 2 ** 62:
        raise argparse.ArgumentTypeError(f"must be a whole number of pixels of at least 1, got {text!r}")
    return int(value)


def fingerprint(path: str) -> str:
    """``size:mtime_ns:sha256`` of the file ``path`` (``missing`` when it cannot be read).

    Files without an image extension are never decoded, so their size and mtime suffice."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not is_image_name(path):
                return f"{st.st_size}:{st.st_mtime_ns}"
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}:{digest}"


def _stat_key(path: str) -> Optional[tuple]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _resized(w: int, h: int, processor) -> tuple[int, int]:
    """The (width, height) the processor's resize step gives a ``w`` x ``h`` image."""
    size = getattr(processor, "size", None)
    if not getattr(processor, "do_resize", True) or not isinstance(size, dict):
        return w, h
    if "shortest_edge" in size:
        n = int(size["shortest_edge"])
        return (n, int(n * h / w)) if w <= h else (int(n * w / h), n)
    return int(size.get("width", w)), int(size.get("height", h))


def check_image_size(path: str, processor, max_pixels: int) -> Optional[str]:
    """Why ``path`` is too large to decode (from its header only), or ``None``."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
    except Image.DecompressionBombError as err:  # PIL's own limit, far above the default max_pixels
        return f"more than --max-pixels {max_pixels:,} ({describe_error(err)})"
    except Exception:  # not an image PIL can identify: the decoder reports why
        return None
    if w * h > max_pixels:
        return (f"{w}x{h} pixels ({w * h:,}) is more than --max-pixels {max_pixels:,}, "
                f"shrink the image or pass a larger --max-pixels")
    if w > 0 and h > 0:
        rw, rh = _resized(w, h, processor)
        if rw * rh > max_pixels:
            return (f"{w}x{h} pixels would be resized to {rw}x{rh} ({rw * rh:,} pixels), more than "
                    f"--max-pixels {max_pixels:,}; crop the image or pass a larger --max-pixels")
    return None


def describe_error(err: BaseException) -> str:
    """A one-line reason for an unreadable image."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) < 200 else text[:197] + "..."


class ImageLoader:
    """Preprocess paths with ``processor`` on ``threads`` workers; each item → array or error text.

    ``max_pixels``: images above it (or whose resized image would be) are refused before decoding.
    ``fingerprints``: also take each file's :func:`fingerprint` (see :meth:`collect`'s ``keys``).
    ``background``: the workers run at a lower CPU priority (Linux, :data:`BACKGROUND_NICE`), for a
    pipeline whose model runs beside them: the model's threads then rarely wait on a descheduled one."""

    def __init__(self, processor, threads: Optional[int] = None, max_pixels: Optional[int] = None,
                 fingerprints: bool = False, background: bool = False) -> None:
        self.processor = processor
        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
        self.fingerprints = fingerprints
        self.pool = ThreadPoolExecutor(max(1, threads or processor.num_threads), thread_name_prefix="clip-zoo-load",
                                       initializer=_lower_priority if background else None)

    def _decode(self, path: str):
        if not is_image_name(path):
            return "not an image file (unknown extension)"
        too_large = check_image_size(path, self.processor, self.max_pixels)
        if too_large:
            return too_large
        try:
            return self.processor(path, return_tensors="np")["pixel_values"][0]  # (3, H, W)
        except Exception as err:  # any decode failure: report and skip
            return describe_error(err)

    def _one(self, path: str) -> tuple:
        """``(array or error text, fingerprint or "")``; the fingerprint is of the bytes decoded:
        a file that changes while it is read (size or mtime) is read again."""
        if not self.fingerprints:
            return self._decode(path), ""
        for _ in range(_RETRIES):
            before = _stat_key(path)
            key = fingerprint(path)
            value = self._decode(path)
            if _stat_key(path) == before:
                return value, key
        return "the file kept changing while it was read", "changing"

    def submit(self, paths: Sequence[str]) -> list[Future]:
        """Start loading ``paths``; the futures resolve to ``(array (3, H, W) or error string, fingerprint)``."""
        return [self.pool.submit(self._one, p) for p in paths]

    def submit_fingerprints(self, paths: Sequence[str]) -> list[Future]:
        """Fingerprint ``paths`` (no decoding) on the workers."""
        return [self.pool.submit(fingerprint, p) for p in paths]

    @staticmethod
    def collect(paths: Sequence[str], futures: list[Future], keys: Optional[list] = None):
        """→ ``(pixel_values (n_ok, 3, H, W) or None, ok indices, {index: error})``; the fingerprints
        are appended to ``keys`` when given."""
        arrays, ok, errors = [], [], {}
        for i, (path, fut) in enumerate(zip(paths, futures)):
            value, key = fut.result()
            if keys is not None:
                keys.append(key)
            if isinstance(value, str):
                errors[i] = value
            else:
                arrays.append(value)
                ok.append(i)
        return (np.stack(arrays) if arrays else None), ok, errors

    def close(self) -> None:
        """Stop the workers; queued (not yet started) loads are cancelled."""
        self.pool.shutdown(wait=True, cancel_futures=True)
