"""conversion: read and write every CLIP checkpoint format without a deep-learning framework.

Public API (stable; the backends call these):

- :func:`load_checkpoint(path, config=None, *, arch=None) -> (CLIPConfig, dict[str, np.ndarray])` —
  any supported format, canonical names and layouts (see :mod:`clip_core.schema`);
- :func:`load_for_part(path, part, config=None)` — a whole checkpoint, or one holding only ``part``
  (a tower / classification model's own save);
- :func:`save_checkpoint(path, config, weights, format="canonical", dtype=None, part="model")` — any
  format (a part other than the whole model: canonical / hf / flax);
- :func:`save_canonical(directory, config, weights)` — the canonical directory;
- :func:`read` — like ``load_checkpoint`` but also reports the detected format.
"""
from __future__ import annotations

from .api import FORMATS, FORMATS_BY_FAMILY, Checkpoint, load_checkpoint, load_for_part, read, save_checkpoint
from .canonical import save_canonical
from .errors import ConversionError, UnsafePickleError

__all__ = ["load_checkpoint", "load_for_part", "save_canonical", "save_checkpoint", "read", "Checkpoint", "FORMATS",
           "FORMATS_BY_FAMILY", "ConversionError", "UnsafePickleError"]
