"""``clip-zoo search``: text-to-image (or image-to-image) search over an ``embed`` output."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import CLIZooError

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="search an `embed` output with a text (or an image file)",
                       description="Rank the images of an `embed` output by cosine similarity to a text query "
                                   "(or to an image, when QUERY is an image file). The model and framework "
                                   "default to the ones that made the embeddings.")
    p.add_argument("embeddings", metavar="EMBEDDINGS", help="the .npy written by `clip-zoo embed`")
    p.add_argument("query", metavar="QUERY", help="a text, or the path of an image file")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--index", default=None, metavar="PATH",
                   help="search a `clip-zoo index` file instead of every vector (EMBEDDINGS: its source)")
    p.add_argument("--nprobe", type=int, default=None,
                   help="with --index: IVF lists (or HNSW efSearch) to visit (default: the tuned value)")
    p.set_defaults(run=run)


def _encode_query(encoder, query: str, max_pixels: Optional[int] = None) -> tuple[np.ndarray, str]:
    from .classify import check_finite
    from .images import ImageLoader
    from .inputs import check_utf8, is_image_name

    if Path(query).is_file() and is_image_name(query):
        loader = ImageLoader(encoder.processor, 1, max_pixels=max_pixels)
        try:
            pixels, _, errors = loader.collect([query], loader.submit([query]))
        finally:
            loader.close()
        if pixels is None:
            raise CLIZooError(f"cannot read query image {query} ({errors[0]}), check the file")
        return check_finite(encoder.encode_images(pixels), f"the query image {query}")[0], "image"
    if not query.strip():
        raise CLIZooError("the query is empty, pass a text or an image file")
    check_utf8(query, "the query")
    return check_finite(encoder.encode_texts([query]), f"the query {query!r}")[0], "text"


def run(args: argparse.Namespace) -> int:
    from .embed import read_embeddings
    from .engines import check_threads, load_encoder

    if args.top_k < 1:
        raise CLIZooError("--top-k must be at least 1, pass a positive number")
    check_threads(args.threads)
    if getattr(args, "index", None) or Path(args.embeddings).is_dir():  # clip_zoo/index_search.py
        from .index_search import run_indexed

        return run_indexed(args, _encode_query, emit_hits)
    emb, index, meta = read_embeddings(args.embeddings)
    rows = [r["row"] for r in index if r["kind"] == "image"] or [r["row"] for r in index]
    if not rows:
        raise CLIZooError(f"{args.embeddings} holds no embeddings, embed some images first")
    model = args.model if args.model is not None else meta.get("model")
    encoder = load_encoder(model, args.framework or meta.get("framework"), args.threads,
                           precision=getattr(args, "precision", None))
    if encoder.dim != emb.shape[1]:
        raise CLIZooError(f"the embeddings are {emb.shape[1]}-dimensional but model {model} gives {encoder.dim}, "
                          f"search with the model that made them ({meta.get('model')})")
    q, _ = _encode_query(encoder, args.query, getattr(args, "max_pixels", None))
    scores = emb[rows] @ q  # (R,)
    order = np.argsort(-scores, kind="stable")[:args.top_k]
    hits = [{"rank": n + 1, "score": round(float(scores[i]), 6), **index[rows[i]]} for n, i in enumerate(order)]
    return emit_hits(hits, args.json)


def emit_hits(hits: list[dict], as_json: bool) -> int:
    """Print ``hits`` as JSON or as :func:`print_hits` rows; the command's exit status (0)."""
    if as_json:
        json.dump(hits, sys.stdout, indent=2, allow_nan=False)
        print()
    else:
        print_hits(hits)
    return 0


def print_hits(hits: list[dict]) -> None:
    """``rank. score  path`` rows; the score keeps its sign in a fixed width (``-0.1234`` / `` 0.1234``)."""
    rank_width = len(str(len(hits)))
    for h in hits:
        print(f"{h['rank']:>{rank_width}}. {h['score']:>7.4f}  {h.get('path', h.get('text'))}")
