"""``clip-zoo classify``: zero-shot classification with prompt ensembling."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .errors import CLIZooError

__all__ = ["add_parser", "run"]

LOGIT_SCALE = 100.0  # as OpenAI's zero-shot notebook: softmax(100 * cos-sim)


def add_parser(sub) -> None:
    p = sub.add_parser("classify", help="zero-shot classify images against a list of labels",
                       description="Zero-shot classification: every label is put into every prompt template, "
                                   "the text embeddings are averaged per label, and each image gets a "
                                   "probability per label.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or glob patterns")
    p.add_argument("--labels", required=True, help="comma-separated labels, or a file with one label a line")
    p.add_argument("--templates", default="simple",
                   help="prompt templates: openai (the 80 ImageNet prompts), openai7, simple (default), none, "
                        "or a file with one template ('{}' = the label) a line")
    p.add_argument("--top-k", type=int, default=5, help="labels shown per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON (one object per image, in a list)")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(run=run)


def _print_table(path: str, labels, idx, probs) -> None:
    """``path``, then one ``rank. label  probability%`` row per label, in columns shared by every image."""
    width = max(len(label) for label in labels)
    print(path)
    for rank, (i, p) in enumerate(zip(idx, probs), 1):
        print(f"  {rank:>2}. {labels[i]:<{width}}  {100 * p:6.2f}%")


def _labels_and_templates(args: argparse.Namespace) -> tuple[list[str], tuple[str, ...]]:
    """``--labels`` and ``--templates``, read as UTF-8 (a file's bad byte is named with its offset)."""
    from clip_core import zero_shot as zs

    from .inputs import check_utf8, read_utf8

    spec = check_utf8(args.labels, "the --labels value")
    if "," not in spec and Path(spec).is_file():  # as zs.parse_labels: a file with one label a line
        spec = read_utf8(spec, "labels file").splitlines()
    name = check_utf8(args.templates, "the --templates value")
    if name not in zs.TEMPLATE_SETS and Path(name).is_file():
        read_utf8(name, "templates file")
    try:
        return zs.parse_labels(spec), zs.get_templates(name)
    except ValueError as err:
        raise CLIZooError(str(err)) from None


def check_finite(values: np.ndarray, what) -> np.ndarray:
    """``values``, or an error when the model gave NaN/Inf (``what``: the items, or a callable of a row)."""
    bad = ~np.isfinite(np.asarray(values)).reshape(len(values), -1).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        item = what(first) if callable(what) else what
        raise CLIZooError(f"the model produced non-finite outputs (NaN/Inf) for {item}; the checkpoint's weights "
                          "may be corrupt, check them or use another --model")
    return values


def run(args: argparse.Namespace) -> int:
    from clip_core import zero_shot as zs

    from .engines import check_threads, load_encoder
    from .images import ImageLoader
    from .inputs import expand_images

    labels, templates = _labels_and_templates(args)
    if args.top_k < 1 or args.batch_size < 1:
        raise CLIZooError("--top-k and --batch-size must be at least 1, pass a positive number")
    check_threads(args.threads)
    paths = expand_images(args.images)
    encoder = load_encoder(args.model, args.framework, args.threads, precision=args.precision)
    weights = zs.build_zero_shot_weights(encoder.encode_texts, labels, templates)  # (D, L)
    check_finite(np.asarray(weights).T, lambda i: f"the prompts of label {labels[i]!r}")
    loader = ImageLoader(encoder.processor, args.threads, max_pixels=getattr(args, "max_pixels", None))
    results, failed = [], 0
    try:
        for start in range(0, len(paths), args.batch_size):
            batch = paths[start:start + args.batch_size]
            pixels, ok, errors = loader.collect(batch, loader.submit(batch))
            for i, reason in errors.items():
                print(f"clip-zoo: skipped {batch[i]}: {reason}", file=sys.stderr)
            failed += len(errors)
            if pixels is None:
                continue
            embeds = check_finite(encoder.encode_images(pixels), lambda r: f"image {batch[ok[r]]}")
            probs = check_finite(zs.zero_shot_probs(embeds, weights, *encoder.probability_params),
                                 lambda r: f"image {batch[ok[r]]}")
            idx, val = zs.top_k(probs, args.top_k)
            for row, i in enumerate(ok):
                results.append((batch[i], idx[row], val[row]))
                if not args.json:
                    _print_table(batch[i], labels, idx[row], val[row])
    finally:
        loader.close()
    if args.json:
        out = [{"image": path, "predictions": [{"label": labels[int(i)], "probability": round(float(p), 6)}
                                               for i, p in zip(idx, val)]} for path, idx, val in results]
        json.dump(out, sys.stdout, indent=2, allow_nan=False)
        print()
    return 1 if failed else 0
