"""Atomic file writes: a temp file in the target directory, fsync, rename.

A crash (even ``kill -9``) mid-write leaves either the previous complete file or none. The temp
file gets the mode a plain ``open(path, "w")`` would (``0o666`` minus the umask), not ``mkstemp``'s
``0o600``: see :func:`file_mode` / :func:`dir_mode` for other temp-then-rename writers.
"""
from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Iterator, Union

__all__ = ["atomic_write_bytes", "atomic_open", "current_umask", "file_mode", "dir_mode"]

_UMASK_LOCK = threading.Lock()


def _umask_from_proc() -> int | None:
    """The ``Umask:`` line of ``/proc/self/status`` (Linux >= 4.7), read without changing anything."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


@functools.lru_cache(maxsize=None)
def current_umask() -> int:
    """The process umask, read once: from ``/proc`` if possible, else by setting and restoring it
    (under a lock; that briefly changes it for other threads, hence only as a fallback)."""
    mask = _umask_from_proc()
    if mask is None:
        with _UMASK_LOCK:
            mask = os.umask(0o022)
            os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new regular file gets from ``open()``: ``0o666`` minus the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode a new directory gets from ``mkdir()``: ``0o777`` minus the umask."""
    return 0o777 & ~current_umask()


@contextlib.contextmanager
def atomic_open(path: Union[str, os.PathLike]) -> Iterator[BinaryIO]:
    """Open a temp file beside ``path`` for binary writing; rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fd, file_mode())  # mkstemp makes 0o600; the result should look like any new file
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write_bytes(path: Union[str, os.PathLike], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as fh:
        fh.write(data)
