"""torch's zip checkpoint container (``torch.save`` and ``torch.jit.save``), read and written without torch.

Layout: one top-level folder ``<archive>/`` holding ``data.pkl`` (the pickled object, tensors as
persistent-id storages), ``data/<key>`` (raw little-endian storage bytes, stored uncompressed and
64-byte aligned), ``byteorder``, ``version`` / ``.format_version`` and, for TorchScript,
``code/``, ``constants.pkl`` + ``constants/<key>``. Records are memory-mapped, not copied.

Untrusted archives: the pickle goes through :mod:`conversion.pickle_reader`; every view is checked
against its storage and every storage against its record's size before any data is touched;
storage records may not overlap; compressed records are streamed, never inflated past what the
storage declares nor past :data:`~conversion.tensors.MAX_COMPRESSION_RATIO` times the archive size.
"""
from __future__ import annotations

import lzma
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from clip_core.io import atomic_open

from . import pickle_writer
from .errors import ConversionError
from .pickle_reader import MAX_PICKLE_BYTES, TensorRef, check_aliasing, find_tensors, materialize, restricted_load
from .tensors import MAX_COMPRESSION_RATIO, LimitExceededError, as_bytes, cast, map_file, np_dtype

__all__ = ["ZIP_MAGIC", "TorchZip", "read_torch_zip", "write_torch_zip", "MAX_ZIP_ENTRIES", "MAX_SMALL_RECORD"]

ZIP_MAGIC = b"PK\x03\x04"
_ALIGN = 64
#: Entries in one archive (a TorchScript ViT-L has ~1,000).
MAX_ZIP_ENTRIES = 1_000_000
#: Bytes of a small side record (``version``, ``byteorder``, clip-zoo's config record).
MAX_SMALL_RECORD = 2 ** 20
#: Decompressed bytes any archive may produce regardless of its size.
_INFLATE_FLOOR = 64 * 2 ** 20
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, RuntimeError, NotImplementedError,
               ValueError, struct.error, OverflowError)


