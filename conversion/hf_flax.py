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

from typing import Any, Callable, Mapping, Optional

import numpy as np

from clip_core.config import CLIPConfig
from clip_core.io import atomic_open
from clip_core.schema import from_backend, to_backend

from .errors import ConversionError, optional_import
from .tensors import as_bytes, cast, dtype_name, np_dtype

__all__ = ["WEIGHTS_NAME", "read_flax_msgpack", "write_flax_msgpack", "is_msgpack_map"]

WEIGHTS_NAME = "flax_model.msgpack"
EXT_NDARRAY, EXT_SCALAR = 1, 3
_CHUNKED = "__msgpack_chunked_array__"
_CHUNK_BYTES = 2 ** 30


def is_msgpack_map(head: bytes) -> bool:
    return bool(head) and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF))


def _ext_hook(code: int, data: bytes) -> Any:
    import msgpack

    if code not in (EXT_NDARRAY, EXT_SCALAR):
        return msgpack.ExtType(code, data)
    shape, name, buf = msgpack.unpackb(data, raw=False)
    a = np.frombuffer(buf, np_dtype(name)).reshape(shape)
    return a if code == EXT_NDARRAY else a.reshape(())


def _flatten(tree: Any, prefix: str, out: dict, path) -> None:
    if isinstance(tree, dict) and tree.get(_CHUNKED):
        shape = tuple(tree["shape"][str(i)] for i in range(len(tree["shape"])))
        chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
        out[prefix] = np.concatenate(chunks).reshape(shape)
    elif isinstance(tree, dict):
        for key, value in tree.items():
            _flatten(value, f"{prefix}/{key}" if prefix else str(key), out, path)
    elif isinstance(tree, np.ndarray):
        out[prefix] = tree
    else:
        raise ConversionError(f"{path}: leaf {prefix!r} is a {type(tree).__name__}, not an array")


def read_flax_msgpack(path, config: CLIPConfig, part: str = "model",
                      num_labels: Optional[int] = None) -> dict[str, np.ndarray]:
    """Canonical weights from a flax-serialized parameter tree."""
    optional_import("msgpack", f"reading {path} (Flax msgpack weights)")
    import msgpack

    with open(path, "rb") as fh:
        data = fh.read()
    try:
        tree = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException) as err:
        raise ConversionError(f"{path}: corrupt or truncated msgpack ({type(err).__name__}: {err})") from None
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
