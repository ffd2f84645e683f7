"""``clip-zoo index``: a faiss index over an ``embed`` output, for ``clip-zoo search --index``.

Parameters come from one rule (:func:`choose`), from the collection size ``N``, the dimension
``D`` and the ``--memory`` budget (the index must fit in it, with 20 % headroom):

* ``flat``: exact inner product, ``4·D`` bytes a vector; refused when it does not fit.
* ``ivfpq``: ``nlist`` = the power of two nearest ``√N`` (at least 39 training points per list),
  product quantization with the most sub-quantizers ``m`` (``D/2``, ``D/4`` … down to 8, dividing
  ``D``) whose ``m + 8`` bytes a vector fit the budget, 8-bit codes (fewer below 10,000 vectors).
* ``hnsw``: ``M = 32`` links a node; vectors kept as float32 when they fit, else 8-bit scalar
  quantized (``HNSW32,SQ8``), else refused.

Training uses a random sample (``train_rows``) read in one streamed pass; vectors are added in
batches straight from the Parquet parts or the memory-mapped ``.npy``; the file is written to a
temp file and renamed, with ``INDEX.json`` (kind, parameters, source, recall) written last. After
the build ``--queries`` random collection vectors that were not in the training sample are searched
and compared with the exact top 10 (a streamed brute-force pass): the smallest ``nprobe`` (IVF) or
``efSearch`` (HNSW) whose recall@10 reaches 0.95 (else the best) becomes the default, and a recall
below 0.9 is reported as a warning. :func:`load` memory-maps the index.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import CLIZooError

__all__ = ["add_parser", "run", "choose", "build", "load", "search", "parse_memory", "exact_top_k"]

TARGET_RECALL, WARN_RECALL, K = 0.95, 0.9, 10
HNSW_M = 32
_UNITS = {"": 1, "B": 1, "KB": 2 ** 10, "MB": 2 ** 20, "GB": 2 ** 30, "TB": 2 ** 40}


def parse_memory(text: str) -> int:
    """``4GB``, ``512MB``, ``1.5G`` → bytes (binary units)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?B?)\s*", text.upper())
    unit = m and (m.group(2) if m.group(2).endswith("B") or not m.group(2) else m.group(2) + "B")
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"must be a size like 4GB or 512MB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[unit])


