"""Hugging Face Flax weights (``flax_model.msgpack``), read and written with msgpack — no JAX.

flax's ``serialization.msgpack_serialize`` format: a nested msgpack map of the parameter tree whose
leaves are msgpack ext values — code 1 (ndarray) / 3 (numpy scalar) holding a packed
``(shape, dtype name, C-order bytes)`` triple — and arrays above 2**30 bytes split into
``{"__msgpack_chunked_array__": True, "shape": {...}, "chunks": {"0": ..., ...}}``.
A Hugging Face file holds the ``params`` tree itself (no ``params`` key); a tree with
``batch_stats`` (the ResNet tower, which Hugging Face Flax lacks) is stored as
``{"params": ..., "batch_stats": ...}``. Paths come from the schema's ``flax`` entries.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional

import numpy as np

from clip_core.config import CLIPConfig
from clip_core.io import atomic_open
from clip_core.schema import from_backend, to_backend

from .errors import ConversionError, optional_import
from .tensors import (MAX_TENSORS, TENSOR_DTYPES, LimitExceededError, as_bytes, cast, check_name, checked_nbytes,
                      dtype_name, np_dtype)

__all__ = ["WEIGHTS_NAME", "read_flax_msgpack", "write_flax_msgpack", "is_msgpack_map"]

WEIGHTS_NAME = "flax_model.msgpack"
EXT_NDARRAY, EXT_SCALAR = 1, 3
_CHUNKED = "__msgpack_chunked_array__"
_CHUNK_BYTES = 2 ** 30


def is_msgpack_map(head: bytes) -> bool:
    return bool(head) and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF))


#: Bytes of a flax msgpack file (whole-file read; the largest CLIP, ViT-bigG, is ~10 GB in fp32).
MAX_MSGPACK_BYTES = 64 * 2 ** 30
#: Map entries plus array items in the whole tree (a CLIP tree has a few thousand).
MAX_MSGPACK_ITEMS = 1_000_000
#: Entries of one map, items of one array, characters of one key.
MAX_MSGPACK_MAP = 65_536
MAX_MSGPACK_ARRAY = 4096
MAX_MSGPACK_STR = 65_536
_TREE_DEPTH = 64


class _Budget:
    """Counts map entries and array items as msgpack builds them (bounds Python-object blow-up)."""

    def __init__(self, path) -> None:
        self.path, self.items = path, 0

    def add(self, n: int) -> None:
        self.items += n
        if self.items > MAX_MSGPACK_ITEMS:
            raise LimitExceededError(f"{self.path}: more than {MAX_MSGPACK_ITEMS:,} msgpack map entries / array "
                                     f"items")

    def on_map(self, pairs: list) -> dict:
        self.add(len(pairs))
        out = {}
        for key, value in pairs:
            if not isinstance(key, str):
                raise ConversionError(f"{self.path}: msgpack map key is a {type(key).__name__}, not a string")
            out[key] = value
        return out

    def on_list(self, items: list) -> list:
        self.add(len(items))
        return items


def _unpack_limits(size: int) -> dict:
    return dict(raw=False, strict_map_key=False, max_bin_len=size,
                max_ext_len=size, max_str_len=MAX_MSGPACK_STR, max_map_len=MAX_MSGPACK_MAP,
                max_array_len=MAX_MSGPACK_ARRAY)


def _ext_hook(code: int, data: bytes, path=None, budget: Optional[_Budget] = None) -> Any:
    """A flax ndarray / scalar leaf; every other ext code is refused."""
    import msgpack

    if code not in (EXT_NDARRAY, EXT_SCALAR):
        raise ConversionError(f"{path}: msgpack ext type {code} is not a flax array (only codes "
                              f"{EXT_NDARRAY} and {EXT_SCALAR} are allowed)")
    budget = budget or _Budget(path)
    try:
        leaf = msgpack.unpackb(data, object_pairs_hook=budget.on_map, list_hook=budget.on_list,
                               **_unpack_limits(len(data)))
    except ConversionError:
        raise
    except (ValueError, TypeError, msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException) as err:
        raise ConversionError(f"{path}: corrupt flax array leaf ({type(err).__name__}: {str(err)[:200]})") from None
    if not (isinstance(leaf, (list, tuple)) and len(leaf) == 3):
        raise ConversionError(f"{path}: corrupt flax array leaf (not a (shape, dtype, bytes) triple)")
    shape, name, buf = leaf
    if not isinstance(shape, (list, tuple)) or not all(type(d) is int and d >= 0 for d in shape):
        raise ConversionError(f"{path}: flax array leaf: field 'shape' must be a list of non-negative integers")
    if not isinstance(name, str) or name not in TENSOR_DTYPES:
        raise ConversionError(f"{path}: flax array leaf: unsupported dtype {str(name)[:40]!r}")
    if not isinstance(buf, bytes):
        raise ConversionError(f"{path}: flax array leaf: field 'data' is a {type(buf).__name__}, not bytes")
    dtype = np_dtype(name)
    nbytes = checked_nbytes(shape, dtype, f"{path}: flax array leaf")
    if nbytes != len(buf):
        raise ConversionError(f"{path}: flax array leaf of shape {tuple(shape)} {name} needs {nbytes} bytes, "
                              f"has {len(buf)}")
    a = np.frombuffer(buf, dtype).reshape(shape)
    if code == EXT_SCALAR and a.size != 1:
        raise ConversionError(f"{path}: flax scalar leaf of shape {tuple(shape)}")
    return a if code == EXT_NDARRAY else a.reshape(())


def _flatten(tree: Any, prefix: str, out: dict, path, depth: int = 0) -> None:
    if depth > _TREE_DEPTH:
        raise LimitExceededError(f"{path}: parameter tree nested more than {_TREE_DEPTH} deep at {prefix[:80]!r}")
    if isinstance(tree, dict) and tree.get(_CHUNKED):
        try:
            shape = tuple(tree["shape"][str(i)] for i in range(len(tree["shape"])))
            chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
        except (KeyError, TypeError):
            raise ConversionError(f"{path}: chunked array {prefix!r} is corrupt (needs shape and chunks maps "
                                  f"keyed '0', '1', ...)") from None
        if (not all(type(d) is int and d >= 0 for d in shape) or not chunks
                or not all(isinstance(c, np.ndarray) for c in chunks)
                or len({c.dtype for c in chunks}) != 1):
            raise ConversionError(f"{path}: chunked array {prefix!r}: field 'shape' / 'chunks' is corrupt")
        nbytes = checked_nbytes(shape, chunks[0].dtype, f"{path}: chunked array {prefix!r}")
        if nbytes != sum(c.nbytes for c in chunks):
            raise ConversionError(f"{path}: chunked array {prefix!r}: its chunks do not add up to shape {shape}")
        out[prefix] = np.concatenate([c.reshape(-1) for c in chunks]).reshape(shape)
    elif isinstance(tree, dict):
        for key, value in tree.items():
            if len(out) >= MAX_TENSORS:
                raise LimitExceededError(f"{path}: more than {MAX_TENSORS:,} arrays")
            _flatten(value, check_name(f"{prefix}/{key}" if prefix else str(key), str(path)), out, path, depth + 1)
    elif isinstance(tree, np.ndarray):
        out[prefix] = tree
    else:
        raise ConversionError(f"{path}: leaf {prefix!r} is a {type(tree).__name__}, not an array")


def read_flax_msgpack(path, config: CLIPConfig, part: str = "model",
                      num_labels: Optional[int] = None) -> dict[str, np.ndarray]:
    """Canonical weights from a flax-serialized parameter tree.

    Untrusted files: only flax's ndarray / scalar ext codes are accepted, each leaf's dtype must be
    numeric and its byte length must match its shape; sizes of strings, maps, arrays and the number
    of objects are capped while unpacking (see ``docs/security.md``).
    """
    optional_import("msgpack", f"reading {path} (Flax msgpack weights)")
    import msgpack

    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > MAX_MSGPACK_BYTES:
            raise LimitExceededError(f"{path}: {size:,} bytes (at most {MAX_MSGPACK_BYTES:,} for a msgpack file)")
        data = fh.read()
    budget = _Budget(path)
    try:
        tree = msgpack.unpackb(data, ext_hook=lambda code, raw: _ext_hook(code, raw, path, budget),
                               object_pairs_hook=budget.on_map, list_hook=budget.on_list, **_unpack_limits(len(data)))
    except ConversionError:
        raise
    except (ValueError, TypeError, RecursionError, msgpack.exceptions.ExtraData,
            msgpack.exceptions.UnpackException) as err:
        raise ConversionError(f"{path}: corrupt or truncated msgpack ({type(err).__name__}: "
                              f"{str(err)[:200]})") from None
    if not isinstance(tree, dict):
        raise ConversionError(f"{path}: the msgpack top level is not a map")
    if "params" not in tree:
        tree = {"params": tree}
    flat: dict[str, np.ndarray] = {}
    _flatten(tree, "", flat, path)
    if part == "classification" and num_labels is None:  # the classifier's width is in the file
        num_labels = int(np.shape(flat.get("params/classifier/bias", np.zeros(2)))[0])
    return from_backend(flat, config, "flax", part, num_labels, source=str(path))


def _nest(flat: Mapping[str, Any]) -> dict:
    root: dict = {}
    for path, value in flat.items():
        node = root
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return root


def _pack_tree(packer, tree: Any, fh, dtype: Optional[str], progress, prefix: str = "") -> None:
    import msgpack

    if isinstance(tree, dict):
        fh.write(packer.pack_map_header(len(tree)))
        for key, value in tree.items():
            fh.write(packer.pack(key))
            _pack_tree(packer, value, fh, dtype, progress, f"{prefix}/{key}")
        return
    a = cast(np.asarray(tree), dtype)
    if a.nbytes > _CHUNK_BYTES:
        raise ConversionError(f"tensor {prefix!r} is larger than flax's 1 GiB msgpack leaf limit")
    inner = msgpack.packb((list(a.shape), dtype_name(a.dtype), as_bytes(a)), use_bin_type=True)
    fh.write(packer.pack(msgpack.ExtType(EXT_NDARRAY, inner)))
    if progress:
        progress(prefix)


def write_flax_msgpack(path, config: CLIPConfig, weights: Mapping[str, np.ndarray], dtype: Optional[str] = None,
                       progress: Optional[Callable[[str], None]] = None, part: str = "model",
                       num_labels: Optional[int] = None) -> None:
    """Write ``weights`` (canonical) as a ``flax_model.msgpack`` that ``FlaxCLIPModel.from_pretrained`` reads."""
    optional_import("msgpack", f"writing {path} (Flax msgpack weights)")
    import msgpack

    tree = _nest(to_backend(weights, config, "flax", part, num_labels))
    if set(tree) == {"params"}:
        tree = tree["params"]
    packer = msgpack.Packer(use_bin_type=True)
    with atomic_open(path) as fh:
        _pack_tree(packer, tree, fh, dtype, progress)
