"""``clip-zoo eval``: zero-shot classification, retrieval and linear-probe evaluation of a checkpoint.

``eval zeroshot DATASET``, ``eval retrieval PAIRS`` and ``eval linear-probe TRAIN TEST`` score a
dataset (see :mod:`clip_zoo.eval_data` for the formats) with LAION clip_benchmark's metrics
(:mod:`clip_zoo.eval_metrics`). ``--frameworks torch,tf,flax`` runs the same evaluation in each
framework and prints every metric per framework and the largest difference between them.

Image (and caption) embeddings come from ``clip-zoo embed``'s machinery and are cached per
framework, model (SHA-256 of the checkpoint files) and dataset (paths, sizes and mtimes of its
files) under ``--cache`` (default ``~/.cache/clip-zoo/eval``): a rerun reuses them, an interrupted
run resumes from its finished batches. The zero-shot classifier is built exactly as ``clip-zoo
classify`` builds it (:func:`clip_core.zero_shot.build_zero_shot_weights`) and cached too.
``--json`` prints clip_benchmark's result object (``dataset``, ``model``, ``pretrained``, ``task``,
``metrics``, ``language``) plus ``framework``; a list of them with several frameworks.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import CLIZooError

__all__ = ["add_parser", "run", "Embedded", "FrameworkRun", "embed_cached", "zeroshot_scores", "linear_probe",
           "DEFAULT_C_GRID", "default_cache"]

TASKS = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval", "linear-probe": "linear_probe"}
#: The default C grid of the linear probe: half-decades from 0.01 to 1000, through the seed README's C=0.316.
DEFAULT_C_GRID = (0.01, 0.0316, 0.1, 0.316, 1.0, 3.16, 10.0, 31.6, 100.0, 316.0, 1000.0)


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/clip-zoo/eval`` (``~/.cache/clip-zoo/eval``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clip-zoo" / "eval"


# ----------------------------------------------------------------------------- the command line
def _common(p: argparse.ArgumentParser) -> None:
    from .engines import threads_arg
    from .images import DEFAULT_MAX_PIXELS, max_pixels_arg

    p.add_argument("--model", default=None, help="checkpoint path or 'default' (the bundled model)")
    p.add_argument("--frameworks", "--framework", dest="frameworks", default=None, metavar="LIST",
                   help="comma-separated frameworks to evaluate in, e.g. torch,tf,flax (default: the first installed)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=threads_arg, default=None, help="threads for the framework and the image loader")
    p.add_argument("--max-pixels", type=max_pixels_arg, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="refuse images with more pixels than N")
    p.add_argument("--cache", default=None, metavar="DIR", help=f"embedding cache (default {default_cache()})")
    p.add_argument("--json", action="store_true", help="print clip_benchmark's JSON result object(s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="score a checkpoint on a dataset: zero-shot, retrieval, linear probe",
                       description=__doc__.splitlines()[0])
    tasks = p.add_subparsers(dest="task", metavar="TASK")
    tasks.required = True
    z = tasks.add_parser("zeroshot", help="zero-shot classification: top-1, top-5, mean per-class recall")
    z.add_argument("dataset", metavar="DATASET", help="ImageFolder tree, CSV/JSONL/Parquet table or WebDataset .tar")
    z.add_argument("--classes", default="auto", help="auto (folder names / table labels) or a file, one name a line")
    z.add_argument("--templates", default="simple", help="openai, openai7, simple (default), none or a file")
    z.add_argument("--split", default=None, help="a sub-folder of DATASET, or the rows of a table's split column")
    z.add_argument("--per-class", type=int, default=10, metavar="N", help="rows of the per-class table (worst first)")
    r = tasks.add_parser("retrieval", help="image-text retrieval recall@k")
    r.add_argument("pairs", metavar="PAIRS", help="JSONL/CSV/Parquet of path,caption(s) or WebDataset .tar shards")
    r.add_argument("--k", default="1,5,10", help="comma-separated k of recall@k (default 1,5,10)")
    lp = tasks.add_parser("linear-probe", help="logistic regression on the image embeddings (scikit-learn)")
    lp.add_argument("train", metavar="TRAIN")
    lp.add_argument("test", metavar="TEST")
    lp.add_argument("--classes", default="auto", help="auto or a file with one class name a line")
    lp.add_argument("--val-fraction", type=float, default=0.2, help="part of TRAIN used to choose C (default 0.2)")
    lp.add_argument("--C-grid", dest="c_grid", default=",".join(map(str, DEFAULT_C_GRID)),
                    help="comma-separated inverse regularization strengths to try")
    for q in (z, r, lp):
        _common(q)
    p.set_defaults(run=run)


def _frameworks(spec: Optional[str]) -> list[str]:
    from .engines import resolve_framework

    names = [resolve_framework(s.strip()) for s in (spec or "").split(",") if s.strip()] or [resolve_framework(None)]
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------- embeddings (cached)
@dataclass
class FrameworkRun:
    """One framework's evaluation: its cache folder and a lazily loaded encoder."""

    framework: str
    args: argparse.Namespace
    model_sha: str
    cache: Path
    _encoder: object = None

    @property
    def folder(self) -> Path:
        return self.cache / self.framework / self.model_sha[:16]

    def encoder(self):
        if self._encoder is None:
            from .engines import load_encoder

            self._encoder = load_encoder(self.args.model, self.framework, self.args.threads)
        return self._encoder