def add_parser(sub) -> None:
    p = sub.add_parser("index", help="build a faiss index over an `embed` output (for `search --index`)",
                       description="Build a faiss index (flat, ivfpq or hnsw) over the embeddings of `clip-zoo embed` "
                                   "(.npy or a --format parquet folder), with parameters chosen from the collection "
                                   "size and --memory, and report its recall@10 against exact search.")
    p.add_argument("embeddings", metavar="EMBEDDINGS", help="the .npy or Parquet folder written by `clip-zoo embed`")
    p.add_argument("--kind", choices=("flat", "ivfpq", "hnsw"), default="ivfpq")
    p.add_argument("--memory", type=parse_memory, default=parse_memory("4GB"), help="index memory budget (4GB)")
    p.add_argument("--out", default=None, help="index file (default EMBEDDINGS.KIND.faiss)")
    p.add_argument("--queries", type=int, default=1000, help="held-out queries for the recall check (1000)")
    p.add_argument("--threads", type=int, default=None, help="faiss threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(run=run)


# ----------------------------------------------------------------------------- parameters
def choose(kind: str, n: int, dim: int, memory: int) -> dict:
    """The index parameters for ``n`` vectors of ``dim`` within ``memory`` bytes (the module's rule)."""
    budget = 0.8 * memory
    if kind == "flat":
        need = 4 * n * dim
        if need > budget:
            raise CLIZooError(f"a flat index of {n:,} x {dim} needs {need / 2 ** 30:.2f} GB, more than 80% of --memory "
                              f"{memory / 2 ** 30:.2f} GB; pass a larger --memory or --kind ivfpq")
        return {"kind": kind, "factory": "Flat", "bytes": need}
    if kind == "hnsw":
        links = HNSW_M * 2 * 4 * 1.1  # level 0 holds 2M int32 links; upper levels ~10% more
        for store, per in (("Flat", 4 * dim), ("SQ8", dim)):
            if n * (per + links) <= budget:
                return {"kind": kind, "factory": f"HNSW{HNSW_M},{store}", "M": HNSW_M, "bytes": int(n * (per + links))}
        raise CLIZooError(f"an HNSW index of {n:,} x {dim} does not fit in --memory {memory / 2 ** 30:.2f} GB even "
                          "with 8-bit vectors; pass a larger --memory or --kind ivfpq")
    nlist = 2 ** max(0, round(math.log2(math.sqrt(n))))
    while nlist > 1 and n < 39 * nlist:
        nlist //= 2
    lists = nlist * dim * 4
    options = [(dim // f, True) for f in (4, 8, 16)] + [(dim // f, False) for f in (2, 4, 8, 16, 32)]
    for m, refine in options:  # 4-bit fast-scan PQ codes (m/2 bytes), re-ranked from 8-bit vectors if they fit
        per = m / 2 + 8 + (dim if refine else 0)
        if m >= 2 and m % 2 == 0 and dim % m == 0 and n * per + lists <= budget:
            return {"kind": kind, "factory": f"IVF{nlist},PQ{m}x4fs" + (",Refine(SQ8)" if refine else ""),
                    "nlist": nlist, "m": m, "nbits": 4, "refine": refine, "bytes": int(n * per + lists)}
    raise CLIZooError(f"an IVF-PQ index of {n:,} x {dim} does not fit in --memory {memory / 2 ** 30:.2f} GB, "
                      "pass a larger --memory")


def train_rows(params: dict, n: int) -> int:
    """Training sample size: 64 points a list (IVF), at least 10,000; capped at 200,000 and ``n``."""
    if params["kind"] != "ivfpq":
        return 0
    return min(n, max(64 * params["nlist"], 10_000), 200_000)


# ----------------------------------------------------------------------------- build
def exact_top_k(src, queries: np.ndarray, k: int = K, batch: int = 65536) -> np.ndarray:
    """The ids of the exact top ``k`` by inner product for each query, in one streamed pass: ``(Q, k)``."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for start, x in src.batches(batch):
        s = queries @ x.T  # (Q, B)
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k] if s.shape[1] > k else \
            np.tile(np.arange(s.shape[1]), (len(queries), 1))
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
        cand_i = np.concatenate([best_i, top + start], 1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact top-k ids among the found ones."""
    k = exact.shape[1]
    return float(np.mean([len(set(f[:k]) & set(e)) / k for f, e in zip(found, exact)]))


def _measure(index, setting: dict, queries: np.ndarray, exact: np.ndarray) -> float:
    import faiss

    ps = faiss.ParameterSpace()
    for name, v in setting.items():
        ps.set_index_parameter(index, name, v)
    _, ids = index.search(queries, K)
    return recall_at_k(ids, exact)


def _cost(params: dict, setting: dict, n: int, dim: int) -> float:
    """Rough work of one query (bytes touched): the probed codes plus the re-ranked vectors."""
    if "efSearch" in setting:
        return setting["efSearch"]
    return setting["nprobe"] / params["nlist"] * n * params["m"] / 2 + setting.get("k_factor_rf", 0) * K * dim


def _tune(index, params: dict, queries: np.ndarray, exact: np.ndarray) -> tuple[Optional[dict], float, list]:
    """The cheapest (:func:`_cost`) nprobe [and re-ranking factor] or efSearch reaching TARGET_RECALL,
    else the cheapest within 0.005 of the best; → (setting, recall, every measured point)."""
    if params["kind"] == "flat":
        return None, _measure(index, {}, queries, exact), []
    if params["kind"] == "ivfpq":
        probes = [2 ** i for i in range(int(math.log2(params["nlist"])) + 1)]
        lines = [[{"nprobe": p, **({"k_factor_rf": f} if f else {})} for p in probes]
                 for f in ((16, 64, 256) if params.get("refine") else (0,))]
    else:
        lines = [[{"efSearch": v} for v in (16, 32, 64, 128, 256, 512)]]
    curve = []
    for line in lines:  # raise nprobe (efSearch) until the recall stops growing or reaches the target
        prev = -1.0
        for setting in line:
            r = _measure(index, setting, queries, exact)
            curve.append({**setting, "recall_at_10": round(r, 4)})
            if r >= TARGET_RECALL or r - prev < 0.002:
                break
            prev = r
    n, dim = index.ntotal, index.d
    best = max(c["recall_at_10"] for c in curve)
    ok = [c for c in curve if c["recall_at_10"] >= min(TARGET_RECALL, best - 0.005)]
    pick = min(ok, key=lambda c: _cost(params, c, n, dim))
    setting = {k: v for k, v in pick.items() if k != "recall_at_10"}
    _measure(index, setting, queries, exact)
    return setting, pick["recall_at_10"], curve


def _progress(total: int, desc: str, enabled: bool):
    from .embed import _progress as bar

    b = bar(total, 0, enabled)
    if hasattr(b, "set_description"):
        b.set_description(desc)
    return b


def _write_index(index, out: Path) -> None:
    """``faiss.write_index`` to a temp file beside ``out``, then rename (nothing half-written)."""
    import tempfile

    import faiss

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build(src, params: dict, out: Path, queries: int = 1000, seed: int = 0, progress: bool = False,
          batch: int = 65536) -> dict:
    """Build, tune, check and write the index for ``src`` (an :class:`clip_zoo.embed_io.Embeddings`);
    → the info written to ``OUT.json``."""
    import faiss

    from .embed import _atomic_json

    t0 = time.time()
    rng = np.random.default_rng(seed)
    n_q = min(queries, max(1, src.n // 10))
    perm = rng.permutation(src.n)
    q_ids, train_ids = np.sort(perm[:n_q]), np.sort(perm[n_q:n_q + train_rows(params, src.n)])
    index = faiss.index_factory(src.dim, params["factory"], faiss.METRIC_INNER_PRODUCT)
    if params["kind"] == "ivfpq":
        both = src.take(np.concatenate([q_ids, train_ids]))  # one pass for the queries and the sample
        q, train = both[:n_q], both[n_q:]
        faiss.extract_index_ivf(index).cp.niter = 10
        index.train(train)
        del train, both
    else:
        q = src.take(q_ids)
    t_train = time.time() - t0
    with _progress(src.n, "index", progress) as bar:
        for _, x in src.batches(batch):
            index.add(np.ascontiguousarray(x, np.float32))
            bar.update(len(x))
    t_add = time.time() - t0 - t_train
    exact = exact_top_k(src, q, K, batch)
    setting, recall, curve = _tune(index, params, q, exact)
    _write_index(index, out)
    info = {"format": "clip-zoo-faiss-index", "version": 1, **params, "count": src.n, "dim": src.dim,
            "source": str(Path(src.source).resolve()), "model": src.meta.get("model"),
            "framework": src.meta.get("framework"), "search": setting, "recall_at_10": round(recall, 4),
            "recall_queries": n_q, "tuning": curve, "train_rows": len(train_ids) if params["kind"] == "ivfpq" else 0,
            "seconds": {"train": round(t_train, 1), "add": round(t_add, 1), "total": round(time.time() - t0, 1)},
            "index_bytes": out.stat().st_size}
    _atomic_json(Path(f"{out}.json"), info)
    return info


# ----------------------------------------------------------------------------- load and search
def load(path: str) -> tuple[object, dict]:
    """``(faiss index, info)`` of an index written by :func:`build`; memory-mapped where faiss can."""
    import faiss

    info_path = Path(f"{path}.json")
    if not Path(path).is_file() or not info_path.is_file():
        raise CLIZooError(f"no index at {path} (or its {info_path.name}), build one with `clip-zoo index EMBEDDINGS`")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except ValueError:
        raise CLIZooError(f"{info_path} is not valid JSON, rebuild the index with `clip-zoo index`") from None
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:  # a kind faiss cannot map: read it
        index = faiss.read_index(str(path))
    if index.ntotal != info.get("count") or index.d != info.get("dim"):
        raise CLIZooError(f"{path} does not match {info_path.name}, rebuild the index with `clip-zoo index`")
    return index, info


def search(index, info: dict, q: np.ndarray, top_k: int, nprobe: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(scores (Q, k), ids (Q, k))`` of queries ``q`` ``(Q, D)``; ``nprobe`` overrides the tuned
    nprobe (IVF) or efSearch (HNSW)."""
    import faiss

    setting = dict(info.get("search") or {})
    if nprobe is not None and setting:
        setting["nprobe" if "nprobe" in setting else "efSearch"] = int(nprobe)
    for name, value in setting.items():
        faiss.ParameterSpace().set_index_parameter(index, name, value)
    if "efSearch" in setting:
        setting["efSearch"] = max(setting["efSearch"], top_k)
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", setting["efSearch"])
    scores, ids = index.search(np.ascontiguousarray(q, np.float32).reshape(-1, index.d), top_k)
    return scores, ids


def run(args: argparse.Namespace) -> int:
    from .embed_io import open_embeddings

    try:
        import faiss
    except ImportError:
        raise CLIZooError("clip-zoo index needs faiss, install it with: pip install 'clip-zoo[index]'") from None
    if args.queries < 1:
        raise CLIZooError("--queries must be at least 1, pass a positive number")
    if args.threads is not None:
        faiss.omp_set_num_threads(max(1, args.threads))
    src = open_embeddings(args.embeddings)
    params = choose(args.kind, src.n, src.dim, args.memory)
    base = str(args.embeddings).rstrip("/")
    out = Path(args.out or f"{base[:-4] if base.endswith('.npy') else base}.{args.kind}.faiss")
    info = build(src, params, out, args.queries, args.seed, args.progress)
    at = f" at {info['search']}" if info["search"] else ""
    print(f"indexed {info['count']:,} x {info['dim']} as {info['factory']} -> {out} "
          f"({info['index_bytes'] / 2 ** 20:.1f} MB, {info['seconds']['total']}s); recall@10 {info['recall_at_10']:.3f} "
          f"on {info['recall_queries']} held-out queries{at}",
          file=sys.stderr)
    if info["recall_at_10"] < WARN_RECALL:
        print(f"clip-zoo: warning: recall@10 is {info['recall_at_10']:.3f}, below {WARN_RECALL}; pass a larger --memory "
              "or --kind flat / hnsw", file=sys.stderr)
    return 0
