"""torch's zip checkpoint container (``torch.save`` and ``torch.jit.save``), read and written without torch.

Layout: one top-level folder ``<archive>/`` holding ``data.pkl`` (the pickled object, tensors as
persistent-id storages), ``data/<key>`` (raw little-endian storage bytes, stored uncompressed and
64-byte aligned), ``byteorder``, ``version`` / ``.format_version`` and, for TorchScript,
``code/``, ``constants.pkl`` + ``constants/<key>``. Records are memory-mapped, not copied.
"""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from clip_core.io import atomic_open

from . import pickle_writer
from .errors import ConversionError
from .pickle_reader import TensorRef, find_tensors, materialize, restricted_load
from .tensors import as_bytes, cast, map_file, np_dtype

__all__ = ["ZIP_MAGIC", "TorchZip", "read_torch_zip", "write_torch_zip"]

ZIP_MAGIC = b"PK\x03\x04"
_ALIGN = 64


class TorchZip:
    """An open torch zip archive with its records memory-mapped."""

    def __init__(self, path) -> None:
        self.path = Path(path)
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as err:
            raise ConversionError(f"{self.path}: not a readable zip archive ({err})") from None
        names = self.zip.namelist()
        self.prefix = names[0].split("/", 1)[0] if names else ""
        self.infos = {i.filename: i for i in self.zip.infolist()}
        with open(self.path, "rb") as fh:
            self.mm = map_file(fh, self.path)

    def has(self, record: str) -> bool:
        return f"{self.prefix}/{record}" in self.infos

    @property
    def is_torchscript(self) -> bool:
        return self.has("constants.pkl") or any(n.startswith(f"{self.prefix}/code/") for n in self.infos)

    def record(self, record: str, what: str = "") -> memoryview:
        """The bytes of ``<archive>/record`` (a view into the map when stored uncompressed)."""
        info = self.infos.get(f"{self.prefix}/{record}")
        if info is None:
            raise ConversionError(f"{self.path}: the archive has no record '{self.prefix}/{record}'"
                                  f"{' (' + what + ')' if what else ''}; the file is incomplete or corrupt")
        if info.compress_type != zipfile.ZIP_STORED:
            return memoryview(self.zip.read(info))
        head = self.mm[info.header_offset:info.header_offset + 30]
        if len(head) < 30 or head[:4] != ZIP_MAGIC:
            raise ConversionError(f"{self.path}: corrupt zip local header for record {record!r}")
        n, extra = struct.unpack("<HH", head[26:30])
        start = info.header_offset + 30 + n + extra
        if start + info.file_size > len(self.mm):
            raise ConversionError(f"{self.path}: record {record!r} is truncated")
        return memoryview(self.mm)[start:start + info.file_size]

    def load_pickle(self, record: str = "data.pkl") -> Any:
        return restricted_load(bytes(self.record(record, "the pickled object")), f"{self.path}:{record}",
                               torchscript=self.is_torchscript)

    def tensors(self, refs: Mapping[str, TensorRef], storage_dir: str = "data") -> dict[str, np.ndarray]:
        """Materialize ``refs`` from the ``storage_dir/<key>`` records."""
        out = {}
        for name, ref in refs.items():
            raw = self.record(f"{storage_dir}/{ref.storage.key}", f"storage of tensor {name!r}")
            dtype = np_dtype(ref.storage.dtype)
            usable = len(raw) - len(raw) % dtype.itemsize
            storage = np.frombuffer(raw[:usable], dtype) if usable else np.zeros(0, dtype)
            out[name] = materialize(ref, storage, name, str(self.path))
        return out


def read_torch_zip(path, skip: Callable[[str], bool] = lambda k: False) -> tuple[str, dict[str, np.ndarray]]:
    """``(kind, {name: array})`` with kind ``torchscript`` or ``state_dict``.

    A TorchScript archive's parameters are found by walking the module tree of ``data.pkl``; a
    ``torch.save`` dict is flattened (a training checkpoint's ``state_dict`` entry is used if present).
    """
    archive = TorchZip(path)
    obj = archive.load_pickle()
    if archive.is_torchscript:
        return "torchscript", archive.tensors(find_tensors(obj, skip=skip))
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: the pickled object is a {type(obj).__name__}, not a state dict")
    refs = find_tensors(obj, skip=skip)
    return "state_dict", archive.tensors(refs)


def _aligned_info(zf: zipfile.ZipFile, name: str, size: int) -> zipfile.ZipInfo:
    """A stored ZipInfo whose data will start on a 64-byte boundary (padding in the extra field)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    offset = zf.fp.tell() + 30 + len(name.encode("utf-8"))
    if size > zipfile.ZIP64_LIMIT:
        offset += 20
    pad = -(offset + 4) % _ALIGN
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    return info


def _write_record(zf: zipfile.ZipFile, name: str, data) -> None:
    data = memoryview(data).cast("B")
    info = _aligned_info(zf, name, len(data))
    with zf.open(info, "w", force_zip64=len(data) > zipfile.ZIP64_LIMIT) as fh:
        fh.write(data)


def read_extra_record(path, record: str) -> Optional[bytes]:
    """The bytes of ``<archive>/record`` in a zip checkpoint, or None if absent."""
    archive = TorchZip(path)
    return bytes(archive.record(record)) if archive.has(record) else None


def write_torch_zip(path, tensors: Mapping[str, np.ndarray], dtype: Optional[str] = None,
                    archive: str = "archive", progress: Optional[Callable[[str], None]] = None,
                    extra_records: Optional[Mapping[str, bytes]] = None) -> None:
    """Write ``tensors`` as a ``torch.save``-compatible state dict (an ``OrderedDict``), atomically.

    ``extra_records`` (``{name: bytes}``) are stored beside ``data.pkl``; torch ignores them."""
    plan = []
    for key, (name, a) in enumerate(tensors.items()):
        a = np.asarray(a)
        plan.append((name, str(key), cast(np.empty(0, a.dtype), dtype).dtype, tuple(a.shape)))
    data_pkl = pickle_writer.state_dict_pickle(plan)
    with atomic_open(path) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        _write_record(zf, f"{archive}/data.pkl", data_pkl)
        _write_record(zf, f"{archive}/.format_version", b"1")
        _write_record(zf, f"{archive}/.storage_alignment", b"64")
        _write_record(zf, f"{archive}/byteorder", b"little")
        for (name, key, _, _), a in zip(plan, tensors.values()):
            _write_record(zf, f"{archive}/data/{key}", as_bytes(cast(np.asarray(a), dtype)))
            if progress:
                progress(name)
        for name, data in (extra_records or {}).items():
            _write_record(zf, f"{archive}/{name}", data)
        _write_record(zf, f"{archive}/version", b"3\n")
        _write_record(zf, f"{archive}/.data/serialization_id", b"0" * 40)