@dataclass
class Embedded:
    """``images`` ``(n_ok, D)`` for ``paths[ok]``; ``texts`` ``(T, D)`` in the order given; skipped images."""

    images: np.ndarray
    ok: np.ndarray  # (n_ok,) indices into the paths
    texts: np.ndarray
    skipped: list = field(default_factory=list)


def _dataset_key(paths: Sequence[str], texts: Sequence[str]) -> str:
    """Digest of the image paths, sizes and mtimes and of the texts: a changed file gives a new key."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    for t in texts:
        h.update(f"\1{t}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:20]


def _reusable(out: Path, run: FrameworkRun) -> bool:
    from .embed import read_embeddings

    if not out.is_file():
        return False
    try:
        _, _, meta = read_embeddings(str(out))
    except CLIZooError:
        return False
    return meta.get("framework") == run.framework and meta.get("model_sha256") == run.model_sha


def _run_embed(out: Path, paths: Sequence[str], texts: Sequence[str], run: FrameworkRun) -> None:
    """``clip-zoo embed`` of ``paths`` (then ``texts``) into ``out`` (resumes an interrupted run)."""
    from clip_core.io import atomic_write_bytes

    from . import embed

    texts_file = None
    if texts:
        texts_file = out.with_suffix(".texts.txt")
        atomic_write_bytes(texts_file, "".join(t + "\n" for t in texts).encode("utf-8"))
    a = run.args
    embed.run(argparse.Namespace(inputs=list(dict.fromkeys(paths)), texts=texts_file, out=str(out),
                                 batch_size=a.batch_size, restart=False, keep_work=False, progress=a.progress,
                                 model=a.model, framework=run.framework, threads=a.threads, max_pixels=a.max_pixels))


def embed_cached(run: FrameworkRun, name: str, paths: Sequence[str], texts: Sequence[str] = ()) -> Embedded:
    """The embeddings of ``paths`` and ``texts`` in ``run``'s framework, from the cache or computed."""
    from .embed import read_embeddings

    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "dataset"
    out = run.folder / f"{slug}-{_dataset_key(paths, texts)}.npy"
    fresh = not _reusable(out, run)
    if fresh:
        _run_embed(out, paths, texts, run)
    emb, index, meta = read_embeddings(str(out))
    rows = {r["path"]: i for i, r in enumerate(index) if r["kind"] == "image"}
    ok = np.asarray([i for i, p in enumerate(paths) if p in rows], np.int64)
    if not fresh:  # a fresh embed run has reported them already
        for s in meta.get("skipped", []):
            print(f"clip-zoo: skipped {s['path']}: {s['error']} (cached)", file=sys.stderr)
    text_rows = [i for i, r in enumerate(index) if r["kind"] == "text"]
    return Embedded(emb[[rows[paths[i]] for i in ok]].reshape(len(ok), -1), ok, emb[text_rows], meta.get("skipped", []))


