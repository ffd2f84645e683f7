"""A restricted pickle interpreter for torch checkpoints: tensors become numpy arrays, nothing executes.

This is not ``pickle.Unpickler`` with a ``find_class`` hook but a small opcode interpreter of its own,
so that every opcode is checked, not only the globals:

- only an allow-list of globals resolves (``collections.OrderedDict``, torch's tensor-rebuild
  functions, the typed storage classes, TorchScript list builders); every other global — ``os.system``,
  ``builtins.eval``, any class — raises :class:`~conversion.errors.UnsafePickleError` before it could
  be called. The allowed globals are *fresh, immutable stand-ins made for each load* (never the real
  objects, never shared between loads), so no pickle can change what a later load sees;
- ``BUILD``, ``SETITEM(S)``, ``APPEND(S)`` and ``ADDITEMS`` apply only to plain containers created by
  this pickle (``BUILD`` only to TorchScript objects and ``OrderedDict``), and only while they are
  not yet inside another container: the object graph is acyclic, at most :data:`MAX_DEPTH` deep;
- dict keys and set items are scalars (no tuple-hashing bombs); integers have at most
  :data:`MAX_INT_BYTES` bytes; the number of opcodes, objects, memo entries and marks is capped, and so is
  every container's *expanded* size (shared references counted each time they occur), so no
  "billion laughs" graph can make a later walk over the result explode;
- ``INST`` / ``OBJ`` / extension-registry / out-of-band-buffer opcodes are refused.

TorchScript ``__torch__.*`` classes (only with ``torchscript=True``) become inert
:class:`ScriptObject` placeholders that record the state handed to them.

Tensors come back as :class:`TensorRef` (storage key, offset, shape, stride); :func:`check_view`
validates one against its storage (bounds, no stride-0 or overlapping views) and :func:`materialize`
turns it into an array once its name is known, so every error names the tensor.
"""
from __future__ import annotations

import collections
import re
import struct
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np

from .errors import ConversionError, UnsafePickleError
from .tensors import (MAX_NDIM, MAX_TENSOR_BYTES, MAX_TENSORS, TORCH_STORAGES, LimitExceededError, check_name,
                      checked_nbytes, np_dtype)

__all__ = ["TensorRef", "StorageRef", "ScriptObject", "RestrictedUnpickler", "restricted_load", "materialize",
           "check_view", "check_aliasing", "find_tensors", "MAX_PICKLE_BYTES", "MAX_OBJECTS", "MAX_MEMO",
           "MAX_DEPTH", "MAX_INT_BYTES", "MAX_ALIAS_FACTOR", "MAX_EXPANDED", "MAX_OPCODES"]

#: Bytes of one pickle (``data.pkl``; a CLIP state dict's is ~50 KB).
MAX_PICKLE_BYTES = 64 * 2 ** 20
#: Objects pushed on the stack plus items inserted into containers, per file (~39 per tensor: ~12,000
#: tensors; ViT-bigG has ~1,300). Worst case ~100 MB of Python objects.
MAX_OBJECTS = 500_000
#: Opcodes executed per file (~32 per tensor; bounds interpretation time to ~2 s).
MAX_OPCODES = 1_500_000
#: Memo entries per pickle.
MAX_MEMO = 500_000
#: Size of a container counting shared sub-containers every time they are referenced.
MAX_EXPANDED = 1_000_000
#: Container nesting depth (a TorchScript CLIP is ~10 deep).
MAX_DEPTH = 64
#: Open MARKs at once.
MAX_MARKS = 4 * MAX_DEPTH
#: Bytes of one pickled integer (LONG1 / LONG4).
MAX_INT_BYTES = 16
#: Bytes of one text argument (GLOBAL names, INT / LONG / FLOAT / PUT / GET lines).
MAX_LINE = 256
#: Sum of all tensors' bytes over the bytes of the distinct storages they view (shared-storage amplification).
MAX_ALIAS_FACTOR = 2
#: Nodes visited while looking for tensors (bounds walks over shared sub-trees).
MAX_WALK = 1_000_000

_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_SCALARS = (str, int, float, bytes, bool, type(None))


@dataclass(frozen=True)
class StorageRef:
    """A persistent-id storage: record ``key`` of ``numel`` elements of ``dtype``."""

    __slots__ = ("key", "dtype", "numel")

    key: str
    dtype: str
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * np_dtype(self.dtype).itemsize


@dataclass(frozen=True)
class TensorRef:
    """A tensor still to be read: a strided view into a storage."""

    __slots__ = ("storage", "offset", "shape", "stride")

    storage: StorageRef
    offset: int
    shape: tuple
    stride: tuple

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class _Global:
    """An allowed global, as this load sees it: ``kind`` says what REDUCE / NEWOBJ may do with it."""

    __slots__ = ("qualname", "kind")

    qualname: str
    kind: str


