"""conversion: read and write every CLIP checkpoint format without a deep-learning framework.

Public API (stable; the backends call only these):

- :func:`load_checkpoint(path, config=None) -> (CLIPConfig, dict[str, np.ndarray])` — canonical
  names and layouts (see :mod:`clip_core.schema`);
- :func:`save_canonical(directory, config, weights)` — the canonical directory.
"""
from __future__ import annotations

from .canonical import load_checkpoint, save_canonical

__all__ = ["load_checkpoint", "save_canonical"]
