"""A SentencePiece ``.model`` file read without sentencepiece or protobuf, and turned into a ``tokenizers`` backend.

A ``.model`` file is a serialized ``sentencepiece.ModelProto``. :func:`read_spm` decodes the protobuf
wire format itself (varints, fixed32/64, length-delimited fields) and keeps what tokenization needs:

- ``pieces`` (field 1): ``piece`` (1), ``score`` (2, float), ``type`` (3: 1 normal, 2 unknown,
  3 control, 4 user-defined, 5 unused, 6 byte);
- ``trainer_spec`` (field 2): ``model_type`` (3: 1 unigram, 2 BPE), ``byte_fallback`` (35),
  ``unk_id``/``bos_id``/``eos_id``/``pad_id`` (40-43), ``unk_piece`` (45);
- ``normalizer_spec`` (field 3): ``name`` (1), ``precompiled_charsmap`` (2), ``add_dummy_prefix`` (3),
  ``remove_extra_whitespaces`` (4), ``escape_whitespaces`` (5).

:class:`SpmNormalizer` and :class:`UnigramViterbi` reproduce sentencepiece's unigram encoding
exactly (``tokenizers``' ``Precompiled`` normalizer and float64 Viterbi differ on combining marks and
on ties); :func:`bpe_merges` gives the merges of a BPE model, as transformers' converter derives them.
See docs/tokenizer.md, "SigLIP and SigLIP 2".
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

__all__ = ["SpmModel", "SpmPiece", "SpmFormatError", "read_spm", "parse_spm", "SpmNormalizer", "UnigramViterbi",
           "bpe_merges",
           "NORMAL", "UNKNOWN", "CONTROL", "USER_DEFINED", "UNUSED", "BYTE", "UNIGRAM", "BPE"]

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # SentencePiece.Type
UNIGRAM, BPE = 1, 2  # TrainerSpec.ModelType
SPIECE_UNDERLINE = "\u2581"


class SpmFormatError(ValueError):
    """The bytes are not a SentencePiece model protobuf."""


@dataclass
class SpmPiece:
    """One vocabulary entry: its text, log-probability score and SentencePiece type."""

    piece: str
    score: float = 0.0
    type: int = NORMAL


@dataclass
class SpmModel:
    """The parts of a ``ModelProto`` tokenization needs (proto2 defaults where a field is absent)."""

    pieces: List[SpmPiece] = field(default_factory=list)
    model_type: int = UNIGRAM
    byte_fallback: bool = False
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    unk_piece: str = "<unk>"
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True

    def vocab(self) -> Dict[str, int]:
        """piece -> id (the first id wins for a repeated piece, as sentencepiece)."""
        out: Dict[str, int] = {}
        for i, p in enumerate(self.pieces):
            out.setdefault(p.piece, i)
        return out


# ----------------------------------------------------------------------------- wire format
def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    """(value, next position) of the base-128 varint at ``pos``."""
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise SpmFormatError("truncated or overlong varint")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _fields(buf: bytes) -> Iterator[Tuple[int, int, object]]:
    """(field number, wire type, value) of every field of one message: ints for varints/fixed, bytes for LEN."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise SpmFormatError(f"unsupported protobuf wire type {wire} (field {number})")
        if pos > len(buf) or number == 0:
            raise SpmFormatError("truncated protobuf message")
        yield number, wire, value


def _signed(value: int) -> int:
    """A varint-encoded int32 (negative numbers use 10 bytes, two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _piece(buf: bytes) -> SpmPiece:
    piece = SpmPiece("")
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 2:
            piece.piece = value.decode("utf-8")  # type: ignore[union-attr]
        elif number == 2 and wire == 5:
            piece.score = struct.unpack("<f", value)[0]  # type: ignore[arg-type]
        elif number == 3 and wire == 0:
            piece.type = int(value)  # type: ignore[arg-type]
    return piece


_TRAINER = {3: "model_type", 35: "byte_fallback", 40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}
_NORMALIZER = {3: "add_dummy_prefix", 4: "remove_extra_whitespaces", 5: "escape_whitespaces"}


def _read_spec(model: SpmModel, buf: bytes, table: Dict[int, str]) -> None:
    """Set the varint fields of a trainer/normalizer spec named in ``table`` (and the few string fields)."""
    for number, wire, value in _fields(buf):
        if wire == 0 and number in table:
            kind = type(getattr(model, table[number]))
            setattr(model, table[number], kind(_signed(int(value))))  # type: ignore[arg-type]
        elif wire == 2 and table is _TRAINER and number == 45:
            model.unk_piece = value.decode("utf-8")  # type: ignore[union-attr]
        elif wire == 2 and table is _NORMALIZER and number == 1:
            model.normalizer_name = value.decode("utf-8")  # type: ignore[union-attr]
        elif wire == 2 and table is _NORMALIZER and number == 2:
            model.precompiled_charsmap = bytes(value)  # type: ignore[arg-type]


def parse_spm(data: bytes) -> SpmModel:
    """Decode a serialized ``ModelProto``."""
    model = SpmModel()
    try:
        for number, wire, value in _fields(data):
            if wire != 2:
                continue
            if number == 1:
                model.pieces.append(_piece(value))  # type: ignore[arg-type]
            elif number == 2:
                _read_spec(model, value, _TRAINER)  # type: ignore[arg-type]
            elif number == 3:
                _read_spec(model, value, _NORMALIZER)  # type: ignore[arg-type]
    except (SpmFormatError, UnicodeDecodeError, struct.error) as exc:
        raise SpmFormatError(f"not a SentencePiece model: {exc}") from None
    if not model.pieces:
        raise SpmFormatError("not a SentencePiece model: no pieces")
    return model


def read_spm(path: str) -> SpmModel:
    """:func:`parse_spm` of a ``.model`` file; ``ValueError`` naming the file when it is not one."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return parse_spm(data)
    except SpmFormatError as exc:
        raise SpmFormatError(f"{path}: {exc}") from None


