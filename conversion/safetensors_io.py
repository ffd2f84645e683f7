"""safetensors read (memory-mapped, validated) and streaming write (one tensor in memory at a time).

The format is an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}`` and the raw tensor bytes.
Parsing it here (instead of ``safetensors.numpy.load_file``) lets a truncated file be reported with
the name of the first tensor it cuts off, and lets conversion stream without holding two copies.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from clip_core.io import atomic_open

from .errors import ConversionError
from .tensors import SAFETENSORS_CODES, as_bytes, cast, copy_range, dtype_name, file_range, map_file, np_dtype

__all__ = ["read_safetensors", "read_safetensors_metadata", "write_safetensors", "is_safetensors"]

_CODES = {v: k for k, v in SAFETENSORS_CODES.items()}


def is_safetensors(head: bytes) -> bool:
    """True when the first bytes look like a safetensors header."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n < 100_000_000 and head[8:9] == b"{"


def _header(path: Path, size: int, fh) -> tuple[int, dict]:
    if size < 8:
        raise ConversionError(f"{path}: truncated safetensors file ({size} bytes, no header)")
    (n,) = struct.unpack("<Q", fh.read(8))
    if 8 + n > size:
        raise ConversionError(f"{path}: truncated safetensors file (header of {n} bytes, file of {size})")
    try:
        header = json.loads(fh.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConversionError(f"{path}: corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: corrupt safetensors header (not a JSON object)")
    return 8 + n, header


def read_safetensors_metadata(path) -> dict:
    """The ``__metadata__`` of a safetensors file."""
    path = Path(path)
    with open(path, "rb") as fh:
        return _header(path, os.fstat(fh.fileno()).st_size, fh)[1].get("__metadata__") or {}


def read_safetensors(path) -> dict[str, np.ndarray]:
    """``{name: array}`` backed by a memory map of ``path`` (see :func:`conversion.tensors.map_file`)."""
    path = Path(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        start, header = _header(path, size, fh)
        header.pop("__metadata__", None)
        mm = map_file(fh, path) if size else b""
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        try:
            dtype = np_dtype(SAFETENSORS_CODES[info["dtype"]])
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ConversionError(f"{path}: tensor {name!r} has a corrupt header entry {info!r}") from None
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * dtype.itemsize or begin < 0:
            raise ConversionError(f"{path}: tensor {name!r} has {end - begin} bytes, shape {shape} needs "
                                  f"{count * dtype.itemsize}")
        if start + end > size:
            raise ConversionError(f"{path}: truncated safetensors file: tensor {name!r} needs bytes up to "
                                  f"{start + end}, the file has {size}")
        out[name] = np.frombuffer(mm, dtype, count, start + begin).reshape(shape)
    return out


def write_safetensors(path, tensors: Mapping[str, np.ndarray], metadata: Optional[Mapping[str, str]] = None,
                      dtype: Optional[str] = None, progress: Optional[Callable[[str], None]] = None) -> None:
    """Write ``tensors`` atomically, one tensor at a time (cast to ``dtype`` as it is written)."""
    plan, offset = {}, 0
    for name, a in tensors.items():
        a = np.asarray(a)
        target = dtype_name(cast(np.empty(0, a.dtype), dtype).dtype)
        nbytes = int(a.size) * np_dtype(target).itemsize
        plan[name] = {"dtype": _CODES[target], "shape": list(a.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header = {"__metadata__": dict(metadata or {"format": "pt"}), **plan}
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with atomic_open(path) as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name, a in tensors.items():
            a = cast(np.asarray(a), dtype)
            source = file_range(a)  # unchanged bytes of a mapped file: copy them inside the kernel
            if source is None or not copy_range(fh, *source):
                fh.write(as_bytes(a))
            if progress:
                progress(name)


