"""Inputs and outputs of ``clip-zoo embed`` at scale: tables and WebDataset shards in, Parquet out.

Inputs (besides files, folders and globs): a ``.csv`` / ``.jsonl`` / ``.parquet`` table of image
paths (read by :func:`clip_zoo.eval_data.read_table`: a ``path``/``image``/... column, optional
``caption`` and ``id``), and WebDataset ``.tar`` shards (or a folder of them) as img2dataset writes
them, unpacked once into ``CACHE/webdataset/`` by :func:`clip_zoo.eval_data.shard_samples`.

``--format parquet`` output: a folder ``OUT/`` of ``part-NNNNN.parquet`` files (columns ``id``
int64 row number, ``kind``, ``path``, ``key``, ``caption``, ``text`` when any input has them,
``embedding`` fixed-size list of float32 or float16, ``model``, ``framework``) and
``_manifest.json`` (model and its SHA-256, preprocessing, counts, parts, skipped inputs and why),
each file written atomically, the manifest last. :func:`open_embeddings` reads either layout in
batches, for ``clip-zoo index`` and ``search``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from .errors import CLIZooError

__all__ = ["add_arguments", "expand_inputs", "parquet_paths", "write_parquet", "open_embeddings",
           "MANIFEST", "PART_ROWS"]

MANIFEST = "_manifest.json"
#: Rows per Parquet part (whole batches are kept together, so a part may hold a little more).
PART_ROWS = 65536
_TABLES = (".csv", ".jsonl", ".parquet")


def add_arguments(p) -> None:
    """The ``embed`` options of this module and of the Ray engine."""
    p.add_argument("--format", choices=("npy", "parquet"), default="npy",
                   help="npy: OUT.npy + index + meta (small runs); parquet: a folder OUT/ of Parquet parts "
                        "+ _manifest.json")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="Parquet embedding type")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="where WebDataset shards are unpacked (default $XDG_CACHE_HOME/clip-zoo)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process; ray: Ray Data actors (pip install 'clip-zoo[ray]')")
    p.add_argument("--address", default=None, help="Ray cluster address (auto, ray://host:10001); default: local")
    p.add_argument("--workers", type=int, default=None, help="Ray actors (default: one per 2 CPUs)")


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clip-zoo"


def _caption(row: dict) -> Optional[str]:
    caps = row.get("caption", row.get("captions"))
    if isinstance(caps, (list, tuple)):
        caps = caps[0] if caps else None
    return None if caps in (None, "") else str(caps)


def _table_items(path: Path) -> list[tuple[str, dict]]:
    from .eval_data import read_table

    out = []
    for r in read_table(path):
        extra = {"caption": _caption(r)}
        if r.get("id") is not None:
            extra["key"] = str(r["id"])
        out.append((r["path"], extra))
    return out


def _webdataset_items(spec: Path, cache: Path, notes: list[str]) -> list[tuple[str, dict]]:
    from .eval_data import shard_samples, webdataset_shards

    out = []
    for shard in webdataset_shards(spec):
        for s in shard_samples(shard, cache):
            if "path" not in s:
                notes.append(f"sample {s['key']} of {shard} has no image")
                continue
            out.append((s["path"], {"key": f"{shard.stem}/{s['key']}", "caption": s.get("txt") or None}))
    return out


def expand_inputs(inputs: Sequence[str], cache: Optional[str] = None) -> tuple[list[list], list, list[str]]:
    """``(items, extras, notes)``: ``items`` are the plan's ``["image", path]`` pairs (files, folders and
    globs first, as :func:`clip_zoo.inputs.expand_images` orders them, then each table and WebDataset
    input in order), ``extras`` the ``{"key", "caption"}`` of each item (``None`` for plain files)."""
    from .eval_data import is_webdataset
    from .inputs import expand_images

    plain, special = [], []
    for spec in inputs:
        p = Path(spec)
        if (p.is_file() and p.suffix in _TABLES) or (p.suffix == ".tar" and p.is_file()) or (
                p.is_dir() and is_webdataset(p)):
            special.append(p)
        else:
            plain.append(spec)
    items = [["image", f] for f in (expand_images(plain) if plain else [])]
    extras: list = [None] * len(items)
    notes: list[str] = []
    root = Path(cache) if cache else _default_cache()
    for p in special:
        got = _table_items(p) if p.suffix in _TABLES else _webdataset_items(p, root, notes)
        if not got:
            raise CLIZooError(f"{p} holds no images, check the table or shards")
        items += [["image", path] for path, _ in got]
        extras += [extra for _, extra in got]
    return items, extras, notes


# ----------------------------------------------------------------------------- Parquet output
def parquet_paths(out: str) -> dict[str, Path]:
    """The paths of a ``--format parquet`` run: the folder, its lock target and its work dir."""
    folder = Path(out)
    if folder.suffix == ".npy" or folder.is_file():
        raise CLIZooError(f"--format parquet writes a folder, not {out}, pass --out FOLDER")
    manifest = folder / MANIFEST
    return {"dir": folder, "npy": folder, "work": Path(f"{folder}.work"), "manifest": manifest, "index": manifest,
            "meta": manifest}


def preprocessing(processor) -> dict:
    keys = ("mode", "size", "crop_size", "do_resize", "resample", "do_center_crop", "do_rescale", "rescale_factor",
            "do_normalize", "image_mean", "image_std", "do_convert_rgb")
    out = {}
    for k in keys:
        v = getattr(processor, k, None)
        if v is not None:
            out[k] = [float(x) for x in v] if isinstance(v, (list, tuple)) else v
    return json.loads(json.dumps(out, default=str))


def _part_ranges(batches: list, part_rows: int) -> list[list[int]]:
    """Consecutive plan batches grouped into parts of at least ``part_rows`` items (the last may be smaller)."""
    parts, cur, rows = [], [], 0
    for k, (s, e) in enumerate(batches):
        cur.append(k)
        rows += e - s
        if rows >= part_rows:
            parts.append(cur)
            cur, rows = [], 0
    return parts + ([cur] if cur else [])


def _part_table(plan: dict, shards: dict, batch_ids: list[int], first_id: int, meta: dict, dtype: str):
    """One part's ``pyarrow.Table``; the rows of the batches ``batch_ids`` that were embedded."""
    import pyarrow as pa

    extras = plan.get("extra") or [None] * len(plan["items"])
    rows, vecs = [], []
    for k in batch_ids:
        s = plan["batches"][k][0]
        for r, i in enumerate(shards[k]["ok"]):
            kind, value = plan["items"][s + int(i)]
            extra = extras[s + int(i)] or {}
            rows.append({"kind": kind, "path": value if kind == "image" else None, "text": value if kind == "text"
                         else None, "key": extra.get("key"), "caption": extra.get("caption")})
            vecs.append(shards[k]["embeds"][r])
    dim = meta["dim"]
    flat = (np.stack(vecs) if vecs else np.zeros((0, dim), np.float32)).astype(dtype).reshape(-1)  # (n * D,)
    cols = {"id": pa.array(np.arange(first_id, first_id + len(rows), dtype=np.int64))}
    for name in ("kind", "path", "key", "caption", "text"):
        if name in ("kind", "path") or meta["has"][name]:
            cols[name] = pa.array([r[name] for r in rows], pa.string())
    cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)
    cols["model"] = pa.array([meta["model"]] * len(rows), pa.string()).dictionary_encode()
    cols["framework"] = pa.array([meta["framework"]] * len(rows), pa.string()).dictionary_encode()
    return pa.table(cols)


