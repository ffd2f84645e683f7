"""A restricted unpickler for torch checkpoints: tensors become numpy arrays, nothing executes.

Only an allow-list of globals resolves (``collections.OrderedDict``, torch's tensor-rebuild
functions, the typed storage classes, TorchScript list builders); every other global — ``os.system``,
``builtins.eval``, any class — raises :class:`~conversion.errors.UnsafePickleError` before it could
be called. TorchScript ``__torch__.*`` classes (only with ``torchscript=True``) become inert
:class:`ScriptObject` placeholders that record the state dict handed to them.

Tensors come back as :class:`TensorRef` (storage key, offset, shape, stride); :func:`materialize`
turns one into an array once its name is known, so a missing storage record names the tensor.
"""
from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from .errors import ConversionError, UnsafePickleError
from .tensors import TORCH_STORAGES

__all__ = ["TensorRef", "ScriptObject", "RestrictedUnpickler", "restricted_load", "materialize"]


@dataclass(frozen=True)
class StorageType:
    """Stands in for ``torch.FloatStorage`` etc.: only its dtype matters."""

    name: str
    dtype: str


@dataclass(frozen=True)
class StorageRef:
    """A persistent-id storage: record ``key`` of ``numel`` elements of ``dtype``."""

    key: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class TensorRef:
    """A tensor still to be read: a strided view into a storage."""

    storage: StorageRef
    offset: int
    shape: tuple
    stride: tuple


class ScriptObject:
    """An inert stand-in for a TorchScript ``__torch__`` class instance; records its state."""

    torch_class = "__torch__"

    def __init__(self, *args: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.torch_class}>"


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise UnsafePickleError(f"tensor rebuilt from a non-storage object {type(storage).__name__}")
    return TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_tensor(storage, storage_offset, size, stride) -> TensorRef:
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None) -> Any:
    return data


def _identity(value, *args) -> Any:
    return value


def _build_list(values) -> list:
    return list(values)


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
    **{("torch.jit._pickle", f"build_{k}list"): _build_list for k in ("int", "double", "bool", "tensor")},
    **{("torch", name): StorageType(name, dtype) for name, dtype in TORCH_STORAGES.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` resolves only the allow-list (see module doc)."""

    def __init__(self, file, source: str, torchscript: bool = False) -> None:
        super().__init__(file)
        self.source, self.torchscript = source, torchscript
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if self.torchscript and (module == "__torch__" or module.startswith("__torch__.")):
            qual = f"{module}.{name}"
            if qual not in self._classes:
                self._classes[qual] = type(name, (ScriptObject,), {"torch_class": qual})
            return self._classes[qual]
        raise UnsafePickleError(f"{self.source}: refusing to load global '{module}.{name}' — only tensors and "
                                f"plain containers are allowed in a checkpoint pickle (nothing was executed)")

    def persistent_load(self, pid: Any) -> StorageRef:
        # zip format: ('storage', type, key, location, numel); legacy format adds view_metadata (None)
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], StorageType) and (len(pid) == 5 or pid[5] is None)):
            raise UnsafePickleError(f"{self.source}: unsupported persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        return StorageRef(str(key), storage_type.dtype, int(numel))


def restricted_load(data: bytes, source: str, torchscript: bool = False) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (errors name ``source``)."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source, torchscript).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise ConversionError(f"{source}: corrupt pickle ({type(err).__name__}: {err})") from None


def materialize(ref: TensorRef, storage: np.ndarray, name: str, source: str) -> np.ndarray:
    """The array ``ref`` describes, viewing ``storage`` (a 1-D array of the storage's dtype)."""
    if storage.size < ref.storage.numel:
        raise ConversionError(f"{source}: storage of tensor {name!r} holds {storage.size} elements, "
                              f"expected {ref.storage.numel} (truncated record)")
    if any(s == 0 for s in ref.shape):
        return np.zeros(ref.shape, storage.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if ref.offset < 0 or any(s < 0 for s in ref.stride) or last >= storage.size:
        raise ConversionError(f"{source}: tensor {name!r} (shape {ref.shape}, stride {ref.stride}, offset "
                              f"{ref.offset}) reaches outside its storage of {storage.size} elements")
    count = int(np.prod(ref.shape))
    if ref.stride == _contiguous_strides(ref.shape):
        return storage[ref.offset:ref.offset + count].reshape(ref.shape)
    view = np.lib.stride_tricks.as_strided(storage[ref.offset:], ref.shape,
                                           [s * storage.itemsize for s in ref.stride], writeable=False)
    return np.ascontiguousarray(view)


def _contiguous_strides(shape: tuple) -> tuple:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


def find_tensors(obj: Any, prefix: str = "", out: Optional[dict] = None,
                 skip: Callable[[str], bool] = lambda k: False) -> dict[str, TensorRef]:
    """Flatten dicts and TorchScript objects into ``{dotted name: TensorRef}``."""
    out = {} if out is None else out
    if isinstance(obj, ScriptObject):
        obj = obj.state
    if isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{prefix}{key}"
            if isinstance(value, TensorRef):
                out[name] = value
            elif isinstance(value, (dict, ScriptObject)) and not skip(name):
                find_tensors(value, name + ".", out, skip)
    return out
