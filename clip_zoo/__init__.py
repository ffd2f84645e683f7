"""clip_zoo: the ``clip-zoo`` application (classify, embed, search, convert, models, info).

Backends are imported lazily, only the one in use (see :mod:`clip_zoo.engines`).
"""
from __future__ import annotations

__all__ = ["main"]


def main(argv=None) -> int:
    """Entry point of the ``clip-zoo`` command (see :mod:`clip_zoo.__main__`)."""
    from .__main__ import main as _main

    return _main(argv)
