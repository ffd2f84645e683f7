"""``BatchFeature`` / ``BatchEncoding``: the mappings processors and tokenizers return, as in transformers.

Both are ``dict`` subclasses (so ``model(**inputs)``, ``keys()`` and ``items()`` work as for any dict)
with transformers' extras: attribute access (``inputs.input_ids``), ``.data``,
``convert_to_tensors(tensor_type)`` and ``.to(...)``. ``.to`` follows transformers 4.57 exactly:

* ``BatchFeature.to(device)`` moves every torch tensor; ``.to(dtype)`` / ``.to(device, dtype)`` casts
  only the *floating-point* torch tensors (token ids stay integers); other values (numpy, tf, jax,
  lists) are left as they are.
* ``BatchEncoding.to(device)`` moves the torch tensors; a dtype is not applied (transformers logs a
  warning and leaves the ids alone).

No framework is imported here: torch is looked up in ``sys.modules`` (a torch tensor can only exist
once torch is imported) and conversions go through :mod:`clip_core.tensors`, which imports the
framework a ``return_tensors`` names when it is asked for.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["BatchFeature", "BatchEncoding", "TENSOR_TYPES"]

logger = logging.getLogger(__name__)
TENSOR_TYPES = ("np", "pt", "tf", "jax")


def tensor_type_name(tensor_type: Any) -> Optional[str]:
    """``"np"`` / ``"pt"`` / ``"tf"`` / ``"jax"`` from a string or a ``TensorType``-like enum (``"flax"`` = jax)."""
    kind = getattr(tensor_type, "value", tensor_type)
    if kind is None:
        return None
    if kind == "flax":
        return "jax"
    if kind not in TENSOR_TYPES:
        raise ValueError(f"return_tensors must be one of None, 'np', 'pt', 'tf', 'jax'; got {tensor_type!r}")
    return kind


def _is_torch_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _is_torch_dtype(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.dtype)


def _is_torch_device(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.device)


def _flat_len(value: Any) -> int:
    """Number of leaves of a nested list/tuple (transformers' empty-value rule)."""
    if isinstance(value, (list, tuple)):
        return sum(_flat_len(v) for v in value)
    return 1


def _is_tensor(value: Any, kind: str) -> bool:
    if kind == "np":
        return isinstance(value, np.ndarray)
    if kind == "pt":
        return _is_torch_tensor(value)
    if kind == "tf":
        tf = sys.modules.get("tensorflow")
        return tf is not None and tf.is_tensor(value)
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(value, jax.Array)


def _as_numpy(value: Any) -> np.ndarray:
    """transformers' numpy conversion: ragged lists become object arrays, empty ones int64."""
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple, np.ndarray)):
        if len({len(v) for v in value}) > 1:
            out = np.empty(len(value), dtype=object)
            out[:] = [np.asarray(v) for v in value]
            return out
    if _flat_len(value) == 0:
        return np.asarray(value, dtype=np.int64)
    return np.asarray(value)


def _as_tensor(value: Any, kind: str, encoding: bool) -> Any:
    """One value as a ``kind`` tensor with the dtypes transformers gets (lists of Python numbers become
    int64 / float32 in torch, int32 / float32 in tf and jax; arrays keep their dtype). The framework
    is reached through :func:`clip_core.tensors.convert_to_tensors`, which imports it lazily."""
    from .tensors import convert_to_tensors

    if kind == "np":
        return _as_numpy(value)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], np.ndarray):
        arr = np.array(value)
    elif isinstance(value, (list, tuple)):
        arr = _as_numpy(value)
        if _flat_len(value) == 0:
            arr = arr.astype((np.int64 if kind == "pt" else np.int32) if encoding else np.float32)
        elif arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        elif arr.dtype == np.int64 and kind in ("tf", "jax"):
            arr = arr.astype(np.int32)
    else:
        arr = np.asarray(value)
    if arr.dtype == object:
        raise ValueError("sequences of different lengths")
    return convert_to_tensors(arr, kind)


class BatchFeature(dict):
    """A ``dict`` of model inputs with transformers' ``BatchFeature`` API (see the module docstring)."""

    _encoding = False  # BatchEncoding's dtype rules for convert_to_tensors

    def __init__(self, data: Optional[Dict[str, Any]] = None, tensor_type: Any = None, **kwargs: Any) -> None:
        super().__init__(data or {}, **kwargs)
        self.convert_to_tensors(tensor_type)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, str):
            return super().__getitem__(item)
        if isinstance(item, slice):  # transformers: every value sliced
            return {key: value[item] for key, value in self.items()}
        if isinstance(item, int):
            raise KeyError("Indexing with integers is not available: index the values instead "
                           "(e.g. inputs['input_ids'][0])")
        return super().__getitem__(item)

    @property
    def data(self) -> Dict[str, Any]:
        """The underlying mapping (the object itself, as a plain ``dict`` view of the same values)."""
        return self

    @data.setter
    def data(self, value: Dict[str, Any]) -> None:
        self.clear()
        self.update(value)

    def __reduce__(self):
        return (type(self), (dict(self),))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict.__repr__(self)})"

    def convert_to_tensors(self, tensor_type: Any = None, prepend_batch_axis: bool = False) -> "BatchFeature":
        """Convert the values to ``tensor_type`` tensors in place (``None``: no change); returns self.

        Values that already are tensors of that framework are kept, lists and arrays converted.
        """
        kind = tensor_type_name(tensor_type)
        if kind is None:
            return self
        for key, value in list(self.items()):
            if prepend_batch_axis:
                value = [value]
            if _is_tensor(value, kind):
                continue
            try:
                self[key] = _as_tensor(value, kind, self._encoding)
            except (ValueError, TypeError) as err:
                raise ValueError(
                    f"Unable to create tensor for {key!r} ({err}); use padding=True / truncation=True so that "
                    "every sequence in the batch has the same length") from None
        return self

    def to(self, *args: Any, **kwargs: Any) -> "BatchFeature":
        """Move torch tensors to a device and/or cast the floating-point ones (transformers semantics)."""
        device = kwargs.get("device")
        non_blocking = kwargs.get("non_blocking", False)
        if device is None and args:
            arg = args[0]
            if _is_torch_dtype(arg):
                pass
            elif isinstance(arg, (str, int)) or _is_torch_device(arg):
                device = arg
            else:
                raise ValueError(f"Attempting to cast a BatchFeature to type {arg}. This is not supported.")

        def maybe_to(value: Any) -> Any:
            if _is_torch_tensor(value):
                if value.is_floating_point():
                    return value.to(*args, **kwargs)
                if device is not None:
                    return value.to(device=device, non_blocking=non_blocking)
            return value

        for key, value in list(self.items()):
            self[key] = maybe_to(value)
        return self


class BatchEncoding(BatchFeature):
    """A tokenizer's output: ``BatchFeature`` with transformers' ``BatchEncoding.to`` (device only)."""

    _encoding = True

    def to(self, device: Any, *, non_blocking: bool = False) -> "BatchEncoding":  # type: ignore[override]
        """Move torch tensors to ``device``; anything else (e.g. a dtype) is not applied, as in transformers."""
        if isinstance(device, (str, int)) or _is_torch_device(device):
            for key, value in list(self.items()):
                if hasattr(value, "to") and callable(value.to):
                    self[key] = value.to(device=device, non_blocking=non_blocking)
        else:
            logger.warning(f"Attempting to cast a BatchEncoding to type {device}. This is not supported.")
        return self