def write_parquet(plan: dict, shards: dict, paths: dict, meta: dict, dtype: str = "float32",
                  processor=None, part_rows: int = PART_ROWS) -> tuple[int, list[dict]]:
    """Write the parts (atomically, each) then ``_manifest.json``; → ``(rows written, skipped)``."""
    import pyarrow.parquet as pq
    from clip_core.io import atomic_open

    from .embed import _atomic_json, _remove_stale_temps

    extras = [e or {} for e in (plan.get("extra") or [])]
    meta = dict(meta, has={n: any(e.get(n) is not None for e in extras) for n in ("key", "caption")})
    meta["has"]["text"] = any(kind == "text" for kind, _ in plan["items"])
    folder = paths["dir"]
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(folder, [r"part-\d+\.parquet", re.escape(MANIFEST)])  # left by a killed run (we hold the lock)
    parts, first, skipped = [], 0, []
    for n, batch_ids in enumerate(_part_ranges(plan["batches"], part_rows)):
        for k in batch_ids:
            s = plan["batches"][k][0]
            skipped += [{"path": plan["items"][s + i][1], "error": msg} for i, msg in sorted(shards[k]["errors"].items())]
        table = _part_table(plan, shards, batch_ids, first, meta, dtype)
        if not table.num_rows:
            continue
        name = f"part-{len(parts):05d}.parquet"
        with atomic_open(folder / name) as fh:
            pq.write_table(table, fh)
        parts.append({"file": name, "rows": table.num_rows, "first_id": first})
        first += table.num_rows
    if not parts:
        raise CLIZooError(f"none of the {len(plan['items'])} inputs could be embedded (all were skipped), check the files")
    keep = {p["file"] for p in parts}
    for old in folder.glob("part-*.parquet"):  # parts of an earlier, larger run
        if old.name not in keep:
            old.unlink()
    kinds = [plan["items"][plan["batches"][k][0] + int(i)][0] for k in sorted(shards) for i in shards[k]["ok"]]
    manifest = {"format": "clip-zoo-embeddings-parquet", "version": 1, "model": meta["model"],
                "framework": meta["framework"], "model_sha256": meta["model_sha256"], "dim": meta["dim"],
                "dtype": dtype, "batch_size": meta["batch_size"], "engine": meta.get("engine", "local"),
                "preprocessing": processor if isinstance(processor, dict) or processor is None
                else preprocessing(processor),
                "count": first, "images": kinds.count("image"), "texts": kinds.count("text"),
                "inputs": len(plan["items"]), "skipped": skipped, "parts": parts}
    _atomic_json(paths["manifest"], manifest)
    return first, skipped


