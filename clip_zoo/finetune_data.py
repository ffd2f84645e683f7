"""The data of ``clip-zoo finetune``: image-caption pairs, a deterministic order, augmentation, batches.

Readers (:func:`load_training_pairs`): an ImageFolder tree (captions from ``--templates`` filled with
the class name, ``_`` read as a space), a CSV / JSONL / Parquet table of ``path,caption`` (or a list in
``captions``; a ``label`` column without captions gets templates too; paths relative to the table),
or WebDataset shards (``KEY.jpg`` + ``KEY.txt``), all through :mod:`clip_zoo.eval_data`'s readers.

Order and randomness depend only on ``(seed, epoch, index)``, never on the framework or on how
far a previous run got: epoch ``e`` visits the samples in ``default_rng([seed, e]).permutation(N)``;
sample ``i`` of epoch ``e`` draws its caption and its random resized crop (area scale 0.9-1.0 and
aspect 3/4-4/3, as open_clip's training transform) from ``default_rng([seed, e, i])``. Global step
``s`` is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch`` (the last partial batch of an
epoch is dropped), so a resumed run at step ``s`` sees exactly what an uninterrupted one would.
The crop is resized to the model's input size (bicubic) and normalised by the checkpoint's own
image processor. Batches are decoded and augmented in a thread pool, a bounded number ahead;
captions are tokenized with the model's tokenizer and padded to the batch's longest caption
(rounded up to :data:`TOKEN_BUCKET` tokens).
"""
from __future__ import annotations

import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from .errors import CLIZooError

__all__ = ["TrainPairs", "load_training_pairs", "epoch_order", "random_resized_crop", "BatchMaker",
           "BatchStream", "CROP_SCALE", "CROP_RATIO", "PREFETCH_BATCHES", "TOKEN_BUCKET"]

CROP_SCALE = (0.9, 1.0)  # open_clip's RandomResizedCrop area range for training
CROP_RATIO = (3 / 4, 4 / 3)
PREFETCH_BATCHES = 3
TOKEN_BUCKET = 16


@dataclass
class TrainPairs:
    """Images with one or more captions each; ``classes``/``targets`` when the data is labelled."""

    name: str
    paths: list[str]
    captions: list[list[str]]
    classes: Optional[list[str]] = None
    targets: Optional[np.ndarray] = None  # (N,) int64 into classes
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def _from_labels(name: str, rows: list[dict], classes: list[str], templates: Sequence[str],
                 notes: list[str]) -> TrainPairs:
    from .eval_data import _label_index

    targets = _label_index(rows, classes, name)
    captions = [[t.format(classes[k]) for t in templates] for k in targets]
    return TrainPairs(name, [r["path"] for r in rows], captions, classes, targets, notes)


