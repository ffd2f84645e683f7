"""Conversion cost: an OpenAI ``.pt`` (ViT-L/14-shaped, random fp32 weights, ~1.7 GB) -> canonical directory.

Run: ``python -m benchmarks.bench_conversion [--quick] [--repeats 2] [--dir DIR]`` (``--quick``: ViT-B/32).

Compared with the plain copy of the same file (``shutil.copyfile`` + ``fsync``, as the conversion
fsyncs its output too). The checkpoint is generated in a child process so this process stays small;
each contender then runs in its own child process, which measures its wall time (imports included)
and its peak RSS as ``VmHWM`` of ``/proc/self/status`` (fresh after ``exec``; ``ru_maxrss`` keeps the
forking parent's high-water mark, so ``getrusage(RUSAGE_CHILDREN)`` is recorded only for reference).
Contenders are interleaved, the minimum wall time of the repeats is reported.
Targets: time <= 1.5x copy, peak RSS <= 1.3x checkpoint size.
Writes ``benchmarks/results/conversion.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import write_result

_HWM = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])"
_COPY = """
import os, shutil, sys, time
t = time.perf_counter()
shutil.copyfile(sys.argv[1], sys.argv[2])
fd = os.open(sys.argv[2], os.O_RDONLY); os.fsync(fd); os.close(fd)
print(time.perf_counter() - t, %s)
""" % _HWM
_CONVERT = """
import sys, time
t = time.perf_counter()
from conversion.cli import main
assert main([sys.argv[1], sys.argv[2], '--to', 'canonical', '--quiet']) == 0
print(time.perf_counter() - t, %s)
""" % _HWM
_MAKE = """
import sys
from benchmarks.bench_conversion import _make_checkpoint
from pathlib import Path
print(0, _make_checkpoint(Path(sys.argv[1]), sys.argv[2]) // 1024)
"""


def _make_checkpoint(path: Path, name: str) -> int:
    """Write random weights of architecture ``name`` as an OpenAI ``.pt``; returns its size in bytes."""
    import conversion
    from clip_core.presets import get_config
    from clip_core.testing import random_weights

    config = get_config(name)
    conversion.save_checkpoint(path, config, random_weights(config, seed=0), format="openai")
    return path.stat().st_size


def _child(script: str, *args: str) -> tuple[float, int]:
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    seconds, rss_kb = out.stdout.split()[-2:]
    return float(seconds), int(rss_kb) * 1024


def run(quick: bool, repeats: int, workdir: Path) -> dict:
    name = "ViT-B/32" if quick else "ViT-L/14"
    src = workdir / "model.pt"
    size = _child(_MAKE, str(src), name)[1]
    times: dict[str, list[float]] = {"convert": [], "copy": []}
    convert_rss = copy_rss = 0
    for i in range(repeats):
        out = workdir / f"canonical{i}"
        seconds, rss = _child(_CONVERT, str(src), str(out))
        times["convert"].append(seconds)
        convert_rss = max(convert_rss, rss)
        shutil.rmtree(out)
        seconds, rss = _child(_COPY, str(src), str(workdir / "copy.pt"))
        times["copy"].append(seconds)
        copy_rss = max(copy_rss, rss)
        os.unlink(workdir / "copy.pt")
    children_maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    convert_s, copy_s = min(times["convert"]), min(times["copy"])
    return {
        "model": name, "checkpoint_bytes": size, "repeats": repeats, "times": times,
        "convert_seconds": convert_s, "copy_seconds": copy_s, "time_ratio": convert_s / copy_s,
        "convert_peak_rss_bytes": convert_rss, "copy_peak_rss_bytes": copy_rss,
        "rss_ratio": convert_rss / size, "rusage_children_maxrss_bytes": children_maxrss,
        "targets": {"time_ratio": 1.5, "rss_ratio": 1.3},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="ViT-B/32 instead of ViT-L/14")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dir", help="work directory (default: a temp dir on the same disk as /tmp)")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench_conversion.", dir=args.dir))
    try:
        result = run(args.quick, args.repeats, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    mb = result["checkpoint_bytes"] / 2 ** 20
    print(f"{result['model']} OpenAI .pt ({mb:,.0f} MiB) -> canonical: {result['convert_seconds']:.2f} s vs copy "
          f"{result['copy_seconds']:.2f} s = {result['time_ratio']:.2f}x (target <= 1.5x); peak RSS "
          f"{result['convert_peak_rss_bytes'] / 2 ** 20:,.0f} MiB = {result['rss_ratio']:.2f}x the checkpoint "
          f"(target <= 1.3x)")
    path = write_result("conversion_quick" if args.quick else "conversion", result)
    print(f"wrote {path}")
    print(json.dumps({k: result[k] for k in ("time_ratio", "rss_ratio")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