# ----------------------------------------------------------------------------- sentencepiece's normalizer
class SpmNormalizer:
    """sentencepiece's ``Normalizer``: the compiled character map, then its whitespace rules.

    ``precompiled_charsmap`` = uint32 trie size, a Darts double-array trie over UTF-8 bytes whose
    values are offsets into the NUL-separated replacement strings that follow. At each position the
    longest matching key is replaced; an unmatched character is kept. ``tokenizers``' own
    ``Precompiled`` normalizer works on grapheme clusters and drops combining marks sentencepiece
    keeps, so the map is applied here.
    """

    def __init__(self, model: SpmModel, add_dummy_prefix: Optional[bool] = None) -> None:
        blob = model.precompiled_charsmap
        self.add_dummy_prefix = model.add_dummy_prefix if add_dummy_prefix is None else add_dummy_prefix
        self.remove_extra_whitespaces = model.remove_extra_whitespaces
        self.escape_whitespaces = model.escape_whitespaces
        self._units: Tuple[int, ...] = ()
        self._strings = b""
        if blob:
            size = struct.unpack_from("<I", blob)[0]
            self._units = struct.unpack_from(f"<{size // 4}I", blob, 4)
            self._strings = blob[4 + size:]
        self._ascii_identity = not any(self._match(bytes([b]), 0)[0] for b in range(0x20, 0x7F))

    def _match(self, data: bytes, start: int) -> Tuple[int, int]:
        """(length, value) of the longest trie key that prefixes ``data[start:]``; (0, -1) when none."""
        units = self._units
        if not units:
            return 0, -1
        best, value, node = 0, -1, (units[0] >> 10) << ((units[0] & (1 << 9)) >> 6)
        for i in range(start, len(data)):
            node ^= data[i]
            if node >= len(units):
                break
            unit = units[node]
            if unit & ((1 << 31) | 0xFF) != data[i]:
                break
            node ^= (unit >> 10) << ((unit & (1 << 9)) >> 6)
            if (unit >> 8) & 1:
                best, value = i + 1 - start, units[node] & ((1 << 31) - 1)
        return best, value

    def _replacement(self, value: int) -> bytes:
        return self._strings[value:self._strings.index(b"\0", value)]

    def _mapped(self, text: str) -> Iterator[str]:
        """The normalized pieces of ``text`` in order (character map only)."""
        if self._ascii_identity and text.isascii() and all(" " <= c <= "~" for c in text):
            yield from text
            return
        data, pos = text.encode("utf-8"), 0
        while pos < len(data):
            length, value = self._match(data, pos)
            if length:
                yield self._replacement(value).decode("utf-8", "replace")
                pos += length
                continue
            char_len = 1 if data[pos] < 0x80 else 2 if data[pos] < 0xE0 else 3 if data[pos] < 0xF0 else 4
            yield data[pos:pos + char_len].decode("utf-8", "replace")
            pos += char_len

    def __call__(self, text: str) -> str:
        """``text`` as sentencepiece normalizes it (spaces escaped as U+2581)."""
        out: List[str] = [SPIECE_UNDERLINE] if self.add_dummy_prefix else []
        prev_space = self.remove_extra_whitespaces  # leading whitespace is dropped like repeated whitespace
        for piece in self._mapped(text):
            if self.remove_extra_whitespaces and prev_space:
                piece = piece.lstrip(" ")
                if not piece:
                    continue
            out.append(piece.replace(" ", SPIECE_UNDERLINE) if self.escape_whitespaces else piece)
            prev_space = piece.endswith(" ")
        result = "".join(out)
        if self.remove_extra_whitespaces:
            result = result.rstrip(SPIECE_UNDERLINE if self.escape_whitespaces else " ")
        return result


