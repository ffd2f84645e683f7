"""End to end: a folder of 640x480 JPEGs -> L2-normalized ViT-B/32 image embeddings in a ``.npy``.

Run: ``python -m benchmarks.bench_e2e [--quick] [--images N] [--repeats R] [--dir DIR]``.

Contenders, each a fresh subprocess timed wall-clock by this process (start-up, imports, model
load, decoding, preprocessing, encoding and writing the output all included), interleaved:

- ``clip_zoo``: ``clip-zoo embed FOLDER --out X.npy --model CKPT --framework torch``;
- ``hf_batched``: the loop a transformers user writes: ``CLIPProcessor`` + ``CLIPModel.get_image_features``
  in batches of 32 under ``torch.no_grad()``, then L2-normalize;
- ``hf_per_image``: the same, one image at a time (full mode only, or ``--per-image``).

All read the same canonical checkpoint (random weights, ``conversion.save_canonical``). Before any
speed is reported the outputs are checked to agree (max abs difference <= 1e-4).
Ratio = reference median wall time / clip_zoo median wall time (> 1: clip-zoo is faster). Target >= 1.5x.
Writes ``benchmarks/results/e2e.json`` (``e2e_quick.json`` with ``--quick``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import write_result
from .model_inputs import checkpoint

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
TARGET = 1.5

# The transformers user's script: argv = ckpt, folder, out.npy, batch size.
_HF_SCRIPT = """
import os, sys
import numpy as np
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

ckpt, folder, out, bs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
model = CLIPModel.from_pretrained(ckpt).eval()
processor = CLIPProcessor.from_pretrained(ckpt)
paths = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".jpg"))
feats = []
with torch.no_grad():
    for i in range(0, len(paths), bs):
        images = [Image.open(p).convert("RGB") for p in paths[i:i + bs]]
        inputs = processor(images=images, return_tensors="pt")
        f = model.get_image_features(**inputs)
        feats.append(f / f.norm(dim=-1, keepdim=True))
np.save(out, torch.cat(feats).numpy())
"""


def make_images(folder: Path, n: int, size: tuple[int, int] = (640, 480)) -> list[Path]:
    """``n`` photo-like JPEGs (smooth colour gradients + blobs + mild noise), quality 90."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        a, b, c = rng.uniform(0, 2 * np.pi, 3)
        f = rng.uniform(0.005, 0.03, 3)
        img = np.stack([np.sin(f[0] * xx + a), np.cos(f[1] * yy + b), np.sin(f[2] * (xx + yy) + c)], -1)  # (H, W, 3)
        img = (img + 1) * 110 + rng.normal(0, 8, (h, w, 3))
        path = folder / f"img_{i:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def _commands(ckpt: Path, folder: Path, out: Path, per_image: bool) -> dict[str, list[str]]:
    py = sys.executable
    cmds = {
        "clip_zoo": [py, "-m", "clip_zoo", "embed", str(folder), "--out", str(out / "clip_zoo.npy"), "--model",
                     str(ckpt), "--framework", "torch"],
        "hf_batched": [py, "-c", _HF_SCRIPT, str(ckpt), str(folder), str(out / "hf_batched.npy"), "32"],
    }
    if per_image:
        cmds["hf_per_image"] = [py, "-c", _HF_SCRIPT, str(ckpt), str(folder), str(out / "hf_per_image.npy"), "1"]
    return cmds


def _env() -> dict[str, str]:
    env = dict(os.environ, USE_TF="0", USE_FLAX="0", USE_JAX="0", TF_CPP_MIN_LOG_LEVEL="3",
               TRANSFORMERS_NO_ADVISORY_WARNINGS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _run(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def _agreement(out: Path, names: list[str]) -> dict[str, float]:
    """Max abs difference of each reference's embeddings against clip-zoo's (same row order)."""
    ours = np.load(out / "clip_zoo.npy")
    diffs = {}
    for name in names:
        ref = np.load(out / f"{name}.npy")
        if ref.shape != ours.shape:
            raise RuntimeError(f"{name} wrote {ref.shape}, clip-zoo wrote {ours.shape}")
        diffs[name] = float(np.abs(ref - ours).max())
    return diffs


def run(n_images: int, repeats: int, per_image: bool, workdir: Path) -> dict:
    folder, out = workdir / "images", workdir / "out"
    out.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint("ViT-B/32", workdir)[2]
    make_images(folder, n_images)
    cmds = _commands(ckpt, folder, out, per_image)
    first = {name: _run(cmd) for name, cmd in cmds.items()}  # also warms the page cache; checked
    refs = [n for n in cmds if n != "clip_zoo"]
    diffs = _agreement(out, refs)
    bad = {k: v for k, v in diffs.items() if v > TOLERANCE}
    if bad:
        raise RuntimeError(f"outputs disagree with clip-zoo by more than {TOLERANCE}: {bad}")
    times: dict[str, list[float]] = {name: [] if repeats else [first[name]] for name in cmds}
    for _ in range(repeats):  # 0 (quick): the checked first round is the timing
        for name, cmd in cmds.items():
            times[name].append(_run(cmd))
    stats = {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v} for k, v in times.items()}
    ours = stats["clip_zoo"]["median"]
    return {
        "model": "ViT-B/32", "images": n_images, "image_size": [640, 480], "repeats": repeats,
        "batch_size_reference": 32, "seconds": stats,
        "images_per_second": {k: n_images / s["median"] for k, s in stats.items()},
        "max_abs_diff": diffs, "tolerance": TOLERANCE,
        "ratios": {f"clip_zoo_vs_{k}": stats[k]["median"] / ours for k in refs},
        "targets": {"clip_zoo_vs_hf_batched": TARGET},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="32 images, the checked first round as the timing, "
                                                        "no per-image loop")
    p.add_argument("--images", type=int, help="number of JPEGs (default 500; 32 with --quick)")
    p.add_argument("--repeats", type=int, help="timed interleaved rounds after the checked one (default 3; "
                                               "0 with --quick: the checked round is timed)")
    p.add_argument("--per-image", action=argparse.BooleanOptionalAction, default=None,
                   help="also time the one-image-at-a-time transformers loop (default: full mode only)")
    p.add_argument("--dir", help="work directory (default: a temp dir)")
    args = p.parse_args(argv)
    n = args.images or (32 if args.quick else 500)
    repeats = args.repeats if args.repeats is not None else (0 if args.quick else 3)
    per_image = (not args.quick) if args.per_image is None else args.per_image
    workdir = Path(tempfile.mkdtemp(prefix="bench_e2e.", dir=args.dir))
    try:
        result = run(n, repeats, per_image, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for name, s in result["seconds"].items():
        print(f"{name:>14}: {s['median']:.2f} s median ({s['min']:.2f}-{s['max']:.2f}), "
              f"{result['images_per_second'][name]:.1f} img/s")
    print(f"max abs diff vs clip-zoo: {result['max_abs_diff']}")
    path = write_result("e2e_quick" if args.quick else "e2e", result)
    print(f"wrote {path}")
    print(json.dumps(result["ratios"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
