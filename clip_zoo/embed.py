"""``clip-zoo embed``: batched, resumable embedding of images and texts.

Layout for ``--out emb.npy``: ``emb.npy`` (N, D) float32 L2-normalized rows, ``emb.index.jsonl``
(one JSON object per row: ``row``, ``kind`` = image|text, ``path`` or ``text``), ``emb.meta.json``
(model, framework, dim, counts, skipped inputs, and the size and SHA-256 of the other two files, so
a mixed set is detected). While running, every finished batch is written atomically to
``emb.npy.work/shard-NNNNNN.npz`` next to the output; a restarted run with the same inputs, model
and batch size skips the finished shards, so a crash or ``kill -9`` loses at most the batch in
flight. The work dir is removed once the outputs are written.

A run holds an exclusive lock on ``emb.npy.lock`` (``fcntl.flock``): a second run on the same
output stops at once. Every shard records the plan it belongs to, the model's fingerprint (SHA-256
of the checkpoint files) and each input's fingerprint (size, mtime and SHA-256 of the file,
taken in the decode threads from the bytes decoded); on resume a shard that does not load, belongs
to another plan or another model is redone, and inputs whose fingerprint changed are embedded
again (only those), so the result always equals a fresh run's.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import CLIZooError

__all__ = ["add_parser", "run", "output_paths", "read_embeddings", "OutputLock", "model_fingerprint"]

PLAN_VERSION = 2
#: Internal test hook, never read from the environment: seconds to sleep after each shard is written
#: (a test sets it in a subprocess through ``tests/hooked.py`` to kill a run halfway).
_test_shard_pause = 0.0


def add_parser(sub) -> None:
    p = sub.add_parser("embed", help="embed images (files, folders, globs) and/or texts into a .npy file",
                       description="Embed images and/or texts with a CLIP model. Writes OUT.npy (L2-normalized "
                                   "rows), OUT.index.jsonl and OUT.meta.json. Resumable: rerun the same command "
                                   "after an interruption and finished batches are not redone.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders (recursive), glob patterns, "
                   ".parquet/.csv/.jsonl tables of paths, or WebDataset .tar shards (or a folder of them)")
    p.add_argument("--texts", metavar="FILE", help="a text file: one text to embed per line")
    p.add_argument("--out", required=True, help="output .npy file (a folder with --format parquet)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--restart", action="store_true", help="discard a previous unfinished run's work dir")
    p.add_argument("--keep-work", action="store_true", help="keep the per-batch shards after assembling")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    from .embed_io import add_arguments

    add_arguments(p)  # tables / WebDataset in, --format parquet out, --engine ray (clip_zoo/embed_io.py)
    p.set_defaults(run=run)


def output_paths(out: str) -> dict[str, Path]:
    """The files of an embed output named by ``out`` (with or without ``.npy``)."""
    base = Path(out)
    if base.suffix != ".npy":
        base = base.with_name(base.name + ".npy")
    stem = base.with_suffix("")
    return {"npy": base, "index": Path(f"{stem}.index.jsonl"), "meta": Path(f"{stem}.meta.json"),
            "work": Path(f"{base}.work")}


def _not_ours(path: Path, why: str = "") -> CLIZooError:
    return CLIZooError(f"{path} is not an embeddings file written by clip-zoo embed{f' ({why})' if why else ''}, "
                       "pass the --out file of a finished `clip-zoo embed` run")


def _load_array(data: bytes, path: Path) -> np.ndarray:
    """The ``(N, D)`` float array of an embed output (the bytes ``data`` of ``path``); anything else
    (pickled objects, another dtype or shape, an ``.npz``, garbage) is a one-line error."""
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError, TypeError, MemoryError):  # pickled data, a bad header, garbage
        raise _not_ours(path) from None
    if not isinstance(loaded, np.ndarray):  # an .npz archive
        with contextlib.suppress(Exception):
            loaded.close()
        raise _not_ours(path, "an .npz archive")
    if loaded.dtype.kind != "f" or loaded.ndim != 2 or loaded.shape[1] == 0:
        raise _not_ours(path, f"a {loaded.dtype} array of shape {loaded.shape}, not (rows, dim) floats")
    bad = ~np.isfinite(loaded).all(axis=1)
    if bad.any():
        raise CLIZooError(f"{path} holds non-finite values (NaN/Inf) in row {int(np.flatnonzero(bad)[0])}, "
                          "rerun `clip-zoo embed` to rewrite it")
    return loaded


def _file_stamp(data: bytes) -> dict:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def read_embeddings(out: str) -> tuple[np.ndarray, list[dict], dict]:
    """Load ``(embeddings, index rows, meta)`` of an embed output (checked to belong together)."""
    paths = output_paths(out)
    if paths["npy"].is_file():  # a non-embeddings file is named as such before any missing side file
        npy_bytes = paths["npy"].read_bytes()
        emb = _load_array(npy_bytes, paths["npy"])
    for key in ("npy", "index", "meta"):
        if not paths[key].is_file():
            raise CLIZooError(f"{paths[key]} not found, pass the --out file of a finished `clip-zoo embed` run")
    index_bytes = paths["index"].read_bytes()
    try:
        meta = json.loads(paths["meta"].read_bytes().decode("utf-8"))
        index = [json.loads(line) for line in index_bytes.decode("utf-8").splitlines() if line]
    except ValueError as err:
        raise CLIZooError(f"{paths['meta']} or {paths['index']} is not valid JSON ({str(err)[:100]}), "
                          "rerun `clip-zoo embed` to rewrite them") from None
    if not isinstance(meta, dict) or not all(isinstance(r, dict) and isinstance(r.get("row"), int)
                                             and r.get("kind") in ("image", "text") for r in index):
        raise _not_ours(paths["index"] if isinstance(meta, dict) else paths["meta"], "unexpected content")
    files = meta.get("files")
    if isinstance(files, dict) and (files.get("npy") != _file_stamp(npy_bytes)
                                    or files.get("index") != _file_stamp(index_bytes)):
        raise CLIZooError(f"{paths['npy']}, {paths['index']} and {paths['meta']} are not from the same run "
                          "(an interrupted or concurrent embed?), rerun `clip-zoo embed` to rewrite them")
    if len(index) != len(emb) or any(r["row"] != i for i, r in enumerate(index)):
        raise CLIZooError(f"{paths['index']} has {len(index)} rows but {paths['npy']} has {len(emb)}, "
                          "rerun `clip-zoo embed` to rewrite them")
    return emb, index, meta


def _atomic_json(path: Path, obj) -> None:
    from clip_core.io import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode("utf-8"))


# ----------------------------------------------------------------------------- one run per output
class OutputLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``<out>.lock`` holding the owner's pid.

    The file is removed on release; a run that locked a file its previous owner had just removed
    notices (another inode at the path now) and locks again."""

    def __init__(self, npy: Path) -> None:
        self.npy = Path(npy)
        self.path = Path(f"{npy}.lock")
        self.fd: Optional[int] = None
        self.made: list[Path] = []  # folders created for the output: removed again if left empty

    def _owner(self, fd: int) -> str:
        for _ in range(20):  # the owner writes its pid right after locking
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            if text:
                return text
            time.sleep(0.01)
        return "unknown"

    def acquire(self) -> "OutputLock":
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        folder = self.path.parent
        while not folder.exists():
            self.made.append(folder)
            folder = folder.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = self._owner(fd)
                os.close(fd)
                raise CLIZooError(f"{self.npy} is being written by another clip-zoo embed (pid {owner}), "
                                  "wait for it or choose another --out") from None
            except OSError:  # a file system without locks: run unlocked, as before
                os.close(fd)
                return self
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
                self.fd = fd
                return self
            os.close(fd)  # its owner removed it meanwhile: lock the new one
        raise CLIZooError(f"cannot lock {self.path}, check the folder")

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # while still locked: nobody can lock this inode in between
            os.close(self.fd)
            self.fd = None
        for folder in self.made:  # deepest first; a folder holding the outputs is not empty
            try:
                folder.rmdir()
            except OSError:
                break
        self.made = []

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _remove_stale_temps(folder: Path, names: list[str]) -> None:
    """Remove ``.NAME.XXXXXXXX.tmp`` left by killed atomic writes of ``names`` (regular expressions;
    only run under the lock, so no live writer owns them)."""
    pattern = re.compile(r"^\.(%s)\.[a-z0-9_]{8}\.tmp$" % "|".join(names))
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if pattern.match(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


# ----------------------------------------------------------------------------- fingerprints
def _model_files(path: Path) -> list[Path]:
    """The files a checkpoint is read from: the weights (and shards) and the JSON / text side files."""
    path = Path(path)
    if path.is_file():
        return [path] + [path.parent / n for n in ("config.json", "open_clip_config.json")
                         if (path.parent / n).is_file()]
    files = [p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")
             and p.suffix in (".json", ".txt")]
    try:
        from conversion.detect import weights_file

        weights = weights_file(path)
    except Exception:  # no weights: loading the model reports it
        return files
    files.append(weights)
    if weights.name.endswith(".index.json"):
        with contextlib.suppress(Exception):
            shards = json.loads(weights.read_text(encoding="utf-8"))["weight_map"].values()
            files += [path / n for n in sorted(set(shards)) if "/" not in n and (path / n).is_file()]
    return sorted(set(files))


#: Read size of :func:`model_fingerprint`. The hash runs in a thread beside the model's import and load;
#: every read and every update releases the GIL and waits to take it back, and ``hashlib.file_digest``'s
#: 256 KB reads made ~4,400 such waits for a ViT-B/32 checkpoint (0.44 s of a 17 s bf16 embed of 500 images).
_HASH_CHUNK = 16 << 20


def _sha256_of(fh, view: memoryview) -> bytes:
    """SHA-256 of the rest of binary file ``fh`` (the digest ``hashlib.file_digest`` gives), read through
    the buffer ``view``."""
    digest = hashlib.sha256()
    while n := fh.readinto(view):
        digest.update(view[:n])
    return digest.digest()


def model_fingerprint(path: Path) -> str:
    """SHA-256 over the names and bytes of the files checkpoint ``path`` is read from."""
    h, view = hashlib.sha256(), memoryview(bytearray(_HASH_CHUNK))
    for f in _model_files(Path(path)):
        with open(f, "rb", buffering=0) as fh:
            h.update(f"{f.name}\0{os.fstat(fh.fileno()).st_size}\0".encode("utf-8", "surrogateescape"))
            h.update(_sha256_of(fh, view))
    return h.hexdigest()


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


# ----------------------------------------------------------------------------- plan and shards
def _make_plan(items: list, model_ref: str, framework: str, batch_size: int, precision: str = "fp32") -> dict:
    """Fixed batches: image items first, then text items; never a batch of mixed kinds. A precision other
    than fp32 is part of the digest (a work dir of another precision is not resumed)."""
    batches, start = [], 0
    for kind in ("image", "text"):
        n = sum(1 for k, _ in items if k == kind)
        batches += [[s, min(s + batch_size, start + n)] for s in range(start, start + n, batch_size)]
        start += n
    key = [items, model_ref, framework, batch_size] + ([precision] if precision != "fp32" else [])
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()
    return {"version": PLAN_VERSION, "model": model_ref, "framework": framework, "batch_size": batch_size,
            "precision": precision, "digest": digest, "items": items, "batches": batches}


def _open_work_dir(work: Path, plan: dict, restart: bool) -> None:
    """Create the work dir with ``plan.json``, or reuse one from the same plan.

    A work dir without a readable ``plan.json`` (left by an interrupted or older run) gets one: its
    shards are then checked one by one (each records its plan, model and inputs)."""
    plan_file = work / "plan.json"
    if restart and work.exists():
        shutil.rmtree(work)
    if plan_file.is_file():
        try:
            old = json.loads(plan_file.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            old = None
        if isinstance(old, dict) and old.get("digest") == plan["digest"]:
            _remove_stale_temps(work, [r"plan\.json", r"shard-\d+\.npz"])
            return
        if isinstance(old, dict):
            raise CLIZooError(f"{work} holds an unfinished run with other inputs, model or batch size, rerun that "
                              "command to finish it, or pass --restart to discard it")
    work.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(work, [r"plan\.json", r"shard-\d+\.npz"])
    _atomic_json(plan_file, plan)


def _shard_path(work: Path, k: int) -> Path:
    return work / f"shard-{k:06d}.npz"


def _write_shard(path: Path, shard: dict) -> None:
    from clip_core.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, embeds=np.asarray(shard["embeds"], np.float32), ok=np.asarray(shard["ok"], np.int64),
             errors=np.asarray(json.dumps({str(k): v for k, v in shard["errors"].items()})),
             keys=np.asarray(shard["keys"], dtype=str), model=np.asarray(shard["model"]),
             plan=np.asarray(shard["plan"]), version=np.asarray(PLAN_VERSION))
    atomic_write_bytes(path, buf.getvalue())


def _read_shard(path: Path, n: int) -> Optional[dict]:
    """Shard ``path`` of a batch of ``n`` items, or ``None`` when it is missing, truncated, corrupt or
    inconsistent (it is then redone)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != PLAN_VERSION:
                return None
            embeds, ok = np.asarray(z["embeds"]), [int(i) for i in z["ok"]]
            errors = {int(k): str(v) for k, v in json.loads(str(z["errors"])).items()}
            keys, model, plan = [str(k) for k in z["keys"]], str(z["model"]), str(z["plan"])
    except Exception:  # FileNotFoundError, BadZipFile, a truncated member, missing keys, bad JSON ...
        return None
    if (embeds.dtype != np.float32 or embeds.ndim != 2 or len(embeds) != len(ok) or len(keys) != n
            or sorted(ok + list(errors)) != list(range(n)) or not np.isfinite(embeds).all()):
        return None
    return {"embeds": embeds, "ok": ok, "errors": errors, "keys": keys, "model": model, "plan": plan}


def _merge(n: int, old: Optional[dict], idx: list[int], embeds: np.ndarray, ok: list[int], errors: dict,
           keys: list[str], model: str, plan: str) -> dict:
    """A batch's shard: items ``idx`` just computed (``ok`` / ``errors`` index into ``idx``), the
    others from the ``old`` shard."""
    rows: dict[int, object] = {}
    all_keys = list(old["keys"]) if old is not None else [""] * n
    if old is not None:
        rows.update({i: old["embeds"][r] for r, i in enumerate(old["ok"])})
        rows.update(old["errors"])
    for r, j in enumerate(ok):
        rows[idx[j]] = embeds[r]
    for j, msg in errors.items():
        rows[idx[j]] = msg
    for j, i in enumerate(idx):
        all_keys[i] = keys[j]
    good = [i for i in range(n) if not isinstance(rows[i], str)]
    dim = embeds.shape[1] if embeds.ndim == 2 else (old["embeds"].shape[1] if old is not None else 0)
    stacked = np.stack([rows[i] for i in good]).astype(np.float32) if good else np.zeros((0, dim), np.float32)
    return {"embeds": stacked, "ok": good, "errors": {i: rows[i] for i in range(n) if isinstance(rows[i], str)},
            "keys": all_keys, "model": model, "plan": plan}


def _same_shard(a: dict, b: dict) -> bool:
    return (a["ok"] == b["ok"] and a["errors"] == b["errors"] and a["keys"] == b["keys"] and a["model"] == b["model"]
            and a["plan"] == b["plan"] and np.array_equal(a["embeds"], b["embeds"]))


def _to_redo(plan: dict, work: Path, model_key: Future, threads: Optional[int]) -> tuple[list, dict]:
    """``([(batch, [item positions to compute]) ...], {batch: kept shard})`` for a plan's work dir.

    A shard is kept when it loads, belongs to this plan and model; its items whose file fingerprint
    changed since (fingerprinted in ``threads`` threads), and its skipped items, are recomputed."""
    from .images import fingerprint

    todo, kept = [], {}
    for k, (s, e) in enumerate(plan["batches"]):
        shard = _read_shard(_shard_path(work, k), e - s)
        if shard is not None and shard["plan"] == plan["digest"] and shard["model"] == model_key.result():
            kept[k] = shard
        else:
            todo.append((k, list(range(e - s))))
    checks = [(k, i) for k in kept for i in range(plan["batches"][k][1] - plan["batches"][k][0])]
    with ThreadPoolExecutor(max(1, threads or min(8, os.cpu_count() or 1))) as pool:
        def current(k: int, i: int) -> str:
            kind, value = plan["items"][plan["batches"][k][0] + i]
            return fingerprint(value) if kind == "image" else _text_key(value)

        now = list(pool.map(lambda ki: current(*ki), checks))
    changed: dict[int, set[int]] = {k: set(shard["errors"]) for k, shard in kept.items() if shard["errors"]}
    for (k, i), key in zip(checks, now):  # skipped inputs are tried again (another --max-pixels ...)
        if kept[k]["keys"][i] != key:
            changed.setdefault(k, set()).add(i)
    todo += [(k, sorted(idx)) for k, idx in changed.items()]
    return sorted(todo), kept


def encode_batch(encoder, loader, kind: str, values: list, futures: Optional[list] = None) -> tuple:
    """One batch of ``kind`` (image paths decoded by ``loader``, or texts) → ``(embeds (n_ok, D),
    ok positions, {position: error}, input fingerprints)``; shared by both engines (clip_zoo/embed_ray.py)."""
    from .classify import check_finite

    if kind == "text":
        embeds = check_finite(encoder.encode_texts(values), lambda r: f"the text {values[r]!r}")
        return np.asarray(embeds, np.float32), list(range(len(values))), {}, [_text_key(v) for v in values]
    keys: list = []
    pixels, ok, errors = loader.collect(values, futures if futures is not None else loader.submit(values), keys)
    embeds = (check_finite(encoder.encode_images(pixels), lambda r: f"image {values[ok[r]]}")  # (n_ok, D)
              if pixels is not None else np.zeros((0, encoder.dim), np.float32))
    return np.asarray(embeds, np.float32), ok, errors, keys


#: Images decoded ahead of the model (at least two batches): ~150 MB of 224 px float32 pixels.
PREFETCH_IMAGES = 256
#: Inputs per forward call when the model runs as several lanes (:meth:`Encoder.lanes`): small enough that
#: the lanes share a batch evenly, large enough for efficient matrix products (ViT-B/32: 800 token rows).
LANE_CHUNK = 16


def _join_chunks(parts: list[tuple]) -> tuple:
    """:func:`encode_batch` results of consecutive chunks of one batch → that batch's result."""
    embeds, ok, errors, keys = [], [], {}, []
    for chunk_embeds, chunk_ok, chunk_errors, chunk_keys in parts:
        embeds.append(chunk_embeds)
        ok += [len(keys) + i for i in chunk_ok]
        errors.update({len(keys) + i: msg for i, msg in chunk_errors.items()})
        keys += chunk_keys
    return np.concatenate(embeds), ok, errors, keys


class _Runner:
    """Encodes the pending batches of a plan while a thread pool decodes the next ones.

    Image batches are submitted up to ``PREFETCH_IMAGES`` ahead once the model is loaded (:meth:`prefetch`),
    so decoding overlaps every encode. Not before: decoding next to the framework import slowed the
    import more than it saved. The decoding threads run at a lower CPU priority, so they mostly
    take the cores the forward leaves idle instead of stalling it. Where the encoder splits its threads
    into lanes (:meth:`Encoder.lanes`: torch), each batch is encoded as chunks of ``LANE_CHUNK`` inputs
    on that many threads, up to two batches ahead, and a decoding thread then slows one lane only,
    not the whole forward (docs/design.md, end-to-end embed). Shards are still written in plan order.
    ``todo`` lists ``(batch, item positions)``: a resumed batch whose inputs partly changed computes
    only those items and keeps the others' rows from its shard.
    """

    def __init__(self, plan: dict, work: Path, todo: list, kept: dict, model_key: Future, processor,
                 threads: Optional[int], max_pixels: Optional[int]) -> None:
        self.plan, self.work, self.todo, self.kept = plan, work, list(todo), kept
        self.model_key, self.threads, self.max_pixels = model_key, threads, max_pixels
        self.loader = self._loader(processor) if processor is not None else None
        self.started: dict[int, tuple] = {}
        self.computed = 0
        self.biggest = max(1, max([e - s for s, e in plan["batches"]] or [1]))
        self.window = max(2, PREFETCH_IMAGES // self.biggest)

    def _loader(self, processor):
        from .images import ImageLoader

        return ImageLoader(processor, self.threads, max_pixels=self.max_pixels, fingerprints=True, background=True)

    @property
    def processor(self):
        """The image processor the prefetching loader uses (``None`` until the model is loaded)."""
        return self.loader.processor if self.loader is not None else None

    def _kind_values(self, k: int, idx: list[int]) -> tuple[str, list]:
        s, _ = self.plan["batches"][k]
        return self.plan["items"][s][0], [self.plan["items"][s + i][1] for i in idx]

    def prefetch(self, upto: int = 0) -> None:
        """Submit the image batches among the next ``window`` pending ones from position ``upto``."""
        if self.loader is None:
            return
        for k, idx in self.todo[upto:upto + self.window]:
            kind, values = self._kind_values(k, idx)
            if k not in self.started and kind == "image":
                self.started[k] = (values, self.loader.submit(values))

    def _submit(self, pool: ThreadPoolExecutor, encoder, k: int, idx: list[int], chunk: int) -> list[Future]:
        """Start encoding batch ``k`` (its decoding already submitted) as chunks of ``chunk`` inputs."""
        kind, values = self._kind_values(k, idx)
        values, futures = self.started[k] if kind == "image" else (values, None)
        return [pool.submit(encode_batch, encoder, self.loader, kind, values[i:i + chunk],
                            None if futures is None else futures[i:i + chunk])
                for i in range(0, len(values), chunk)]

    def _finish(self, k: int, idx: list[int], parts: list[Future]) -> int:
        """Wait for batch ``k``'s chunks and write its shard; → the number of inputs computed."""
        embeds, ok, errors, keys = _join_chunks([part.result() for part in parts])
        self.started.pop(k, None)
        s, e = self.plan["batches"][k]
        old = self.kept.get(k)
        shard = _merge(e - s, old, idx, np.asarray(embeds, np.float32), ok, errors, keys,
                       self.model_key.result(), self.plan["digest"])
        if old is None or not _same_shard(old, shard):  # a retried input still skipped: nothing to write
            _write_shard(_shard_path(self.work, k), shard)
        self.kept[k] = shard
        self.computed += len(idx)
        return len(idx)

    def run(self, encoder, progress) -> None:
        """Encode every pending batch, writing the shards in order, keeping the prefetch window full."""
        if self.loader is None:
            self.loader = self._loader(encoder.processor)
        pause = _test_shard_pause
        with encoder.lanes() as (lanes, setup):
            chunk = self.biggest if lanes == 1 else LANE_CHUNK
            ahead = min(self.window, max(2, -(-2 * lanes * chunk // self.biggest)))  # batches in the lanes' queue
            pool = ThreadPoolExecutor(lanes, thread_name_prefix="clip-zoo-lane", initializer=setup)
            try:
                running: dict[int, list[Future]] = {}
                for j, (k, idx) in enumerate(self.todo):
                    self.prefetch(j)
                    for k2, idx2 in self.todo[j:j + ahead]:
                        if k2 not in running:
                            running[k2] = self._submit(pool, encoder, k2, idx2, chunk)
                    progress.update(self._finish(k, idx, running.pop(k)))
                    if pause:
                        time.sleep(pause)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Stop the decoding threads (queued work is cancelled)."""
        if self.loader is not None:
            self.loader.close()


class _HashingWriter:
    """A write-only file wrapper that hashes what goes through it (``np.save`` writes in chunks)."""

    def __init__(self, fh) -> None:
        self.fh, self.sha, self.size = fh, hashlib.sha256(), 0

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        self.sha.update(data)
        self.size += len(data)
        return self.fh.write(data)

    def stamp(self) -> dict:
        return {"bytes": self.size, "sha256": self.sha.hexdigest()}


def _assemble(plan: dict, shards: dict, paths: dict, meta: dict) -> tuple[np.ndarray, list]:
    """Concatenate the shards in plan order and write the outputs, each atomically, ``meta`` last
    (it records the size and SHA-256 of the other two, so a set mixed by a crash is detected)."""
    from clip_core.io import atomic_open, atomic_write_bytes

    chunks, index, skipped = [], [], []
    for k, (s, _) in enumerate(plan["batches"]):
        shard = shards[k]
        if len(shard["ok"]) and shard["embeds"].shape[1] != meta["dim"]:
            raise CLIZooError(f"{_shard_path(paths['work'], k)} holds {shard['embeds'].shape[1]}-dimensional rows, "
                              f"not {meta['dim']}, pass --restart to embed everything again")
        chunks.append(shard["embeds"].reshape(len(shard["ok"]), meta["dim"]))
        for i in shard["ok"]:
            kind, value = plan["items"][s + int(i)]
            index.append({"row": len(index), "kind": kind, ("path" if kind == "image" else "text"): value})
        skipped += [{"path": plan["items"][s + i][1], "error": msg} for i, msg in sorted(shard["errors"].items())]
    if not index:
        for item in skipped:
            print(f"clip-zoo: skipped {item['path']}: {item['error']}", file=sys.stderr)
        raise CLIZooError(f"none of the {len(plan['items'])} inputs could be embedded (all were skipped, see above), "
                          "check the files")
    emb = np.concatenate(chunks).astype(np.float32)
    with atomic_open(paths["npy"]) as fh:
        writer = _HashingWriter(fh)
        np.save(writer, emb)
    index_bytes = "".join(json.dumps(r) + "\n" for r in index).encode("utf-8")
    atomic_write_bytes(paths["index"], index_bytes)
    meta.update(count=len(index), images=sum(r["kind"] == "image" for r in index),
                texts=sum(r["kind"] == "text" for r in index), skipped=skipped,
                files={"npy": writer.stamp(), "index": _file_stamp(index_bytes)})
    _atomic_json(paths["meta"], meta)
    return emb, skipped


class _NoProgress:
    """Stand-in for a tqdm bar when progress is off (tqdm is then not even imported)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (a log gets the final summary line only)
    return tqdm(total=total, initial=initial, unit="item", desc="embed", file=sys.stderr, dynamic_ncols=True,
                disable=None)


def run(args: argparse.Namespace) -> int:
    from .engines import check_threads

    if not args.inputs and not args.texts:
        raise CLIZooError("nothing to embed, give image files/folders/globs and/or --texts FILE")
    if args.batch_size < 1:
        raise CLIZooError("--batch-size must be at least 1, pass a positive number")
    check_threads(args.threads)
    parquet = getattr(args, "format", "npy") == "parquet"
    if parquet:
        from .embed_io import parquet_paths
    paths = parquet_paths(args.out) if parquet else output_paths(args.out)
    with OutputLock(paths["npy"]):  # a second run on this --out stops here, at once
        hasher = ThreadPoolExecutor(1, thread_name_prefix="clip-zoo-model-hash")
        try:
            return _run_locked(args, paths, hasher)
        finally:
            hasher.shutdown(wait=True, cancel_futures=True)


def _run_locked(args: argparse.Namespace, paths: dict, hasher: ThreadPoolExecutor) -> int:
    from .engines import check_precision_arg, early_processor, load_encoder, resolve_framework, resolve_model
    from .embed_io import expand_inputs
    from .inputs import read_texts

    items, extra, notes = expand_inputs(args.inputs, getattr(args, "cache", None)) if args.inputs else ([], [], [])
    items += [["text", t] for t in (read_texts(args.texts) if args.texts else [])]
    framework = resolve_framework(args.framework)
    model_path = resolve_model(args.model)
    model_key = hasher.submit(model_fingerprint, model_path)  # overlaps the work dir check and the model load
    model_ref = "default" if args.model in (None, "default") else str(Path(model_path).resolve())
    precision = check_precision_arg(getattr(args, "precision", None))
    plan = _make_plan(items, model_ref, framework, args.batch_size, precision)
    _open_work_dir(paths["work"], plan, args.restart)
    plan["extra"] = extra + [None] * (len(items) - len(extra))  # keys and captions: output metadata, not in the digest
    _remove_stale_temps(paths["npy"].parent, [re.escape(paths[k].name) for k in ("npy", "index", "meta")])
    todo, kept = _to_redo(plan, paths["work"], model_key, args.threads)
    max_pixels = getattr(args, "max_pixels", None)
    runner = _Runner(plan, paths["work"], todo, kept, model_key, early_processor(model_path, args.threads),
                     args.threads, max_pixels)
    dim = None if todo else next((sh["embeds"].shape[1] for sh in kept.values() if len(sh["ok"])), None)
    try:
        t0 = time.time()
        if dim is None and getattr(args, "engine", "local") == "ray":  # clip_zoo/embed_ray.py
            from .embed_ray import run_ray

            t0, dim = time.time(), run_ray(plan, paths["work"], todo, runner, args)
        elif dim is None:  # something to compute (a finished work dir needs no model)
            encoder = load_encoder(args.model, framework, args.threads, processor=runner.processor, precision=precision)
            dim, t0 = encoder.dim, time.time()
            with _progress(len(items), len(items) - sum(len(idx) for _, idx in todo), args.progress) as bar:
                runner.run(encoder, bar)
    finally:
        runner.close()
    meta = {"model": model_ref, "framework": framework, "precision": precision, "dim": dim,
            "batch_size": args.batch_size, "model_sha256": model_key.result()}
    if "dir" in paths:  # --format parquet
        from .embed_io import write_parquet

        count, skipped = write_parquet(plan, runner.kept, paths, dict(meta, engine=args.engine), args.dtype,
                                       getattr(runner, "preprocessing", None) or runner.processor)
        shape = (count, dim)
    else:
        emb, skipped = _assemble(plan, runner.kept, paths, meta)
        shape = tuple(emb.shape)
    if not args.keep_work:
        shutil.rmtree(paths["work"], ignore_errors=True)
    for s in skipped:
        print(f"clip-zoo: skipped {s['path']}: {s['error']}", file=sys.stderr)
    for n in notes:  # WebDataset samples without an image
        print(f"clip-zoo: skipped {n}", file=sys.stderr)
    seconds = max(time.time() - t0, 1e-9)
    computed = runner.computed
    print(f"embedded {shape[0]} of {len(items)} inputs ({len(skipped)} skipped; {computed} computed, "
          f"{len(items) - computed} reused) -> {paths['npy']} {shape} in {seconds:.1f}s "
          f"({computed / seconds:.1f} items/s)", file=sys.stderr)
    return 0
