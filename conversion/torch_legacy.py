"""The legacy (pre-1.6, non-zip) ``torch.save`` format, read without torch.

Layout: four pickles back to back — the magic number ``0x1950A86A20F9469CFC6C``, the protocol
version ``1001``, a ``sys_info`` dict, the object itself (tensors as persistent-id storages) and the
list of storage keys — followed, for each key in that order, by an 8-byte little-endian element count
and the raw storage bytes. All pickles go through :class:`~conversion.pickle_reader.RestrictedUnpickler`;
every element count must match what the pickle declared, and every view is checked before reading.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from .errors import ConversionError
from .pickle_reader import RestrictedUnpickler, check_aliasing, find_tensors, materialize
from .tensors import MAX_TENSORS, map_file, np_dtype

__all__ = ["LEGACY_MAGIC", "read_legacy_torch"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001


def read_legacy_torch(path) -> dict[str, np.ndarray]:
    """``{name: array}`` of a legacy ``torch.save`` state dict (or ``{"state_dict": ...}``)."""
    path = Path(path)
    source = str(path)
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise ConversionError(f"{path}: empty file")
        mm = map_file(fh, path)
    unpickler = RestrictedUnpickler(mm, source)
    magic, offset = unpickler.load(0)
    if type(magic) is not int or magic != LEGACY_MAGIC:
        raise ConversionError(f"{path}: a pickle, but not a torch checkpoint (no torch magic number)")
    protocol, offset = unpickler.load(offset)
    if type(protocol) is not int or protocol != _PROTOCOL:
        raise ConversionError(f"{path}: unsupported legacy torch protocol version")
    _, offset = unpickler.load(offset)  # sys_info
    obj, offset = unpickler.load(offset)
    keys, offset = unpickler.load(offset)
    if type(keys) is not list or not all(type(k) is str for k in keys) or len(set(keys)) != len(keys):
        raise ConversionError(f"{path}: corrupt legacy torch checkpoint: the storage key list is not a list of "
                              f"distinct strings")
    if len(keys) > MAX_TENSORS:
        raise ConversionError(f"{path}: {len(keys):,} storages (at most {MAX_TENSORS:,})")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: the pickled object is a {type(obj).__name__}, not a state dict")
    refs = find_tensors(obj, source=source)
    check_aliasing(refs, source)
    declared = unpickler.storages
    storages = {}
    for key in keys:
        if key not in declared:
            raise ConversionError(f"{path}: storage {key!r} is listed but never declared by the pickle")
        if offset + 8 > len(mm):
            raise ConversionError(f"{path}: truncated: storage {key!r} is missing")
        (count,) = struct.unpack("<q", mm[offset:offset + 8])
        if count != declared[key].numel:
            raise ConversionError(f"{path}: storage {key!r} holds {count} elements, the pickle declares "
                                  f"{declared[key].numel}")
        dtype = np_dtype(declared[key].dtype)
        if offset + 8 + count * dtype.itemsize > len(mm):
            raise ConversionError(f"{path}: truncated: storage {key!r} needs {count * dtype.itemsize} bytes")
        storages[key] = np.frombuffer(mm, dtype, count, offset + 8)
        offset += 8 + count * dtype.itemsize
    out = {}
    for name, ref in refs.items():
        if ref.storage.key not in storages:
            raise ConversionError(f"{path}: the storage of tensor {name!r} is missing")
        out[name] = materialize(ref, storages[ref.storage.key], name, source)
    return out