# ----------------------------------------------------------------------------- models
def bpe_merges(vocab: Dict[str, int], ranks: Optional[Dict[str, float]] = None) -> List[Tuple[str, str]]:
    """The BPE merges a SentencePiece BPE vocabulary implies, in transformers' converter order.

    Every split ``(left, right)`` of a piece whose two halves are pieces is a merge. Without ``ranks``
    merges are ordered by the merged piece's id; with ``ranks`` (piece -> score) by descending score.
    Ties: the halves' ids, then the lengths of left and right.
    """
    scored = ranks is not None
    order = ranks if scored else vocab
    found = []
    for merged, key in order.items():  # type: ignore[union-attr]
        local = [(merged[:i], merged[i:]) for i in range(1, len(merged)) if merged[:i] in vocab and merged[i:] in vocab]
        local.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        found += [(left, right, key) for left, right in local]
    sign = -1 if scored else 1
    found.sort(key=lambda m: (sign * m[2], sign * len(m[0]), sign * len(m[1])))
    return [(left, right) for left, right, _ in found]


class UnigramViterbi:
    """sentencepiece's own unigram Viterbi: float32 path scores summed from the start of the text.

    ``tokenizers``' Unigram sums scores in float64; the two pick different segmentations where
    two paths tie in exact arithmetic (periodic runs such as ``aaaa`` or ``hahaha``, whose permuted
    pieces give the same total) and float32 rounding of the running total decides. The running total
    depends on everything before, so a whole text is segmented at once; results are cached per text.
    """

    def __init__(self, model: SpmModel, cache_limit: int = 100_000) -> None:
        import numpy as np

        normal = [p.score for p in model.pieces if p.type == NORMAL] or [0.0]
        self._f32 = np.float32
        max_score = np.float32(max(normal))
        self._unk_score = np.float32(min(normal)) - np.float32(10.0)
        self._unk_id = model.unk_id
        self._bytes: Dict[int, int] = {}  # byte value -> id of its <0xXX> piece, with byte fallback
        if model.byte_fallback:
            self._bytes = {int(p.piece[3:5], 16): i for i, p in enumerate(model.pieces) if p.type == BYTE}
        self._pieces: Dict[str, Tuple[int, object]] = {}
        for i, p in enumerate(model.pieces):
            if p.type == NORMAL:
                self._pieces.setdefault(p.piece, (i, np.float32(p.score)))
            elif p.type == USER_DEFINED:
                bonus = np.float32(len(p.piece.encode("utf-8")) * float(max_score) - 0.1)
                self._pieces.setdefault(p.piece, (i, bonus))
        self._max_len = max((len(k) for k in self._pieces), default=1)
        self._cache: Dict[str, List[int]] = {}
        self._cache_limit = cache_limit

    def __call__(self, text: str) -> List[int]:
        """Piece ids of normalized ``text``: a run of unknown characters -> one unknown id (or, with
        byte fallback, the ``<0xXX>`` pieces of its UTF-8 bytes)."""
        ids = self._cache.get(text)
        if ids is None:
            if len(self._cache) >= self._cache_limit:
                self._cache.clear()
            ids = self._cache[text] = self._segment(text)
        return list(ids)

    def _segment(self, text: str) -> List[int]:
        size = len(text)
        best: List[Optional[Tuple[object, int, int]]] = [None] * (size + 1)  # (score, start, id) ending here
        best[0] = (self._f32(0.0), -1, -1)
        for start in range(size):
            till_here = best[start][0]  # type: ignore[index]
            single = False
            for end in range(start + 1, min(size, start + self._max_len) + 1):
                hit = self._pieces.get(text[start:end])
                if hit is None:
                    continue
                score = hit[1] + till_here  # float32 + float32, as sentencepiece
                if best[end] is None or score > best[end][0]:  # type: ignore[index,operator]
                    best[end] = (score, start, hit[0])
                single = single or end == start + 1
            if not single:
                score = self._unk_score + till_here
                if best[start + 1] is None or score > best[start + 1][0]:  # type: ignore[index,operator]
                    best[start + 1] = (score, start, self._unk_id)
        spans: List[Tuple[int, int, int]] = []  # (piece id, start, end), last piece first
        pos = size
        while pos > 0:
            _, start, piece_id = best[pos]  # type: ignore[misc]
            if piece_id == self._unk_id and spans and spans[-1][0] == piece_id:  # unknown runs fuse into one
                spans[-1] = (piece_id, start, spans[-1][2])
            else:
                spans.append((piece_id, start, pos))
            pos = start
        ids: List[int] = []
        for piece_id, start, end in reversed(spans):
            if piece_id == self._unk_id and self._bytes:  # byte fallback: the UTF-8 bytes of the unknown run
                ids.extend(self._bytes[b] for b in text[start:end].encode("utf-8"))
            else:
                ids.append(piece_id)
        return ids
