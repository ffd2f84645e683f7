"""Hugging Face TensorFlow weights (``tf_model.h5``), read and written with h5py — no TensorFlow.

The layout is tf-keras' ``save_weights`` HDF5 form as ``TFCLIPModel.save_pretrained`` writes it:
root attributes ``backend``, ``keras_version`` and ``layer_names = ["clip"]``; group ``clip`` with
attribute ``weight_names`` (every weight, in order); one dataset per weight at
``clip/<weight name>``, where a weight name is ``tfclip_model/clip/<schema tf path>:0``.
Names and layouts come from the schema's ``tf`` paths (:func:`clip_core.schema.to_backend`).
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional

import numpy as np

from clip_core.config import CLIPConfig
from clip_core.schema import from_backend, to_backend

from .errors import ConversionError, optional_import
from .tensors import (MAX_COMPRESSION_RATIO, MAX_TENSORS, TENSOR_DTYPES, ExternalReferenceError, LimitExceededError,
                      cast, check_name, checked_nbytes, dtype_name)

__all__ = ["HDF5_MAGIC", "WEIGHTS_NAME", "read_tf_h5", "write_tf_h5"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
WEIGHTS_NAME = "tf_model.h5"
_LAYER = "clip"
_PREFIX = "tfclip_model/clip/"
_STRIP = re.compile(r"^(?:[^/]+/)?clip/|:0$")


#: Elements of a name-list attribute (``layer_names`` / ``weight_names``; Keras keeps each under 64 KB).
MAX_H5_NAMES = 8192
#: Bytes of a fixed-length string attribute.
MAX_H5_ATTR_BYTES = 2 ** 20
#: Chunks of one dataset, and bytes of one chunk.
MAX_H5_CHUNKS = 100_000
MAX_H5_CHUNK_BYTES = 256 * 2 ** 20
_H5_INFLATE_FLOOR = 64 * 2 ** 20


def read_tf_h5(path, config: CLIPConfig, part: str = "model",
               num_labels: Optional[int] = None) -> dict[str, np.ndarray]:
    """Canonical weights from a Hugging Face ``tf_model.h5``.

    Untrusted files: every link followed must be a hard link inside the file; datasets with external
    raw storage, virtual datasets and non-numeric dtypes are refused; declared sizes are checked
    against the limits, the file size and each other (no aliased storage) before any data is read.
    """
    h5py = optional_import("h5py", f"reading {path} (TF .h5 weights)")

    params: dict[str, np.ndarray] = {}
    try:
        size = os.path.getsize(path)
        with h5py.File(path, "r") as f:
            plan = _h5_plan(f, path, size, h5py)
            for param, weight, dataset in plan:
                try:
                    params[param] = dataset[()]
                except (OSError, ValueError, TypeError, RuntimeError) as err:
                    raise ConversionError(f"{path}: dataset {weight!r} cannot be read ({type(err).__name__}: "
                                          f"{str(err)[:200]})") from None
    except ConversionError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError) as err:
        raise ConversionError(f"{path}: not a readable HDF5 file ({type(err).__name__}: {str(err)[:200]})") from None
    if part == "classification" and num_labels is None:  # the classifier's width is in the file
        num_labels = int(np.shape(params.get("classifier/bias", np.zeros(2)))[0])
    return from_backend(params, config, "tf", part, num_labels, source=str(path))


def _h5_plan(f, path, size: int, h5py) -> list:
    """``[(parameter path, weight name, dataset)]``, every dataset checked (see :func:`_check_dataset`),
    no two sharing an object or a byte of the file."""
    plan, seen, spans = [], {}, []
    budget = max(_H5_INFLATE_FLOOR, MAX_COMPRESSION_RATIO * size)
    for layer in _attr_list(f.attrs, "layer_names", path):
        group = _h5_resolve(f, layer, path, h5py, f"layer {layer!r}")
        if not isinstance(group, h5py.Group):
            raise ConversionError(f"{path}: layer {layer!r} is not a group")
        for weight in _attr_list(group.attrs, "weight_names", path):
            dataset = _h5_resolve(group, weight, path, h5py, f"weight {weight!r}")
            if len(plan) >= MAX_TENSORS:
                raise LimitExceededError(f"{path}: more than {MAX_TENSORS:,} weights")
            identity = hash(dataset.id)
            if identity in seen:
                raise ConversionError(f"{path}: weights {seen[identity]!r} and {weight!r} are the same dataset "
                                      f"(hard-linked twice)")
            seen[identity] = weight
            inflated, ranges = _check_dataset(dataset, weight, path, size, h5py)
            budget -= inflated
            if budget < 0:
                raise LimitExceededError(f"{path}: compressed datasets would inflate beyond {MAX_COMPRESSION_RATIO}x "
                                         f"the file size (at {weight!r})")
            spans += [(start, start + n, weight) for start, n in ranges]
            plan.append((_STRIP.sub("", weight), weight, dataset))
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise ConversionError(f"{path}: the stored bytes of weights {a!r} and {b!r} overlap")
    return plan


def _h5_resolve(node, name: str, path, h5py, what: str):
    """``node[name]``, following only hard links inside the file (no soft / external / user links)."""
    parts = name.split("/")
    if any(p in ("", ".") for p in parts):
        raise ConversionError(f"{path}: {what} is not a relative HDF5 path")
    for k, part in enumerate(parts):
        link = node.get(part, getlink=True)
        if link is None:
            raise ConversionError(f"{path}: {what} is listed but has no dataset"
                                  f"{'' if k == len(parts) - 1 else ' (no group ' + '/'.join(parts[:k + 1]) + ')'}")
        if not isinstance(link, h5py.HardLink):
            kind = {h5py.SoftLink: "a soft link", h5py.ExternalLink: "an external link to another file"}.get(
                type(link), f"a {type(link).__name__}")
            raise ExternalReferenceError(f"{path}: {what}: '{'/'.join(parts[:k + 1])}' is {kind}; only hard links "
                                         f"inside the file are followed")
        node = node[part]
    return node


def _check_dataset(dataset, name: str, path, size: int, h5py) -> tuple[int, list]:
    """Refuse what a weights dataset must not be, from its metadata only; returns (bytes inflated by
    filters, [(file offset, stored bytes)])."""
    where = f"{path}: dataset {name!r}"
    if not isinstance(dataset, h5py.Dataset):
        raise ConversionError(f"{where} is a {type(dataset).__name__}, not a dataset")
    if dataset.is_virtual:
        raise ExternalReferenceError(f"{where} is a virtual dataset (it maps other files); refused")
    dcpl = dataset.id.get_create_plist()
    if dcpl.get_external_count() > 0:
        raise ExternalReferenceError(f"{where} keeps its data in external file(s); refused")
    dtype = dataset.dtype
    if (dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None
            or dtype_name(dtype) not in TENSOR_DTYPES):
        raise ConversionError(f"{where} has dtype {str(dtype)[:40]!r}; only numeric tensors are allowed "
                              f"(no object, variable-length, string or compound data)")
    if dataset.shape is None:
        raise ConversionError(f"{where} has no dataspace (a null dataset)")
    nbytes = checked_nbytes(dataset.shape, dtype, where)
    stored = dataset.id.get_storage_size()
    filtered = dcpl.get_nfilters() > 0
    if nbytes and not filtered and stored < nbytes:
        raise LimitExceededError(f"{where} declares {nbytes:,} bytes but stores {stored:,} (unallocated storage "
                                 f"would be filled with the fill value)")
    if filtered and nbytes > MAX_COMPRESSION_RATIO * stored + 2 ** 20:
        raise LimitExceededError(f"{where} would inflate {stored:,} stored bytes to {nbytes:,}")
    layout = dcpl.get_layout()
    ranges: list = []
    if layout == h5py.h5d.CONTIGUOUS and nbytes:
        offset = dataset.id.get_offset()
        if offset is None or offset + stored > size:
            raise ConversionError(f"{where}: its data lies outside the file")
        ranges.append((offset, stored))
    elif layout == h5py.h5d.CHUNKED:
        chunk = checked_nbytes(dataset.chunks or (), dtype, f"{where} chunk", MAX_H5_CHUNK_BYTES)
        count = dataset.id.get_num_chunks()
        if count > MAX_H5_CHUNKS or not chunk:
            raise LimitExceededError(f"{where} has {count:,} chunks of {chunk:,} bytes")
        for k in range(count):
            info = dataset.id.get_chunk_info(k)
            if info.byte_offset is None or info.byte_offset + info.size > size:
                raise ConversionError(f"{where}: chunk {k} lies outside the file")
            ranges.append((info.byte_offset, info.size))
    elif layout not in (h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS):
        raise ConversionError(f"{where} has an unsupported storage layout ({layout})")
    return (nbytes if filtered else 0), ranges


def _attr_list(attrs, key: str, path) -> list[str]:
    if key not in attrs:
        raise ConversionError(f"{path}: no '{key}' attribute; not a Keras HDF5 weights file")
    h5py = optional_import("h5py", f"reading {path} (TF .h5 weights)")
    attr = attrs.get_id(key)
    shape, dtype = attr.shape, attr.dtype
    count = int(np.prod(shape)) if shape else 1
    if shape is None or len(shape) > 1 or h5py.check_string_dtype(dtype) is None:
        raise ConversionError(f"{path}: attribute '{key}' must be a list of strings")
    if count > MAX_H5_NAMES or (dtype.kind == "S" and dtype.itemsize * count > MAX_H5_ATTR_BYTES):
        raise LimitExceededError(f"{path}: attribute '{key}' has {count:,} entries of {dtype.itemsize} bytes "
                                 f"(at most {MAX_H5_NAMES:,} names, {MAX_H5_ATTR_BYTES:,} bytes)")
    out = []
    for v in np.asarray(attrs[key]).reshape(-1):
        try:
            name = v.decode("utf-8") if isinstance(v, bytes) else v
        except UnicodeDecodeError:
            raise ConversionError(f"{path}: attribute '{key}' holds a name that is not UTF-8") from None
        if not isinstance(name, str):
            raise ConversionError(f"{path}: attribute '{key}' holds a {type(name).__name__}, not a name")
        out.append(check_name(name, f"{path}: attribute '{key}'"))
    return out


def write_tf_h5(path, config: CLIPConfig, weights: Mapping[str, np.ndarray], dtype: Optional[str] = None,
                progress: Optional[Callable[[str], None]] = None, part: str = "model",
                num_labels: Optional[int] = None) -> None:
    """Write ``weights`` (canonical) as a ``tf_model.h5`` that ``TFCLIPModel.from_pretrained`` reads."""
    h5py = optional_import("h5py", f"writing {path} (TF .h5 weights)")

    params = to_backend(weights, config, "tf", part, num_labels)
    names = [f"{_PREFIX}{p}:0" for p in params]
    str_type = h5py.string_dtype("utf-8")
    with _atomic_path(Path(path)) as tmp, h5py.File(tmp, "w") as f:  # HDF5's own file driver: fast
        f.attrs.create("backend", "tensorflow", dtype=str_type)
        f.attrs.create("keras_version", "2.21.0", dtype=str_type)
        f.attrs.create("layer_names", np.array([_LAYER], dtype=object), dtype=str_type)
        group = f.create_group(_LAYER)
        group.attrs.create("weight_names", np.array(names, dtype=object), dtype=str_type)
        for (path_, a), name in zip(params.items(), names):
            group.create_dataset(name, data=cast(np.asarray(a), dtype))
            if progress:
                progress(path_)


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[str]:
    """A temp file name beside ``path``; fsynced and renamed over ``path`` once the block succeeds.

    The file gets the umask's mode (as ``open()`` would), not ``mkstemp``'s ``0o600``."""
    from clip_core.io import file_mode

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
