"""dtype names shared by every format: torch storages, safetensors codes, output-dtype option —
and the size limits every reader enforces on untrusted files (see ``docs/security.md``)."""
from __future__ import annotations

import contextlib
import contextvars
import mmap
import os
import weakref
from typing import Iterator, Optional

import numpy as np

from .errors import ConversionError

__all__ = ["np_dtype", "dtype_name", "cast", "OUTPUT_DTYPES", "TORCH_STORAGES", "SAFETENSORS_CODES", "as_bytes",
           "TENSOR_DTYPES", "LimitExceededError", "ExternalReferenceError", "MAX_NDIM", "MAX_TENSOR_BYTES",
           "MAX_TENSORS", "MAX_COMPRESSION_RATIO", "MAX_NAME_CHARS", "checked_nbytes", "check_name"]

# ----------------------------------------------------------------------------- limits on untrusted files
#: Dimensions of one tensor (torch and HDF5 allow 32 at most too).
MAX_NDIM = 32
#: Bytes of one tensor / storage / dataset (the largest CLIP tensor, ViT-bigG's token embedding, is 253 MB).
MAX_TENSOR_BYTES = 4 * 2 ** 30
#: Tensors in one file.
MAX_TENSORS = 100_000
#: Characters of one tensor name.
MAX_NAME_CHARS = 1024
#: Bytes produced by decompression (zip records, HDF5 filters) per stored byte; real weights compress ~1.1x.
MAX_COMPRESSION_RATIO = 100


class LimitExceededError(ConversionError):
    """A checkpoint declares a size, count or depth beyond clip-zoo's limits (refused before allocating)."""


class ExternalReferenceError(ConversionError):
    """A checkpoint refers to data outside itself (HDF5 external storage / links, virtual datasets)."""


def check_name(name: str, where: str) -> str:
    """``name`` (a tensor / parameter name from a file) if it is printable and at most
    :data:`MAX_NAME_CHARS` long; control characters (terminal escape sequences) are refused."""
    if len(name) > MAX_NAME_CHARS:
        raise LimitExceededError(f"{where}: a name longer than {MAX_NAME_CHARS} characters ({name[:60]!r}...)")
    if not name.isprintable():
        raise ConversionError(f"{where}: name {name[:80]!r} contains control or non-printable characters")
    return name


def checked_nbytes(shape, dtype: np.dtype, what: str, limit: int = MAX_TENSOR_BYTES) -> int:
    """``prod(shape) * itemsize`` in exact integers, for a shape already known to hold non-negative ints;
    :class:`LimitExceededError` (naming ``what``) above ``limit`` or beyond :data:`MAX_NDIM` dimensions."""
    if len(shape) > MAX_NDIM:
        raise LimitExceededError(f"{what} has {len(shape)} dimensions (at most {MAX_NDIM} are allowed)")
    n = int(np.dtype(dtype).itemsize)
    for d in shape:
        if d > limit:
            raise LimitExceededError(f"{what} has a dimension of {d:,} elements (shape {tuple(shape)}), above the "
                                     f"limit of {limit:,}")
        n *= int(d)
    if n > limit:
        raise LimitExceededError(f"{what} would take {n:,} bytes (shape {tuple(shape)}), above the limit of "
                                 f"{limit:,} bytes per tensor")
    return n

#: torch storage class name -> numpy dtype name
TORCH_STORAGES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}
#: safetensors dtype code -> numpy dtype name
SAFETENSORS_CODES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
    "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}
#: every numpy dtype name a tensor may have in any format (no object, string, compound or void dtypes)
TENSOR_DTYPES = frozenset(TORCH_STORAGES.values()) | {"uint16", "uint32", "uint64"}
#: --dtype option -> numpy dtype name
OUTPUT_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
                 "bf16": "bfloat16", "bfloat16": "bfloat16"}


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype for a name; ``bfloat16`` comes from ml_dtypes (imported only when needed)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def dtype_name(dtype) -> str:
    """``float32``, ``bfloat16`` ... for any numpy dtype (ml_dtypes' bfloat16 included)."""
    return np.dtype(dtype).name


def cast(a: np.ndarray, dtype: Optional[str]) -> np.ndarray:
    """Cast floating tensors to the output dtype name (``fp16`` ...); integer tensors are kept."""
    if dtype is None:
        return a
    target = np_dtype(OUTPUT_DTYPES.get(dtype, dtype))
    kind = np.dtype(a.dtype).kind
    if (kind != "f" and dtype_name(a.dtype) != "bfloat16") or a.dtype == target:
        return a
    if dtype_name(a.dtype) == "bfloat16" or target.name == "bfloat16":
        return a.astype(np.float32).astype(target)
    return a.astype(target)


def as_bytes(a: np.ndarray) -> memoryview:
    """The C-order bytes of ``a`` without a copy when it is already contiguous."""
    a = np.ascontiguousarray(a)
    return memoryview(a.reshape(-1).view(np.uint8))


# ----------------------------------------------------------------------------- zero-copy file ranges
_MAPS: "weakref.WeakKeyDictionary[mmap.mmap, str]" = weakref.WeakKeyDictionary()
_ZERO_COPY: contextvars.ContextVar[bool] = contextvars.ContextVar("conversion_zero_copy", default=False)


@contextlib.contextmanager
def zero_copy_reads() -> Iterator[None]:
    """Within this block files are mapped read-only and remembered, so writers can copy unchanged
    tensors file-to-file (``copy_file_range``). Arrays read here cannot be modified in place."""
    token = _ZERO_COPY.set(True)
    try:
        yield
    finally:
        _ZERO_COPY.reset(token)


def map_file(fh, path) -> mmap.mmap:
    """Map an open file: private copy-on-write (writable arrays), or read-only inside :func:`zero_copy_reads`."""
    if not _ZERO_COPY.get():
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    _MAPS[mm] = str(path)
    return mm


def file_range(a: np.ndarray) -> Optional[tuple[str, int, int]]:
    """``(path, offset, nbytes)`` when ``a`` is a C-contiguous view of a registered file map, else None."""
    if not isinstance(a, np.ndarray) or not a.flags.c_contiguous or a.nbytes == 0:
        return None
    base: object = a
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    if not isinstance(base, mmap.mmap) or base not in _MAPS or len(base) == 0:
        return None
    start = np.frombuffer(base, np.uint8, 1).ctypes.data
    return _MAPS[base], a.ctypes.data - start, a.nbytes


def copy_range(fh, path: str, offset: int, nbytes: int) -> bool:
    """Append ``nbytes`` of ``path`` at ``offset`` to ``fh`` inside the kernel; False if unsupported."""
    if not hasattr(os, "copy_file_range"):
        return False
    fh.flush()
    with open(path, "rb") as src:
        done = 0
        try:
            while done < nbytes:
                n = os.copy_file_range(src.fileno(), fh.fileno(), nbytes - done, offset + done)
                if n == 0:
                    raise OSError("source file shrank")
                done += n
        except OSError:
            if done:
                raise
            return False
    return True
