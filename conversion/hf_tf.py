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
from .tensors import cast

__all__ = ["HDF5_MAGIC", "WEIGHTS_NAME", "read_tf_h5", "write_tf_h5"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
WEIGHTS_NAME = "tf_model.h5"
_LAYER = "clip"
_PREFIX = "tfclip_model/clip/"
_STRIP = re.compile(r"^(?:[^/]+/)?clip/|:0$")


def read_tf_h5(path, config: CLIPConfig, part: str = "model",
               num_labels: Optional[int] = None) -> dict[str, np.ndarray]:
    """Canonical weights from a Hugging Face ``tf_model.h5``."""
    h5py = optional_import("h5py", f"reading {path} (TF .h5 weights)")

    params: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            for layer in _attr_list(f.attrs, "layer_names", path):
                group = f[layer]
                for weight in _attr_list(group.attrs, "weight_names", path):
                    if weight not in group:
                        raise ConversionError(f"{path}: weight {weight!r} is listed but has no dataset")
                    params[_STRIP.sub("", weight)] = group[weight][()]
    except OSError as err:
        raise ConversionError(f"{path}: not a readable HDF5 file ({err})") from None
    if part == "classification" and num_labels is None:  # the classifier's width is in the file
        num_labels = int(np.shape(params.get("classifier/bias", np.zeros(2)))[0])
    return from_backend(params, config, "tf", part, num_labels, source=str(path))


def _attr_list(attrs, key: str, path) -> list[str]:
    if key not in attrs:
        raise ConversionError(f"{path}: no '{key}' attribute; not a Keras HDF5 weights file")
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(attrs[key]).reshape(-1)]


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