class TorchZip:
    """An open torch zip archive with its records memory-mapped.

    Stored records are views into the map; compressed ones are streamed with a cap equal to the
    bytes the caller needs, and the archive as a whole may inflate to at most
    :data:`~conversion.tensors.MAX_COMPRESSION_RATIO` times its size.
    """

    def __init__(self, path) -> None:
        self.path = Path(path)
        try:
            self.zip = zipfile.ZipFile(self.path)
            infos = self.zip.infolist()
        except ConversionError:
            raise
        except _ZIP_ERRORS as err:
            raise ConversionError(f"{self.path}: not a readable zip archive ({type(err).__name__}: "
                                  f"{str(err)[:200]})") from None
        if len(infos) > MAX_ZIP_ENTRIES:
            raise LimitExceededError(f"{self.path}: {len(infos):,} zip entries (at most {MAX_ZIP_ENTRIES:,})")
        self.prefix = infos[0].filename.split("/", 1)[0] if infos else ""
        self.infos = {i.filename: i for i in infos}
        with open(self.path, "rb") as fh:
            self.size = os.fstat(fh.fileno()).st_size
            self.mm = map_file(fh, self.path)
        self.inflated = 0  # bytes produced by decompression so far
        self.inflate_budget = max(_INFLATE_FLOOR, MAX_COMPRESSION_RATIO * self.size)

    def has(self, record: str) -> bool:
        return f"{self.prefix}/{record}" in self.infos

    @property
    def is_torchscript(self) -> bool:
        return self.has("constants.pkl") or any(n.startswith(f"{self.prefix}/code/") for n in self.infos)

    def _info(self, record: str, what: str) -> zipfile.ZipInfo:
        info = self.infos.get(f"{self.prefix}/{record}")
        if info is None:
            raise ConversionError(f"{self.path}: the archive has no record '{self.prefix}/{record}'"
                                  f"{' (' + what + ')' if what else ''}; the file is incomplete or corrupt")
        return info

    def _data_start(self, info: zipfile.ZipInfo, record: str) -> int:
        head = self.mm[info.header_offset:info.header_offset + 30]
        if len(head) < 30 or head[:4] != ZIP_MAGIC:
            raise ConversionError(f"{self.path}: corrupt zip local header for record {record!r}")
        n, extra = struct.unpack("<HH", head[26:30])
        start = info.header_offset + 30 + n + extra
        if start + info.compress_size > self.size:
            raise ConversionError(f"{self.path}: record {record!r} is truncated")
        return start

    def span(self, record: str) -> tuple[int, int]:
        """The ``[start, end)`` bytes of the file holding ``record``'s (possibly compressed) data."""
        info = self._info(record, "")
        start = self._data_start(info, record)
        return start, start + info.compress_size

    def record(self, record: str, what: str = "", need: Optional[int] = None,
               limit: int = MAX_SMALL_RECORD) -> memoryview:
        """The bytes of ``<archive>/record`` (a view into the map when stored uncompressed).

        ``need``: exactly this many bytes are wanted (a storage); the record must hold at least that
        many and no more is decompressed. Otherwise the whole record, which must fit in ``limit``.
        """
        info = self._info(record, what)
        label = f"record {record!r}{' (' + what + ')' if what else ''}"
        declared = info.file_size
        if need is not None and declared < need:
            raise ConversionError(f"{self.path}: {label} holds {declared:,} bytes but its storage declares "
                                  f"{need:,} (truncated or corrupt record)")
        want = need if need is not None else declared
        if need is None and declared > limit:
            raise LimitExceededError(f"{self.path}: {label} is {declared:,} bytes (at most {limit:,})")
        start = self._data_start(info, record)
        if info.compress_type == zipfile.ZIP_STORED:
            if info.compress_size != declared:
                raise ConversionError(f"{self.path}: {label}: stored record sizes disagree")
            return memoryview(self.mm)[start:start + want]
        if self.inflated + want > self.inflate_budget:
            raise LimitExceededError(
                f"{self.path}: {label} would decompress to {want:,} bytes; the archive may inflate to at most "
                f"{self.inflate_budget:,} bytes ({MAX_COMPRESSION_RATIO}x its size) — a zip bomb?")
        self.inflated += want
        try:
            with self.zip.open(info) as fh:
                buf = bytearray()
                while len(buf) < want:
                    chunk = fh.read(min(want - len(buf), 2 ** 24))
                    if not chunk:
                        break
                    buf += chunk
        except _ZIP_ERRORS as err:
            raise ConversionError(f"{self.path}: {label} cannot be decompressed ({type(err).__name__}: "
                                  f"{str(err)[:200]})") from None
        if len(buf) < want:
            raise ConversionError(f"{self.path}: {label} decompresses to {len(buf):,} bytes, expected {want:,}")
        return memoryview(bytes(buf))

    def load_pickle(self, record: str = "data.pkl") -> Any:
        data = self.record(record, "the pickled object", limit=MAX_PICKLE_BYTES)
        return restricted_load(bytes(data), f"{self.path}:{record}", torchscript=self.is_torchscript)

    def tensors(self, refs: Mapping[str, TensorRef], storage_dir: str = "data") -> dict[str, np.ndarray]:
        """Materialize ``refs`` from the ``storage_dir/<key>`` records (all views are validated, and the
        records' sizes checked, before anything is read)."""
        check_aliasing(refs, str(self.path))
        storages: dict[str, tuple[str, TensorRef]] = {}  # key -> (first tensor viewing it, its ref)
        for name, ref in refs.items():
            storages.setdefault(ref.storage.key, (name, ref))
        spans = []
        for key, (name, ref) in storages.items():
            record = f"{storage_dir}/{key}"
            info = self._info(record, f"storage of tensor {name!r}")
            if info.file_size < ref.storage.nbytes:
                raise ConversionError(f"{self.path}: record '{record}' (storage of tensor {name!r}) holds "
                                      f"{info.file_size:,} bytes but its storage declares {ref.storage.nbytes:,} "
                                      f"(truncated or corrupt record)")
            spans.append((*self.span(record), key))
        spans.sort()
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            if start < end:
                raise ConversionError(f"{self.path}: storage records {a!r} and {b!r} overlap in the file")
        arrays = {}
        for key, (name, ref) in storages.items():
            dtype = np_dtype(ref.storage.dtype)
            raw = self.record(f"{storage_dir}/{key}", f"storage of tensor {name!r}", need=ref.storage.nbytes)
            arrays[key] = np.frombuffer(raw, dtype) if len(raw) else np.zeros(0, dtype)
        return {name: materialize(ref, arrays[ref.storage.key], name, str(self.path)) for name, ref in refs.items()}


def read_torch_zip(path, skip: Callable[[str], bool] = lambda k: False) -> tuple[str, dict[str, np.ndarray]]:
    """``(kind, {name: array})`` with kind ``torchscript`` or ``state_dict``.

    A TorchScript archive's parameters are found by walking the module tree of ``data.pkl``; a
    ``torch.save`` dict is flattened (a training checkpoint's ``state_dict`` entry is used if present).
    """
    archive = TorchZip(path)
    obj = archive.load_pickle()
    if archive.is_torchscript:
        return "torchscript", archive.tensors(find_tensors(obj, skip=skip, source=str(path)))
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: the pickled object is a {type(obj).__name__}, not a state dict")
    refs = find_tensors(obj, skip=skip, source=str(path))
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
    return bytes(archive.record(record, limit=MAX_SMALL_RECORD)) if archive.has(record) else None


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
