"""A declarative name table engine: ``(foreign template, canonical template, op, arch)`` rows.

Templates use fields ``{i}`` (a layer index), ``{p}`` (``weight``/``bias``), ``{x}`` (any dotted rest)
and, on the canonical side of a ``split3`` row, ``{qkv}`` (``q``, ``k``, ``v``). Ops:

- ``copy``: same array;
- ``transpose``: foreign ``[in, out]`` matrix <-> canonical Linear ``[out, in]``;
- ``split3``: one fused foreign tensor (``in_proj_weight`` ``[3d, d]``) <-> three canonical ones
  (``q``, ``k``, ``v`` in that order), split as views and concatenated on the way back.

Rows apply to ``arch`` ``any``, ``vit`` or ``resnet``; the first matching row wins.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from .errors import ConversionError

__all__ = ["Row", "to_canonical", "from_canonical"]

_FIELDS = {"i": r"\d+", "p": r"weight|bias", "x": r".+", "qkv": r"q|k|v"}


@dataclass(frozen=True)
class Row:
    foreign: str
    canonical: str
    op: str = "copy"
    arch: str = "any"


def _regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    pattern = "".join(re.escape(p) if k % 2 == 0 else f"(?P<{p}>{_FIELDS[p]})" for k, p in enumerate(parts))
    return re.compile(pattern)


def _rows(table: Iterable[Row], arch: str) -> list[tuple[Row, re.Pattern, re.Pattern]]:
    return [(r, _regex(r.foreign), _regex(r.canonical)) for r in table if r.arch in ("any", arch)]


def to_canonical(tensors: Mapping[str, np.ndarray], table: Iterable[Row], arch: str, source: str,
                 ignore: re.Pattern) -> dict[str, np.ndarray]:
    """Rename foreign tensors to canonical names (views where possible); unknown names are an error."""
    rows, out, unknown = _rows(table, arch), {}, []
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
                else:
                    out[row.canonical.format(**fields)] = a.T if row.op == "transpose" else a
                break
        else:
            unknown.append(name)
    if unknown:
        raise ConversionError(f"{source}: unexpected tensor(s) {', '.join(unknown[:10])}"
                              f"{' ...' if len(unknown) > 10 else ''} (no mapping to the canonical schema)")
    return out


def from_canonical(weights: Mapping[str, np.ndarray], table: Iterable[Row], arch: str) -> dict[str, np.ndarray]:
    """Canonical ``{name: array}`` -> foreign names (``split3`` groups concatenated q, k, v)."""
    rows, out = _rows(table, arch), {}
    for name, a in weights.items():
        for row, _, canonical in rows:
            m = canonical.fullmatch(name)
            if m:
                fields = m.groupdict()
                if row.op == "split3":
                    qkv = fields.pop("qkv")
                    if qkv == "q":
                        parts = [weights[row.canonical.format(qkv=p, **fields)] for p in "qkv"]
                        out[row.foreign.format(**fields)] = np.concatenate(parts, axis=0)
                else:
                    out[row.foreign.format(**fields)] = a.T if row.op == "transpose" else a
                break
        else:
            raise ConversionError(f"canonical tensor {name!r} has no name in this format")
    return out
