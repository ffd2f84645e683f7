"""Errors raised by :mod:`conversion`; every message names the file (and tensor) at fault."""
from __future__ import annotations

import pickle

__all__ = ["ConversionError", "UnsafePickleError"]


class ConversionError(ValueError):
    """A checkpoint could not be read or written: unknown format, corrupt file, wrong tensors."""


class UnsafePickleError(ConversionError, pickle.UnpicklingError):
    """A pickle asked for a global outside the tensor/container allow-list; nothing was executed."""
