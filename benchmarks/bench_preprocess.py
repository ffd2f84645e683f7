"""Preprocessing throughput: clip_core vs transformers' CLIPImageProcessor vs OpenAI's transform.

Run: ``python -m benchmarks.bench_preprocess [--quick] [--batch 64] [--repeats 7]``.

One run, one process: a batch of 640x480 JPEGs is generated into a temp dir and every contender
decodes it from the files. Contenders run interleaved (round robin) ``repeats`` times; medians and
ratios are printed and written to ``benchmarks/results/preprocess.json``. ``clip_core[...,1 thread]``
shows how much of the speed-up is the thread pool. Outputs are asserted
bit-identical to the matching reference before timing.

``floor[decode+resize,1 thread]`` is the work any bit-exact pipeline must do (the references' own
Pillow JPEG decode and bicubic resize) on one thread; ``ceiling`` = threads x transformers / that
floor is the best ratio an exact pipeline can reach with perfect scaling. ``--quick`` (the CI smoke
run) skips the informative contenders (``transformers_fast``, OpenAI with default torch threads,
``fast=True``, the thread-pool floor) and times 3 rounds.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

os.environ.setdefault("USE_TF", "0")  # transformers' image_transforms would import TensorFlow otherwise
os.environ.setdefault("USE_FLAX", "0")
try:  # torchvision must be imported before anything pulls in TensorFlow (segfault otherwise)
    import torchvision  # noqa: F401
except ImportError:  # pragma: no cover
    torchvision = None

from benchmarks.common import interleaved, write_result  # noqa: E402


def make_jpegs(directory: Path, n: int, seed: int = 0) -> List[str]:
    """Write ``n`` smooth-ish random 640x480 RGB JPEGs (quality 90) and return their paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    for i in range(n):
        phase = rng.random(3) * 6.28
        img = np.stack([127 + 100 * np.sin(xx / (20 + 7 * c) + yy / 31 + phase[c]) for c in range(3)], -1)
        img += rng.normal(0, 12, img.shape)
        path = directory / f"img{i:03d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def contenders(paths: List[str], quick: bool = False) -> Dict[str, Callable[[], np.ndarray]]:
    """name → zero-argument function that preprocesses the whole batch from files (N, 3, 224, 224).

    ``quick`` leaves out the informative contenders that no target reads.
    """
    from PIL import Image

    from clip_core.image_processing import CLIPImageProcessor

    ours_oa, ours_hf = CLIPImageProcessor("openai"), CLIPImageProcessor("hf")
    ours_1, ours_fast = CLIPImageProcessor("hf", num_threads=1), CLIPImageProcessor("openai", fast=True)
    out: Dict[str, Callable[[], np.ndarray]] = {
        "clip_core[openai]": lambda: ours_oa(paths)["pixel_values"],
        "clip_core[hf]": lambda: ours_hf(paths)["pixel_values"],
        "clip_core[hf,1 thread]": lambda: ours_1(paths)["pixel_values"],
        "floor[decode+resize,1 thread]": lambda: _decode_resize_floor(paths, map),
    }
    if not quick:
        out["floor[decode+resize]"] = lambda: _decode_resize_floor(paths, ours_hf._executor().map)
        out["clip_core[openai,fast]"] = lambda: ours_fast(paths)["pixel_values"]  # opt-in, not exact
    try:
        import transformers

        slow = transformers.CLIPImageProcessor()
        out["transformers"] = lambda: slow(list(paths), return_tensors="np")["pixel_values"]
        try:
            if not quick:
                fast = transformers.CLIPImageProcessorFast()
                out["transformers_fast"] = lambda: fast([Image.open(p) for p in paths],
                                                        return_tensors="pt")["pixel_values"].numpy()
        except Exception as exc:  # noqa: BLE001 - optional contender
            print(f"transformers CLIPImageProcessorFast unavailable: {exc}", file=sys.stderr)
    except ImportError:
        print("transformers not installed; skipping it", file=sys.stderr)
    try:
        import torch
        from clip.clip import _transform

        tf = _transform(224)
        openai = lambda: torch.stack([tf(Image.open(p)) for p in paths]).numpy()  # noqa: E731
        if not quick:
            out["openai"] = openai
        out["openai[1 torch thread]"] = lambda: _one_torch_thread(torch, openai)
    except ImportError:
        print("OpenAI clip not installed; skipping it", file=sys.stderr)
    return out


