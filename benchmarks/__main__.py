"""`python -m benchmarks [--quick] [--only a,b]`: every benchmark, one JSON, one report.

Each benchmark module runs in its own subprocess (TensorFlow must not share a process with
torchvision, and memory peaks stay apart) and writes ``benchmarks/results/<name>.json``; this
command gathers them into ``benchmarks/results/all.json`` and regenerates ``docs/performance.md``
and its plots (``python -m benchmarks.report`` does only that last step).

``--quick`` keeps its output apart so it never replaces a full run's figures: each benchmark writes
``results/<name>_quick.json``, the summary is ``results/all_quick.json`` and the report goes to
``results/quick/performance.md`` (all git-ignored). CI runs ``--quick`` once to prove the command works.

The plots need matplotlib, the ``bench`` extra (``pip install 'clip-zoo[bench]'``): without it the
command stops with a one-line error before running anything (``--no-report`` needs no matplotlib).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from .common import RESULTS, environment, matmul_gflops
from .model_inputs import CACHE_ENV

# name: (module, frameworks it needs — skipped when none is installed)
SUITE = {
    "tokenizer": ("benchmarks.bench_tokenizer", ()),
    "preprocess": ("benchmarks.bench_preprocess", ()),
    "torch": ("benchmarks.bench_torch", ("torch",)),
    "tf": ("benchmarks.bench_tf", ("tensorflow",)),
    "flax": ("benchmarks.bench_flax", ("flax",)),
    "conversion": ("benchmarks.bench_conversion", ()),
    "coldstart": ("benchmarks.bench_coldstart", ("transformers",)),
    "e2e": ("benchmarks.bench_e2e", ("torch", "transformers")),
    "serve": ("benchmarks.bench_serve", ("torch", "fastapi", "uvicorn", "httpx")),
    "precision": ("benchmarks.bench_precision", ("torch", "onnxruntime")),
    "index": ("benchmarks.bench_index", ("faiss",)),  # clip-zoo index: build time, recall@10, p50 latency
    "embed_ray": ("benchmarks.bench_embed_ray", ("torch", "ray")),  # embed --engine ray vs in-process
}


def _available(module: str, needs: tuple) -> bool:
    return importlib.util.find_spec(module) is not None and all(importlib.util.find_spec(n) for n in needs)


QUICK_REPORT = RESULTS / "quick"


def _result_path(name: str, quick: bool):
    """``results/<name>.json``, or ``results/<name>_quick.json`` for a quick run."""
    return RESULTS / (f"{name}_quick.json" if quick else f"{name}.json")


def _run_one(name: str, args: argparse.Namespace, summary: dict, failed: list[str], env: dict) -> None:
    """Run benchmark ``name`` in its own subprocess (or reuse its result) and record it in ``summary``."""
    module, needs = SUITE[name]
    if not _available(module, needs):
        summary["runs"][name] = {"status": "skipped", "reason": f"{module} or {needs} not installed"}
        return
    result = _result_path(name, args.quick)
    if args.reuse and result.exists():
        summary["runs"][name] = {"status": "reused", "result": json.loads(result.read_text())}
        return
    start = time.perf_counter()
    cmd = [sys.executable, "-m", module] + (["--quick"] if args.quick else [])
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, env=env)
    summary["runs"][name] = {"status": "ok" if proc.returncode == 0 else f"exit {proc.returncode}",
                             "seconds": round(time.perf_counter() - start, 1)}
    if proc.returncode == 0 and result.exists():
        summary["runs"][name]["result"] = json.loads(result.read_text())
    elif proc.returncode != 0:
        failed.append(name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (< 5 minutes)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SUITE)}")
    parser.add_argument("--no-report", action="store_true", help="skip regenerating docs/performance.md")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse each benchmark's existing results/<name>.json instead of running it again")
    args = parser.parse_args(argv)
    if not args.no_report:  # the report's plots need matplotlib: say so before running anything
        from .report import missing_matplotlib

        error = missing_matplotlib(parser.prog)
        if error:
            print(error, file=sys.stderr)
            return 2
    names = [n for n in (args.only.split(",") if args.only else SUITE) if n]
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(SUITE)}")
    summary = {"quick": args.quick, "environment": environment(), "matmul_gflops": matmul_gflops(),
               "runs": {}}
    failed: list[str] = []
    cache = tempfile.mkdtemp(prefix="clip_zoo_bench.")  # random checkpoints shared by the benchmarks
    try:
        for name in names:
            _run_one(name, args, summary, failed, dict(os.environ, **{CACHE_ENV: cache}))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary_path = RESULTS / ("all_quick.json" if args.quick else "all.json")
    if args.only and summary_path.exists():  # a subset run updates its entries, keeps the others
        summary["runs"] = {**json.loads(summary_path.read_text()).get("runs", {}), **summary["runs"]}
    summary_path.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    print(f"wrote {summary_path}")
    if not args.no_report:
        from .report import DOCS, generate

        print(f"wrote {generate(summary_path, QUICK_REPORT if args.quick else DOCS)}")
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
