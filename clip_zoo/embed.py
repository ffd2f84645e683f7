"""``clip-zoo embed``: batched, resumable embedding of images and texts.

Layout for ``--out emb.npy``: ``emb.npy`` (N, D) float32 L2-normalized rows, ``emb.index.jsonl``
(one JSON object per row: ``row``, ``kind`` = image|text, ``path`` or ``text``), ``emb.meta.json``
(model, framework, dim, counts, skipped inputs). While running, every finished batch is written
atomically to ``emb.npy.work/shard-NNNNNN.npz`` next to the output; a restarted run with the same
inputs, model and batch size skips the finished shards, so a crash or ``kill -9`` loses at most the
batch in flight. The work dir is removed once the outputs are written.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import CLIZooError

__all__ = ["add_parser", "run", "output_paths", "read_embeddings"]

PLAN_VERSION = 1
#: Test hook: seconds to sleep after each shard is written (lets a test kill a run halfway).
_SLEEP_ENV = "CLIP_ZOO_TEST_SHARD_SLEEP"


def add_parser(sub) -> None:
    p = sub.add_parser("embed", help="embed images (files, folders, globs) and/or texts into a .npy file",
                       description="Embed images and/or texts with a CLIP model. Writes OUT.npy (L2-normalized "
                                   "rows), OUT.index.jsonl and OUT.meta.json. Resumable: rerun the same command "
                                   "after an interruption and finished batches are not redone.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders (recursive) or glob patterns")
    p.add_argument("--texts", metavar="FILE", help="a text file: one text to embed per line")
    p.add_argument("--out", required=True, help="output .npy file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--restart", action="store_true", help="discard a previous unfinished run's work dir")
    p.add_argument("--keep-work", action="store_true", help="keep the per-batch shards after assembling")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(run=run)


def output_paths(out: str) -> dict[str, Path]:
    """The files of an embed output named by ``out`` (with or without ``.npy``)."""
    base = Path(out)
    if base.suffix != ".npy":
        base = base.with_name(base.name + ".npy")
    stem = base.with_suffix("")
    return {"npy": base, "index": Path(f"{stem}.index.jsonl"), "meta": Path(f"{stem}.meta.json"),
            "work": Path(f"{base}.work")}


def read_embeddings(out: str) -> tuple[np.ndarray, list[dict], dict]:
    """Load ``(embeddings, index rows, meta)`` of an embed output."""
    paths = output_paths(out)
    for key in ("npy", "index", "meta"):
        if not paths[key].is_file():
            raise CLIZooError(f"{paths[key]} not found, pass the --out file of a finished `clip-zoo embed` run")
    emb = np.load(paths["npy"], allow_pickle=False)
    index = [json.loads(line) for line in paths["index"].read_text(encoding="utf-8").splitlines() if line]
    meta = json.loads(paths["meta"].read_text(encoding="utf-8"))
    if len(index) != len(emb):
        raise CLIZooError(f"{paths['index']} has {len(index)} rows but {paths['npy']} has {len(emb)}, "
                          "rerun `clip-zoo embed` to rewrite them")
    return emb, index, meta


def _atomic_json(path: Path, obj) -> None:
    from clip_core.io import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode("utf-8"))


def _make_plan(items: list, model_ref: str, framework: str, batch_size: int) -> dict:
    """Fixed batches: image items first, then text items; never a batch of mixed kinds."""
    batches, start = [], 0
    for kind in ("image", "text"):
        n = sum(1 for k, _ in items if k == kind)
        batches += [[s, min(s + batch_size, start + n)] for s in range(start, start + n, batch_size)]
        start += n
    digest = hashlib.sha256(json.dumps([items, model_ref, framework, batch_size]).encode()).hexdigest()
    return {"version": PLAN_VERSION, "model": model_ref, "framework": framework, "batch_size": batch_size,
            "digest": digest, "items": items, "batches": batches}


def _open_work_dir(work: Path, plan: dict, restart: bool) -> None:
    """Create the work dir with ``plan.json``, or reuse one from the same plan."""
    plan_file = work / "plan.json"
    if restart and work.exists():
        shutil.rmtree(work)
    if plan_file.is_file():
        try:
            old = json.loads(plan_file.read_text(encoding="utf-8"))
        except ValueError:
            old = {}
        if old.get("digest") != plan["digest"]:
            raise CLIZooError(f"{work} holds an unfinished run with other inputs, model or batch size, rerun that "
                              "command to finish it, or pass --restart to discard it")
        return
    work.mkdir(parents=True, exist_ok=True)
    _atomic_json(plan_file, plan)


def _shard_path(work: Path, k: int) -> Path:
    return work / f"shard-{k:06d}.npz"


def _write_shard(path: Path, embeds: np.ndarray, ok: list, errors: dict) -> None:
    from clip_core.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, embeds=np.asarray(embeds, np.float32), ok=np.asarray(ok, np.int64),
             errors=np.asarray(json.dumps({str(k): v for k, v in errors.items()})))
    atomic_write_bytes(path, buf.getvalue())


def _read_shard(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    with np.load(path, allow_pickle=False) as z:
        return z["embeds"], z["ok"], {int(k): v for k, v in json.loads(str(z["errors"])).items()}


#: Images decoded ahead of the model (at least two batches): ~150 MB of 224 px float32 pixels.
PREFETCH_IMAGES = 256


class _Runner:
    """Encodes the pending batches of a plan while a thread pool decodes the next ones.

    Image batches are submitted up to ``PREFETCH_IMAGES`` ahead, starting before the model is loaded
    (:meth:`prefetch`), so decoding overlaps the framework import, the weight load and every encode.
    """

    def __init__(self, plan: dict, work: Path, pending: list[int], processor, threads: Optional[int]) -> None:
        from .images import ImageLoader

        self.plan, self.work, self.pending = plan, work, list(pending)
        self.loader = ImageLoader(processor, threads) if processor is not None else None
        self.started: dict[int, tuple] = {}
        sizes = [e - s for s, e in plan["batches"]] or [1]
        self.window = max(2, PREFETCH_IMAGES // max(1, max(sizes)))

    @property
    def processor(self):
        """The image processor the prefetching loader uses (``None`` until the model is loaded)."""
        return self.loader.processor if self.loader is not None else None

    def prefetch(self, upto: int = 0) -> None:
        """Submit the image batches among the next ``window`` pending ones from position ``upto``."""
        if self.loader is None:
            return
        for k in self.pending[upto:upto + self.window]:
            if k not in self.started:
                s, e = self.plan["batches"][k]
                if self.plan["items"][s][0] == "image":
                    values = [v for _, v in self.plan["items"][s:e]]
                    self.started[k] = (values, self.loader.submit(values))

    def _finish(self, encoder, k: int) -> int:
        s, e = self.plan["batches"][k]
        if self.plan["items"][s][0] == "text":
            values = [v for _, v in self.plan["items"][s:e]]
            _write_shard(_shard_path(self.work, k), encoder.encode_texts(values), list(range(len(values))), {})
            return len(values)
        values, futures = self.started.pop(k)
        pixels, ok, errors = self.loader.collect(values, futures)  # (n_ok, 3, H, W)
        embeds = encoder.encode_images(pixels) if pixels is not None else np.zeros((0, encoder.dim))
        _write_shard(_shard_path(self.work, k), embeds, ok, errors)
        return len(values)

    def run(self, encoder, progress) -> None:
        """Encode every pending batch in order, keeping the prefetch window full."""
        from .images import ImageLoader

        if self.loader is None:
            self.loader = ImageLoader(encoder.processor, encoder.threads)
        pause = float(os.environ.get(_SLEEP_ENV, "0") or 0)
        for j, k in enumerate(self.pending):
            self.prefetch(j)
            progress.update(self._finish(encoder, k))
            if pause:
                time.sleep(pause)

    def close(self) -> None:
        """Stop the decoding threads (queued work is cancelled)."""
        if self.loader is not None:
            self.loader.close()


def _assemble(plan: dict, work: Path, paths: dict, meta: dict) -> tuple[np.ndarray, list]:
    """Concatenate the shards in plan order and write the outputs atomically."""
    from clip_core.io import atomic_open, atomic_write_bytes

    chunks, index, skipped = [], [], []
    for k, (s, _) in enumerate(plan["batches"]):
        embeds, ok, errors = _read_shard(_shard_path(work, k))
        chunks.append(embeds.reshape(len(ok), meta["dim"]))
        for i in ok:
            kind, value = plan["items"][s + int(i)]
            index.append({"row": len(index), "kind": kind, ("path" if kind == "image" else "text"): value})
        skipped += [{"path": plan["items"][s + i][1], "error": msg} for i, msg in sorted(errors.items())]
    emb = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, meta["dim"]), np.float32)
    with atomic_open(paths["npy"]) as fh:
        np.save(fh, emb)
    atomic_write_bytes(paths["index"], "".join(json.dumps(r) + "\n" for r in index).encode("utf-8"))
    meta.update(count=len(index), images=sum(r["kind"] == "image" for r in index),
                texts=sum(r["kind"] == "text" for r in index), skipped=skipped)
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
    from .engines import early_processor, load_encoder, resolve_framework, resolve_model
    from .inputs import expand_images, read_texts

    if not args.inputs and not args.texts:
        raise CLIZooError("nothing to embed, give image files/folders/globs and/or --texts FILE")
    if args.batch_size < 1:
        raise CLIZooError("--batch-size must be at least 1, pass a positive number")
    items = [["image", p] for p in expand_images(args.inputs)]
    items += [["text", t] for t in (read_texts(args.texts) if args.texts else [])]
    framework = resolve_framework(args.framework)
    model_path = resolve_model(args.model)
    model_ref = "default" if args.model in (None, "default") else str(Path(model_path).resolve())
    paths = output_paths(args.out)
    plan = _make_plan(items, model_ref, framework, args.batch_size)
    _open_work_dir(paths["work"], plan, args.restart)
    pending = [k for k in range(len(plan["batches"])) if not _shard_path(paths["work"], k).is_file()]
    runner = _Runner(plan, paths["work"], pending, early_processor(model_path, args.threads), args.threads)
    try:
        runner.prefetch()  # decode the first batches while the framework and the weights load
        encoder = load_encoder(args.model, framework, args.threads, processor=runner.processor)
        t0 = time.time()
        done = sum(e - s for k, (s, e) in enumerate(plan["batches"]) if k not in set(pending))
        with _progress(len(items), done, args.progress) as bar:
            runner.run(encoder, bar)
    finally:
        runner.close()
    meta = {"model": model_ref, "framework": framework, "dim": encoder.dim, "batch_size": args.batch_size}
    emb, skipped = _assemble(plan, paths["work"], paths, meta)
    if not args.keep_work:
        shutil.rmtree(paths["work"], ignore_errors=True)
    for s in skipped:
        print(f"clip-zoo: skipped {s['path']}: {s['error']}", file=sys.stderr)
    seconds = max(time.time() - t0, 1e-9)
    rate = (len(items) - done) / seconds if seconds > 0 else 0.0
    print(f"embedded {len(emb)} of {len(items)} inputs ({len(skipped)} skipped) -> {paths['npy']} "
          f"{tuple(emb.shape)} in {seconds:.1f}s ({rate:.1f} items/s)", file=sys.stderr)
    return 0