# ----------------------------------------------------------------------------- reading either layout
class Embeddings:
    """An embed output read in batches: ``n``, ``dim``, ``meta`` (model, framework ...),
    :meth:`batches` of float32 rows and :meth:`rows` (the metadata of given row ids)."""

    n: int
    dim: int
    meta: dict
    source: Path

    def batches(self, size: int = 65536) -> Iterator[tuple[int, np.ndarray]]:  # (start, (B, D) float32)
        raise NotImplementedError

    def rows(self, ids: Sequence[int]) -> list[dict]:
        raise NotImplementedError

    def take(self, ids: Sequence[int]) -> np.ndarray:
        """The float32 rows ``ids`` (sorted or not), read batch by batch: ``(len(ids), D)``."""
        ids = np.asarray(ids, np.int64)
        out = np.zeros((len(ids), self.dim), np.float32)
        order = np.argsort(ids)
        sorted_ids = ids[order]
        for start, x in self.batches():
            lo, hi = np.searchsorted(sorted_ids, [start, start + len(x)])
            out[order[lo:hi]] = x[sorted_ids[lo:hi] - start]
        return out


class _Npy(Embeddings):
    def __init__(self, path: Path) -> None:
        from .embed import output_paths

        paths = output_paths(str(path))
        try:
            self.arr = np.load(paths["npy"], mmap_mode="r", allow_pickle=False)  # (N, D), not read yet
            self.meta = json.loads(paths["meta"].read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CLIZooError(f"cannot read {path} ({' '.join(str(err).split())[:100]}), pass the .npy of a "
                              "finished `clip-zoo embed` run or its --format parquet folder") from None
        if self.arr.ndim != 2 or self.meta.get("count") != len(self.arr):
            raise CLIZooError(f"{path} does not match its meta file, rerun `clip-zoo embed`")
        self.n, self.dim, self.source, self.index_path = len(self.arr), self.arr.shape[1], paths["npy"], paths["index"]

    def batches(self, size: int = 65536):
        for s in range(0, self.n, size):
            yield s, np.asarray(self.arr[s:s + size], np.float32)

    def rows(self, ids):
        want = {int(i) for i in ids}
        found = {}
        with open(self.index_path, encoding="utf-8") as fh:
            for n, line in enumerate(fh):
                if n in want:
                    found[n] = json.loads(line)
        return [found[int(i)] for i in ids]


class _Parquet(Embeddings):
    def __init__(self, folder: Path) -> None:
        try:
            self.meta = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            parts = self.meta["parts"]
            self.n, self.dim = int(self.meta["count"]), int(self.meta["dim"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CLIZooError(f"{folder / MANIFEST} is missing or unreadable ({' '.join(str(err).split())[:80]}), "
                              "pass the --out folder of a finished `clip-zoo embed --format parquet` run") from None
        self.source, self.parts = folder, parts

    def _file(self, part: dict):
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.source / part["file"], memory_map=True)

    def batches(self, size: int = 65536):
        for part in self.parts:
            start = part["first_id"]
            for rb in self._file(part).iter_batches(batch_size=size, columns=["embedding"]):
                col = rb.column(0)
                x = col.values.to_numpy(zero_copy_only=False).reshape(len(col), self.dim)  # (B, D)
                yield start, x.astype(np.float32)
                start += len(col)

    def rows(self, ids):
        firsts = np.asarray([p["first_id"] for p in self.parts])
        by_part: dict[int, list[int]] = {}
        for i in sorted({int(i) for i in ids}):
            by_part.setdefault(int(np.searchsorted(firsts, i, side="right")) - 1, []).append(i)
        out = {}
        for n, want in by_part.items():
            part, f = self.parts[n], self._file(self.parts[n])
            table = f.read(columns=[c for c in f.schema_arrow.names if c not in ("embedding", "model", "framework")])
            for i in want:
                row = table.slice(i - part["first_id"], 1).to_pylist()[0]
                out[i] = {k: v for k, v in row.items() if v is not None}
        return [out[int(i)] for i in ids]


def open_embeddings(path: str) -> Embeddings:
    """The embed output at ``path``: a ``--format parquet`` folder or an ``.npy`` file."""
    p = Path(path)
    if p.is_dir():
        return _Parquet(p)
    from .embed import output_paths

    if not output_paths(path)["npy"].is_file():
        raise CLIZooError(f"no embeddings at {path}, pass the output of `clip-zoo embed` (.npy or a Parquet folder)")
    return _Npy(p)
