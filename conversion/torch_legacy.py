"""The legacy (pre-1.6, non-zip) ``torch.save`` format, read without torch.

Layout: four pickles back to back — the magic number ``0x1950A86A20F9469CFC6C``, the protocol
version ``1001``, a ``sys_info`` dict, the object itself (tensors as persistent-id storages) and the
list of storage keys — followed, for each key in that order, by an 8-byte little-endian element count
and the raw storage bytes. All pickles go through :class:`~conversion.pickle_reader.RestrictedUnpickler`.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

from .errors import ConversionError
from .pickle_reader import RestrictedUnpickler, find_tensors, materialize
from .tensors import map_file, np_dtype

__all__ = ["LEGACY_MAGIC", "read_legacy_torch"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001


def read_legacy_torch(path) -> dict[str, np.ndarray]:
    """``{name: array}`` of a legacy ``torch.save`` state dict (or ``{"state_dict": ...}``)."""
    path = Path(path)
    source = str(path)
    with open(path, "rb") as fh:
        try:
            header = [RestrictedUnpickler(fh, source).load() for _ in range(3)]
            if header[0] != LEGACY_MAGIC or header[1] != _PROTOCOL:
                raise ConversionError(f"{path}: a pickle, but not a torch checkpoint (no torch magic number)")
            obj = RestrictedUnpickler(fh, source).load()
            keys = RestrictedUnpickler(fh, source).load()
        except ConversionError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError) as err:
            raise ConversionError(f"{path}: corrupt legacy torch checkpoint ({type(err).__name__}: {err})") from None
        offset = fh.tell()
        mm = map_file(fh, path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: the pickled object is a {type(obj).__name__}, not a state dict")
    refs = find_tensors(obj)
    dtypes = {ref.storage.key: ref.storage.dtype for ref in refs.values()}
    storages = {}
    for key in keys:
        if offset + 8 > len(mm):
            raise ConversionError(f"{path}: truncated: storage {key!r} is missing")
        (count,) = struct.unpack("<q", mm[offset:offset + 8])
        dtype = np_dtype(dtypes.get(str(key), "uint8"))
        if offset + 8 + count * dtype.itemsize > len(mm):
            raise ConversionError(f"{path}: truncated: storage {key!r} needs {count * dtype.itemsize} bytes")
        storages[str(key)] = np.frombuffer(mm, dtype, count, offset + 8)
        offset += 8 + count * dtype.itemsize
    out = {}
    for name, ref in refs.items():
        if ref.storage.key not in storages:
            raise ConversionError(f"{path}: the storage of tensor {name!r} is missing")
        out[name] = materialize(ref, storages[ref.storage.key], name, source)
    return out
