"""Which file in a checkpoint holds the weights, and what kind of file it is — by content."""
from __future__ import annotations

from pathlib import Path

from .errors import ConversionError
from .hf_flax import is_msgpack_map
from .hf_tf import HDF5_MAGIC
from .safetensors_io import is_safetensors
from .torch_zip import ZIP_MAGIC

__all__ = ["WEIGHT_FILES", "weights_file", "sniff"]

#: Files a checkpoint directory may hold, in the order they are preferred.
WEIGHT_FILES = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors",
    "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5",
    "flax_model.msgpack",
)
_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".npz")


def weights_file(directory: Path) -> Path:
    """The weights file of a checkpoint directory."""
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    found = sorted(p for p in directory.iterdir() if p.suffix in _SUFFIXES and p.is_file())
    if len(found) == 1:
        return found[0]
    raise ConversionError(f"{directory}: no checkpoint weights found (looked for {', '.join(WEIGHT_FILES)}"
                          f"{'; found several: ' + ', '.join(p.name for p in found) if found else ''})")


def sniff(path: Path) -> str:
    """``zip``, ``npz`` (big_vision), ``safetensors``, ``hdf5``, ``msgpack``, ``index`` (sharded JSON), ``pickle``
    or ``unknown``."""
    if not path.is_file():  # a FIFO or device would block or never end
        raise ConversionError(f"{path}: not a regular file")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:4] == ZIP_MAGIC:
        from .big_vision import is_npz

        return "npz" if is_npz(path) else "zip"
    if head[:8] == HDF5_MAGIC:
        return "hdf5"
    if is_safetensors(head):
        return "safetensors"
    if head.lstrip()[:1] == b"{" and path.name.endswith(".json"):
        return "index"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "pickle"
    if is_msgpack_map(head):
        return "msgpack"
    if not head:
        raise ConversionError(f"{path}: empty file")
    return "unknown"
