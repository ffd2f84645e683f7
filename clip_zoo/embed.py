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
            raise CLIZooError(f"{paths[key]} not found: is {out} the output of `clip-zoo embed`?")
    emb = np.load(paths["npy"], allow_pickle=False)
    index = [json.loads(line) for line in paths["index"].read_text(encoding="utf-8").splitlines() if line]
    meta = json.loads(paths["meta"].read_text(encoding="utf-8"))
    if len(index) != len(emb):
        raise CLIZooError(f"{paths['index']} has {len(index)} rows but {paths['npy']} has {len(emb)}")
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
            raise CLIZooError(f"{work} holds an unfinished run with other inputs, model or batch size: rerun that "
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


class _Runner:
    """Encodes the pending batches of a plan, prefetching the next batch's images while encoding."""

    def __init__(self, encoder, plan: dict, work: Path, threads: Optional[int]) -> None:
        from .images import ImageLoader

        self.encoder, self.plan, self.work = encoder, plan, work
        self.loader = ImageLoader(encoder.processor, threads)

    def _start(self, k: int):
        s, e = self.plan["batches"][k]
        kind = self.plan["items"][s][0]
        values = [v for _, v in self.plan["items"][s:e]]
        return kind, values, (self.loader.submit(values) if kind == "image" else None)

    def _finish(self, k: int, kind: str, values: list, futures) -> None:
        if kind == "text":
            _write_shard(_shard_path(self.work, k), self.encoder.encode_texts(values), list(range(len(values))), {})
            return
        pixels, ok, errors = self.loader.collect(values, futures)
        embeds = self.encoder.encode_images(pixels) if pixels is not None else np.zeros((0, self.encoder.dim))
        _write_shard(_shard_path(self.work, k), embeds, ok, errors)

    def run(self, pending: list[int], progress) -> None:
        pause = float(os.environ.get(_SLEEP_ENV, "0") or 0)
        try:
            current = self._start(pending[0]) if pending else None
            for j, k in enumerate(pending):
                nxt = self._start(pending[j + 1]) if j + 1 < len(pending) else None
                self._finish(k, *current)
                progress.update(len(current[1]))
                if pause:
                    time.sleep(pause)
                current = nxt
        finally:
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


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .engines import load_encoder, resolve_framework, resolve_model
    from .inputs import expand_images, read_texts

    if not args.inputs and not args.texts:
        raise CLIZooError("nothing to embed: give image files/folders/globs and/or --texts FILE")
    if args.batch_size < 1:
        raise CLIZooError("--batch-size must be at least 1")
    items = [["image", p] for p in expand_images(args.inputs)]
    items += [["text", t] for t in (read_texts(args.texts) if args.texts else [])]
    framework = resolve_framework(args.framework)
    model_path = resolve_model(args.model)
    model_ref = "default" if args.model in (None, "default") else str(Path(model_path).resolve())
    paths = output_paths(args.out)
    plan = _make_plan(items, model_ref, framework, args.batch_size)
    _open_work_dir(paths["work"], plan, args.restart)
    pending = [k for k in range(len(plan["batches"])) if not _shard_path(paths["work"], k).is_file()]
    encoder = load_encoder(args.model, framework, args.threads)
    t0 = time.time()
    done = sum(e - s for k, (s, e) in enumerate(plan["batches"]) if k not in set(pending))
    with tqdm(total=len(items), initial=done, unit="item", desc="embed", disable=not args.progress,
              file=sys.stderr, dynamic_ncols=True) as bar:
        _Runner(encoder, plan, paths["work"], args.threads).run(pending, bar)
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