def _classifier(run: FrameworkRun, classes: list[str], templates: Sequence[str]) -> np.ndarray:
    """The ``(D, L)`` zero-shot classifier, built as ``clip-zoo classify`` builds it (cached)."""
    from clip_core import zero_shot as zs
    from clip_core.io import atomic_write_bytes

    from .classify import check_finite

    key = hashlib.sha256(json.dumps([classes, list(templates)]).encode()).hexdigest()[:20]
    path = run.folder / f"zeroshot-{key}.npy"
    if path.is_file():
        try:
            weights = np.load(path, allow_pickle=False)
            if weights.ndim == 2 and weights.shape[1] == len(classes) and np.isfinite(weights).all():
                return weights
        except (ValueError, OSError, EOFError):
            pass
    weights = zs.build_zero_shot_weights(run.encoder().encode_texts, classes, templates)  # (D, L)
    check_finite(np.asarray(weights).T, lambda i: f"the prompts of class {classes[i]!r}")
    import io

    buf = io.BytesIO()
    np.save(buf, weights)
    atomic_write_bytes(path, buf.getvalue())
    return weights


# ----------------------------------------------------------------------------- the three tasks
def zeroshot_scores(run: FrameworkRun, data, templates: Sequence[str]) -> tuple[np.ndarray, np.ndarray, Embedded]:
    """``(logits (n_ok, L), targets (n_ok,), embedded)``: ``100 * image @ classifier``, as classify."""
    from clip_core import zero_shot as zs

    from .classify import LOGIT_SCALE

    emb = embed_cached(run, data.name, data.paths)
    weights = _classifier(run, data.classes, templates)
    return zs.zero_shot_logits(emb.images, weights, LOGIT_SCALE), data.targets[emb.ok], emb


def _zeroshot(run: FrameworkRun, args, data, templates) -> dict:
    from .eval_metrics import classification_metrics

    logits, targets, emb = zeroshot_scores(run, data, templates)
    if not len(targets):
        raise CLIZooError(f"none of the images of {args.dataset} could be read, check the files")
    return {"metrics": classification_metrics(logits, targets), "targets": targets,
            "preds": np.argmax(logits, axis=1), "samples": len(targets), "skipped": len(emb.skipped)}


def _retrieval(run: FrameworkRun, args, data, ks) -> dict:
    from .eval_metrics import retrieval_metrics

    flat = [c for caps in data.captions for c in caps]
    owner = np.asarray([i for i, caps in enumerate(data.captions) for _ in caps])  # (T,) image of each caption
    emb = embed_cached(run, data.name, data.paths, flat)
    position = np.full(len(data.paths), -1)
    position[emb.ok] = np.arange(len(emb.ok))
    keep = position[owner] >= 0  # captions of skipped images are dropped with them
    metrics = retrieval_metrics(emb.images, emb.texts[keep], position[owner][keep], ks)
    return {"metrics": metrics, "samples": len(emb.ok), "texts": int(keep.sum()), "skipped": len(emb.skipped)}


def _fit(c: float, x: np.ndarray, y: np.ndarray):
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise CLIZooError("the linear probe needs scikit-learn, install it with: pip install 'clip-zoo[eval]'") from None

    return LogisticRegression(random_state=0, C=c, max_iter=1000).fit(x, y)


