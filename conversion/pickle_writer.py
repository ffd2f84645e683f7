"""Emit the pickle of a ``torch.save``-d state dict opcode by opcode — no torch, no live globals.

The stream is exactly what torch's ``weights_only`` loader accepts: an ``OrderedDict`` whose values
are ``torch._utils._rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())`` with the
storage as a persistent id ``('storage', torch.<Type>Storage, key, 'cpu', numel)``.
"""
from __future__ import annotations

import struct
from typing import Iterable

import numpy as np

from .tensors import TORCH_STORAGES, dtype_name

__all__ = ["state_dict_pickle"]

_STORAGE_OF = {v: k for k, v in TORCH_STORAGES.items()}
MARK, TUPLE, EMPTY_TUPLE, REDUCE, SETITEMS, BINPERSID, STOP = b"(", b"t", b")", b"R", b"u", b"Q", b"."


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(n: int) -> bytes:
    if 0 <= n < 2 ** 31:
        return b"J" + struct.pack("<i", n)
    raw = int(n).to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _tuple(items: Iterable[bytes]) -> bytes:
    return MARK + b"".join(items) + TUPLE


def _ordered_dict() -> bytes:
    return _global("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE


def _tensor(key: str, dtype: np.dtype, shape: tuple) -> bytes:
    numel = int(np.prod(shape, dtype=np.int64))
    stride, acc = [], 1
    for n in reversed(shape):
        stride.insert(0, acc)
        acc *= n
    storage = _tuple([_str("storage"), _global("torch", _STORAGE_OF[dtype_name(dtype)]), _str(key), _str("cpu"),
                      _int(numel)]) + BINPERSID
    args = _tuple([storage, _int(0), _tuple(map(_int, shape)), _tuple(map(_int, stride)), b"\x89",
                   _ordered_dict()])
    return _global("torch._utils", "_rebuild_tensor_v2") + args + REDUCE


def state_dict_pickle(plan: Iterable[tuple[str, str, np.dtype, tuple]]) -> bytes:
    """The pickle for ``[(name, storage key, dtype, shape), ...]`` (protocol 2)."""
    body = b"".join(_str(name) + _tensor(key, dtype, shape) for name, key, dtype, shape in plan)
    return b"\x80\x02" + _ordered_dict() + MARK + body + SETITEMS + STOP
