"""A generated benchmark suite for ``clip-zoo eval``: coloured shapes with controlled factors.

Built on :mod:`clip_core.shapes` (the data the bundled model was trained on): the same 48
colour x shape classes, colours, outlines and class balance, plus three factors drawn per image
and recorded in the tables: ``size`` (small / large), ``background`` (gradient / plain / noisy)
and ``position`` (centre / off-centre). Image ``i`` of a split depends only on ``(seed, split, i)``.

``python -m clip_zoo.synth_suite OUT --n 2000`` writes::

    OUT/classes.txt         the 48 class names ("black circle" ...), in sorted-folder order
    OUT/test/<class>/*.png  ImageFolder tree, N images (folder names use "_" for spaces)
    OUT/train/<class>/*.png ImageFolder tree for linear probes (--train, default N)
    OUT/test.csv            path,label,size,background,position (paths relative to OUT)
    OUT/pairs/*.png         --pairs images (default 96: every class twice) for retrieval ...
    OUT/pairs.jsonl         ... with several captions each, in different phrasings
    OUT/shards/000000.tar   the pairs again as a WebDataset shard laid out as img2dataset writes
                            it (KEY.jpg, KEY.txt, KEY.json) plus KEY.cls, the class index
    OUT/suite.json          the parameters
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import tarfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from clip_core import shapes

__all__ = ["FACTORS", "PHRASINGS", "render_factors", "draw_factors", "captions", "folder_name", "class_names",
           "write_imagefolder", "write_pairs", "write_suite", "main"]

FACTORS: dict[str, tuple[str, ...]] = {
    "size": ("small", "large"), "background": ("gradient", "plain", "noisy"), "position": ("centre", "off-centre"),
}
_RADIUS = {"small": (0.25, 0.31), "large": (0.36, 0.42)}  # inside the training range shapes.RADIUS_RANGE
_SPLITS = {"test": 1, "train": 2, "pairs": 3}
PHRASINGS: tuple[str, ...] = (
    "a photo of a {colour} {shape}",  # the training caption
    "a {size} {colour} {shape}",
    "a {colour} {shape} on a {background} background",
    "a picture of a {shape} that is {colour}",
    "a {colour} {shape}, {position}",
)


def class_names() -> list[str]:
    """The 48 class names ``"{colour} {shape}"`` in sorted folder-name order (ImageFolder's class order)."""
    return sorted(shapes.label_names(), key=folder_name)


def folder_name(label: str) -> str:
    """The ImageFolder folder of class ``label`` (``"red circle"`` → ``"red_circle"``)."""
    return label.replace(" ", "_")


def draw_factors(rng: np.random.Generator) -> dict[str, str]:
    """One value of every factor, uniformly."""
    return {name: values[int(rng.integers(len(values)))] for name, values in FACTORS.items()}


def _alpha(shape: str, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    """``(size, size, 1)`` anti-aliased coverage of the shape (drawn supersampled, box-filtered)."""
    s = 4
    mask = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=255)
    else:
        draw.polygon([(x * s, y * s) for x, y in shapes._polygon(shape, cx, cy, r, angle)], fill=255)
    return np.asarray(mask.resize((size, size), Image.BOX), dtype=np.float64)[..., None] / 255.0


def _centre(factor: str, r: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """The shape's centre: near the middle, or pushed 8-12 % of the side in a random direction."""
    if factor == "centre":
        offset = rng.uniform(-0.03, 0.03, 2)
    else:
        theta = rng.uniform(0, 2 * math.pi)
        offset = rng.uniform(0.08, shapes.CENTRE_JITTER) * np.array([math.cos(theta), math.sin(theta)])
    return np.clip(size / 2 + offset * size, r, size - r)


def render_factors(colour: str, shape: str, factors: dict, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """One RGB image of a ``colour`` ``shape`` with the given size / background / position factors."""
    fg = np.clip(np.array(shapes.COLOURS[colour], np.float64) + rng.normal(0, 8, 3), 0, 255)
    r = rng.uniform(*_RADIUS[factors["size"]]) * size
    cx, cy = _centre(factors["position"], r, size, rng)
    angle = math.radians(rng.uniform(-shapes.ROTATION_DEGREES, shapes.ROTATION_DEGREES))
    if factors["background"] == "plain":
        bg = np.broadcast_to(shapes._background_colour(rng, fg), (size, size, 3))
    else:
        bg = shapes._background(rng, fg, size)
    sigma = rng.uniform(10, 16) if factors["background"] == "noisy" else rng.uniform(0, 6)
    alpha = _alpha(shape, cx, cy, r, angle, size)
    img = bg * (1 - alpha) + fg * alpha + rng.normal(0, sigma, (size, size, 3))
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def _item(seed: int, split: str, index: int, label_id: int, size: int) -> tuple[Image.Image, dict]:
    """Image ``index`` of ``split`` (class ``label_id``, an index into shapes.LABELS) and its factors."""
    rng = np.random.default_rng([int(seed), _SPLITS[split], int(index)])
    factors = draw_factors(rng)
    colour, shape = shapes.LABELS[label_id]
    return render_factors(colour, shape, factors, rng, size), factors


def captions(label_id: int, factors: dict, count: int = 3, start: int = 0) -> list[str]:
    """``count`` captions of one image, phrasings ``start``, ``start + 1`` ... (cycling)."""
    colour, shape = shapes.LABELS[label_id]
    words = {"colour": colour, "shape": shape, **factors}
    return [PHRASINGS[(start + j) % len(PHRASINGS)].format(**words) for j in range(count)]


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


def _balanced_ids(seed: int, n: int, classes: Optional[Sequence[int]]) -> np.ndarray:
    """``n`` class ids, balanced over all 48 classes or over ``classes`` (indices into shapes.LABELS)."""
    ids = shapes._label_ids(seed, n)
    if classes is None:
        return ids
    classes = np.asarray(classes, np.int64)
    return classes[np.argsort(np.random.default_rng(seed).random(len(classes)))][np.arange(n) % len(classes)]


def write_imagefolder(out: Path, split: str, n: int, seed: int = 0, size: int = 64,
                      classes: Optional[Sequence[int]] = None) -> list[dict]:
    """``n`` balanced images under ``out/split/<class folder>/NNNNNN.png`` (of every class, or of
    ``classes``: indices into :data:`clip_core.shapes.LABELS`); one row per image."""
    names = shapes.label_names()
    rows = []
    for i, label_id in enumerate(_balanced_ids(seed + _SPLITS[split], n, classes)):
        img, factors = _item(seed, split, i, int(label_id), size)
        rel = f"{split}/{folder_name(names[label_id])}/{i:06d}.png"
        _save(img, out / rel)
        rows.append({"path": rel, "label": names[label_id], **factors})
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_pairs(out: Path, n: int, seed: int = 0, size: int = 64, per_image: int = 3) -> list[dict]:
    """``n`` images with ``per_image`` captions: ``out/pairs/*.png``, ``out/pairs.jsonl`` and a
    WebDataset shard ``out/shards/000000.tar`` of the same pairs."""
    (out / "shards").mkdir(parents=True, exist_ok=True)
    rows, order = [], class_names()
    with tarfile.open(out / "shards" / "000000.tar", "w") as tar:
        for i, label_id in enumerate(shapes._label_ids(seed + _SPLITS["pairs"], n)):
            img, factors = _item(seed, "pairs", i, int(label_id), size)
            texts = captions(int(label_id), factors, per_image, start=i)
            rel = f"pairs/{i:06d}.png"
            _save(img, out / rel)
            rows.append({"path": rel, "captions": texts, "label": shapes.label_names()[label_id], **factors})
            key, buf = f"{i:09d}", io.BytesIO()
            img.save(buf, format="JPEG", quality=95)
            _tar_member(tar, f"{key}.jpg", buf.getvalue())
            _tar_member(tar, f"{key}.txt", texts[0].encode("utf-8"))
            _tar_member(tar, f"{key}.json", json.dumps({"key": key, "caption": texts[0], "captions": texts,
                                                        "status": "success"}).encode("utf-8"))
            _tar_member(tar, f"{key}.cls", str(order.index(shapes.label_names()[label_id])).encode("ascii"))
    (out / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def write_suite(out, n: int = 2000, n_train: Optional[int] = None, n_pairs: int = 96, seed: int = 0,
                size: int = 64) -> Path:
    """Write the whole suite under ``out`` (see the module docstring); returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in class_names()), encoding="utf-8")
    _write_csv(out / "test.csv", write_imagefolder(out, "test", n, seed, size))
    if n_train is None or n_train > 0:
        write_imagefolder(out, "train", n if n_train is None else n_train, seed, size)
    if n_pairs > 0:
        write_pairs(out, n_pairs, seed, size)
    params = {"n": n, "n_train": n if n_train is None else n_train, "n_pairs": n_pairs, "seed": seed,
              "size": size, "factors": FACTORS, "phrasings": PHRASINGS}
    (out / "suite.json").write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clip_zoo.synth_suite", description=__doc__.splitlines()[0])
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--n", type=int, default=2000, help="test images (default 2000)")
    p.add_argument("--train", type=int, default=None, help="train images for linear probes (default: --n; 0: none)")
    p.add_argument("--pairs", type=int, default=96, help="image-caption pairs for retrieval (default 96)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    args = p.parse_args(argv)
    if args.n < 1 or args.pairs < 0 or (args.train or 0) < 0 or args.size < 16:
        p.error("--n must be at least 1, --train and --pairs at least 0, --size at least 16")
    write_suite(args.out, args.n, args.train, args.pairs, args.seed, args.size)
    print(f"wrote the suite to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
