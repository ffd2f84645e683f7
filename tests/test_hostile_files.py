"""Hostile checkpoints: a corpus of crafted files, generated here, that must each be refused cleanly.

Every case is a builder that writes one file (or directory) into ``tmp_path``. Loading it must raise
exactly the expected :class:`conversion.ConversionError` (sub)class, with a one-line message that
names the file and the field / tensor at fault, within 5 s, without allocating anything huge
(peak RSS growth here; the bomb cases again in a subprocess under a small ``RLIMIT_AS``), without
creating the marker file a payload would create — and a legitimate checkpoint loaded afterwards in
the same process must come back bit-identical (no process-wide poisoning).

Categories: ``security`` (code execution, state poisoning, reading other files), ``resource``
(memory / time / recursion bombs) and ``malformed`` (corrupt or ill-typed fields).
"""
from __future__ import annotations

import atexit
import functools
import json
import math
import os
import pickle
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

import conversion
from clip_core.testing import random_weights
from conversion import ConversionError, UnsafePickleError
from conversion.openai import canonical_to_openai
from conversion.safetensors_io import read_safetensors, write_safetensors
from conversion.tensors import ExternalReferenceError, LimitExceededError

from test_conversion_helpers import assert_same, openai_tiny

ROOT = Path(__file__).resolve().parents[1]
CONFIG = openai_tiny("vit")
WEIGHTS = random_weights(CONFIG, seed=11)
MiB = 2 ** 20


# ============================================================================ corpus machinery
@dataclass
class Case:
    id: str
    category: str  # security | resource | malformed
    build: Callable[[Path, Path], Path]  # (directory, marker) -> what to load
    error: type  # the exact class expected
    field: str  # a substring the message must contain (the field / tensor / reason)
    config: bool = False  # pass CONFIG (HDF5 / msgpack have no config of their own)
    bomb: bool = False  # also run under RLIMIT_AS in a subprocess
    loader: str = "load_checkpoint"  # or a format reader: "read_safetensors"
    names: Optional[str] = None  # the file name the message must contain (default: the built path's)


CASES: list[Case] = []


def case(id: str, category: str, error: type, field: str, **kw) -> Callable:
    def register(build: Callable) -> Callable:
        CASES.append(Case(id, category, build, error, field, **kw))
        return build
    return register


def add(id: str, category: str, build: Callable, error: type, field: str, **kw) -> None:
    CASES.append(Case(id, category, build, error, field, **kw))


# ============================================================================ pickle assembly
PROTO, STOP, MARK, TUPLE, REDUCE, SETITEMS, SETITEM, BUILD = b"\x80\x02", b".", b"(", b"t", b"R", b"u", b"s", b"b"


def g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def s(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def i(n: int) -> bytes:
    if -2 ** 31 <= n < 2 ** 31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def f(x: float) -> bytes:
    return b"G" + struct.pack(">d", x)


def put(k: int) -> bytes:
    return b"q" + bytes([k])


def get(k: int) -> bytes:
    return b"h" + bytes([k])


def tup(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def odict() -> bytes:
    return g("collections", "OrderedDict") + b")" + REDUCE


def storage(key: str = "0", numel: bytes | int = 4, stype: str = "FloatStorage",
            key_op: Optional[bytes] = None) -> bytes:
    numel_op = numel if isinstance(numel, bytes) else i(numel)
    return tup(s("storage"), g("torch", stype), key_op or s(key), s("cpu"), numel_op) + b"Q"


def tensor(key: str = "0", numel: bytes | int = 4, shape=(4,), stride=(1,), offset: bytes | int = 0,
           stype: str = "FloatStorage", storage_op: Optional[bytes] = None, extra: bytes = b"\x89") -> bytes:
    off = offset if isinstance(offset, bytes) else i(offset)
    size_op = shape if isinstance(shape, bytes) else tup(*map(i, shape))
    stride_op = stride if isinstance(stride, bytes) else tup(*map(i, stride))
    return g("torch._utils", "_rebuild_tensor_v2") + tup(storage_op or storage(key, numel, stype), off, size_op,
                                                         stride_op, extra, odict()) + REDUCE


def state_dict(*items: tuple[str, bytes]) -> bytes:
    return PROTO + odict() + MARK + b"".join(s(name) + value for name, value in items) + SETITEMS + STOP


def with_value(value: bytes) -> bytes:
    """A state dict with one tensor and one entry holding ``value`` (payloads hide among tensors)."""
    return state_dict(("w", tensor()), ("x", value))


def torch_zip(path: Path, pkl: bytes, records: Optional[dict] = None, archive: str = "archive",
              compress: int = zipfile.ZIP_STORED, extra: Optional[dict] = None) -> Path:
    records = {"0": np.arange(4, dtype=np.float32).tobytes()} if records is None else records
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{archive}/data.pkl", pkl, compress_type=compress)
        zf.writestr(f"{archive}/version", "3\n")
        for key, data in records.items():
            zf.writestr(f"{archive}/data/{key}", data)
        for name, data in (extra or {}).items():
            zf.writestr(f"{archive}/{name}", data)
    return path


_SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


def legacy(path: Path, obj: bytes, keys=("0",), storages: Optional[list] = None, magic: Optional[bytes] = None,
           protocol: int = 1001, keys_pkl: Optional[bytes] = None) -> Path:
    """A pre-1.6 ``torch.save`` file: magic, protocol, sys_info, object, keys, then counted storages."""
    storages = [(4, np.arange(4, dtype=np.float32).tobytes())] if storages is None else storages
    blob = (magic or pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)) + pickle.dumps(protocol, protocol=2)
    blob += pickle.dumps(_SYS_INFO, protocol=2) + obj + (keys_pkl or pickle.dumps(list(keys), protocol=2))
    for count, data in storages:
        blob += struct.pack("<q", count) + data
    path.write_bytes(blob)
    return path


def patch_zip(path: Path, record: str, **fields: int) -> Path:
    """Rewrite header fields of one record (central directory and local header)."""
    data = bytearray(path.read_bytes())
    central = {"flag": (8, "<H"), "method": (10, "<H"), "crc": (16, "<I"), "usize": (24, "<I"), "offset": (42, "<I")}
    local = {"flag": 6, "method": 8, "crc": 14, "usize": 22}
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:
        n = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46:pos + 46 + n].decode() == record:
            header = struct.unpack_from("<I", data, pos + 42)[0]
            for name, value in fields.items():
                off, fmt = central[name]
                struct.pack_into(fmt, data, pos + off, value)
                if name in local:
                    struct.pack_into(fmt, data, header + local[name], value)
            path.write_bytes(bytes(data))
            return path
        pos = data.find(b"PK\x01\x02", pos + 4)
    raise AssertionError(f"no record {record}")


def record_offset(path: Path, record: str) -> int:
    with zipfile.ZipFile(path) as zf:
        return zf.getinfo(record).header_offset


# ============================================================================ legitimate files
@functools.lru_cache(maxsize=None)
def legit_dir() -> Path:
    """Legitimate checkpoints of every format, written once by the project's own writers."""
    d = Path(tempfile.mkdtemp(prefix="clip_zoo_legit_"))
    atexit.register(shutil.rmtree, d, True)
    conversion.save_checkpoint(d / "openai.pt", CONFIG, WEIGHTS, format="openai")
    conversion.save_checkpoint(d / "tf_model.h5", CONFIG, WEIGHTS, format="tf")
    conversion.save_checkpoint(d / "flax_model.msgpack", CONFIG, WEIGHTS, format="flax")
    write_safetensors(d / "model.safetensors", WEIGHTS)
    write_safetensors(d / "openai.safetensors", canonical_to_openai(WEIGHTS, CONFIG))
    # the same OpenAI state dict in the legacy (pre-1.6) format, assembled with the project's pickle writer
    from conversion import pickle_writer
    sd = canonical_to_openai(WEIGHTS, CONFIG)
    plan = [(name, str(k), np.asarray(a).dtype, np.shape(a)) for k, (name, a) in enumerate(sd.items())]
    legacy(d / "legacy.bin", pickle_writer.state_dict_pickle(plan), keys=[p[1] for p in plan],
           storages=[(np.size(a), np.ascontiguousarray(a).tobytes()) for a in sd.values()])
    return d


def legit(name: str) -> bytes:
    return (legit_dir() / name).read_bytes()


def hf_dir(d: Path, config: object = None, weights: str = "model.safetensors") -> Path:
    """A Hugging Face layout: legitimate weights beside ``config`` (a dict, or raw text)."""
    out = d / "ckpt"
    out.mkdir()
    (out / weights).write_bytes(legit({"tf_model.h5": "tf_model.h5"}.get(weights, "model.safetensors")))
    if not isinstance(config, (str, bytes)):
        config = json.dumps(config if config is not None else CONFIG.to_dict())
    text = config
    (out / "config.json").write_bytes(text.encode() if isinstance(text, str) else text)
    return out


