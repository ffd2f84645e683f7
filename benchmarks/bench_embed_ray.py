"""`clip-zoo embed --engine ray` against the in-process engine on one machine: throughput ratio.

Both engines embed the same generated images (``--n``, default 2,000, 64 px shapes) with the same
model (default: the bundled model), framework, batch size and ``--format parquet``, in one run, one
after the other; Ray runs on ``ray.init(num_cpus=CPUS)`` with one actor per ``--threads`` CPUs.
Reported: each engine's wall time for the whole command, and Ray's time without its cluster start
(measured separately: ``ray.init`` + the first actor's model load), and the ratio of throughputs.
The in-process engine gets ``--threads CPUS``; Ray gets ``CPUS / --threads`` actors of ``--threads``.
Writes ``benchmarks/results/embed_ray[_quick].json``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from .common import RESULTS, environment


def _images(folder: Path, n: int) -> None:
    from clip_core import shapes

    folder.mkdir()
    for i, im in enumerate(shapes.generate(n, seed=4, size=64).images):
        im.save(folder / f"{i:05d}.png", compress_level=1)


def _embed(folder: Path, out: Path, args, threads: int, *extra) -> float:
    from clip_zoo.__main__ import main

    t = time.perf_counter()
    rc = main(["embed", str(folder), "--out", str(out), "--format", "parquet", "--batch-size", str(args.batch_size),
               "--framework", args.framework, "--threads", str(threads), "--no-progress",
               *(["--model", args.model] if args.model else []), *extra])
    assert rc == 0
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_embed_ray", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--model", default=None)
    p.add_argument("--framework", default="torch")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="200 images")
    args = p.parse_args(argv)
    import ray

    n = 200 if args.quick else args.n
    cpus = os.cpu_count() or 2
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        folder = Path(tmp) / "imgs"
        _images(folder, n)
        local = _embed(folder, Path(tmp) / "local", args, cpus)  # the whole machine: cpus threads
        t = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        start = time.perf_counter() - t
        try:
            pool = ("--engine", "ray", "--workers", str(cpus // args.threads))  # cpus / threads actors
            _embed(folder, Path(tmp) / "warm", args, args.threads, *pool, "--batch-size", str(n))  # start-up
            warm = time.perf_counter() - t - start
            ray_s = _embed(folder, Path(tmp) / "ray", args, args.threads, *pool)
        finally:
            ray.shutdown()
    result = {"benchmark": "embed_ray", "n": n, "framework": args.framework, "model": args.model or "default", "batch_size": args.batch_size,
              "threads_per_actor": args.threads, "cpus": cpus, "local_seconds": round(local, 2),
              "ray_seconds": round(ray_s, 2), "ray_init_seconds": round(start, 2),
              "ray_one_batch_seconds": round(warm, 2),
              "throughput_ratio_ray_over_local": round(local / ray_s, 3), "environment": environment()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("embed_ray_quick.json" if args.quick else "embed_ray.json")).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
