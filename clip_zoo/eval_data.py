"""Dataset readers of ``clip-zoo eval``: ImageFolder trees, tables and WebDataset shards.

* ImageFolder: ``ROOT/<class>/.../*.png``; classes are the sub-folders in sorted order (as
  torchvision's ``ImageFolder``); ``--classes auto`` names them by folder name, ``_`` read as a space.
* Table: ``.csv``, ``.jsonl`` or ``.parquet`` with a path column (``path``, ``image``, ``filepath``,
  ``file``) and a label column (``label``, ``class``, ``target``: a class name, or an index into
  ``--classes FILE``) or caption column(s) (``caption`` on several rows of one path, or a list in
  ``captions``); relative paths are read from the table's folder; a ``split`` column is filtered by
  ``--split``.
* WebDataset: a ``.tar`` shard, or a folder of them, laid out as img2dataset writes them
  (``KEY.jpg``/``.png``/``.webp``, ``KEY.txt`` caption, ``KEY.json``, optional ``KEY.cls`` class
  index). The images are unpacked once into the cache folder so the embedding cache can reuse them.

Problems with single items (an empty class folder, a missing image) are collected in ``notes`` and
reported; a dataset that cannot be evaluated at all is a :class:`CLIZooError`.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import CLIZooError
from .inputs import IMAGE_EXTENSIONS, is_image_name, read_utf8

__all__ = ["ClassData", "PairData", "load_classification", "load_pairs", "read_table", "read_class_names",
           "webdataset_shards", "is_webdataset", "shard_samples"]

TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")
_PATH_KEYS = ("path", "image", "filepath", "file", "image_path")
_LABEL_KEYS = ("label", "class", "target", "cls")


@dataclass
class ClassData:
    """Images with class indices into ``classes`` (the names put into the prompts)."""

    name: str
    paths: list[str]
    targets: np.ndarray  # (N,) int64
    classes: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass
class PairData:
    """Images and the captions of each (``captions[i]`` belong to ``paths[i]``)."""

    name: str
    paths: list[str]
    captions: list[list[str]]
    notes: list[str] = field(default_factory=list)


def _name(spec: str) -> str:
    p = Path(spec.rstrip("/"))
    return p.stem if p.suffix in TABLE_SUFFIXES + (".tar",) else p.name


def read_class_names(path: str) -> list[str]:
    """One class name per non-empty line of ``path`` (UTF-8), no duplicates."""
    if not Path(path).is_file():
        raise CLIZooError(f"no such classes file: {path}, pass --classes auto or a file with one class name a line")
    names = [ln.strip() for ln in read_utf8(path, "classes file").splitlines() if ln.strip()]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if not names or dupes:
        what = f"repeats {', '.join(dupes)}" if dupes else "holds no class names"
        raise CLIZooError(f"classes file {path} {what}, write each class name once, one a line")
    return names


# ----------------------------------------------------------------------------- tables
def _table_rows(path: Path) -> list[dict]:
    """The rows of a CSV / JSONL / Parquet table as dicts."""
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    if path.suffix == ".jsonl":
        rows = [json.loads(ln) for ln in read_utf8(str(path), "table").splitlines() if ln.strip()]
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError("every line must be a JSON object")
        return rows
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CLIZooError("reading Parquet needs pyarrow, install it with: pip install 'clip-zoo[eval]'") from None
    return pq.read_table(path).to_pylist()


def read_table(path: Path, split: Optional[str] = None) -> list[dict]:
    """Rows of table ``path`` with an absolute ``path`` key; filtered on ``split`` when given."""
    try:
        rows = _table_rows(path)
    except CLIZooError:
        raise
    except Exception as err:  # bad CSV / JSON / Parquet
        raise CLIZooError(f"cannot read table {path} ({' '.join(str(err).split())[:120]}), "
                          "check that it is a valid CSV, JSONL or Parquet file") from None
    if not rows:
        raise CLIZooError(f"table {path} has no rows, add rows of path,label or path,caption")
    key = next((k for k in _PATH_KEYS if k in rows[0]), None)
    if key is None:
        raise CLIZooError(f"table {path} has no path column (columns: {', '.join(map(str, rows[0]))}), "
                          f"name the image column one of {', '.join(_PATH_KEYS)}")
    if split is not None:
        rows = [r for r in rows if str(r.get("split")) == split]
        if not rows:
            raise CLIZooError(f"table {path} has no rows with split == {split!r}, check --split")
    for r in rows:
        r["path"] = os.path.abspath(path.parent / str(r[key]))
    return rows


# ----------------------------------------------------------------------------- WebDataset
def _shards(spec: Path) -> list[Path]:
    if spec.is_file():
        return [spec]
    return sorted(p for p in spec.iterdir() if p.suffix == ".tar" and p.is_file())


def _is_webdataset(spec: Path) -> bool:
    if spec.is_file():
        return spec.suffix == ".tar"
    entries = [p for p in spec.iterdir() if not p.name.startswith(".")]
    return bool(entries) and all(p.suffix == ".tar" and p.is_file() for p in entries)


def _unpack(shard: Path, dest: Path) -> None:
    """Unpack the image, ``.txt``, ``.json`` and ``.cls`` members of ``shard`` into ``dest`` (atomically)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(shard) as tar:
            for m in tar:
                name = Path(m.name).name
                keep = is_image_name(name) or Path(name).suffix in (".txt", ".json", ".cls")
                if m.isfile() and keep and not name.startswith("."):
                    (tmp / name).write_bytes(tar.extractfile(m).read())
        os.replace(tmp, dest)
    except (tarfile.TarError, OSError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if dest.is_dir():  # another run unpacked it meanwhile
            return
        raise CLIZooError(f"cannot read WebDataset shard {shard} ({err}), check the file") from None


def _shard_samples(shard: Path, cache: Path) -> list[dict]:
    """One dict per sample of ``shard``: ``path`` (the unpacked image), ``key`` and its side files."""
    st = shard.stat()
    digest = hashlib.sha256(f"{shard.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:20]
    dest = cache / "webdataset" / digest
    if not dest.is_dir():
        _unpack(shard, dest)
    samples: dict[str, dict] = {}
    for f in sorted(dest.iterdir()):
        key, ext = f.name.split(".", 1)[0], f.suffix
        item = samples.setdefault(key, {"key": key})
        if is_image_name(f.name):
            item["path"] = str(f)
        else:
            item[ext[1:]] = f.read_text(encoding="utf-8", errors="replace").strip()
    return list(samples.values())


# public names (used by `clip-zoo embed`, see clip_zoo/embed_io.py)
webdataset_shards, is_webdataset, shard_samples = _shards, _is_webdataset, _shard_samples


def _webdataset_rows(spec: Path, cache: Path) -> tuple[list[dict], list[str]]:
    rows, notes = [], []
    for shard in _shards(spec):
        for s in _shard_samples(shard, cache):
            if "path" not in s:
                notes.append(f"sample {s['key']} of {shard.name} has no image ({', '.join(IMAGE_EXTENSIONS)})")
                continue
            meta = json.loads(s["json"]) if s.get("json", "").startswith("{") else {}
            label = s.get("cls", meta.get("label"))
            caps = meta.get("captions") or ([s["txt"]] if s.get("txt") else [])
            rows.append({"path": s["path"], "label": label, "captions": caps})
    return rows, notes


# ----------------------------------------------------------------------------- classification
def _folder_rows(root: Path) -> tuple[list[dict], list[str], list[str]]:
    """``(rows, class folders, notes)`` of an ImageFolder tree."""
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows, notes = [], []
    for name in folders:
        found = sorted(os.path.join(d, f) for d, _, files in os.walk(root / name) for f in files
                       if is_image_name(f) and not f.startswith("."))
        if not found:
            notes.append(f"class folder {root / name} holds no images: kept as a label, with no samples")
        rows += [{"path": os.path.abspath(f), "label": name} for f in found]
    return rows, folders, notes


def _label_index(rows: list[dict], names: list[str], where: str) -> np.ndarray:
    """The class index of every row: an int label indexes ``names``, a string is looked up in it."""
    lookup = {n: i for i, n in enumerate(names)}
    lookup.update({n.replace(" ", "_"): i for i, n in enumerate(names)})
    out = []
    for r in rows:
        label = r.get("label")
        text = str(label).strip() if label is not None else ""
        if text.lstrip("-").isdigit() and text not in lookup:
            i = int(text)
            if not 0 <= i < len(names):
                raise CLIZooError(f"{where}: label {i} of {r['path']} is not a class index (0 to {len(names) - 1}), "
                                  "check the labels or --classes")
        elif text in lookup:
            i = lookup[text]
        else:
            raise CLIZooError(f"{where}: label {text!r} of {r['path']} is not among the classes, "
                              "check the labels or pass --classes FILE with every class name")
        out.append(i)
    return np.asarray(out, np.int64)


def _class_names(spec: str, folders: Optional[list[str]], rows: list[dict], where: str) -> list[str]:
    """The class names: ``--classes FILE``, or ``auto`` (folder names, else the table's string labels)."""
    if spec != "auto":
        names = read_class_names(spec)
        if folders is not None and len(names) != len(folders):
            raise CLIZooError(f"{spec} names {len(names)} classes but {where} has {len(folders)} class folders, "
                              "write one name per class folder, in sorted folder order")
        return names
    if folders is not None:
        return [f.replace("_", " ") for f in folders]
    labels = {str(r.get("label")).strip() for r in rows if r.get("label") is not None}
    if any(t.lstrip("-").isdigit() for t in labels):
        raise CLIZooError(f"{where} has integer labels, pass --classes FILE with one class name a line")
    return sorted(labels)


def _rows_of(spec: str, split: Optional[str], cache: Path) -> tuple[list[dict], Optional[list[str]], list[str]]:
    """``(rows, class folders or None, notes)`` of any supported dataset ``spec``."""
    path = Path(spec)
    if split is not None and path.is_dir():
        path = path / split
        if not path.is_dir():
            raise CLIZooError(f"{spec} has no {split!r} folder, check --split")
        split = None
    if path.is_file() and path.suffix in TABLE_SUFFIXES:
        return read_table(path, split), None, []
    if path.is_dir() or path.suffix == ".tar":
        if not path.exists():
            raise CLIZooError(f"no such dataset: {spec}, check the path")
        if _is_webdataset(path):
            rows, notes = _webdataset_rows(path, cache)
            return rows, None, notes
        return _folder_rows(path)
    if not path.exists():
        raise CLIZooError(f"no such dataset: {spec}, check the path")
    raise CLIZooError(f"cannot tell what kind of dataset {spec} is, pass an ImageFolder tree, a "
                      f"{'/'.join(TABLE_SUFFIXES)} table or WebDataset .tar shards")


def load_classification(spec: str, classes: str = "auto", split: Optional[str] = None,
                        cache: Path = Path(".")) -> ClassData:
    """A labelled image set; errors for no images at all and for a single class."""
    rows, folders, notes = _rows_of(spec, split, cache)
    where = f"{spec}{f' (split {split})' if split else ''}"
    notes += [f"image {r['path']} is missing: skipped" for r in rows if not os.path.isfile(r["path"])]
    rows = [r for r in rows if os.path.isfile(r["path"])]
    if not rows and folders == [] and any(is_image_name(f.name) for f in Path(spec).iterdir()):
        raise CLIZooError(f"{where} holds images but no class folders, put each class's images in a folder "
                          "named after the class (an ImageFolder tree)")
    if not rows:
        raise CLIZooError(f"{where} holds no images, pass an ImageFolder tree with images in class folders")
    names = _class_names(classes, folders, rows, where)
    if len(names) < 2:
        raise CLIZooError(f"{where} has a single class ({names[0]!r}): a classifier needs at least 2 classes, "
                          "add the other classes' folders or labels")
    return ClassData(_name(spec), [r["path"] for r in rows], _label_index(rows, names, where), names, notes)


# ----------------------------------------------------------------------------- pairs
def _group_captions(rows: list[dict]) -> dict[str, list[str]]:
    """Image path → its captions, in first-appearance order (``caption`` rows and ``captions`` lists)."""
    groups: dict[str, list[str]] = {}
    for r in rows:
        caps = r.get("captions")
        if isinstance(caps, str):
            caps = [caps]
        caps = list(caps or []) + ([r["caption"]] if r.get("caption") not in (None, "") else [])
        groups.setdefault(r["path"], []).extend(" ".join(str(c).split()) for c in caps if str(c).strip())
    return groups


def load_pairs(spec: str, cache: Path = Path(".")) -> PairData:
    """Image-caption pairs; images that are missing or have no caption are reported and skipped."""
    rows, folders, notes = _rows_of(spec, None, cache)
    if folders is not None:
        raise CLIZooError(f"{spec} is a folder of images, not image-caption pairs; pass a JSONL/CSV/Parquet table "
                          "of path,caption (or path,captions) or WebDataset shards")
    paths, captions = [], []
    for path, caps in _group_captions(rows).items():
        if not os.path.isfile(path):
            notes.append(f"image {path} is missing: its {len(caps)} caption(s) are skipped")
        elif not caps:
            notes.append(f"image {path} has no caption: skipped")
        else:
            paths.append(path)
            captions.append(caps)
    if not paths:
        raise CLIZooError(f"{spec} holds no usable image-caption pairs ({len(notes)} skipped: "
                          f"{notes[0] if notes else 'no rows'}), check the paths and captions")
    return PairData(_name(spec), paths, captions, notes)