def linear_probe(train_x, train_y, test_x, test_y, n_classes: int, grid: Sequence[float],
                 val_fraction: float = 0.2) -> dict:
    """Choose C on a validation split of the train set (a fixed shuffle), refit on the whole train set
    with it, and score the test set: clip_benchmark's metrics plus ``C`` and ``val_acc1``."""
    from .eval_metrics import classification_metrics

    if len(np.unique(train_y)) < 2:
        raise CLIZooError("the train set has a single class: a linear probe needs at least 2, add images of others")
    val_scores = []
    if len(grid) > 1:
        perm = np.random.default_rng(0).permutation(len(train_y))
        n_val = min(max(1, int(round(val_fraction * len(train_y)))), len(train_y) - 2)
        val, fit = perm[:n_val], perm[n_val:]
        if len(np.unique(train_y[fit])) < 2:
            raise CLIZooError("the train split left for fitting has a single class, lower --val-fraction")
        val_scores = [float(_fit(c, train_x[fit], train_y[fit]).score(train_x[val], train_y[val])) for c in grid]
    best = float(grid[int(np.argmax(val_scores))] if val_scores else grid[0])
    clf = _fit(best, train_x, train_y)
    logits = np.full((len(test_x), n_classes), -np.inf)
    scores = clf.decision_function(test_x)
    logits[:, clf.classes_] = scores if scores.ndim == 2 else np.stack([-scores, scores], axis=1)
    metrics = classification_metrics(logits, test_y)
    metrics.update(C=best, val_acc1=max(val_scores) if val_scores else None)
    return metrics


def _probe(run: FrameworkRun, args, train, test, grid) -> dict:
    a = embed_cached(run, train.name, train.paths)
    b = embed_cached(run, test.name, test.paths)
    metrics = linear_probe(a.images, train.targets[a.ok], b.images, test.targets[b.ok], len(train.classes), grid,
                           args.val_fraction)
    return {"metrics": metrics, "samples": len(b.ok), "train_samples": len(a.ok),
            "skipped": len(a.skipped) + len(b.skipped)}


# ----------------------------------------------------------------------------- report
_LABELS = {"acc1": "top-1", "acc5": "top-5", "mean_per_class_recall": "mean per-class recall", "C": "C",
           "val_acc1": "val top-1"}


def _fmt(key: str, value) -> str:
    if value is None:
        return "n/a"
    return f"{value:g}" if key == "C" else f"{100 * value:.2f}%"


def _metric_label(key: str) -> str:
    m = re.match(r"(image|text)_retrieval_recall@(\d+)", key)
    if m:
        return f"{'text->image' if m.group(1) == 'image' else 'image->text'} R@{m.group(2)}"
    return _LABELS.get(key, key)


def _print_metrics(results: dict[str, dict]) -> None:
    """One row per framework, one column per metric (percent), then the largest difference."""
    keys = list(next(iter(results.values()))["metrics"])
    labels = [_metric_label(k) for k in keys]
    widths = [max(len(lb), 8) for lb in labels]
    print("framework  " + "  ".join(f"{lb:>{w}}" for lb, w in zip(labels, widths)))
    for fw, res in results.items():
        print(f"{fw:<9}  " + "  ".join(f"{_fmt(k, res['metrics'][k]):>{w}}" for k, w in zip(keys, widths)))
    if len(results) > 1:
        diffs = []
        for k, w in zip(keys, widths):
            vals = [r["metrics"][k] for r in results.values() if r["metrics"][k] is not None]
            spread = (max(vals) - min(vals)) * (1 if k == "C" else 100) if vals else 0.0
            diffs.append(f"{spread:>{w}.2f}" if k != "C" else f"{spread:>{w}g}")
        print("max diff   " + "  ".join(diffs) + "   (points)")


def _print_classes(res: dict, classes: list[str], rows: int) -> None:
    """The ``rows`` classes with the lowest recall, and the most frequent confusions."""
    from .eval_metrics import confusion_pairs, per_class_recall

    targets, preds = res["targets"], res["preds"]
    recall = per_class_recall(targets, preds, len(classes))
    support = np.bincount(targets, minlength=len(classes))
    order = [i for i in np.argsort(np.nan_to_num(recall, nan=2.0), kind="stable") if support[i]][:rows]
    width = max(len(c) for c in classes)
    print(f"\nper-class recall (lowest {len(order)} of {len(classes)}):")
    for i in order:
        print(f"  {classes[i]:<{width}}  {100 * recall[i]:6.2f}%  of {support[i]}")
    pairs = confusion_pairs(targets, preds)
    if pairs:
        print("most frequent confusions (true -> predicted: count):")
        for t, p, n in pairs:
            print(f"  {classes[t]} -> {classes[p]}: {n}")


