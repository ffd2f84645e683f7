"""Turn command-line inputs (files, folders, globs, text files) into ordered work lists."""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable

from .errors import CLIZooError

__all__ = ["IMAGE_EXTENSIONS", "expand_images", "read_texts", "is_image_name", "read_utf8", "check_utf8"]

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

    A missing file or a pattern matching nothing is an error, and so is finding no image file at
    all (an empty folder, a folder of text files). Folders contribute all their files: a non-image
    in a folder is reported and skipped later, not silently ignored.
    """
    inputs = list(inputs)
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
    if inputs and not any(is_image_name(f) for f in out):
        searched = ", ".join(inputs[:3]) + (f" and {len(inputs) - 3} more" if len(inputs) > 3 else "")
        found = f"only {len(out)} other file{'s' if len(out) != 1 else ''}" if out else "no files"
        raise CLIZooError(f"no image files found in {searched} ({found}; image files end in "
                          f"{', '.join(sorted(IMAGE_EXTENSIONS))}), pass image files or folders that hold some")
    return out


def _not_utf8(what: str, data: bytes, err: UnicodeDecodeError, todo: str = "save it as UTF-8") -> CLIZooError:
    """``<what> is not UTF-8 text (byte 0xE9 at offset 12), save it as UTF-8``."""
    return CLIZooError(f"{what} is not UTF-8 text (byte 0x{data[err.start]:02X} at offset {err.start}), {todo}")


def read_utf8(path: str, what: str = "") -> str:
    """The text of file ``path``, which must be UTF-8 (an error names the file and the byte offset)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(f"{what} {path}".strip(), data, err) from None


def check_utf8(value: str, what: str) -> str:
    """``value`` (from the command line), refused when it holds bytes that are not UTF-8.

    Python decodes such argv bytes as lone surrogates, which no tokenizer accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        data = value.encode("utf-8", "surrogateescape")
        start = len(value[:err.start].encode("utf-8", "surrogateescape"))
        raise _not_utf8(what, data, UnicodeDecodeError("utf-8", data, start, start + 1, ""),
                        "pass it in UTF-8 (check the terminal's encoding)") from None
    return value


def read_texts(path: str) -> list[str]:
    """One text per non-empty line of ``path``."""
    try:
        lines = read_utf8(path, "texts file").splitlines()
    except (FileNotFoundError, IsADirectoryError):
        raise CLIZooError(f"no such texts file: {path}, check the --texts path") from None
    texts = [ln.strip() for ln in lines if ln.strip()]
    if not texts:
        raise CLIZooError(f"texts file {path} holds no text, write one text per line")
    return texts