class ScriptObject:
    """An inert stand-in for a TorchScript ``__torch__`` class instance; records its state."""

    __slots__ = ("torch_class", "state")

    def __init__(self, torch_class: str = "__torch__") -> None:
        self.torch_class = torch_class
        self.state: Any = None

    def __repr__(self) -> str:
        return f"<{self.torch_class}>"


_SAFE_GLOBALS: dict[tuple[str, str], str] = {
    ("collections", "OrderedDict"): "ordered_dict",
    ("torch._utils", "_rebuild_tensor_v2"): "rebuild_tensor_v2",
    ("torch._utils", "_rebuild_tensor"): "rebuild_tensor",
    ("torch._utils", "_rebuild_parameter"): "rebuild_parameter",
    ("torch._utils", "_rebuild_parameter_with_state"): "rebuild_parameter",
    ("torch.jit._pickle", "restore_type_tag"): "identity",
    **{("torch.jit._pickle", f"build_{k}list"): "build_list" for k in ("int", "double", "bool", "tensor")},
    **{("torch", name): "storage" for name in TORCH_STORAGES},
}


class _Stop(Exception):
    pass


def _describe(obj: Any) -> str:
    """A bounded description of an untrusted object (never its repr: that could be exponential)."""
    if isinstance(obj, (tuple, list, dict, set, frozenset)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    if isinstance(obj, (str, bytes)):
        return f"a {type(obj).__name__} of length {len(obj)}"
    if isinstance(obj, (int, float, bool)) or obj is None:
        text = repr(obj) if not isinstance(obj, int) or obj.bit_length() < 64 else "a huge int"
        return text if len(text) < 40 else f"a {type(obj).__name__}"
    if isinstance(obj, _Global):
        return f"the global {obj.qualname}"
    return f"a {type(obj).__name__}"


class RestrictedUnpickler:
    """Interpret pickles in ``data`` (bytes or an mmap) under the rules of the module docstring.

    One instance may :meth:`load` several consecutive pickles (the legacy torch format): the memo is
    per pickle, the object budget and the storage registry (:attr:`storages`) are shared.
    """

    def __init__(self, data, source: str, torchscript: bool = False) -> None:
        self.data, self.source, self.torchscript = data, source, torchscript
        self.storages: dict[str, StorageRef] = {}
        self.objects = self.opcodes = 0
        self._globals: dict[tuple[str, str], _Global] = {}
        self._dispatch = {code[0]: getattr(self, f"_op_{name}") for code, name in _OPCODES.items()}

    # ------------------------------------------------------------------ errors and budgets
    def _corrupt(self, what: str) -> ConversionError:
        return ConversionError(f"{self.source}: corrupt pickle at byte {self._at}: {what}")

    def _unsafe(self, what: str) -> UnsafePickleError:
        return UnsafePickleError(f"{self.source}: {what} (at byte {self._at}; nothing was executed)")

    def _limit(self, what: str) -> LimitExceededError:
        return LimitExceededError(f"{self.source}: {what} (at byte {self._at})")

    def _count(self, n: int = 1) -> None:
        self.objects += n
        if self.objects > MAX_OBJECTS:
            raise self._limit(f"more than {MAX_OBJECTS:,} pickled objects")

    # ------------------------------------------------------------------ object graph bookkeeping
    def _track(self, obj: Any, depth: int = 1, expanded: int = 1) -> Any:
        """Record a new container: ``[obj, depth, frozen, expanded size]``."""
        if depth > MAX_DEPTH:
            raise self._limit(f"containers nested more than {MAX_DEPTH} deep")
        self._info[id(obj)] = [obj, depth, False, expanded]
        return obj

    def _info_of(self, obj: Any) -> Optional[list]:
        info = self._info.get(id(obj))
        return info if info is not None and info[0] is obj else None

    def _adopt(self, parent: list, child: Any) -> None:
        """``child`` goes into container ``parent`` (an info record): freeze it, deepen the parent."""
        info = self._info_of(child)
        if info is None:
            return
        if child is parent[0]:
            raise self._unsafe(f"a {type(child).__name__} inserted into itself (self-referencing pickle)")
        info[2] = True
        depth = info[1] + 1
        if depth > parent[1]:
            if depth > MAX_DEPTH:
                raise self._limit(f"containers nested more than {MAX_DEPTH} deep")
            parent[1] = depth
        parent[3] += info[3]
        if parent[3] > MAX_EXPANDED:
            raise self._limit(f"a container that expands to more than {MAX_EXPANDED:,} items through shared "
                              f"references (a 'billion laughs' pickle)")

    def _target(self, obj: Any, kinds: tuple, op: str) -> list:
        """The info record of a container ``op`` may modify: created here, of ``kinds``, not yet adopted."""
        info = self._info_of(obj)
        if type(obj) not in kinds or info is None:
            raise self._unsafe(f"{op} on {_describe(obj)} — only plain containers created by this pickle "
                               f"may be modified")
        if info[2]:
            raise self._unsafe(f"{op} on a {type(obj).__name__} that is already inside another object "
                               f"(shared or self-referencing containers are refused)")
        return info

    def _key(self, key: Any) -> Any:
        if type(key) not in _SCALARS:
            raise self._unsafe(f"dict key / set item {_describe(key)}; only str, int, float, bytes, bool and None "
                               f"are allowed")
        return key

    def _new_tuple(self, items: list) -> tuple:
        t = tuple(items)
        record = [t, 1, True, 1 + len(items)]
        for item in items:
            info = self._info_of(item)
            if info is not None:
                info[2] = True
                record[1] = max(record[1], info[1] + 1)
                record[3] += info[3]
        if record[1] > MAX_DEPTH:
            raise self._limit(f"containers nested more than {MAX_DEPTH} deep")
        if record[3] > MAX_EXPANDED:
            raise self._limit(f"a tuple that expands to more than {MAX_EXPANDED:,} items through shared "
                              f"references (a 'billion laughs' pickle)")
        if t:
            self._info[id(t)] = record
        self._count(len(items))
        return t

    # ------------------------------------------------------------------ reading the stream
    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise self._corrupt(f"truncated (needs {n} more bytes)")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def _unpack(self, fmt: str, size: int) -> int:
        return struct.unpack(fmt, self._take(size))[0]

    def _line(self) -> bytes:
        stop = self.data.find(b"\n", self.pos, min(self.end, self.pos + MAX_LINE + 1))
        if stop < 0:
            if self.end - self.pos <= MAX_LINE:
                raise self._corrupt("truncated (unterminated text argument)")
            raise self._corrupt(f"over-long (> {MAX_LINE} bytes) text argument")
        b = self.data[self.pos:stop]
        self.pos = stop + 1
        return b

    def _text_int(self) -> int:
        raw = self._line().rstrip(b"L")
        try:
            return int(raw.decode("ascii"), 10)
        except (UnicodeDecodeError, ValueError):
            raise self._corrupt("bad integer argument") from None

    def _sized(self, length: int, what: str) -> bytes:
        if length < 0 or self.pos + length > self.end:
            raise self._corrupt(f"{what} of {length} bytes runs past the end of the pickle")
        return self._take(length)

    def _str(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise self._corrupt("string is not UTF-8") from None

    # ------------------------------------------------------------------ the stack
    def _fence(self) -> int:
        return self.marks[-1] if self.marks else 0

    def _pop(self) -> Any:
        if len(self.stack) <= self._fence():
            raise self._corrupt("stack underflow")
        return self.stack.pop()

    def _top(self) -> Any:
        if len(self.stack) <= self._fence():
            raise self._corrupt("stack underflow")
        return self.stack[-1]

    def _pop_mark(self) -> list:
        if not self.marks:
            raise self._corrupt("no MARK on the stack")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def _push(self, obj: Any) -> None:
        self.objects += 1
        if self.objects > MAX_OBJECTS:
            raise self._limit(f"more than {MAX_OBJECTS:,} pickled objects")
        self.stack.append(obj)

    # ------------------------------------------------------------------ entry point
    def load(self, pos: int = 0, end: Optional[int] = None) -> tuple[Any, int]:
        """``(object, end offset)`` of the pickle starting at ``pos``."""
        self.pos, self.end = pos, len(self.data) if end is None else end
        if self.end - pos > MAX_PICKLE_BYTES:
            self.end = pos + MAX_PICKLE_BYTES  # a longer pickle fails at the limit, not before
        self.stack, self.marks, self.memo, self._info = [], [], {}, {}
        self._at = pos
        dispatch = self._dispatch
        try:
            while True:
                self._at = self.pos
                self.opcodes += 1
                if self.opcodes > MAX_OPCODES:
                    raise self._limit(f"more than {MAX_OPCODES:,} opcodes")
                if self.pos >= self.end:
                    if self.end - pos >= MAX_PICKLE_BYTES:
                        raise self._limit(f"pickle longer than {MAX_PICKLE_BYTES:,} bytes")
                    raise self._corrupt("truncated (no STOP opcode)")
                code = self.data[self.pos]
                self.pos += 1
                op = dispatch.get(code)
                if op is None:
                    raise self._refused_opcode(code)
                op()
        except _Stop:
            result = self._pop()
        except (ConversionError, MemoryError):
            raise
        except (struct.error, IndexError, KeyError, ValueError, TypeError, OverflowError, RecursionError) as err:
            raise self._corrupt(f"{type(err).__name__}: {str(err)[:200]}") from None
        finally:
            self.stack, self.marks, self.memo, self._info = [], [], {}, {}
        return result, self.pos

    def _refused_opcode(self, code: int) -> ConversionError:
        name = _REFUSED.get(bytes([code]))
        if name is None:
            return self._corrupt(f"unknown opcode 0x{code:02x}")
        return self._unsafe(f"refusing the {name} opcode — only tensors and plain containers are allowed in a "
                            f"checkpoint pickle")

    # ------------------------------------------------------------------ opcodes: framing, stack, memo
    def _op_PROTO(self) -> None:
        if self._take(1)[0] > 5:
            raise self._corrupt("unsupported pickle protocol")

    def _op_FRAME(self) -> None:
        self._take(8)

    def _op_STOP(self) -> None:
        raise _Stop

    def _op_MARK(self) -> None:
        if len(self.marks) >= MAX_MARKS:
            raise self._limit(f"more than {MAX_MARKS} nested MARKs")
        self.marks.append(len(self.stack))

    def _op_POP(self) -> None:
        if len(self.stack) > self._fence():
            self.stack.pop()
        else:
            self._pop_mark()

    def _op_POP_MARK(self) -> None:
        self._pop_mark()

    def _op_DUP(self) -> None:
        self._push(self._top())

    def _put(self, index: int) -> None:
        if index < 0:
            raise self._corrupt("negative memo index")
        if index not in self.memo and len(self.memo) >= MAX_MEMO:
            raise self._limit(f"more than {MAX_MEMO:,} memo entries")
        self.memo[index] = self._top()

    def _get(self, index: int) -> None:
        if index not in self.memo:
            raise self._corrupt(f"memo entry {index} is missing")
        self._push(self.memo[index])

    def _op_PUT(self) -> None:
        self._put(self._text_int())

    def _op_BINPUT(self) -> None:
        self._put(self._take(1)[0])

    def _op_LONG_BINPUT(self) -> None:
        self._put(self._unpack("<I", 4))

    def _op_MEMOIZE(self) -> None:
        self._put(len(self.memo))

    def _op_GET(self) -> None:
        self._get(self._text_int())

    def _op_BINGET(self) -> None:
        self._get(self._take(1)[0])

    def _op_LONG_BINGET(self) -> None:
        self._get(self._unpack("<I", 4))

    # ------------------------------------------------------------------ opcodes: scalars
    def _op_NONE(self) -> None:
        self._push(None)

    def _op_NEWTRUE(self) -> None:
        self._push(True)

    def _op_NEWFALSE(self) -> None:
        self._push(False)

    def _op_INT(self) -> None:
        raw = self._line()
        if raw in (b"00", b"01"):
            self._push(raw == b"01")
            return
        self.pos -= len(raw) + 1
        self._push(self._text_int())

    def _op_BININT(self) -> None:
        self._push(self._unpack("<i", 4))

    def _op_BININT1(self) -> None:
        self._push(self._take(1)[0])

    def _op_BININT2(self) -> None:
        self._push(self._unpack("<H", 2))

    def _op_LONG(self) -> None:
        value = self._text_int()
        if value.bit_length() > 8 * MAX_INT_BYTES:
            raise self._limit(f"integer of more than {MAX_INT_BYTES} bytes")
        self._push(value)

    def _long(self, n: int) -> None:
        if n < 0:
            raise self._corrupt("negative integer length")
        if n > MAX_INT_BYTES:
            raise self._limit(f"integer of {n} bytes (at most {MAX_INT_BYTES})")
        self._push(int.from_bytes(self._take(n), "little", signed=True))

    def _op_LONG1(self) -> None:
        self._long(self._take(1)[0])

    def _op_LONG4(self) -> None:
        self._long(self._unpack("<i", 4))

    def _op_FLOAT(self) -> None:
        try:
            self._push(float(self._line().decode("ascii")))
        except (UnicodeDecodeError, ValueError):
            raise self._corrupt("bad float argument") from None

    def _op_BINFLOAT(self) -> None:
        self._push(self._unpack(">d", 8))

    def _op_BINUNICODE(self) -> None:
        self._push(self._str(self._sized(self._unpack("<I", 4), "string")))

    def _op_SHORT_BINUNICODE(self) -> None:
        self._push(self._str(self._take(self._take(1)[0])))

    def _op_BINUNICODE8(self) -> None:
        self._push(self._str(self._sized(self._unpack("<Q", 8), "string")))

    def _op_BINSTRING(self) -> None:  # a Python 2 str
        self._push(self._str(self._sized(self._unpack("<i", 4), "string")))

    def _op_SHORT_BINSTRING(self) -> None:
        self._push(self._str(self._take(self._take(1)[0])))

    def _bytes(self, raw: bytes) -> None:
        self._push(bytes(raw))

    def _op_BINBYTES(self) -> None:
        self._bytes(self._sized(self._unpack("<I", 4), "bytes"))

    def _op_SHORT_BINBYTES(self) -> None:
        self._bytes(self._take(self._take(1)[0]))

    def _op_BINBYTES8(self) -> None:
        self._bytes(self._sized(self._unpack("<Q", 8), "bytes"))

    def _op_BYTEARRAY8(self) -> None:  # kept immutable
        self._bytes(self._sized(self._unpack("<Q", 8), "bytearray"))

    # ------------------------------------------------------------------ opcodes: containers
    def _op_EMPTY_TUPLE(self) -> None:
        self._push(())

    def _op_TUPLE(self) -> None:
        self._push(self._new_tuple(self._pop_mark()))

    def _op_TUPLE1(self) -> None:
        self._push(self._new_tuple([self._pop()]))

    def _op_TUPLE2(self) -> None:
        b, a = self._pop(), self._pop()
        self._push(self._new_tuple([a, b]))

    def _op_TUPLE3(self) -> None:
        c, b, a = self._pop(), self._pop(), self._pop()
        self._push(self._new_tuple([a, b, c]))

    def _op_EMPTY_LIST(self) -> None:
        self._push(self._track([]))

    def _op_LIST(self) -> None:
        items = self._pop_mark()
        self._push(self._fill_list(self._track([]), items))

    def _fill_list(self, target: list, items: list) -> list:
        info = self._target(target, (list,), "APPEND")
        self._count(len(items))
        info[3] += len(items)
        for item in items:
            self._adopt(info, item)
        target.extend(items)
        return target

    def _op_APPEND(self) -> None:
        item = self._pop()
        self._fill_list(self._top(), [item])

    def _op_APPENDS(self) -> None:
        items = self._pop_mark()
        self._fill_list(self._top(), items)

    def _op_EMPTY_DICT(self) -> None:
        self._push(self._track({}))

    def _fill_dict(self, target: dict, items: list) -> dict:
        if len(items) % 2:
            raise self._corrupt("odd number of items for SETITEMS")
        info = self._target(target, (dict, collections.OrderedDict), "SETITEM")
        self._count(len(items))
        info[3] += len(items)
        for k in range(0, len(items), 2):
            key, value = self._key(items[k]), items[k + 1]
            self._adopt(info, value)
            target[key] = value
        return target

    def _op_DICT(self) -> None:
        items = self._pop_mark()
        self._push(self._fill_dict(self._track({}), items))

    def _op_SETITEM(self) -> None:
        value, key = self._pop(), self._pop()
        self._fill_dict(self._top(), [key, value])

    def _op_SETITEMS(self) -> None:
        items = self._pop_mark()
        self._fill_dict(self._top(), items)

    def _op_EMPTY_SET(self) -> None:
        self._push(self._track(set()))

    def _op_ADDITEMS(self) -> None:
        items = self._pop_mark()
        target = self._top()
        self._target(target, (set,), "ADDITEMS")[3] += len(items)
        self._count(len(items))
        target.update(self._key(item) for item in items)

    def _op_FROZENSET(self) -> None:
        items = self._pop_mark()
        self._count(len(items))
        self._push(frozenset(self._key(item) for item in items))

    # ------------------------------------------------------------------ opcodes: globals and calls
    def _find_class(self, module: str, name: str) -> _Global:
        key = (module, name)
        if key not in self._globals:
            if key in _SAFE_GLOBALS:
                self._globals[key] = _Global(f"{module}.{name}", _SAFE_GLOBALS[key])
            elif self.torchscript and (module == "__torch__" or module.startswith("__torch__.")):
                self._globals[key] = _Global(f"{module}.{name}", "script_class")
            else:
                raise UnsafePickleError(
                    f"{self.source}: refusing to load global '{module}.{name}' — only tensors and plain "
                    f"containers are allowed in a checkpoint pickle (nothing was executed)")
        return self._globals[key]

    def _op_GLOBAL(self) -> None:
        module = self._line()
        name = self._line()
        try:
            self._push(self._find_class(module.decode("utf-8"), name.decode("utf-8")))
        except UnicodeDecodeError:
            raise self._corrupt("global name is not UTF-8") from None

    def _op_STACK_GLOBAL(self) -> None:
        name, module = self._pop(), self._pop()
        if type(name) is not str or type(module) is not str:
            raise self._corrupt("STACK_GLOBAL needs two strings")
        self._push(self._find_class(module, name))

    def _op_REDUCE(self) -> None:
        args = self._pop()
        func = self._pop()
        if type(args) is not tuple:
            raise self._corrupt(f"REDUCE arguments are {_describe(args)}, not a tuple")
        if type(func) is not _Global:
            raise self._unsafe(f"refusing to call {_describe(func)}")
        handler = getattr(self, f"_call_{func.kind}", None)
        if handler is None:
            raise self._unsafe(f"refusing to call {func.qualname}")
        self._push(handler(func, args))

    def _op_NEWOBJ(self) -> None:
        args = self._pop()
        self._newobj(self._pop(), args)

    def _op_NEWOBJ_EX(self) -> None:
        kwargs, args = self._pop(), self._pop()
        if type(kwargs) is not dict or kwargs:
            raise self._unsafe("NEWOBJ_EX with keyword arguments")
        self._newobj(self._pop(), args)

    def _newobj(self, cls: Any, args: Any) -> None:
        if type(cls) is not _Global or cls.kind != "script_class" or type(args) is not tuple:
            raise self._unsafe(f"refusing to instantiate {_describe(cls)}")
        self._push(self._track(ScriptObject(cls.qualname)))

    def _op_BUILD(self) -> None:
        state = self._pop()
        inst = self._top()
        if type(inst) is ScriptObject:
            info = self._target(inst, (ScriptObject,), "BUILD")
            if inst.state is not None:
                raise self._unsafe(f"BUILD on a {inst.torch_class} whose state is already set")
            self._adopt(info, state)
            inst.state = state
        elif type(inst) is collections.OrderedDict:  # torch's state_dict._metadata: not needed, dropped
            self._target(inst, (collections.OrderedDict,), "BUILD")
            if not (type(state) is dict or (type(state) is tuple and len(state) == 2)):
                raise self._corrupt(f"BUILD state of an OrderedDict is {_describe(state)}")
        else:
            raise self._unsafe(f"BUILD (set state) on {_describe(inst)} — only TorchScript objects and "
                               f"OrderedDicts created by this pickle accept a state")

    def _op_BINPERSID(self) -> None:
        self._push(self._persistent_load(self._pop()))

    # ------------------------------------------------------------------ the allowed calls
    def _call_ordered_dict(self, func: _Global, args: tuple) -> collections.OrderedDict:
        target = self._track(collections.OrderedDict())
        if not args:
            return target
        if len(args) != 1 or type(args[0]) is not list:
            raise self._corrupt(f"OrderedDict called with {_describe(args)}")
        items = []
        for pair in args[0]:
            if type(pair) not in (tuple, list) or len(pair) != 2:
                raise self._corrupt(f"OrderedDict item is {_describe(pair)}, not a pair")
            items += pair
        return self._fill_dict(target, items)

    def _call_identity(self, func: _Global, args: tuple) -> Any:
        if not args:
            raise self._corrupt(f"{func.qualname} called without arguments")
        return args[0]

    def _call_build_list(self, func: _Global, args: tuple) -> list:
        if len(args) != 1 or type(args[0]) is not list:
            raise self._corrupt(f"{func.qualname} called with {_describe(args)}")
        values = args[0]
        info = self._info_of(values)
        self._count(len(values))
        if info is None:
            return self._track(list(values))
        info[2] = True
        return self._track(list(values), info[1], info[3])

    def _int_arg(self, value: Any, what: str, limit: int = MAX_TENSOR_BYTES) -> int:
        if type(value) is not int:
            raise self._corrupt(f"{what} is {_describe(value)}, not a non-negative integer")
        if value < 0:
            raise self._corrupt(f"{what} is negative ({value})")
        if value > limit:
            raise self._limit(f"{what} is {value:,} (at most {limit:,})")
        return value

    def _dims(self, value: Any, what: str) -> tuple:
        if type(value) not in (tuple, list):
            raise self._corrupt(f"tensor {what} is {_describe(value)}, not a tuple")
        if len(value) > MAX_NDIM:
            raise self._limit(f"tensor {what} has {len(value)} dimensions (at most {MAX_NDIM})")
        return tuple(self._int_arg(v, f"tensor {what} entry") for v in value)

    def _call_rebuild_tensor_v2(self, func: _Global, args: tuple) -> TensorRef:
        if not 4 <= len(args) <= 7:
            raise self._corrupt(f"{func.qualname} called with {len(args)} arguments")
        storage, offset, size, stride = args[:4]
        if type(storage) is not StorageRef:
            raise self._unsafe(f"tensor rebuilt from {_describe(storage)}, not a storage")
        ref = TensorRef(storage, self._int_arg(offset, "storage offset"), self._dims(size, "size"),
                        self._dims(stride, "stride"))
        if len(ref.shape) != len(ref.stride):
            raise self._corrupt(f"tensor size has {len(ref.shape)} dimensions, its stride {len(ref.stride)}")
        for extra, allowed in zip(args[4:], ((bool,), (collections.OrderedDict, dict, type(None)),
                                             (dict, type(None)))):
            if type(extra) not in allowed:
                raise self._corrupt(f"{func.qualname} argument is {_describe(extra)}")
        return ref

    def _call_rebuild_tensor(self, func: _Global, args: tuple) -> TensorRef:
        if len(args) != 4:
            raise self._corrupt(f"{func.qualname} called with {len(args)} arguments")
        return self._call_rebuild_tensor_v2(func, args)

    def _call_rebuild_parameter(self, func: _Global, args: tuple) -> TensorRef:
        if not 1 <= len(args) <= 4 or type(args[0]) is not TensorRef:
            raise self._corrupt(f"{func.qualname} called with {_describe(args)}")
        return args[0]

    def _persistent_load(self, pid: Any) -> StorageRef:
        # zip format: ('storage', type, key, location, numel); legacy format adds view_metadata (None)
        if type(pid) is not tuple or len(pid) not in (5, 6) or pid[0] != "storage":
            raise self._unsafe(f"unsupported persistent id ({_describe(pid)}); only ('storage', ...) tuples are "
                               f"allowed")
        storage_type, key, location, numel = pid[1:5]
        if type(storage_type) is not _Global or storage_type.kind != "storage":
            raise self._unsafe(f"persistent id names {_describe(storage_type)}, not a torch storage type")
        if len(pid) == 6 and pid[5] is not None:
            raise self._corrupt("storage views (legacy view_metadata) are not supported")
        if type(key) is int and key >= 0:
            key = str(key)
        if type(key) is not str or not _KEY.fullmatch(key):
            raise self._corrupt(f"storage key is {_describe(key)}, not a short name of [A-Za-z0-9_.-]")
        if type(location) is not str or len(location) > 64:
            raise self._corrupt(f"storage location is {_describe(location)}")
        dtype = TORCH_STORAGES[storage_type.qualname.rsplit(".", 1)[1]]
        if type(numel) is not int or numel < 0:
            raise self._corrupt(f"storage {key!r} has {_describe(numel)} elements, not a non-negative integer")
        try:
            checked_nbytes((numel,), np_dtype(dtype), f"storage {key!r}")
        except LimitExceededError as err:
            raise self._limit(str(err)) from None
        ref = StorageRef(key, dtype, numel)
        known = self.storages.setdefault(key, ref)
        if known != ref:
            raise self._corrupt(f"storage {key!r} is declared twice, as {known.numel} x {known.dtype} and "
                                f"{numel} x {dtype}")
        return known


_OPCODES = {
    b"\x80": "PROTO", b"\x95": "FRAME", b".": "STOP", b"(": "MARK", b"0": "POP", b"1": "POP_MARK", b"2": "DUP",
    b"p": "PUT", b"q": "BINPUT", b"r": "LONG_BINPUT", b"\x94": "MEMOIZE",
    b"g": "GET", b"h": "BINGET", b"j": "LONG_BINGET",
    b"N": "NONE", b"\x88": "NEWTRUE", b"\x89": "NEWFALSE",
    b"I": "INT", b"J": "BININT", b"K": "BININT1", b"M": "BININT2", b"L": "LONG", b"\x8a": "LONG1", b"\x8b": "LONG4",
    b"F": "FLOAT", b"G": "BINFLOAT",
    b"X": "BINUNICODE", b"\x8c": "SHORT_BINUNICODE", b"\x8d": "BINUNICODE8", b"T": "BINSTRING",
    b"U": "SHORT_BINSTRING", b"B": "BINBYTES", b"C": "SHORT_BINBYTES", b"\x8e": "BINBYTES8",
    b"\x96": "BYTEARRAY8",
    b")": "EMPTY_TUPLE", b"t": "TUPLE", b"\x85": "TUPLE1", b"\x86": "TUPLE2", b"\x87": "TUPLE3",
    b"]": "EMPTY_LIST", b"l": "LIST", b"a": "APPEND", b"e": "APPENDS",
    b"}": "EMPTY_DICT", b"d": "DICT", b"s": "SETITEM", b"u": "SETITEMS",
    b"\x8f": "EMPTY_SET", b"\x90": "ADDITEMS", b"\x91": "FROZENSET",
    b"c": "GLOBAL", b"\x93": "STACK_GLOBAL", b"R": "REDUCE", b"\x81": "NEWOBJ", b"\x92": "NEWOBJ_EX",
    b"b": "BUILD", b"Q": "BINPERSID",
}
#: Opcodes that exist but are never allowed (they build arbitrary objects or reach outside the stream).
_REFUSED = {b"i": "INST", b"o": "OBJ", b"\x82": "EXT1", b"\x83": "EXT2", b"\x84": "EXT4", b"P": "PERSID",
            b"S": "STRING", b"V": "UNICODE", b"\x97": "NEXT_BUFFER", b"\x98": "READONLY_BUFFER"}


def restricted_load(data, source: str, torchscript: bool = False) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (errors name ``source``)."""
    if len(data) > MAX_PICKLE_BYTES:
        raise LimitExceededError(f"{source}: pickle of {len(data):,} bytes (at most {MAX_PICKLE_BYTES:,})")
    return RestrictedUnpickler(data, source, torchscript).load()[0]


# ----------------------------------------------------------------------------- tensors
def check_view(ref: TensorRef, name: str, source: str) -> int:
    """The bytes ``ref`` will occupy; refuses stride-0, overlapping and out-of-storage views."""
    where = f"{source}: tensor {name!r} (shape {ref.shape}, stride {ref.stride}, offset {ref.offset})"
    nbytes = checked_nbytes(ref.shape, np_dtype(ref.storage.dtype), f"{source}: tensor {name!r}")
    if nbytes == 0:
        return 0
    span = 1  # elements from the first to the last one reached, +1
    for n, s in sorted(((n, s) for n, s in zip(ref.shape, ref.stride) if n != 1), key=lambda d: d[1]):
        if s == 0:
            raise ConversionError(f"{where}: stride-0 (broadcast) views are refused")
        if s < span:
            raise ConversionError(f"{where}: overlapping views (elements aliasing each other) are refused")
        span += s * (n - 1)
    if ref.offset + span > ref.storage.numel:
        raise ConversionError(f"{where} reaches element {ref.offset + span - 1:,} of its storage "
                              f"{ref.storage.key!r} of {ref.storage.numel:,} elements")
    return nbytes


def check_aliasing(refs: Mapping[str, TensorRef], source: str) -> None:
    """Validate every view and refuse files whose tensors share storages many times over."""
    total = sum(check_view(ref, name, source) for name, ref in refs.items())
    stored = sum(s.nbytes for s in {ref.storage.key: ref.storage for ref in refs.values()}.values())
    if total > MAX_ALIAS_FACTOR * stored + 2 ** 20:
        raise LimitExceededError(f"{source}: {len(refs)} tensors would take {total:,} bytes but view only {stored:,} "
                                 f"bytes of storage (shared-storage amplification above {MAX_ALIAS_FACTOR}x)")


def materialize(ref: TensorRef, storage: np.ndarray, name: str, source: str) -> np.ndarray:
    """The array ``ref`` describes, viewing ``storage`` (a 1-D array of the storage's dtype)."""
    if storage.size < ref.storage.numel:
        raise ConversionError(f"{source}: storage of tensor {name!r} holds {storage.size} elements, "
                              f"expected {ref.storage.numel} (truncated record)")
    if check_view(ref, name, source) == 0:
        return np.zeros(ref.shape, storage.dtype)
    count = ref.numel
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
                 skip: Callable[[str], bool] = lambda k: False, source: str = "checkpoint") -> dict[str, TensorRef]:
    """Flatten dicts and TorchScript objects into ``{dotted name: TensorRef}``, depth first in file order
    (at most :data:`MAX_TENSORS` tensors, :data:`MAX_WALK` entries visited — a bound on walks over shared
    sub-trees — and printable names, see :func:`~conversion.tensors.check_name`)."""
    out = {} if out is None else out
    if isinstance(obj, ScriptObject):
        obj = obj.state
    if not isinstance(obj, dict):
        return out
    todo = [(iter(obj.items()), prefix)]
    visited = 0
    while todo:
        items, base = todo[-1]
        for key, value in items:
            visited += 1
            if visited > MAX_WALK:
                raise LimitExceededError(f"{source}: more than {MAX_WALK:,} entries to visit (shared sub-trees?)")
            if type(key) not in (str, int):
                continue
            name = f"{base}{key}"
            if isinstance(value, TensorRef):
                check_name(name, source)
                out[name] = value
                if len(out) > MAX_TENSORS:
                    raise LimitExceededError(f"{source}: more than {MAX_TENSORS:,} tensors")
                continue
            if isinstance(value, ScriptObject):
                value = value.state
            if isinstance(value, dict) and not skip(check_name(name, source)):
                if len(todo) >= MAX_DEPTH:
                    raise LimitExceededError(f"{source}: state dict nested more than {MAX_DEPTH} deep at "
                                             f"{name[:80]!r}")
                todo.append((iter(value.items()), name + "."))
                break
        else:
            todo.pop()
    return out
