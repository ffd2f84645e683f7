"""``clip-zoo search --index PATH`` (a faiss index from ``clip-zoo index``) and ``search`` over a
``--format parquet`` folder (streamed brute force, no index needed)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .errors import CLIZooError

__all__ = ["run_indexed"]


def _source(args: argparse.Namespace):
    """``(embeddings source, faiss index or None, index info or None)``."""
    from .embed_io import open_embeddings

    src = open_embeddings(args.embeddings)
    if not getattr(args, "index", None):
        return src, None, None
    from .index import load

    try:
        index, info = load(args.index)
    except ImportError:
        raise CLIZooError("search --index needs faiss, install it with: pip install 'clip-zoo[index]'") from None
    if Path(info.get("source", "")).resolve() != Path(src.source).resolve() or info.get("count") != src.n:
        raise CLIZooError(f"{args.index} was built from {info.get('source')}, not {args.embeddings}, pass the "
                          "embeddings it was built from")
    return src, index, info


def run_indexed(args: argparse.Namespace, encode_query, emit_hits) -> int:
    """Encode the query with the embeddings' model, search the index (or stream every vector), emit the hits."""
    from .engines import load_encoder
    from .index import exact_top_k, search

    src, index, info = _source(args)
    model = args.model if args.model is not None else src.meta.get("model")
    encoder = load_encoder(model, args.framework or src.meta.get("framework"), args.threads,
                           precision=getattr(args, "precision", None))
    if encoder.dim != src.dim:
        raise CLIZooError(f"the embeddings are {src.dim}-dimensional but model {model} gives {encoder.dim}, "
                          f"search with the model that made them ({src.meta.get('model')})")
    q, _ = encode_query(encoder, args.query, getattr(args, "max_pixels", None))  # (D,)
    k = min(args.top_k, src.n)
    if index is not None:
        scores, ids = search(index, info, q[None], k, args.nprobe)
        scores, ids = scores[0][ids[0] >= 0], ids[0][ids[0] >= 0]
    else:
        ids = exact_top_k(src, q[None].astype(np.float32), k)[0]
        scores = src.take(ids) @ q
    meta = src.rows([int(i) for i in ids])
    hits = [{"rank": n + 1, "score": round(float(s), 6), **m} for n, (s, m) in enumerate(zip(scores, meta))]
    return emit_hits(hits, args.json)
