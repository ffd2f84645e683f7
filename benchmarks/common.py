"""Timing helpers shared by every benchmark: interleaved repeats, medians, min-max, matmul peak.

Absolute times drift on shared machines, so every figure is reported as a ratio against a
reference measured in the same run, with the runs of the contenders interleaved.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def settle(quiet: float = 0.1, slice_s: float = 0.005, limit_s: float = 0.5) -> float:
    """Wait until this process's threads are idle: until a ``slice_s`` sleep costs the process at most
    ``quiet`` of one core in CPU time, or ``limit_s`` has passed. Returns the seconds waited.

    Runtimes keep their worker threads spinning after a call returns, on the cores the next call needs:
    ONNX Runtime's burnt ~40 ms of CPU in the 50 ms after each call here, torch's OpenMP threads ~10 ms,
    OpenVINO's ~1 ms, XLA's, TensorFlow's and LiteRT's none. Timed right after ONNX Runtime, LiteRT's text
    b64 took 0.086 s instead of 0.061 s (2-core EPYC), so whoever followed a spinning runtime paid for it.
    """
    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        cpu, wall = time.process_time(), time.perf_counter()
        time.sleep(slice_s)
        if time.process_time() - cpu <= quiet * (time.perf_counter() - wall):
            break
    return time.perf_counter() - start


def interleaved(contenders: Mapping[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1) -> dict[str, dict]:
    """Run each contender ``warmup`` times, then ``repeats`` rounds A, B, C, A, B, C, ..., each timed call
    starting on idle cores (:func:`settle`: the previous contender's threads have stopped spinning).

    Returns ``{name: {"median": s, "min": s, "max": s, "runs": [...]}}``.
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            settle()
            runs[name].append(timed(fn))
    return {name: {"median": statistics.median(r), "min": min(r), "max": max(r), "runs": r}
            for name, r in runs.items()}


def matmul_gflops(n: int = 2048, repeats: int = 5, framework: str = "numpy") -> float:
    """GFLOP/s of a plain fp32 ``n x n @ n x n`` matmul (2 n^3 flops), median of ``repeats``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    if framework == "torch":
        import torch

        a, b = torch.from_numpy(a), torch.from_numpy(b)
        fn = lambda: torch.mm(a, b)  # noqa: E731
    else:
        fn = lambda: a @ b  # noqa: E731
    fn()
    t = statistics.median(timed(fn) for _ in range(repeats))
    return 2 * n ** 3 / t / 1e9


#: The instruction sets that decide which precision is fast (bf16, int8), recorded with every result.
_ISA_FLAGS = frozenset({"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
                        "asimddp", "i8mm", "bf16"})


def environment() -> dict[str, Any]:
    """CPU, threads and library versions, recorded with every result."""
    import importlib.metadata as md

    from clip_core.cpu import cpu_flags, cpu_name

    versions = {}
    for pkg in ("numpy", "torch", "tensorflow", "jax", "flax", "transformers", "open-clip-torch", "clip-anytorch",
                "tokenizers", "pillow"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    isa = sorted((cpu_flags() or frozenset()) & _ISA_FLAGS)
    return {"cpu": cpu_name(), "cpus": os.cpu_count(), "isa": isa, "python": platform.python_version(),
            "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if os.environ.get(k)},
            "versions": versions, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_result(name: str, data: Mapping[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` (with the environment added)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "environment": environment(), **data}
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path
