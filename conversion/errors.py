"""Errors raised by :mod:`conversion`; every message names the file (and tensor) at fault."""
from __future__ import annotations

import importlib
import pickle
from types import ModuleType

__all__ = ["ConversionError", "MissingDependencyError", "UnsafePickleError", "optional_import"]


class ConversionError(ValueError):
    """A checkpoint could not be read or written: unknown format, corrupt file, wrong tensors."""


class UnsafePickleError(ConversionError, pickle.UnpicklingError):
    """A pickle asked for a global outside the tensor/container allow-list; nothing was executed."""


class MissingDependencyError(ConversionError, ImportError):
    """A format needs a package that is not installed; the message names the extra to install."""


def optional_import(module: str, what: str, extra: str = "tf-files") -> ModuleType:
    """Import ``module`` for one format, or raise a one-line error naming ``clip-zoo[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{what} needs the '{module}' package, which is not installed; "
                                     f"install it with: pip install 'clip-zoo[{extra}]'") from None
