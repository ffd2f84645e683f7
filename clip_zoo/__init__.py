"""clip_zoo: the ``clip-zoo`` application (classify, embed, search, convert, models, info).

Backends are imported lazily, only the one in use (see :mod:`clip_zoo.engines`).
"""
from __future__ import annotations

__all__ = ["main", "__version__"]

#: Used by ``clip-zoo --version`` when the distribution's metadata is missing (keep in step with pyproject.toml).
__version__ = "0.1.0"


def main(argv=None) -> int:
    """Entry point of the ``clip-zoo`` command (see :mod:`clip_zoo.__main__`)."""
    from .__main__ import main as _main

    return _main(argv)
