"""A declarative name table engine: ``(foreign template, canonical template, op, arch)`` rows.

Templates use fields ``{i}`` (a layer index), ``{p}`` (``weight``/``bias``), ``{x}`` (any dotted rest)
and, on the canonical side of a ``split3`` row, ``{qkv}`` (``q``, ``k``, ``v``). Ops (foreign -> canonical,
each with its inverse):

- ``copy``: same array;
- ``transpose``: foreign ``[in, out]`` matrix <-> canonical Linear ``[out, in]``;
- ``split3``: one fused foreign tensor (``in_proj_weight`` ``[3d, d]``) <-> three canonical ones
  (``q``, ``k``, ``v`` in that order), split as views and concatenated on the way back;
- ``heads_in`` / ``heads_bias`` / ``heads_out``: Flax's head-split attention ``(D, H, Dh)`` kernel,
  ``(H, Dh)`` bias and ``(H, Dh, D)`` output kernel <-> Linear ``[out, in]`` / ``[out]`` (the inverse
  needs the head count: the row's ``dim`` names it in the ``dims`` given to :func:`from_canonical`);
- ``conv_hwio``: Flax conv kernel ``HWIO`` <-> ``OIHW``;
- ``squeeze0``: a ``(1, N, D)`` position embedding <-> ``(N, D)``;
- ``scalar``: a shape-``()`` parameter <-> shape ``(1,)``.

A row with ``stack`` (``((piece, units), ...)``) gathers several foreign tensors into one canonical
tensor: its foreign template has a ``{s}`` field naming the piece; the pieces, each through ``op``,
are concatenated along axis 0 (and split by ``units`` on the way back) — e.g. timm's ``q`` + ``kv``
(1 + 2 units) or big_vision's ``query`` / ``key`` / ``value`` into a packed ``in_proj_weight``.

Rows apply to ``arch`` ``any``, ``vit`` or ``resnet``; the first matching row wins.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional

import numpy as np

from .errors import ConversionError

__all__ = ["Row", "OPS", "to_canonical", "from_canonical"]

_FIELDS = {"i": r"\d+", "p": r"weight|bias", "x": r".+", "qkv": r"q|k|v"}


@dataclass(frozen=True)
class Row:
    foreign: str
    canonical: str
    op: str = "copy"
    arch: str = "any"
    dim: str = ""  # the key of ``dims`` an inverse op needs (a head count)
    stack: tuple = ()  # ((piece, units), ...): several foreign tensors -> one canonical


def _squeeze0(a: np.ndarray) -> np.ndarray:
    if a.ndim != 3 or a.shape[0] != 1:
        raise ConversionError(f"expected a (1, N, D) position embedding, got shape {a.shape}")
    return a[0]


#: op -> (foreign -> canonical, (canonical, n) -> foreign); ``n`` is the row's ``dims`` value.
OPS: dict[str, tuple[Callable, Callable]] = {
    "copy": (lambda a: a, lambda a, n: a),
    "transpose": (lambda a: a.T, lambda a, n: a.T),
    "heads_in": (lambda a: a.reshape(a.shape[0], -1).T, lambda a, n: a.T.reshape(a.shape[1], n, -1)),  # (D,H,Dh)
    "heads_bias": (lambda a: a.reshape(-1), lambda a, n: a.reshape(n, -1)),  # (H, Dh)
    "heads_out": (lambda a: a.reshape(-1, a.shape[-1]).T, lambda a, n: a.T.reshape(n, -1, a.shape[0])),  # (H,Dh,D)
    "conv_hwio": (lambda a: a.transpose(3, 2, 0, 1), lambda a, n: a.transpose(2, 3, 1, 0)),
    "squeeze0": (_squeeze0, lambda a, n: a[None]),
    "scalar": (lambda a: a.reshape(1), lambda a, n: a.reshape(())),
}


def _regex(template: str, row: Optional[Row] = None) -> re.Pattern:
    fields = dict(_FIELDS, s="|".join(re.escape(p) for p, _ in row.stack) if row and row.stack else r"(?!)")
    parts = re.split(r"\{(\w+)\}", template)
    pattern = "".join(re.escape(p) if k % 2 == 0 else f"(?P<{p}>{fields[p]})" for k, p in enumerate(parts))
    return re.compile(pattern)


def _rows(table: Iterable[Row], arch: str) -> list[tuple[Row, re.Pattern, re.Pattern]]:
    return [(r, _regex(r.foreign, r), _regex(r.canonical)) for r in table if r.arch in ("any", arch)]


def _forward(row: Row, a: np.ndarray, name: str, source: str) -> np.ndarray:
    try:
        return OPS[row.op][0](a)
    except ValueError as err:
        raise ConversionError(f"{source}: tensor {name!r} of shape {tuple(a.shape)} does not fit op {row.op!r} "
                              f"({err})") from None


def to_canonical(tensors: Mapping[str, np.ndarray], table: Iterable[Row], arch: str, source: str,
                 ignore: re.Pattern) -> dict[str, np.ndarray]:
    """Rename foreign tensors to canonical names (views where possible); unknown names are an error."""
    rows, out, unknown, stacked = _rows(table, arch), {}, [], {}
    for name, a in tensors.items():
        if ignore.fullmatch(name):
            continue
        for row, foreign, _ in rows:
            m = foreign.fullmatch(name)
            if m:
                fields = m.groupdict()
                if row.op == "split3":
                    d = a.shape[0] // 3
                    for k, part in enumerate("qkv"):
                        out[row.canonical.format(qkv=part, **fields)] = a[k * d:(k + 1) * d]
                elif row.stack:
                    piece = fields.pop("s")
                    stacked.setdefault((row, row.canonical.format(**fields)), {})[piece] = (
                        _forward(row, a, name, source), fields)
                else:
                    out[row.canonical.format(**fields)] = _forward(row, a, name, source)
                break
        else:
            unknown.append(name)
    if unknown:
        raise ConversionError(f"{source}: unexpected tensor(s) {', '.join(unknown[:10])}"
                              f"{' ...' if len(unknown) > 10 else ''} (no mapping to the canonical schema)")
    for (row, canonical), pieces in stacked.items():
        out[canonical] = _gather(row, pieces, source)
    return out


def _gather(row: Row, pieces: dict, source: str) -> np.ndarray:
    fields = next(iter(pieces.values()))[1]
    missing = [row.foreign.format(s=p, **fields) for p, _ in row.stack if p not in pieces]
    if missing:
        raise ConversionError(f"{source}: missing tensor(s) {', '.join(missing)}")
    return np.concatenate([pieces[p][0] for p, _ in row.stack], axis=0)


def from_canonical(weights: Mapping[str, np.ndarray], table: Iterable[Row], arch: str,
                   dims: Optional[Mapping[str, int]] = None) -> dict[str, np.ndarray]:
    """Canonical ``{name: array}`` -> foreign names (``split3`` groups concatenated q, k, v; ``stack``
    rows split into their pieces); ``dims`` gives the head counts the head-split ops need."""
    rows, out, dims = _rows(table, arch), {}, dict(dims or {})
    for name, a in weights.items():
        for row, _, canonical in rows:
            m = canonical.fullmatch(name)
            if m:
                fields = m.groupdict()
                inverse = OPS.get(row.op, (None, None))[1]
                if row.op == "split3":
                    qkv = fields.pop("qkv")
                    if qkv == "q":
                        parts = [weights[row.canonical.format(qkv=p, **fields)] for p in "qkv"]
                        out[row.foreign.format(**fields)] = np.concatenate(parts, axis=0)
                elif row.stack:
                    unit = a.shape[0] // sum(u for _, u in row.stack)
                    start = 0
                    for piece, units in row.stack:
                        part = a[start:start + units * unit]
                        out[row.foreign.format(s=piece, **fields)] = inverse(part, dims.get(row.dim))
                        start += units * unit
                else:
                    out[row.foreign.format(**fields)] = inverse(a, dims.get(row.dim))
                break
        else:
            raise ConversionError(f"canonical tensor {name!r} has no name in this format")
    return out
