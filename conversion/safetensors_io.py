"""safetensors read (memory-mapped, validated) and streaming write (one tensor in memory at a time).

The format is an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}`` and the raw tensor bytes.
Parsing it here (instead of ``safetensors.numpy.load_file``) lets a truncated file be reported with
the name of the first tensor it cuts off, and lets conversion stream without holding two copies.
The header is validated as strictly as the reference library does (see :func:`_entries`) before
any tensor is mapped.
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
from .tensors import (MAX_NDIM, MAX_TENSORS, SAFETENSORS_CODES, LimitExceededError, as_bytes, cast, check_name,
                      checked_nbytes, copy_range, dtype_name, file_range, map_file, np_dtype)

__all__ = ["read_safetensors", "read_safetensors_metadata", "write_safetensors", "is_safetensors",
           "MAX_HEADER_BYTES"]

_CODES = {v: k for k, v in SAFETENSORS_CODES.items()}
#: Bytes of the JSON header (the reference library's limit).
MAX_HEADER_BYTES = 100_000_000
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


def is_safetensors(head: bytes) -> bool:
    """True when the first bytes look like a safetensors header."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n < MAX_HEADER_BYTES and head[8:9] == b"{"


def _no_duplicates(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ConversionError(f"duplicate key {dup[:80]!r}")
    return out


def _header(path: Path, size: int, fh) -> tuple[int, dict]:
    if size < 8:
        raise ConversionError(f"{path}: truncated safetensors file ({size} bytes, no header)")
    (n,) = struct.unpack("<Q", fh.read(8))
    if n > MAX_HEADER_BYTES:
        raise LimitExceededError(f"{path}: safetensors header of {n:,} bytes (at most {MAX_HEADER_BYTES:,})")
    if 8 + n > size:
        raise ConversionError(f"{path}: truncated safetensors file (header of {n} bytes, file of {size})")
    raw = fh.read(n)
    if raw[:1] != b"{":
        raise ConversionError(f"{path}: corrupt safetensors header (does not start with '{{')")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except ConversionError as err:
        raise ConversionError(f"{path}: corrupt safetensors header ({err})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise ConversionError(f"{path}: corrupt safetensors header ({type(err).__name__}: {str(err)[:200]})") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: corrupt safetensors header (not a JSON object)")
    return 8 + n, header


def _metadata(path: Path, header: dict) -> dict:
    meta = header.get("__metadata__")
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ConversionError(f"{path}: corrupt safetensors header: '__metadata__' must map strings to strings")
    return meta


def _is_index(value) -> bool:
    return type(value) is int and value >= 0


def _entries(path: Path, header: dict, data_size: int) -> list[tuple[str, np.dtype, tuple, int, int]]:
    """``[(name, dtype, shape, begin, end)]`` in header order, validated as strictly as the reference
    library: known dtypes, non-negative int shapes, offsets tiling the data area exactly."""
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        check_name(name, str(path))
        where = f"{path}: tensor {name[:80]!r}"
        if not isinstance(info, dict) or set(info) != _ENTRY_KEYS:
            raise ConversionError(f"{where}: corrupt header entry (needs exactly dtype, shape and data_offsets)")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(code, str) or code not in SAFETENSORS_CODES:
            raise ConversionError(f"{where}: unsupported dtype {str(code)[:20]!r} (expected one of "
                                  f"{', '.join(SAFETENSORS_CODES)})")
        if not isinstance(shape, list) or not all(_is_index(d) for d in shape):
            raise ConversionError(f"{where}: field 'shape' must be a list of non-negative integers")
        if len(shape) > MAX_NDIM:
            raise LimitExceededError(f"{where}: {len(shape)} dimensions (at most {MAX_NDIM})")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_index(x) for x in offsets)):
            raise ConversionError(f"{where}: field 'data_offsets' must be two non-negative integers")
        begin, end = offsets
        if begin > end:
            raise ConversionError(f"{where}: field 'data_offsets' has begin {begin} after end {end}")
        dtype = np_dtype(SAFETENSORS_CODES[code])
        nbytes = end - begin
        expected = 1
        for d in shape:
            expected *= d
        expected *= dtype.itemsize
        if expected != nbytes:
            raise ConversionError(f"{where}: field 'data_offsets' spans {nbytes} bytes, shape {tuple(shape)} of "
                                  f"{code} needs {expected}")
        checked_nbytes(shape, dtype, where)
        entries.append((name, dtype, tuple(shape), begin, end))
    if len(entries) > MAX_TENSORS:
        raise LimitExceededError(f"{path}: {len(entries):,} tensors (at most {MAX_TENSORS:,})")
    covered = 0
    for name, _, _, begin, end in sorted(entries, key=lambda e: (e[3], e[4])):
        if begin != covered:
            what = "overlaps the previous tensor" if begin < covered else f"leaves a gap after byte {covered}"
            raise ConversionError(f"{path}: tensor {name[:80]!r}: field 'data_offsets' {[begin, end]} {what} "
                                  f"(tensors must tile the data area)")
        if end > data_size:
            raise ConversionError(f"{path}: truncated safetensors file: tensor {name[:80]!r} needs bytes up to "
                                  f"{end} of the data area, which has {data_size}")
        covered = end
    if covered != data_size:
        raise ConversionError(f"{path}: {data_size - covered} bytes after the last tensor's data_offsets "
                              f"(the header does not describe the whole file)")
    return entries


def read_safetensors_metadata(path) -> dict:
    """The ``__metadata__`` of a safetensors file (the whole header validated)."""
    path = Path(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        start, header = _header(path, size, fh)
    meta = _metadata(path, header)
    _entries(path, header, size - start)
    return meta


def read_safetensors(path) -> dict[str, np.ndarray]:
    """``{name: array}`` backed by a memory map of ``path`` (see :func:`conversion.tensors.map_file`)."""
    path = Path(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        start, header = _header(path, size, fh)
        _metadata(path, header)
        entries = _entries(path, header, size - start)
        mm = map_file(fh, path) if size else b""
    out: dict[str, np.ndarray] = {}
    for name, dtype, shape, begin, end in entries:
        count = (end - begin) // dtype.itemsize
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


