"""`clip-zoo index` on synthetic CLIP-like embeddings: build time, recall@10 and query latency.

Generator (:func:`vmf_mixture`): a mixture of ``C`` von Mises–Fisher components on the unit sphere
of ``R^D`` (default 1,000 components, D = 512): component means uniform on the sphere, component
weights from a Dirichlet(1) draw (uneven cluster sizes, as real collections have), concentration
``kappa`` (default 800: a point's cosine to its mean is ~0.7, a pair within a component ~0.5, across
components ~0) — uniform random vectors have no neighbours worth finding. The distance ``w`` to the
mean follows Wood's (1994) rejection sampler; the direction is uniform in the tangent space.

``python -m benchmarks.bench_index [--n 1000000] [--memory 1GB] [--kind ivfpq] [--quick]`` writes
the vectors to a memory-mapped ``.npy`` embed output in a temp folder (streamed, never whole in
RAM), runs :func:`clip_zoo.index.build` on it, then times single-query searches (p50/p90 over
``--latency-queries``) and writes ``benchmarks/results/index[_quick].json``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import RESULTS, environment


def _wood_w(rng: np.random.Generator, kappa: float, d: int, n: int) -> np.ndarray:
    """``n`` samples of the cosine to the mean of a vMF(kappa) on S^(d-1) (Wood 1994)."""
    b = (-2 * kappa + np.sqrt(4 * kappa ** 2 + (d - 1) ** 2)) / (d - 1)
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + (d - 1) * np.log(1 - x0 ** 2)
    out = np.empty(0)
    while len(out) < n:
        z = rng.beta((d - 1) / 2, (d - 1) / 2, size=2 * n)
        w = (1 - (1 + b) * z) / (1 - (1 - b) * z)
        u = rng.uniform(size=2 * n)
        out = np.concatenate([out, w[kappa * w + (d - 1) * np.log(1 - x0 * w) - c >= np.log(u)]])
    return out[:n]


def vmf_mixture(n: int, d: int = 512, components: int = 1000, kappa: float = 800.0, seed: int = 0,
                chunk: int = 100_000):
    """Yield ``(n, d)`` float32 unit vectors of the mixture in chunks (see the module docstring)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((components, d))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    weights = rng.dirichlet(np.ones(components))
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        mu = means[rng.choice(components, size=m, p=weights)]  # (m, d)
        w = _wood_w(rng, kappa, d, m)[:, None]  # (m, 1)
        v = rng.standard_normal((m, d))
        v -= (v * mu).sum(1, keepdims=True) * mu  # tangent direction
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        yield (w * mu + np.sqrt(1 - w ** 2) * v).astype(np.float32)


def write_collection(folder: Path, n: int, d: int, **kw) -> Path:
    """An ``embed``-style ``.npy`` output (``.npy`` + ``.meta.json`` + ``.index.jsonl``) of the mixture."""
    out = folder / "synthetic.npy"
    arr = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, d))
    start = 0
    for x in vmf_mixture(n, d, **kw):
        arr[start:start + len(x)] = x
        start += len(x)
    arr.flush()
    del arr
    (folder / "synthetic.meta.json").write_text(json.dumps({"model": "synthetic", "framework": None, "dim": d,
                                                            "count": n}))
    with open(folder / "synthetic.index.jsonl", "w") as fh:
        for i in range(n):
            fh.write(f'{{"row": {i}, "kind": "image", "path": "synthetic/{i}"}}\n')
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_index", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--components", type=int, default=1000)
    p.add_argument("--kappa", type=float, default=800.0)
    p.add_argument("--kind", default="ivfpq")
    p.add_argument("--memory", default="1GB")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--latency-queries", type=int, default=500)
    p.add_argument("--quick", action="store_true", help="50,000 vectors")
    args = p.parse_args(argv)
    from clip_zoo.embed_io import open_embeddings
    from clip_zoo.index import build, choose, load, parse_memory, search

    n = 50_000 if args.quick else args.n
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        t0 = time.perf_counter()
        npy = write_collection(Path(tmp), n, args.dim, components=args.components, kappa=args.kappa)
        gen_s = time.perf_counter() - t0
        src = open_embeddings(str(npy))
        params = choose(args.kind, n, args.dim, parse_memory(args.memory))
        t0 = time.perf_counter()
        info = build(src, params, Path(tmp) / "index.faiss", args.queries)
        build_s = time.perf_counter() - t0
        index, info = load(str(Path(tmp) / "index.faiss"))
        q = src.take(np.random.default_rng(1).choice(n, args.latency_queries, replace=False))
        lat = []
        for row in q:
            t = time.perf_counter()
            search(index, info, row[None], 10)
            lat.append(time.perf_counter() - t)
    result = {"benchmark": "index", "n": n, "dim": args.dim, "components": args.components, "kappa": args.kappa, "kind": args.kind,
              "memory": args.memory, "factory": info["factory"], "search": info["search"],
              "recall_at_10": info["recall_at_10"], "tuning": info["tuning"], "build_seconds": round(build_s, 1),
              "generate_seconds": round(gen_s, 1), "index_mb": round(info["index_bytes"] / 2 ** 20, 1),
              "p50_ms": round(1000 * float(np.percentile(lat, 50)), 3),
              "p90_ms": round(1000 * float(np.percentile(lat, 90)), 3), "environment": environment()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("index_quick.json" if args.quick else "index.json")).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("environment", "tuning")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
