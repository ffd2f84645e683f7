"""Turn command-line inputs (files, folders, globs, text files) into ordered work lists."""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable

from .errors import CLIZooError

__all__ = ["IMAGE_EXTENSIONS", "expand_images", "read_texts", "is_image_name"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def is_image_name(path: str) -> bool:
    """True when the file name has an image extension."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _walk(folder: Path) -> list[str]:
    """Every non-hidden file under ``folder``, sorted (hidden files and folders are skipped)."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith("."))
    return out


def expand_images(inputs: Iterable[str]) -> list[str]:
    """Files as given, folders walked recursively, glob patterns expanded; duplicates dropped.

    A missing file or a pattern matching nothing is an error. Folders contribute all their files:
    a non-image in a folder is reported and skipped later, not silently ignored.
    """
    seen, out = set(), []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = _walk(path)
        elif path.is_file():
            found = [str(path)]
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not found:
                raise CLIZooError(f"no files match {item!r}, check the pattern")
        else:
            raise CLIZooError(f"no such file or folder: {item}, check the path")
        for f in found:
            if f not in seen:
                seen.add(f)
                out.append(f)
    return out


def read_texts(path: str) -> list[str]:
    """One text per non-empty line of ``path``."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CLIZooError(f"no such texts file: {path}, check the --texts path") from None
    except UnicodeDecodeError:
        raise CLIZooError(f"texts file {path} is not UTF-8 text, save it as UTF-8") from None
    texts = [ln.strip() for ln in lines if ln.strip()]
    if not texts:
        raise CLIZooError(f"texts file {path} holds no text, write one text per line")
    return texts
