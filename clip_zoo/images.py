"""Decode + preprocess images in a thread pool, one at a time so a bad file is skipped, not fatal."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np

from .inputs import is_image_name

__all__ = ["ImageLoader", "describe_error"]


def describe_error(err: BaseException) -> str:
    """A one-line reason for an unreadable image."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) < 200 else text[:197] + "..."


class ImageLoader:
    """Preprocess paths with ``processor`` on ``threads`` workers; each item → array or error text."""

    def __init__(self, processor, threads: Optional[int] = None) -> None:
        self.processor = processor
        self.pool = ThreadPoolExecutor(max(1, threads or processor.num_threads), thread_name_prefix="clip-zoo-load")

    def _one(self, path: str):
        if not is_image_name(path):
            return "not an image file (unknown extension)"
        try:
            return self.processor(path, return_tensors="np")["pixel_values"][0]  # (3, H, W)
        except Exception as err:  # any decode failure: report and skip
            return describe_error(err)

    def submit(self, paths: Sequence[str]) -> list[Future]:
        """Start loading ``paths``; the futures resolve to a (3, H, W) array or an error string."""
        return [self.pool.submit(self._one, p) for p in paths]

    @staticmethod
    def collect(paths: Sequence[str], futures: list[Future]):
        """→ ``(pixel_values (n_ok, 3, H, W) or None, ok indices, {index: error})``."""
        arrays, ok, errors = [], [], {}
        for i, (path, fut) in enumerate(zip(paths, futures)):
            value = fut.result()
            if isinstance(value, str):
                errors[i] = value
            else:
                arrays.append(value)
                ok.append(i)
        return (np.stack(arrays) if arrays else None), ok, errors

    def close(self) -> None:
        """Stop the workers; queued (not yet started) loads are cancelled."""
        self.pool.shutdown(wait=True, cancel_futures=True)