def _json(results: dict[str, dict], task: str, dataset: str, model: str) -> None:
    extra = ("samples", "train_samples", "texts", "skipped")
    dumps = [{"dataset": dataset, "model": model, "pretrained": model, "task": TASKS[task],
              "metrics": res["metrics"], "language": "en", "framework": fw,
              **{k: res[k] for k in extra if k in res}} for fw, res in results.items()]
    json.dump(dumps[0] if len(dumps) == 1 else dumps, sys.stdout, indent=2, allow_nan=False)
    print()


# ----------------------------------------------------------------------------- run
def _numbers(text: str, what: str, kind=float) -> list:
    try:
        values = [kind(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise CLIZooError(f"{what} must be comma-separated positive numbers, got {text!r}")
    return values


def _check(args) -> None:
    from .engines import check_threads

    check_threads(args.threads)
    if args.batch_size < 1:
        raise CLIZooError("--batch-size must be at least 1, pass a positive number")
    if args.task == "linear-probe" and not 0 < args.val_fraction < 1:
        raise CLIZooError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")


def _prepare(args, cache: Path):
    """``(per-framework function, data, title)`` of the task."""
    from . import eval_data

    if args.task == "zeroshot":
        templates = _templates(args)
        data = eval_data.load_classification(args.dataset, args.classes, args.split, cache)
        return (lambda r: _zeroshot(r, args, data, templates)), data, (
            f"zero-shot: {data.name}, {len(data.paths)} images, {len(data.classes)} classes, "
            f"{len(templates)} templates")
    if args.task == "retrieval":
        ks = _numbers(args.k, "--k", int)
        data = eval_data.load_pairs(args.pairs, cache)
        n_texts = sum(map(len, data.captions))
        return (lambda r: _retrieval(r, args, data, ks)), data, (
            f"retrieval: {data.name}, {len(data.paths)} images, {n_texts} captions")
    grid = _numbers(args.c_grid, "--C-grid")
    train = eval_data.load_classification(args.train, args.classes, None, cache)
    test = eval_data.load_classification(args.test, args.classes, None, cache)
    if test.classes != train.classes:
        raise CLIZooError(f"{args.test} and {args.train} have different classes, give both the same class folders "
                          "or labels (or the same --classes FILE)")
    test.notes = train.notes + test.notes
    return (lambda r: _probe(r, args, train, test, grid)), test, (
        f"linear probe: train {train.name} ({len(train.paths)} images), test {test.name} ({len(test.paths)}), "
        f"{len(train.classes)} classes, C grid {','.join(f'{c:g}' for c in grid)}")


def _templates(args) -> tuple[str, ...]:
    """``--templates`` read and checked exactly as ``clip-zoo classify`` reads it."""
    from .classify import _labels_and_templates

    return _labels_and_templates(argparse.Namespace(labels="unused", templates=args.templates))[1]


def run(args: argparse.Namespace) -> int:
    from .embed import model_fingerprint
    from .engines import resolve_model

    _check(args)
    frameworks = _frameworks(args.frameworks)
    cache = Path(args.cache).expanduser() if args.cache else default_cache()
    task_fn, data, title = _prepare(args, cache)
    for note in data.notes:
        print(f"clip-zoo: skipped: {note}", file=sys.stderr)
    sha = model_fingerprint(resolve_model(args.model))
    results = {fw: task_fn(FrameworkRun(fw, args, sha, cache)) for fw in frameworks}
    model = args.model or "default"
    if args.json:
        _json(results, args.task, data.name, model)
        return 0
    print(f"{title}; model {model}")
    _print_metrics(results)
    first = next(iter(results.values()))
    if "preds" in first:
        _print_classes(first, data.classes, args.per_class)
    return 0