def assert_legit_loads_identically() -> None:
    """Nothing a hostile file did may change what a legitimate load returns."""
    for name in ("openai.pt", "legacy.bin", "model.safetensors"):
        got = conversion.load_checkpoint(legit_dir() / name, CONFIG)[1]
        assert_same(got, WEIGHTS)


# ============================================================================ pickles: security
def _cmd(marker: Path) -> str:
    return f"touch {marker}"


def _py(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


_CALLS = [  # (id, module, name, argument builder)
    ("os_system", "os", "system", _cmd), ("posix_system", "posix", "system", _cmd),
    ("nt_system", "nt", "system", _cmd), ("builtins_eval", "builtins", "eval", _py),
    ("builtins_exec", "builtins", "exec", _py), ("py2_builtin_eval", "__builtin__", "eval", _py),
    ("builtins_getattr", "builtins", "getattr", _py), ("builtins_open", "builtins", "open", lambda m: str(m)),
    ("subprocess_call", "subprocess", "call", _cmd), ("os_popen", "os", "popen", _cmd),
    ("torch_load", "torch", "load", lambda m: "/etc/passwd"), ("torch_serialization_load", "torch.serialization",
                                                               "load", lambda m: "/etc/passwd"),
    ("numpy_reconstruct", "numpy.core.multiarray", "_reconstruct", _cmd),
    ("numpy_load", "numpy", "load", lambda m: "/etc/passwd"), ("runpy", "runpy", "run_path", lambda m: "/tmp/x.py"),
    ("importlib", "importlib", "import_module", lambda m: "os"),
    ("torch_storage_from_file", "torch", "from_file", lambda m: "/etc/passwd"),
    ("torch_utils_other", "torch._utils", "_load_global_deps", _cmd),
    ("script_class_outside_torchscript", "__torch__.evil", "Boom", _cmd),
]
for _id, _mod, _name, _arg in _CALLS:
    def _build(d, marker, mod=_mod, name=_name, arg=_arg):
        return torch_zip(d / "evil.pt", with_value(g(mod, name) + tup(s(arg(marker))) + REDUCE))
    add(f"global_{_id}", "security", _build, UnsafePickleError, f"refusing to load global '{_mod}.{_name}'")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (_cmd(self.marker),)


@case("real_pickle_dumps_zip", "security", UnsafePickleError, "refusing to load global")
def _(d, marker):
    return torch_zip(d / "evil.pt", pickle.dumps({"x": _Payload(marker)}, protocol=2))


@case("real_pickle_dumps_protocol5", "security", UnsafePickleError, "refusing to load global")
def _(d, marker):
    return torch_zip(d / "evil.pt", pickle.dumps({"x": _Payload(marker)}, protocol=5))


@case("raw_pickle_file", "security", UnsafePickleError, "refusing to load global")
def _(d, marker):
    (d / "evil.pkl").write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    return d / "evil.pkl"


@case("stack_global_eval", "security", UnsafePickleError, "refusing to load global 'builtins.eval'")
def _(d, marker):
    return torch_zip(d / "evil.pt", with_value(s("builtins") + s("eval") + b"\x93" + tup(s(_py(marker))) + REDUCE))


@case("inst_opcode", "security", UnsafePickleError, "INST opcode")
def _(d, marker):
    return torch_zip(d / "evil.pt", with_value(MARK + s(_cmd(marker)) + b"ios\nsystem\n"))


@case("obj_opcode_allowed_class", "security", UnsafePickleError, "OBJ opcode")
def _(d, marker):
    return torch_zip(d / "evil.pt", with_value(MARK + g("collections", "OrderedDict") + b"o"))


@case("ext1_opcode", "security", UnsafePickleError, "EXT1 opcode")
def _(d, marker):
    return torch_zip(d / "evil.pt", with_value(b"\x82\x01"))


@case("persid_text_opcode", "security", UnsafePickleError, "PERSID opcode")
def _(d, marker):
    return torch_zip(d / "evil.pt", with_value(b"P0\n"))


@case("next_buffer_opcode", "security", UnsafePickleError, "NEXT_BUFFER opcode")
def _(d, marker):
    return torch_zip(d / "evil.pt", b"\x80\x05" + b"\x97" + STOP)


@case("newobj_allowed_class", "security", UnsafePickleError, "refusing to instantiate")
def _(d, marker):
    return torch_zip(d / "evil.pt", with_value(g("collections", "OrderedDict") + b")\x81"))


@case("newobj_ex_kwargs", "security", UnsafePickleError, "keyword arguments")
def _(d, marker):
    return torch_zip(d / "evil.pt", with_value(g("collections", "OrderedDict") + b")" + b"}" + s("k") + i(1) + SETITEM
                                               + b"\x92"))


@case("script_class_reduce_in_torchscript", "security", UnsafePickleError, "refusing to call")
def _(d, marker):
    return torch_zip(d / "evil.pt", with_value(g("__torch__.evil", "Boom") + tup(s(_cmd(marker))) + REDUCE),
                     extra={"code/__torch__/evil.py": b"os.system('x')"})


# ---- process-wide poisoning (BUILD / SETITEM / APPEND on shared objects)
@case("poison_build_floatstorage_repro", "security", UnsafePickleError,
      "BUILD (set state) on the global torch.FloatStorage")
def _(d, marker):
    return torch_zip(d / "poison.pt", b"\x80\x02ctorch\nFloatStorage\n}\x8c\x05dtype\x8c\x07float16sb0}.")


@case("poison_build_floatstorage_legacy", "security", UnsafePickleError, "BUILD (set state)")
def _(d, marker):
    return legacy(d / "poison.bin", b"\x80\x02ctorch\nFloatStorage\n}\x8c\x05dtype\x8c\x07float16sb0}.")


@case("poison_build_then_use", "security", UnsafePickleError, "BUILD (set state) on the global torch.HalfStorage")
def _(d, marker):
    stype = g("torch", "HalfStorage") + put(9) + b"}" + s("dtype") + s("float32") + SETITEM + BUILD + b"0"
    return torch_zip(d / "poison.pt", PROTO + stype + state_dict(("w", tensor()))[2:])


@case("poison_setitems_storage_type", "security", UnsafePickleError, "SETITEM on the global torch.FloatStorage")
def _(d, marker):
    return torch_zip(d / "poison.pt", PROTO + g("torch", "FloatStorage") + MARK + s("dtype") + s("float16") + SETITEMS
                     + STOP)


@case("poison_build_rebuild_function", "security", UnsafePickleError, "BUILD (set state) on the global torch._utils")
def _(d, marker):
    return torch_zip(d / "poison.pt", PROTO + g("torch._utils", "_rebuild_tensor_v2") + b"}" + s("__code__") + i(1)
                     + SETITEM + BUILD + STOP)


@case("poison_setitem_ordered_dict_class", "security", UnsafePickleError,
      "SETITEM on the global collections.OrderedDict")
def _(d, marker):
    return torch_zip(d / "poison.pt", PROTO + g("collections", "OrderedDict") + s("k") + s("v") + SETITEM + STOP)


@case("poison_append_list_builder", "security", UnsafePickleError, "APPEND on the global torch.jit._pickle")
def _(d, marker):
    return torch_zip(d / "poison.pt", PROTO + g("torch.jit._pickle", "build_intlist") + i(1) + b"a" + STOP)


@case("poison_build_tensor", "security", UnsafePickleError, "BUILD (set state) on a TensorRef")
def _(d, marker):
    return torch_zip(d / "poison.pt", PROTO + tensor() + b"}" + s("storage") + i(1) + SETITEM + BUILD + STOP)


@case("build_on_plain_dict", "security", UnsafePickleError, "BUILD (set state) on a dict")
def _(d, marker):
    return torch_zip(d / "evil.pt", PROTO + b"}" + b"}" + BUILD + STOP)


@case("call_storage_type", "security", UnsafePickleError, "refusing to call torch.FloatStorage")
def _(d, marker):
    return torch_zip(d / "evil.pt", with_value(g("torch", "FloatStorage") + tup(i(3)) + REDUCE))


@case("persistent_id_string", "security", UnsafePickleError, "unsupported persistent id")
def _(d, marker):
    return torch_zip(d / "evil.pt", with_value(s("/etc/passwd") + b"Q"))


@case("persistent_id_not_a_storage_type", "security", UnsafePickleError, "not a torch storage type")
def _(d, marker):
    pid = tup(s("storage"), g("collections", "OrderedDict"), s("0"), s("cpu"), i(4)) + b"Q"
    return torch_zip(d / "evil.pt", with_value(pid))


@case("tensor_from_non_storage", "security", UnsafePickleError, "not a storage")
def _(d, marker):
    return torch_zip(d / "evil.pt", with_value(tensor(storage_op=b"}")))


@case("self_referencing_list", "security", UnsafePickleError, "inserted into itself")
def _(d, marker):
    return torch_zip(d / "evil.pt", with_value(b"]" + put(7) + get(7) + b"a"))


@case("cycle_through_frozen_dict", "security", UnsafePickleError, "already inside another object")
def _(d, marker):
    body = b"}" + put(0) + s("a") + b"}" + put(1) + SETITEM + b"0" + get(1) + s("b") + get(0) + SETITEM
    return torch_zip(d / "evil.pt", PROTO + body + STOP)


@case("mutate_after_insert", "security", UnsafePickleError, "already inside another object")
def _(d, marker):
    body = b"}" + s("l") + b"]" + put(3) + SETITEM + get(3) + i(5) + b"a"
    return torch_zip(d / "evil.pt", PROTO + body + STOP)


@case("tuple_dict_key_hash_bomb", "security", UnsafePickleError, "dict key / set item a tuple")
def _(d, marker):
    return torch_zip(d / "evil.pt", PROTO + b"}" + tup(i(1)) + i(1) + SETITEM + STOP)


@case("ordered_dict_pairs_tuple_key", "security", UnsafePickleError, "dict key / set item a tuple")
def _(d, marker):
    pairs = b"]" + MARK + tup(tup(i(1)), i(2)) + b"e"
    return torch_zip(d / "evil.pt", PROTO + g("collections", "OrderedDict") + tup(pairs) + REDUCE + STOP)


@case("legacy_payload_in_object", "security", UnsafePickleError, "refusing to load global 'os.system'")
def _(d, marker):
    return legacy(d / "evil.bin", PROTO + g("os", "system") + tup(s(_cmd(marker))) + REDUCE + STOP)


@case("legacy_payload_as_magic", "security", UnsafePickleError, "refusing to load global")
def _(d, marker):
    return legacy(d / "evil.bin", state_dict(("w", tensor())), magic=pickle.dumps(_Payload(marker), protocol=2))


@case("legacy_payload_in_keys", "security", UnsafePickleError, "refusing to load global")
def _(d, marker):
    return legacy(d / "evil.bin", state_dict(("w", tensor())), keys_pkl=pickle.dumps(_Payload(marker), protocol=2))


@case("hf_bin_payload", "security", UnsafePickleError, "refusing to load global", names="pytorch_model.bin")
def _(d, marker):
    out = hf_dir(d)
    (out / "model.safetensors").unlink()
    torch_zip(out / "pytorch_model.bin", pickle.dumps({"x": _Payload(marker)}, protocol=2))
    return out


@case("sharded_index_absolute_shard", "security", ConversionError, "must be plain file names")
def _(d, marker):
    secret = d / "elsewhere"
    secret.mkdir()
    (secret / "private.safetensors").write_bytes(legit("model.safetensors"))
    out = hf_dir(d)
    (out / "model.safetensors").unlink()
    index = {"weight_map": {n: str(secret / "private.safetensors") for n in WEIGHTS}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    return out / "model.safetensors.index.json"


@case("sharded_index_parent_shard", "security", ConversionError, "must be plain file names")
def _(d, marker):
    (d / "private.safetensors").write_bytes(legit("model.safetensors"))
    out = hf_dir(d)
    (out / "model.safetensors").unlink()
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../private.safetensors"}}))
    return out / "model.safetensors.index.json"


# ---- names carrying terminal escape sequences (they would reach the terminal in error messages)
_ESC = "text_projection\x1b]0;pwned\x07\x1b[2J"


@case("escape_sequence_name_pickle", "security", ConversionError, "contains control or non-printable characters")
def _(d, marker):
    return torch_zip(d / "esc.pt", state_dict((_ESC, tensor())))


@case("escape_sequence_name_safetensors", "security", ConversionError, "contains control or non-printable")
def _(d, marker):
    return st(d / "esc.safetensors", {_ESC: entry()}, bytes(4))


@case("escape_sequence_name_h5", "security", ConversionError, "contains control or non-printable", config=True)
def _(d, marker):
    return h5(d / "tf_model.h5", lambda fh, g: [g.create_dataset("w", data=np.zeros(2)).name and _ESC])


@case("escape_sequence_name_msgpack", "security", ConversionError, "contains control or non-printable", config=True)
def _(d, marker):
    return mp(d / "flax_model.msgpack", {_ESC: leaf([1], "float32", bytes(4))})


# ============================================================================ pickles: resources
def _laughs(kind: str) -> bytes:
    """~1 KB whose object graph expands to 10**30 nodes through memo references."""
    body = b""
    for k in range(31):
        if kind == "dict":
            items = b"".join(s(f"k{j}") + get(k - 1) for j in range(10)) if k else b""
            body += b"}" + (MARK + items + SETITEMS if k else b"") + put(k) + b"0"
        elif kind == "list":
            body += b"]" + (MARK + get(k - 1) * 10 + b"e" if k else b"") + put(k) + b"0"
        else:
            body += (MARK + get(k - 1) * 10 + TUPLE if k else b")") + put(k) + b"0"
    return PROTO + body + get(30) + STOP


for _kind in ("dict", "list", "tuple"):
    add(f"billion_laughs_{_kind}", "resource",
        lambda d, m, k=_kind: torch_zip(d / "laughs.pt", PROTO + odict() + MARK + s("state_dict")
                                        + _laughs(k)[2:-1] + SETITEMS + STOP),
        LimitExceededError, "billion laughs", bomb=True)


@case("billion_laughs_legacy", "resource", LimitExceededError, "billion laughs", bomb=True)
def _(d, marker):
    return legacy(d / "laughs.bin", _laughs("dict"))


@case("deep_lists", "resource", LimitExceededError, "nested more than 64 deep")
def _(d, marker):
    body = b"]" + put(0) + b"".join(MARK + get(k % 2) + b"l" + put((k + 1) % 2) + b"0" for k in range(20000))
    return torch_zip(d / "deep.pt", PROTO + body + get(0) + STOP)


@case("deep_dicts", "resource", LimitExceededError, "nested more than 64 deep")
def _(d, marker):
    body = b"}" + put(0) + b"".join(MARK + s("a") + get(k % 2) + b"d" + put((k + 1) % 2) + b"0" for k in range(20000))
    return torch_zip(d / "deep.pt", PROTO + body + get(0) + STOP)


@case("deep_tuples", "resource", LimitExceededError, "nested more than 64 deep")
def _(d, marker):
    return torch_zip(d / "deep.pt", PROTO + b"]" + b"\x85" * 100000 + STOP)


@case("deep_legacy_state_dict", "resource", LimitExceededError, "nested more than 64 deep")
def _(d, marker):
    body = b"}" + put(0) + b"".join(MARK + s("a") + get(k % 2) + b"d" + put((k + 1) % 2) + b"0" for k in range(5000))
    return legacy(d / "deep.bin", PROTO + body + get(0) + STOP)


@case("mark_bomb", "resource", LimitExceededError, "nested MARKs")
def _(d, marker):
    return torch_zip(d / "marks.pt", PROTO + MARK * 200000 + STOP)


@case("memo_bomb", "resource", LimitExceededError, "memo entries")
def _(d, marker):
    return torch_zip(d / "memo.pt", b"\x80\x04N" + b"\x94" * 600000 + STOP)


@case("object_count_bomb", "resource", LimitExceededError, "pickled objects")
def _(d, marker):
    return torch_zip(d / "objects.pt", PROTO + b"\x8c\x00" * 600000 + STOP)


@case("object_count_bomb_dicts", "resource", LimitExceededError, "pickled objects", bomb=True)
def _(d, marker):
    return torch_zip(d / "objects.pt", PROTO + b"}" * 600000 + STOP)


@case("mark_pop_mark_time_bomb", "resource", LimitExceededError, "opcodes")
def _(d, marker):
    return torch_zip(d / "spin.pt", PROTO + b"(1" * 800000 + b"N" + STOP)


@case("dup_stack_bomb", "resource", LimitExceededError, "pickled objects")
def _(d, marker):
    return torch_zip(d / "dup.pt", PROTO + b"N" + b"2" * 600000 + STOP)


@case("none_stack_bomb", "resource", LimitExceededError, "pickled objects")
def _(d, marker):
    return torch_zip(d / "none.pt", PROTO + b"N" * 600000 + STOP)


@case("long1_255_bytes", "resource", LimitExceededError, "integer of 255 bytes")
def _(d, marker):
    return torch_zip(d / "long.pt", with_value(b"\x8a\xff" + b"\x01" * 255))


@case("long4_declares_1gb", "resource", LimitExceededError, "integer of")
def _(d, marker):
    return torch_zip(d / "long.pt", with_value(b"\x8b" + struct.pack("<i", 2 ** 30)))


@case("text_long_4000_digits", "resource", ConversionError, "over-long")
def _(d, marker):
    return torch_zip(d / "long.pt", with_value(b"L" + b"9" * 4000 + b"L\n"))


@case("stride0_tensor_4gb_zip", "resource", ConversionError, "stride-0 (broadcast) views are refused", bomb=True)
def _(d, marker):
    path = torch_zip(d / "stride0.pt", state_dict(("w", tensor(numel=1, shape=(1024, 1024, 1023), stride=(0, 0, 0)))),
                     {"0": b"\0\0\x80\x3f"})
    assert path.stat().st_size < 800
    return path


@case("stride0_tensor_legacy", "resource", ConversionError, "stride-0", bomb=True)
def _(d, marker):
    return legacy(d / "stride0.bin", state_dict(("w", tensor(numel=1, shape=(65536, 16384), stride=(0, 0)))),
                  storages=[(1, b"\0\0\x80\x3f")])


@case("stride0_one_axis", "resource", ConversionError, "stride-0")
def _(d, marker):
    return torch_zip(d / "stride0.pt", state_dict(("w", tensor(numel=4, shape=(100000, 4), stride=(0, 1)))))


@case("overlapping_view", "resource", ConversionError, "overlapping views", bomb=True)
def _(d, marker):
    return torch_zip(d / "overlap.pt", state_dict(("w", tensor(numel=20000, shape=(10000, 10000), stride=(1, 1)))),
                     {"0": bytes(80000)})


@case("view_outside_storage", "malformed", ConversionError, "reaches element")
def _(d, marker):
    return torch_zip(d / "oob.pt", state_dict(("w", tensor(numel=4, shape=(10,), stride=(1,)))))


@case("view_offset_outside_storage", "malformed", ConversionError, "reaches element")
def _(d, marker):
    return torch_zip(d / "oob.pt", state_dict(("w", tensor(numel=4, shape=(4,), offset=2 ** 31))))


@case("view_shape_above_limit", "resource", LimitExceededError, "above the limit", bomb=True)
def _(d, marker):
    return torch_zip(d / "huge.pt", state_dict(("w", tensor(numel=4, shape=(2 ** 20, 2 ** 20), stride=(2 ** 20, 1)))))


@case("view_33_dims", "resource", LimitExceededError, "33 dimensions")
def _(d, marker):
    return torch_zip(d / "dims.pt", state_dict(("w", tensor(numel=1, shape=(1,) * 33, stride=(1,) * 33))))


@case("storage_numel_2_60", "resource", LimitExceededError, "storage '0'", bomb=True)
def _(d, marker):
    return torch_zip(d / "numel.pt", state_dict(("w", tensor(numel=2 ** 60, shape=(4,)))))


@case("storage_numel_2_100", "resource", LimitExceededError, "storage '0'")
def _(d, marker):
    return torch_zip(d / "numel.pt", state_dict(("w", tensor(numel=2 ** 100, shape=(4,)))))


@case("shared_storage_amplification", "resource", LimitExceededError, "shared-storage amplification", bomb=True)
def _(d, marker):
    first = s("t0") + g("torch._utils", "_rebuild_tensor_v2") + put(1) + tup(storage("0", 65536) + put(2), i(0),
                                                                            tup(i(65536)), tup(i(1))) + REDUCE
    more = b"".join(s(f"t{k}") + get(1) + tup(get(2), i(0), tup(i(65536)), tup(i(1))) + REDUCE for k in range(1, 2000))
    pkl = PROTO + b"}" + MARK + first + more + SETITEMS + STOP
    return torch_zip(d / "alias.pt", pkl, {"0": bytes(4 * 65536)})


@case("zip_storage_deflate_bomb", "resource", LimitExceededError, "zip bomb", bomb=True)
def _(d, marker):
    n = 256 * MiB
    path = d / "bomb.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", state_dict(("w", tensor(numel=n // 4, shape=(n // 4,)))))
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as fh:
            chunk = bytes(MiB)
            for _ in range(n // MiB):
                fh.write(chunk)
    assert path.stat().st_size < n // 200
    return path


@case("zip_pickle_deflate_bomb", "resource", LimitExceededError, "data.pkl' (the pickled object) is", bomb=True)
def _(d, marker):
    return torch_zip(d / "bomb.pt", PROTO + b"N" + b"0N" * (33 * MiB) + STOP, compress=zipfile.ZIP_DEFLATED)


@case("zip_record_lies_about_size", "resource", ConversionError, "cannot be decompressed")
def _(d, marker):
    path = torch_zip(d / "liar.pt", PROTO + b"N" + b"0N" * (4 * MiB) + STOP, compress=zipfile.ZIP_DEFLATED)
    return patch_zip(path, "archive/data.pkl", usize=4096)


@case("zip_overlapping_storage_records", "resource", ConversionError, "overlap in the file")
def _(d, marker):
    pkl = state_dict(("a", tensor("0", 1024, shape=(1024,))), ("b", tensor("1", 1024, shape=(1024,))))
    path = torch_zip(d / "alias.pt", pkl, {"0": bytes(4096), "1": bytes(4096)})
    return patch_zip(path, "archive/data/1", offset=record_offset(path, "archive/data/0"))


@case("storage_larger_than_record", "resource", ConversionError, "holds 16 bytes but its storage declares", bomb=True)
def _(d, marker):
    return torch_zip(d / "short.pt", state_dict(("w", tensor(numel=2 ** 28, shape=(2 ** 28,)))))


@case("legacy_storage_count_negative", "resource", ConversionError, "holds -1 elements")
def _(d, marker):
    return legacy(d / "neg.bin", state_dict(("w", tensor())), storages=[(-1, bytes(16))])


@case("legacy_storage_count_huge", "resource", ConversionError, "holds 4611686018427387904 elements")
def _(d, marker):
    return legacy(d / "huge.bin", state_dict(("w", tensor())), storages=[(2 ** 62, bytes(16))])


# ============================================================================ pickles: malformed
_BAD_PICKLES = [  # (id, data.pkl, field)
    ("empty_pickle", b"", "truncated (no STOP opcode)"),
    ("truncated_pickle", state_dict(("w", tensor()))[:-9], "truncated"),
    ("unknown_opcode", PROTO + b"\xff" + STOP, "unknown opcode 0xff"),
    ("stack_underflow", PROTO + SETITEM + STOP, "stack underflow"),
    ("memo_missing", PROTO + get(5) + STOP, "memo entry 5 is missing"),
    ("pickled_list_not_dict", PROTO + b"]" + STOP, "not a state dict"),
    ("protocol_9", b"\x80\x09N.", "unsupported pickle protocol"),
    ("bad_utf8_string", PROTO + b"X\x02\x00\x00\x00\xff\xfe" + STOP, "not UTF-8"),
    ("string_past_end", PROTO + b"X\xff\xff\xff\xff" + b"abc" + STOP, "runs past the end"),
    ("bytes8_past_end", b"\x80\x04\x8e" + struct.pack("<Q", 2 ** 63) + STOP, "runs past the end"),
    ("numel_inf", state_dict(("w", tensor(numel=f(math.inf)))), "not a non-negative integer"),
    ("numel_nan", state_dict(("w", tensor(numel=f(math.nan)))), "not a non-negative integer"),
    ("numel_negative", state_dict(("w", tensor(numel=-1))), "not a non-negative integer"),
    ("numel_string", state_dict(("w", tensor(numel=s("12")))), "not a non-negative integer"),
    ("numel_bool", state_dict(("w", tensor(numel=b"\x88"))), "not a non-negative integer"),
    ("storage_key_path", state_dict(("w", tensor("../../data.pkl"))), "storage key"),
    ("storage_key_dict", state_dict(("w", tensor(storage_op=storage(key_op=b"}")))), "storage key"),
    ("storage_offset_negative", state_dict(("w", tensor(offset=-4))), "storage offset is negative"),
    ("storage_offset_float", state_dict(("w", tensor(offset=f(0.5)))), "storage offset"),
    ("size_not_tuple", state_dict(("w", tensor(shape=s("4")))), "tensor size is a str"),
    ("size_float_entry", state_dict(("w", tensor(shape=tup(f(4.0))))), "tensor size entry"),
    ("stride_length_mismatch", state_dict(("w", tensor(shape=(2, 2), stride=(1,)))), "its stride 1"),
    ("requires_grad_not_bool", state_dict(("w", tensor(extra=s("yes")))), "_rebuild_tensor_v2 argument"),
    ("rebuild_with_two_args", state_dict(("w", g("torch._utils", "_rebuild_tensor_v2") + tup(i(1), i(2)) + REDUCE)),
     "called with 2 arguments"),
    ("reduce_args_not_tuple", state_dict(("w", g("collections", "OrderedDict") + i(3) + REDUCE)), "not a tuple"),
    ("storage_declared_twice", state_dict(("a", tensor("0", 4)), ("b", tensor("0", 8, shape=(8,)))),
     "declared twice"),
    ("legacy_view_metadata", state_dict(("w", tensor(storage_op=tup(s("storage"), g("torch", "FloatStorage"), s("0"),
                                                                    s("cpu"), i(4), tup(s("0"), i(0), i(4))) + b"Q"))),
     "view_metadata"),
]
for _id, _pkl, _field in _BAD_PICKLES:
    add(_id, "malformed", lambda d, m, p=_pkl: torch_zip(d / "bad.pt", p), ConversionError, _field)


@case("zip_garbage_after_magic", "malformed", ConversionError, "not a readable zip archive")
def _(d, marker):
    (d / "garbage.pt").write_bytes(b"PK\x03\x04" + os.urandom(500))
    return d / "garbage.pt"


@case("zip_truncated", "malformed", ConversionError, "not a readable zip archive")
def _(d, marker):
    data = legit("openai.pt")
    (d / "cut.pt").write_bytes(data[: len(data) // 2])
    return d / "cut.pt"


@case("zip_without_data_pkl", "malformed", ConversionError, "has no record 'archive/data.pkl'")
def _(d, marker):
    with zipfile.ZipFile(d / "empty.pt", "w") as zf:
        zf.writestr("archive/version", "3\n")
    return d / "empty.pt"


@case("zip_missing_storage_record", "malformed", ConversionError,
      "has no record 'archive/data/7' (storage of tensor 'w')")
def _(d, marker):
    return torch_zip(d / "missing.pt", state_dict(("w", tensor("7"))))


@case("zip_unsupported_compression", "malformed", ConversionError, "cannot be decompressed")
def _(d, marker):
    path = torch_zip(d / "method.pt", state_dict(("w", tensor())), compress=zipfile.ZIP_DEFLATED)
    return patch_zip(path, "archive/data.pkl", method=99)


@case("zip_bad_crc", "malformed", ConversionError, "cannot be decompressed")
def _(d, marker):
    path = torch_zip(d / "crc.pt", state_dict(("w", tensor())), compress=zipfile.ZIP_DEFLATED)
    return patch_zip(path, "archive/data.pkl", crc=0x12345678)


@case("zip_encrypted_record", "malformed", ConversionError, "cannot be decompressed")
def _(d, marker):
    path = torch_zip(d / "enc.pt", state_dict(("w", tensor())), compress=zipfile.ZIP_DEFLATED)
    return patch_zip(path, "archive/data.pkl", flag=1)


@case("legacy_wrong_magic", "malformed", ConversionError, "no torch magic number")
def _(d, marker):
    return legacy(d / "magic.bin", state_dict(("w", tensor())), magic=pickle.dumps(42, protocol=2))


@case("legacy_wrong_protocol", "malformed", ConversionError, "unsupported legacy torch protocol")
def _(d, marker):
    return legacy(d / "proto.bin", state_dict(("w", tensor())), protocol=999)


@case("legacy_keys_not_a_list", "malformed", ConversionError, "storage key list")
def _(d, marker):
    return legacy(d / "keys.bin", state_dict(("w", tensor())), keys_pkl=pickle.dumps({"0": 1}, protocol=2))


@case("legacy_key_never_declared", "malformed", ConversionError, "storage '9' is listed but never declared")
def _(d, marker):
    return legacy(d / "keys.bin", state_dict(("w", tensor())), keys=["9"])


@case("legacy_storage_truncated", "malformed", ConversionError, "truncated: storage '0'")
def _(d, marker):
    return legacy(d / "cut.bin", state_dict(("w", tensor())), storages=[(4, bytes(6))])


@case("openai_shapes_describe_nothing", "malformed", ConversionError, "describe no valid CLIP architecture")
def _(d, marker):
    names = {"token_embedding.weight": (8,), "positional_embedding": (4,), "text_projection": (4,)}
    pkl = state_dict(*[(n, tensor(str(k), 8, shape=shape, stride=(1,))) for k, (n, shape) in enumerate(names.items())])
    return torch_zip(d / "shapes.pt", pkl, {str(k): bytes(32) for k in range(3)})


@case("openai_in_proj_scalar", "malformed", ConversionError, "not a fused q/k/v projection", config=True)
def _(d, marker):
    sd = dict(canonical_to_openai(WEIGHTS, CONFIG))
    sd["transformer.resblocks.0.attn.in_proj_weight"] = np.float32(1.0)
    write_safetensors(d / "qkv.safetensors", {k: np.asarray(v) for k, v in sd.items()})
    return d / "qkv.safetensors"


# ============================================================================ safetensors
def st(path: Path, header: object, data: bytes = b"", n: Optional[int] = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if n is None else n) + raw + data)
    return path


def entry(dtype="F32", shape=(1,), offsets=(0, 4)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


_BAD_ST = [  # (id, category, header, data, error, field, header-length override)
    ("header_past_eof", "malformed", {"w": entry()}, b"", ConversionError, "truncated safetensors file (header", 4096),
    ("header_not_json", "malformed", b"{not json", b"", ConversionError, "corrupt safetensors header", None),
    ("header_invalid_utf8", "malformed", b'{"\xff\xfe": 1}', b"", ConversionError, "corrupt safetensors header", None),
    ("duplicate_tensor_name", "malformed", b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                                           b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
     bytes(8), ConversionError, "duplicate key 'w'", None),
    ("unknown_dtype", "malformed", {"w": entry("F8_E4M3")}, bytes(4), ConversionError, "unsupported dtype 'F8_E4M3'",
     None),
    ("dtype_not_string", "malformed", {"w": entry(5)}, bytes(4), ConversionError, "unsupported dtype", None),
    ("object_dtype", "security", {"w": entry("O")}, bytes(4), ConversionError, "unsupported dtype 'O'", None),
    ("shape_negative", "malformed", {"w": entry(shape=(-1,))}, bytes(4), ConversionError, "field 'shape'", None),
    ("shape_2_64", "malformed", {"w": entry(shape=(2 ** 64,))}, bytes(4), ConversionError,
     "shape (18446744073709551616,)", None),
    ("shape_2_64_times_2_64", "malformed", {"w": entry(shape=(2 ** 64, 2 ** 64), offsets=(0, 0))}, b"", ConversionError,
     "field 'data_offsets' spans 0 bytes", None),
    ("shape_float", "malformed", {"w": entry(shape=(1.0,))}, bytes(4), ConversionError, "field 'shape'", None),
    ("shape_bool", "malformed", {"w": entry(shape=(True,))}, bytes(4), ConversionError, "field 'shape'", None),
    ("shape_nan", "malformed", b'{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}', bytes(4),
     ConversionError, "field 'shape'", None),
    ("shape_not_list", "malformed", {"w": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}}, bytes(4),
     ConversionError, "field 'shape'", None),
    ("shape_33_dims", "resource", {"w": entry(shape=(1,) * 33)}, bytes(4), LimitExceededError, "33 dimensions", None),
    ("offsets_negative", "malformed", {"w": entry(offsets=(-4, 0))}, bytes(4), ConversionError, "field 'data_offsets'",
     None),
    ("offsets_begin_after_end", "malformed", {"w": entry(offsets=(8, 4))}, bytes(8), ConversionError,
     "begin 8 after end 4", None),
    ("offsets_three_items", "malformed", {"w": entry(offsets=(0, 4, 8))}, bytes(4), ConversionError,
     "field 'data_offsets'", None),
    ("offsets_float", "malformed", {"w": entry(offsets=(0, 4.0))}, bytes(4), ConversionError, "field 'data_offsets'",
     None),
    ("offsets_past_eof", "malformed", {"w": entry(shape=(1024,), offsets=(0, 4096))}, bytes(4), ConversionError,
     "truncated safetensors file: tensor 'w'", None),
    ("offsets_gap", "malformed", {"a": entry(), "b": entry(offsets=(8, 12))}, bytes(12), ConversionError,
     "leaves a gap", None),
    ("offsets_overlap", "resource", {"a": entry(shape=(2,), offsets=(0, 8)), "b": entry(shape=(2,), offsets=(4, 12))},
     bytes(12), ConversionError, "overlaps the previous tensor", None),
    ("offsets_alias_same_bytes", "resource", {f"t{k}": entry(shape=(1024,), offsets=(0, 4096)) for k in range(100)},
     bytes(4096), ConversionError, "overlaps the previous tensor", None),
    ("trailing_bytes", "malformed", {"w": entry()}, bytes(12), ConversionError, "8 bytes after the last tensor", None),
    ("byte_length_mismatch", "malformed", {"w": entry(shape=(2,), offsets=(0, 4))}, bytes(4), ConversionError,
     "spans 4 bytes, shape (2,) of F32 needs 8", None),
    ("huge_declared_tensor", "resource", {"w": entry(shape=(2 ** 20,) * 4, offsets=(0, 2 ** 82))}, bytes(4),
     LimitExceededError, "above the limit", None),
    ("metadata_non_string_value", "malformed", {"__metadata__": {"format": 1}, "w": entry()}, bytes(4), ConversionError,
     "'__metadata__' must map strings to strings", None),
    ("metadata_list", "malformed", {"__metadata__": ["pt"], "w": entry()}, bytes(4), ConversionError, "'__metadata__'",
     None),
    ("entry_not_object", "malformed", {"w": 5}, bytes(4), ConversionError, "tensor 'w': corrupt header entry", None),
    ("entry_missing_field", "malformed", {"w": {"dtype": "F32", "shape": [1]}}, bytes(4), ConversionError,
     "needs exactly dtype, shape and data_offsets", None),
    ("entry_extra_field", "malformed", {"w": {**entry(), "exec": "os.system"}}, bytes(4), ConversionError,
     "needs exactly dtype, shape and data_offsets", None),
    ("deep_json", "resource", b'{"w": ' + b"[" * 200000 + b"]" * 200000 + b"}", b"", ConversionError,
     "corrupt safetensors header", None),
    ("json_integer_5000_digits", "resource", b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], '
                                             b'"data_offsets": [0, 4]}}', bytes(4), ConversionError,
     "corrupt safetensors header", None),
    ("name_too_long", "resource", {"w" * 5000: entry()}, bytes(4), LimitExceededError, "longer than 1024", None),
]
for _id, _cat, _header, _data, _err, _field, _n in _BAD_ST:
    add(f"safetensors_{_id}", _cat, lambda d, m, h=_header, x=_data, n=_n: st(d / "bad.safetensors", h, x, n),
        _err, _field)

add("safetensors_header_length_2_63", "resource", lambda d, m: st(d / "bad.safetensors", {"w": entry()}, bytes(4),
                                                                  2 ** 63), LimitExceededError,
    "safetensors header of 9,223,372,036,854,775,808 bytes", loader="read_safetensors")
add("safetensors_header_length_2_63_sniffed", "resource",
    lambda d, m: st(d / "bad.safetensors", {"w": entry()}, bytes(4), 2 ** 63), ConversionError,
    "unrecognised checkpoint format")
add("safetensors_header_not_object", "malformed", lambda d, m: st(d / "bad.safetensors", b"[1, 2]"), ConversionError,
    "does not start with '{'", loader="read_safetensors")


@case("safetensors_hf_names_without_config", "malformed", ConversionError, "need a config.json beside them")
def _(d, marker):
    (d / "lonely.safetensors").write_bytes(legit("model.safetensors"))
    return d / "lonely.safetensors"


# ============================================================================ HDF5 (tf_model.h5)
def h5(path: Path, fill: Callable, names: Optional[list] = None, layers=("clip",)) -> Path:
    """A Keras-layout file: ``fill(file, group)`` creates datasets; ``weight_names`` lists them."""
    import h5py

    with h5py.File(path, "w") as fh:
        fh.attrs["layer_names"] = np.array([n.encode() for n in layers])
        group = fh.create_group("clip")
        listed = fill(fh, group)
        group.attrs["weight_names"] = np.array([n.encode() for n in (names or listed)])
    return path


def _secret(d: Path) -> Path:
    secret = d / "secret.txt"
    secret.write_bytes(b"TOP-SECRET-CREDENTIALS " * 32)
    return secret


@case("h5_external_raw_storage", "security", ExternalReferenceError, "keeps its data in external file(s)", config=True)
def _(d, marker):
    secret = _secret(d)
    return h5(d / "tf_model.h5", lambda fh, g: [g.create_dataset("w", shape=(64,), dtype="f4",
                                                                 external=[(str(secret), 0, 256)]).name[6:]])


@case("h5_external_link_dataset", "security", ExternalReferenceError, "external link to another file", config=True)
def _(d, marker):
    import h5py
    (d / "other.h5").write_bytes(legit("tf_model.h5"))

    def fill(fh, g):
        g["w"] = h5py.ExternalLink(str(d / "other.h5"), "/clip/tfclip_model/clip/logit_scale:0")
        return ["w"]
    return h5(d / "tf_model.h5", fill)


@case("h5_external_link_group", "security", ExternalReferenceError, "'tfclip_model' is an external link", config=True)
def _(d, marker):
    import h5py
    (d / "other.h5").write_bytes(legit("tf_model.h5"))

    def fill(fh, g):
        g["tfclip_model"] = h5py.ExternalLink(str(d / "other.h5"), "/clip/tfclip_model")
        return ["tfclip_model/clip/logit_scale:0"]
    return h5(d / "tf_model.h5", fill)


@case("h5_external_link_layer", "security", ExternalReferenceError, "external link", config=True)
def _(d, marker):
    import h5py
    (d / "other.h5").write_bytes(legit("tf_model.h5"))
    path = d / "tf_model.h5"
    with h5py.File(path, "w") as fh:
        fh.attrs["layer_names"] = np.array([b"clip"])
        fh["clip"] = h5py.ExternalLink(str(d / "other.h5"), "/clip")
    return path


@case("h5_soft_link_dataset", "security", ExternalReferenceError, "'w' is a soft link", config=True)
def _(d, marker):
    import h5py

    def fill(fh, g):
        g.create_dataset("real", data=np.zeros(4, np.float32))
        g["w"] = h5py.SoftLink("/clip/real")
        return ["w"]
    return h5(d / "tf_model.h5", fill)


@case("h5_virtual_dataset", "security", ExternalReferenceError, "virtual dataset", config=True)
def _(d, marker):
    import h5py
    (d / "other.h5").write_bytes(legit("tf_model.h5"))

    def fill(fh, g):
        layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
        layout[:] = h5py.VirtualSource(str(d / "other.h5"), "clip/tfclip_model/clip/logit_scale:0", shape=(4,))
        g.create_virtual_dataset("w", layout)
        return ["w"]
    return h5(d / "tf_model.h5", fill)


def _h5_dtype_case(id: str, make: Callable, category: str = "malformed") -> None:
    add(f"h5_{id}", category, lambda d, m: h5(d / "tf_model.h5", lambda fh, g: [make(g).name[6:]]), ConversionError,
        "only numeric tensors are allowed", config=True)


_h5_dtype_case("object_dtype_vlen_str", lambda g: g.create_dataset(
    "w", data=np.array(["os.system"], dtype=object), dtype=__import__("h5py").string_dtype()), "security")
_h5_dtype_case("object_references", lambda g: g.create_dataset(
    "w", data=np.array([g.ref]), dtype=__import__("h5py").ref_dtype), "security")
_h5_dtype_case("vlen_float", lambda g: g.create_dataset("w", shape=(2,),
                                                        dtype=__import__("h5py").vlen_dtype(np.float32)))
_h5_dtype_case("compound", lambda g: g.create_dataset("w", data=np.zeros(2, dtype=[("a", "f4"), ("b", "i4")])))
_h5_dtype_case("fixed_string", lambda g: g.create_dataset("w", data=np.array([b"abc"])))
_h5_dtype_case("complex64", lambda g: g.create_dataset("w", data=np.zeros(2, np.complex64)))
_h5_dtype_case("opaque", lambda g: g.create_dataset("w", data=np.zeros(2, "V8")))
_h5_dtype_case("array_dtype", lambda g: g.create_dataset("w", shape=(2,), dtype=np.dtype((np.float32, (1000, 1000)))),
               "resource")


@case("h5_null_dataspace", "malformed", ConversionError, "no dataspace", config=True)
def _(d, marker):
    import h5py
    return h5(d / "tf_model.h5", lambda fh, g: [g.create_dataset("w", data=h5py.Empty("f4")).name[6:]])


@case("h5_fill_value_bomb_chunked", "resource", LimitExceededError, "unallocated storage", config=True, bomb=True)
def _(d, marker):
    return h5(d / "tf_model.h5", lambda fh, g: [g.create_dataset("w", shape=(2 ** 30,), dtype="f4", chunks=(2 ** 16,),
                                                                 fillvalue=1.0).name[6:]])


@case("h5_fill_value_bomb_contiguous", "resource", LimitExceededError, "unallocated storage", config=True, bomb=True)
def _(d, marker):
    return h5(d / "tf_model.h5", lambda fh, g: [g.create_dataset("w", shape=(2 ** 28,), dtype="f4").name[6:]])


@case("h5_declared_shape_above_limit", "resource", LimitExceededError, "above the limit", config=True, bomb=True)
def _(d, marker):
    return h5(d / "tf_model.h5", lambda fh, g: [g.create_dataset("w", shape=(2 ** 40,), dtype="f4",
                                                                 chunks=(2 ** 16,)).name[6:]])


@case("h5_compression_bomb", "resource", LimitExceededError, "would inflate", config=True, bomb=True)
def _(d, marker):
    return h5(d / "tf_model.h5", lambda fh, g: [g.create_dataset("w", data=np.zeros(2 ** 23, np.float32),
                                                                 chunks=(2 ** 20,), compression="gzip").name[6:]])


@case("h5_hard_linked_weights", "resource", ConversionError, "hard-linked twice", config=True)
def _(d, marker):
    def fill(fh, g):
        g.create_dataset("a", data=np.zeros(2 ** 16, np.float32))
        for k in range(100):
            g[f"b{k}"] = g["a"]
        return ["a"] + [f"b{k}" for k in range(100)]
    return h5(d / "tf_model.h5", fill)


@case("h5_too_many_weight_names", "resource", LimitExceededError, "attribute 'weight_names' has 9,000 entries",
      config=True)
def _(d, marker):
    return h5(d / "tf_model.h5", lambda fh, g: [], names=[f"w{k}" for k in range(9000)])


@case("h5_layer_names_numeric", "malformed", ConversionError, "attribute 'layer_names' must be a list of strings",
      config=True)
def _(d, marker):
    import h5py
    with h5py.File(d / "tf_model.h5", "w") as fh:
        fh.attrs["layer_names"] = np.arange(3)
    return d / "tf_model.h5"


@case("h5_no_layer_names", "malformed", ConversionError, "no 'layer_names' attribute", config=True)
def _(d, marker):
    import h5py
    with h5py.File(d / "tf_model.h5", "w") as fh:
        fh.create_group("clip")
    return d / "tf_model.h5"


@case("h5_listed_weight_missing", "malformed", ConversionError, "weight 'nope:0' is listed but has no dataset",
      config=True)
def _(d, marker):
    return h5(d / "tf_model.h5", lambda fh, g: [], names=["nope:0"])


@case("h5_weight_is_a_group", "malformed", ConversionError, "is a Group, not a dataset", config=True)
def _(d, marker):
    return h5(d / "tf_model.h5", lambda fh, g: [g.create_group("w").name[6:]])


@case("h5_absolute_weight_name", "malformed", ConversionError, "is not a relative HDF5 path", config=True)
def _(d, marker):
    return h5(d / "tf_model.h5", lambda fh, g: [g.create_dataset("w", data=np.zeros(2)).name and "/clip/w"][:1])


@case("h5_truncated", "malformed", ConversionError, "not a readable HDF5 file", config=True)
def _(d, marker):
    data = legit("tf_model.h5")
    (d / "tf_model.h5").write_bytes(data[: len(data) // 3])
    return d / "tf_model.h5"


@case("h5_garbage_after_magic", "malformed", ConversionError, "not a readable HDF5 file", config=True)
def _(d, marker):
    (d / "tf_model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(2000))
    return d / "tf_model.h5"


# ============================================================================ flax msgpack
def mp(path: Path, tree: object) -> Path:
    import msgpack
    path.write_bytes(msgpack.packb(tree, use_bin_type=True))
    return path


def leaf(shape, dtype: object, data: object, code: int = 1):
    import msgpack
    return msgpack.ExtType(code, msgpack.packb((shape, dtype, data), use_bin_type=True))


_BAD_MP = [  # (id, category, tree builder, error, field)
    ("unknown_ext_code", "security", lambda: {"a": __import__("msgpack").ExtType(42, b"x")}, ConversionError,
     "ext type 42 is not a flax array"),
    ("object_dtype", "security", lambda: {"a": leaf([2], "O", bytes(16))}, ConversionError, "unsupported dtype 'O'"),
    ("subarray_dtype", "resource", lambda: {"a": leaf([1], "(1000000,)f4", bytes(4))}, ConversionError,
     "unsupported dtype"),
    ("void_dtype", "malformed", lambda: {"a": leaf([1], "V1000000", bytes(4))}, ConversionError, "unsupported dtype"),
    ("shape_huge", "resource", lambda: {"a": leaf([2 ** 40, 2 ** 40], "float32", bytes(4))}, LimitExceededError,
     "above the limit"),
    ("shape_negative", "malformed", lambda: {"a": leaf([-1], "float32", bytes(4))}, ConversionError, "field 'shape'"),
    ("shape_float", "malformed", lambda: {"a": leaf([1.5], "float32", bytes(4))}, ConversionError, "field 'shape'"),
    ("bytes_mismatch", "malformed", lambda: {"a": leaf([4], "float32", bytes(4))}, ConversionError, "needs 16 bytes"),
    ("data_not_bytes", "malformed", lambda: {"a": leaf([1], "float32", "abcd")}, ConversionError, "field 'data'"),
    ("leaf_not_triple", "malformed", lambda: {"a": __import__("msgpack").ExtType(
        1, __import__("msgpack").packb([1, 2]))}, ConversionError, "not a (shape, dtype, bytes) triple"),
    ("scalar_with_shape", "malformed", lambda: {"a": leaf([2], "float32", bytes(8), code=3)}, ConversionError,
     "flax scalar leaf"),
    ("leaf_is_int", "malformed", lambda: {"a": 5}, ConversionError, "leaf 'params/a' is a int"),
    ("map_key_not_string", "malformed", lambda: {1: leaf([1], "float32", bytes(4))}, ConversionError,
     "map key is a int"),
    ("chunked_inconsistent", "malformed", lambda: {"a": {"__msgpack_chunked_array__": True, "shape": {"0": 100},
                                                         "chunks": {"0": leaf([4], "float32", bytes(16))}}},
     ConversionError, "do not add up"),
    ("chunked_shape_huge", "resource", lambda: {"a": {"__msgpack_chunked_array__": True, "shape": {"0": 2 ** 62},
                                                      "chunks": {"0": leaf([4], "float32", bytes(16))}}},
     LimitExceededError, "above the limit"),
    ("chunked_missing_chunks", "malformed", lambda: {"a": {"__msgpack_chunked_array__": True, "shape": {"0": 4}}},
     ConversionError, "chunked array 'params/a' is corrupt"),
]
for _id, _cat, _tree, _err, _field in _BAD_MP:
    add(f"msgpack_{_id}", _cat, lambda d, m, t=_tree: mp(d / "flax_model.msgpack", t()), _err, _field, config=True)


def _raw_mp(id: str, category: str, blob: Callable[[], bytes], error: type, field: str, bomb: bool = False) -> None:
    def build(d, m):
        (d / "flax_model.msgpack").write_bytes(blob())
        return d / "flax_model.msgpack"
    add(f"msgpack_{id}", category, build, error, field, config=True, bomb=bomb)


_raw_mp("deep_nesting", "resource", lambda: b"\x81\xa1a" * 100000 + b"\xc0", ConversionError, "corrupt or truncated")
_raw_mp("map_header_2_32", "resource", lambda: b"\xdf\xff\xff\xff\xff", ConversionError, "corrupt or truncated")
_raw_mp("bin_header_4gb", "resource", lambda: b"\x81\xa1a\xc6\xff\xff\xff\xff" + bytes(10), ConversionError,
        "corrupt or truncated")
_raw_mp("truncated", "malformed", lambda: legit("flax_model.msgpack")[:-100], ConversionError, "corrupt or truncated")
_raw_mp("trailing_data", "malformed", lambda: legit("flax_model.msgpack") + b"\xc0", ConversionError,
        "corrupt or truncated")


def _many_items() -> bytes:
    import msgpack
    maps = {f"m{k}": {f"{j:05d}": None for j in range(65536)} for k in range(16)}
    return msgpack.packb(maps)


_raw_mp("item_budget", "resource", _many_items, LimitExceededError, "map entries / array items", bomb=True)


# ============================================================================ config / JSON side files
_BAD_CONFIGS = [  # (id, config.json content, field)
    ("text_config_int", {"text_config": 5}, "'text_config' must be a JSON object, got int"),
    ("vision_config_list", {"vision_config": [1, 2]}, "'vision_config' must be a JSON object, got list"),
    ("text_config_dict_str", {"text_config_dict": "abc"}, "'text_config_dict' must be a JSON object"),
    ("hidden_size_str", {"text_config": {"hidden_size": "abc"}}, "hidden_size must be a positive integer"),
    ("layers_dict", {"vision_config": {"layers": {"a": 1}}}, "layers must be four positive integers"),
    ("initializer_range_str", {"text_config": {"initializer_range": "x"}}, "initializer_range must be a number"),
    ("logit_scale_list", {"logit_scale_init_value": [1]}, "logit_scale_init_value must be a number"),
    ("hidden_act_dict", {"text_config": {"hidden_act": {"a": 1}}}, "hidden_act must be"),
    ("eos_token_bool", {"text_config": {"eos_token_id": True}}, "eos_token_id must be a token id"),
    ("projection_dim_float", {"projection_dim": 1.5}, "projection_dim must be a positive integer"),
]
for _id, _cfg, _field in _BAD_CONFIGS:
    add(f"config_{_id}", "malformed", lambda d, m, c=_cfg: hf_dir(d, c), ConversionError, _field, names="config.json")

for _id, _text, _field in [("not_an_object", "[1, 2]", "must be a JSON object, got list"),
                           ("invalid_json", "{oops", "not valid JSON"),
                           ("invalid_utf8", b'{"a": "\xff"}', "not valid JSON"),
                           ("deep_nesting", "[" * 100000 + "]" * 100000, "not valid JSON"),
                           ("integer_5000_digits", '{"projection_dim": ' + "9" * 5000 + "}", "not valid JSON")]:
    add(f"config_{_id}", "resource" if "deep" in _id or "digits" in _id else "malformed",
        lambda d, m, t=_text: hf_dir(d, t), ConversionError, _field, names="config.json")

add("config_beside_h5_text_config_int", "malformed", lambda d, m: hf_dir(d, {"text_config": 5}, "tf_model.h5"),
    ConversionError, "'text_config' must be a JSON object", names="config.json")


def _openai_with_record(d: Path, record: bytes) -> Path:
    src = legit_dir() / "openai.pt"
    out = d / "model.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, record if info.filename.endswith("clip_zoo_config.json") else zin.read(info))
    return out


add("config_record_text_config_int", "malformed", lambda d, m: _openai_with_record(d, b'{"text_config": 5}'),
    ConversionError, "clip_zoo_config.json: invalid config: CLIPConfig: 'text_config' must be a JSON object")
add("config_record_invalid_json", "malformed", lambda d, m: _openai_with_record(d, b"{oops"), ConversionError,
    "clip_zoo_config.json: not valid JSON")
add("config_record_list", "malformed", lambda d, m: _openai_with_record(d, b"[]"), ConversionError,
    "clip_zoo_config.json: a config must be a JSON object")


def _open_clip_dir(d: Path, text: str) -> Path:
    out = d / "oc"
    out.mkdir()
    (out / "open_clip_model.safetensors").write_bytes(legit("openai.safetensors"))
    (out / "open_clip_config.json").write_text(text)
    return out


for _id, _text, _field in [("list", "[1]", "not an open_clip config"),
                           ("model_cfg_int", '{"model_cfg": 5}', "not an open_clip config"),
                           ("text_cfg_str", '{"embed_dim": 16, "vision_cfg": {}, "text_cfg": "x"}',
                            "not an open_clip model config"),
                           ("width_str", '{"embed_dim": 16, "vision_cfg": {"width": "wide"}, "text_cfg": {}}',
                            "invalid open_clip config")]:
    add(f"open_clip_config_{_id}", "malformed", lambda d, m, t=_text: _open_clip_dir(d, t), ConversionError, _field,
        names="open_clip_config.json")

for _id, _index, _field in [("weight_map_list", {"weight_map": [1]}, "no 'weight_map' object"),
                            ("shard_int", {"weight_map": {"w": 5}}, "is a int, not a file name"),
                            ("not_json", "{oops", "not valid JSON")]:
    def _build_index(d, m, index=_index):
        out = hf_dir(d)
        (out / "model.safetensors.index.json").write_text(index if isinstance(index, str) else json.dumps(index))
        return out / "model.safetensors.index.json"
    add(f"sharded_index_{_id}", "malformed", _build_index, ConversionError, _field)


@case("not_a_regular_file", "malformed", ConversionError, "not a regular file")
def _(d, marker):
    os.mkfifo(d / "fifo.bin")
    return d / "fifo.bin"


# ============================================================================ the tests
def _load(c: Case, target: Path):
    if c.loader == "read_safetensors":
        return read_safetensors(target)
    return conversion.load_checkpoint(target, CONFIG if c.config else None)


def _ids(c: Case) -> str:
    return f"{c.category}-{c.id}"


def test_the_corpus_is_large_and_covers_every_category():
    counts = {cat: sum(c.category == cat for c in CASES) for cat in ("security", "resource", "malformed")}
    assert len(CASES) >= 100 and all(n >= 20 for n in counts.values()), counts
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("c", CASES, ids=_ids)
def test_hostile_file_is_refused(tmp_path, c):
    marker = tmp_path / "pwned"
    target = c.build(tmp_path, marker)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; the process's high-water mark
    start = time.perf_counter()
    with pytest.raises(ConversionError) as info:
        _load(c, target)
    elapsed = time.perf_counter() - start
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) * 1024
    err = info.value
    message = str(err)
    assert type(err) is c.error, f"{type(err).__name__}: {message}"
    assert c.field in message, message
    name = c.names or (target.name if target.is_file() or not target.exists() else None)
    assert name is None or name in message, message
    assert "\n" not in message and len(message) < 1000
    assert elapsed < 5, f"took {elapsed:.1f}s"
    assert grown < 256 * MiB, f"peak memory grew by {grown / MiB:.0f} MiB"
    assert not marker.exists()
    assert_legit_loads_identically()


def test_floatstorage_poisoning_repro_leaves_later_loads_intact(tmp_path):
    """The user's report: a failed load must not change how the next fp32 checkpoint is read."""
    bad = torch_zip(tmp_path / "poison.pt", b"\x80\x02ctorch\nFloatStorage\n}\x8c\x05dtype\x8c\x07float16sb0}.")
    for _ in range(3):
        with pytest.raises(UnsafePickleError, match="poison.pt"):
            conversion.load_checkpoint(bad)
    config, got = conversion.load_checkpoint(legit_dir() / "openai.pt")
    assert config == CONFIG
    assert {np.dtype(a.dtype).name for a in got.values()} == {"float32"}
    assert_same(got, WEIGHTS)
    from conversion.pickle_reader import RestrictedUnpickler
    a = RestrictedUnpickler(b"", "a")._find_class("torch", "FloatStorage")
    b = RestrictedUnpickler(b"", "b")._find_class("torch", "FloatStorage")
    assert a is not b and a == b  # fresh stand-ins for every load, equal in value
    with pytest.raises(AttributeError):  # and immutable (FrozenInstanceError is an AttributeError)
        a.kind = "ordered_dict"
    with pytest.raises(AttributeError):
        a.__dict__


_CLI_REPROS = {  # the user's reports: `python -m conversion` must print one line, no traceback
    "config_text_config_int": "'text_config' must be a JSON object",
    "safetensors_shape_2_64": "shape (18446744073709551616,)",
    "numel_inf": "not a non-negative integer",
    "h5_object_dtype_vlen_str": "only numeric tensors are allowed",
    "deep_dicts": "nested more than 64 deep",
    "billion_laughs_dict": "billion laughs",
}


@pytest.mark.parametrize("case_id", sorted(_CLI_REPROS))
def test_cli_gives_one_line_errors(tmp_path, capsys, case_id):
    from conversion.cli import main

    c = next(c for c in CASES if c.id == case_id)
    target = c.build(tmp_path, tmp_path / "pwned")
    if c.config:  # the CLI has no config option: HDF5 / msgpack need a config.json beside them
        CONFIG.save_pretrained(target.parent)
    assert main([str(target), str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert _CLI_REPROS[case_id] in err and (c.names or target.name) in err
    assert not (tmp_path / "out").exists()


def test_python_m_conversion_subprocess(tmp_path):
    target = next(c for c in CASES if c.id == "numel_inf").build(tmp_path, tmp_path / "pwned")
    result = subprocess.run([sys.executable, "-m", "conversion", str(target), str(tmp_path / "out"), "--quiet"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "bad.pt" in result.stderr


_BOMB_RUNNER = r"""
import json, resource, sys, time
import h5py, msgpack  # noqa: F401 - loaded before the limit
import conversion
from clip_core.config import CLIPConfig
from conversion.safetensors_io import read_safetensors


def vm_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024


limit = vm_bytes() + int(sys.argv[2]) * 2 ** 20
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:  # control: the limit really bites
    bytearray(2 ** 30)
    print(json.dumps(["control", "allocated 1 GiB", 0]), flush=True)
except MemoryError:
    print(json.dumps(["control", "MemoryError", 0]), flush=True)
for entry in json.load(open(sys.argv[1])):
    config = CLIPConfig.from_dict(entry["config"]) if entry["config"] else None
    start = time.perf_counter()
    try:
        if entry["loader"] == "read_safetensors":
            read_safetensors(entry["path"])
        else:
            conversion.load_checkpoint(entry["path"], config)
        outcome = "no error"
    except MemoryError:
        outcome = "MemoryError"
    except Exception as err:
        outcome = type(err).__name__
    print(json.dumps([entry["id"], outcome, time.perf_counter() - start]), flush=True)
"""


def test_bombs_under_a_small_address_space_limit(tmp_path):
    """The bomb cases again, in a process that cannot map more than 512 MiB beyond its start-up size."""
    bombs = [c for c in CASES if c.bomb]
    assert len(bombs) >= 15
    manifest = []
    for c in bombs:
        d = tmp_path / c.id
        d.mkdir()
        target = c.build(d, d / "pwned")
        manifest.append({"id": c.id, "path": str(target), "loader": c.loader,
                         "config": CONFIG.to_dict() if c.config else None})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", _BOMB_RUNNER, str(tmp_path / "manifest.json"), "512"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = {row[0]: row for row in map(json.loads, result.stdout.splitlines())}
    assert outcomes["control"][1] == "MemoryError"  # a 1 GiB allocation fails under this limit
    for c in bombs:
        _, outcome, elapsed = outcomes[c.id]
        assert outcome == c.error.__name__, (c.id, outcome)
        assert elapsed < 5, (c.id, elapsed)