def load_training_pairs(spec: str, templates: Sequence[str], cache: Path) -> TrainPairs:
    """The pairs of dataset ``spec`` (ImageFolder, table or WebDataset); errors are :class:`CLIZooError`."""
    from . import eval_data

    if not Path(spec).exists():
        raise CLIZooError(f"no such dataset: {spec}, pass an ImageFolder tree, a CSV/JSONL/Parquet table of "
                          "path,caption or WebDataset .tar shards")
    rows, folders, notes = eval_data._rows_of(spec, None, cache)
    missing = [r["path"] for r in rows if not os.path.isfile(r["path"])]
    if missing:
        raise CLIZooError(f"image {missing[0]} of {spec} is missing ({len(missing)} missing in all), "
                          "fix the paths or remove those rows")
    if not rows:
        raise CLIZooError(f"{spec} holds no images, pass an ImageFolder tree with images in class folders or a "
                          "table of path,caption")
    if folders is not None:  # ImageFolder: captions from the templates
        classes = [f.replace("_", " ") for f in folders]
        return _from_labels(spec, rows, classes, templates, notes)
    groups = eval_data._group_captions(rows)
    if not any(groups.values()):  # labels without captions
        labelled = [r for r in rows if r.get("label") not in (None, "")]
        if len(labelled) != len(rows):
            raise CLIZooError(f"{spec} has rows without a caption or a label, give every image a caption "
                              "(a caption or captions column)")
        return _from_labels(spec, rows, eval_data._class_names("auto", None, rows, spec), templates, notes)
    empty = [p for p, caps in groups.items() if not caps]
    if empty:
        raise CLIZooError(f"image {empty[0]} of {spec} has no caption ({len(empty)} in all), "
                          "give every image a caption or remove those rows")
    return TrainPairs(spec, list(groups), list(groups.values()), notes=notes)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The visiting order of ``n`` samples in ``epoch`` (a permutation, a function of seed and epoch)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def random_resized_crop(width: int, height: int, rng: np.random.Generator,
                        scale=CROP_SCALE, ratio=CROP_RATIO) -> tuple[int, int, int, int]:
    """``(left, top, w, h)`` of a crop covering a random ``scale`` of the area at a random log-uniform
    aspect ``ratio``; up to 10 tries, then the largest centred crop of a clamped ratio."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class BatchMaker:
    """Builds global batch ``step`` (numpy ``input_ids``, ``attention_mask``, ``pixel_values``)."""

    def __init__(self, pairs: TrainPairs, tokenizer, processor, batch_size: int, seed: int,
                 context_length: int, augment: bool = True, trim: bool = True) -> None:
        self.pairs, self.tokenizer, self.processor = pairs, tokenizer, processor
        self.trim = trim  # False for SigLIP: it pools at the last position, so the padded context stays whole
        self.batch_size, self.seed, self.context_length, self.augment = batch_size, seed, context_length, augment
        self.steps_per_epoch = len(pairs) // batch_size
        if self.steps_per_epoch < 1:
            raise CLIZooError(f"{pairs.name} has {len(pairs)} images, fewer than --batch-size {batch_size}, "
                              "pass a smaller --batch-size")
        crop = processor.crop_size
        self.size = (int(crop["width"]), int(crop["height"]))
        self._orders: dict[int, np.ndarray] = {}

    def indices(self, step: int) -> tuple[int, np.ndarray]:
        """``(epoch, sample indices)`` of global batch ``step``."""
        epoch, k = divmod(int(step), self.steps_per_epoch)
        if epoch not in self._orders:
            self._orders = {epoch: epoch_order(len(self.pairs), self.seed, epoch)}
        return epoch, self._orders[epoch][k * self.batch_size:(k + 1) * self.batch_size]

    def sample(self, epoch: int, index: int) -> tuple[np.ndarray, str]:
        """``(pixel_values (3, H, W), caption)`` of sample ``index`` drawn in ``epoch``."""
        from PIL import Image

        rng = np.random.default_rng([int(self.seed), int(epoch), int(index)])
        caps = self.pairs.captions[index]
        caption = caps[int(rng.integers(len(caps)))] if len(caps) > 1 else caps[0]
        path = self.pairs.paths[index]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except Exception as err:  # unreadable / not an image: the run stops, naming the file
            from .images import describe_error

            raise CLIZooError(f"cannot read image {path} ({describe_error(err)}), fix or remove it") from None
        if self.augment:
            left, top, w, h = random_resized_crop(img.width, img.height, rng)
            img = img.resize(self.size, Image.BICUBIC, box=(left, top, left + w, top + h))
        pixels = self.processor(img, return_tensors="np")["pixel_values"][0]  # (3, H, W)
        return pixels, caption

    def tokenize(self, captions: Sequence[str]) -> dict:
        """Token ids and mask ``(B, T)``: ``T`` is the longest caption rounded up to a multiple of
        ``TOKEN_BUCKET`` (at most the context length); the causal mask makes the padding beyond the
        end token irrelevant, and few distinct ``T`` keep compiled frameworks from retracing."""
        enc = self.tokenizer(list(captions), padding="max_length", truncation=True,
                             max_length=self.context_length, return_tensors="np")
        if not self.trim:  # SigLIP: the whole context, and the mask when its tokenizer gives one
            return {k: np.asarray(enc[k], np.int64) for k in ("input_ids", "attention_mask") if k in enc}
        mask = np.asarray(enc["attention_mask"], np.int64)  # (B, context)
        longest = int(mask.sum(axis=1).max()) if len(mask) else 1
        width = min(self.context_length, -(-longest // TOKEN_BUCKET) * TOKEN_BUCKET)
        return {"input_ids": np.asarray(enc["input_ids"], np.int64)[:, :width], "attention_mask": mask[:, :width]}

    def assemble(self, samples: Sequence[tuple[np.ndarray, str]]) -> dict:
        batch = self.tokenize([c for _, c in samples])
        batch["pixel_values"] = np.stack([p for p, _ in samples]).astype(np.float32)  # (B, 3, H, W)
        return batch

    def batch(self, step: int) -> dict:
        """Global batch ``step``, computed in this thread."""
        epoch, idx = self.indices(step)
        return self.assemble([self.sample(epoch, int(i)) for i in idx])


class BatchStream:
    """Batches ``start..stop-1`` of a :class:`BatchMaker`, decoded on ``workers`` threads and submitted
    up to ``prefetch`` batches ahead of the one being consumed."""

    def __init__(self, maker: BatchMaker, start: int, stop: int, workers: int = 2,
                 prefetch: int = PREFETCH_BATCHES) -> None:
        self.maker, self.start, self.stop, self.prefetch = maker, start, stop, max(1, prefetch)
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="clip-zoo-finetune-data")
        self.pending: dict[int, tuple[int, list[Future]]] = {}

    def _submit(self, step: int) -> None:
        if step < self.stop and step not in self.pending:
            epoch, idx = self.maker.indices(step)
            self.pending[step] = (epoch, [self.pool.submit(self.maker.sample, epoch, int(i)) for i in idx])

    def __iter__(self) -> Iterator[tuple[int, int, dict]]:
        """Yields ``(step, epoch, batch)``."""
        for step in range(self.start, self.stop):
            for ahead in range(step, step + self.prefetch + 1):
                self._submit(ahead)
            epoch, futures = self.pending.pop(step)
            yield step, epoch, self.maker.assemble([f.result() for f in futures])

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
