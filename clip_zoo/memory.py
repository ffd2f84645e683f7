"""Keep a model's large temporary buffers in the heap instead of fresh pages from the kernel.

glibc's ``malloc`` serves a request above its mmap threshold (it adapts, but never above 32 MB) with
newly mapped pages and unmaps them on ``free``, and trims the heap's free top back to the kernel. A
CPU forward allocates and frees the same large activations on every call: a ViT-B/32 image batch of
64 has a 39 MB MLP buffer in each of its 12 layers, so each batch page-faults ~1 GB back in (230,000
minor faults and ~0.7 CPU-s of kernel time per fp32 batch on the development machine;
docs/design.md). :func:`tune_allocator` raises both thresholds once, so freed buffers are reused.

The cost: memory freed after the largest batch stays in the process (RSS keeps its high-water mark)
until it exits. The application calls it when it loads a model (:func:`clip_zoo.engines.load_encoder`);
the library modules (``clip_torch`` ...) never change the process's allocator.
"""
from __future__ import annotations

import ctypes
import os

__all__ = ["tune_allocator", "RETAIN_BYTES"]

#: The mmap and trim thresholds set: requests up to 512 MiB come from the heap, and up to 512 MiB of
#: free heap top is kept for the next batch (a ViT-L/14 image batch of 64 has 270 MB MLP buffers).
RETAIN_BYTES = 512 << 20

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_done: list[bool] = []


def _user_tuned(environ) -> bool:
    """Whether the user already tuned glibc's malloc through its environment variables."""
    return any(name in environ for name in _USER_SETTINGS) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # not a POSIX confstr, or not glibc
        return False


def tune_allocator(environ=None) -> bool:
    """Raise glibc's mmap and trim thresholds to :data:`RETAIN_BYTES`, once per process.

    Returns whether they are set. Nothing is done (``False``) off glibc, or when the user set any of
    glibc's ``MALLOC_*_`` variables or ``glibc.malloc`` tunables: their choice stands. Best effort:
    a threshold the C library refuses stays as it was (and ``False`` is returned)."""
    if _done:
        return _done[0]
    environ = os.environ if environ is None else environ
    ok = False
    if _glibc() and not _user_tuned(environ):
        try:
            libc = ctypes.CDLL(None)
            ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, RETAIN_BYTES)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, RETAIN_BYTES))
        except (OSError, AttributeError):
            ok = False
    _done.append(ok)
    return ok