def _decode_resize_floor(paths: List[str], mapper: Callable) -> None:
    """Only the JPEG decode and the bicubic resize that any bit-exact pipeline must do, run through
    ``mapper`` (our thread pool's ``map`` or the builtin ``map``): the lower bound of our time, so
    ``transformers / floor`` bounds our ratio."""
    from PIL import Image

    def work(path: str) -> None:
        with Image.open(path) as img:
            img.load()
            img.resize((298, 224), Image.BICUBIC)

    list(mapper(work, paths))
    return None


def _one_torch_thread(torch, fn: Callable[[], np.ndarray]) -> np.ndarray:
    """Run ``fn`` with one torch intra-op thread: on a busy machine torch's default thread pool
    makes ToTensor/Normalize many times slower, which would flatter our ratio."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def _our_threads() -> int:
    """Worker threads of a default ``CLIPImageProcessor`` on this machine."""
    from clip_core.image_processing import CLIPImageProcessor

    return CLIPImageProcessor("hf").num_threads


def check_identical(results: Dict[str, np.ndarray]) -> Dict[str, float]:
    """Max abs difference of our outputs against each reference (must be <= 1e-6)."""
    pairs = [("clip_core[openai]", "openai"), ("clip_core[openai]", "openai[1 torch thread]"),
             ("clip_core[hf]", "transformers"), ("clip_core[hf,1 thread]", "transformers")]
    diffs = {}
    for ours, ref in pairs:
        if ref in results:
            diffs[f"{ours} vs {ref}"] = float(np.abs(results[ours] - results[ref]).max())
    if "openai" in results:  # informative only: fast=True trades exactness for speed
        diffs["clip_core[openai,fast] vs openai (info)"] = float(
            np.abs(results["clip_core[openai,fast]"] - results["openai"]).max())
    if "transformers_fast" in results and "transformers" in results:  # informative only
        diffs["transformers_fast vs transformers (info)"] = float(
            np.abs(results["transformers_fast"] - results["transformers"]).max())
    for name, d in diffs.items():
        assert "(info)" in name or d <= 1e-6, f"{name}: outputs differ by {d}"
    return diffs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 repeats, informative contenders skipped")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.batch)
        funcs = contenders(paths, quick=args.quick)
        diffs = check_identical({k: np.asarray(f()) for k, f in funcs.items() if not k.startswith("floor")})
        timings = interleaved(funcs, repeats=repeats, warmup=0)  # the identity check above was the warm-up
    medians = {k: v["median"] for k, v in timings.items()}
    ratios = {f"{ours} / {ref}": medians[ref] / medians[ours]
              for ours in medians if ours.startswith(("clip_core", "floor"))
              for ref in ("transformers", "transformers_fast", "openai", "openai[1 torch thread]") if ref in medians}
    threads = _our_threads()
    if "transformers" in medians:  # best exact ratio with perfect scaling over our threads
        ratios["ceiling: threads x transformers / floor[decode+resize,1 thread]"] = (
            threads * medians["transformers"] / medians["floor[decode+resize,1 thread]"])
    data = {"batch": args.batch, "image_size": [640, 480], "repeats": repeats, "threads": threads,
            "quick": args.quick, "timings": timings,
            "images_per_second": {k: args.batch / v for k, v in medians.items()}, "ratios": ratios,
            "max_abs_diff": diffs, "load_average": os.getloadavg(),
            "targets": {"clip_core[hf] / transformers": 3.0, "clip_core[openai] / openai": 1.5,
                        "clip_core[openai] / openai[1 torch thread]": 1.5}}
    for k, v in medians.items():
        print(f"{k:30s} {v * 1e3:9.1f} ms/batch  {args.batch / v:8.1f} img/s")
    print(f"load average during the run: {os.getloadavg()}")
    for k, v in ratios.items():
        print(f"speed-up {k:58s} {v:6.2f}x")
    for k, v in diffs.items():
        print(f"max abs diff {k}: {v:.3g}")
    missed = {k: v for k, v in data["targets"].items() if k in ratios and ratios[k] < v}
    if missed:
        print(f"targets missed (machine load? cores: {os.cpu_count()}): "
              + ", ".join(f"{k} = {ratios[k]:.2f}x < {v}x" for k, v in missed.items()))
    print(f"wrote {write_result('preprocess_quick' if args.quick else 'preprocess', data)}")
    return data


if __name__ == "__main__":
    main()
