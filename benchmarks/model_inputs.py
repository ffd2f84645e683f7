"""Inputs and the measuring loop shared by the model benchmarks (bench_torch, bench_tf, bench_flax).

Every implementation in every file sees the same things: random-weight checkpoints
(``random_weights(get_config(name), seed=0)``), the same seeded images, 64 short prompts and 64
long captions (50-70 BPE tokens), all OpenAI-tokenized and zero padded to 77. :func:`measure`
calls each contender once (its output is checked against ours, its time kept as the first-call /
compile time), then times interleaved repeats.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from .common import interleaved

LABELS = ["cat", "dog", "car", "tree", "house", "bird", "boat", "plane", "horse", "flower", "apple", "chair",
          "guitar", "mountain", "river", "bridge"]

# phrases the long captions are built from (deterministic; every caption lands in 50-70 tokens)
_PHRASES = [
    "a wide angle photograph of", "an old red fishing boat", "resting on the pebbles of", "a quiet harbour",
    "early in the morning,", "while seagulls circle above", "the weathered wooden pier", "and a lighthouse",
    "stands far away on the cliffs", "under a pale overcast sky;", "two children in yellow raincoats",
    "are walking a scruffy brown dog", "along the wet sand", "next to stacked lobster traps", "and coiled ropes,",
    "with soft reflections in the water", "and a few small houses", "painted blue, white and green",
    "climbing the hill behind them.", "In the foreground", "a rusty anchor lies half buried",
    "among seaweed and shells", "shot on 35mm film", "with a slight grain", "and warm faded colours",
]
AGREEMENT_BOUND = 1e-5  # fp32 parity bound (docs/parity.md): normalized embeddings of every pair of implementations
CAPTION_TOKENS = (50, 70)  # inclusive range of BPE tokens per long caption (with start and end tokens)


@dataclass(frozen=True)
class Sizes:
    """Batch sizes and timed rounds of one mode (0 rounds: the checked first call is the timing)."""

    image_batches: tuple[int, ...]
    text_batch: int
    repeats: int
    long_captions: bool = True
    models: tuple[str, ...] = ("ViT-B/32", "RN50")


def sizes(quick: bool, compiled: bool = True) -> Sizes:
    """Full: images at batch 1 and 16, text at 64, 7 interleaved timed rounds after the first call.
    Quick (proves the command works in about a minute per framework): images at 16 only, text at
    8, one timed round for compiled frameworks (their first call is compilation) and none for eager
    torch (its first call, already checked, is the timing), no long captions, and no RN50 for the
    compiled frameworks (its compilation alone takes ~20 s; the tests cover the RN50 towers)."""
    if quick:
        return Sizes((16,), 8, 1 if compiled else 0, long_captions=False,
                     models=("ViT-B/32",) if compiled else ("ViT-B/32", "RN50"))
    return Sizes((1, 16), 64, 7)


def short_prompts(n: int = 64) -> list[str]:
    """``"a photo of a {label}"`` for ``n`` labels (cycling)."""
    return [f"a photo of a {LABELS[i % len(LABELS)]}" for i in range(n)]


def _token_count(text: str) -> int:
    from clip_core import tokenize

    return int(np.count_nonzero(tokenize([text], context_length=1000)))


def long_captions(n: int = 64) -> list[str]:
    """``n`` distinct deterministic captions: caption ``i`` starts at word ``3 i`` of the phrase list
    and takes words until it holds ``50 + 11 i mod 19`` tokens (a word adds at most 2 more: 50-70)."""
    pool = " ".join(_PHRASES).split()
    captions = []
    for i in range(n):
        target, words = CAPTION_TOKENS[0] + (11 * i) % 19, []
        while _token_count(" ".join(words)) < target:
            words.append(pool[(3 * i + len(words)) % len(pool)])
        text = " ".join(words)
        count = _token_count(text)
        if not CAPTION_TOKENS[0] <= count <= CAPTION_TOKENS[1]:
            raise AssertionError(f"long caption {i} has {count} tokens, outside {CAPTION_TOKENS}")
        captions.append(text)
    return captions


def text_inputs(batch: int, long: bool = True) -> dict[str, np.ndarray]:
    """``{"text_b{batch}": short prompts, "text_long_b{batch}": long captions (if ``long``)}``,
    int32 (batch, 77)."""
    from clip_core import tokenize

    inputs = {f"text_b{batch}": tokenize(short_prompts(batch)).astype(np.int32)}
    if long:
        inputs[f"text_long_b{batch}"] = tokenize(long_captions(batch)).astype(np.int32)
    return inputs


def images(batches: tuple[int, ...], size: int = 224, seed: int = 0) -> dict[int, np.ndarray]:
    """Standard-normal pixel batches ``{b: (b, 3, size, size) float32}``, the same for every framework."""
    rng = np.random.default_rng(seed)
    return {b: rng.normal(size=(b, 3, size, size)).astype(np.float32) for b in batches}


#: Set by ``python -m benchmarks`` for its subprocesses: one directory where each random checkpoint is
#: written once per suite run and reused by every later benchmark (each costs 4-6 s to make).
CACHE_ENV = "CLIP_ZOO_BENCH_CACHE"


def checkpoint(name: str, root: Path) -> tuple[Any, dict[str, np.ndarray], Path]:
    """``(config, canonical weights, directory)``: ``random_weights(get_config(name), seed=0)`` saved
    as a canonical checkpoint under ``root`` — or under ``$CLIP_ZOO_BENCH_CACHE`` when set, where an
    earlier benchmark of the same suite run may already have written it (then it is only read)."""
    import conversion
    from clip_core import get_config
    from clip_core.testing import random_weights

    cache = os.environ.get(CACHE_ENV)
    path = Path(cache or root) / name.replace("/", "-")
    if cache and path.is_dir():  # save_checkpoint renames a complete directory into place
        config, weights = conversion.load_checkpoint(path)
        return config, weights, path
    config = get_config(name)
    weights = random_weights(config, seed=0)
    conversion.save_checkpoint(path, config, weights, format="canonical")
    return config, weights, path


def max_abs_normalized(a: Any, b: Any) -> float:
    """Max abs difference of the L2-normalized rows of two (B, D) feature arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"feature shapes differ: {a.shape} vs {b.shape}")
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float(np.abs(a - b).max())


def measure(contenders: Mapping[str, Callable[[], Any]], ours: str, repeats: int,
            unchecked: tuple[str, ...] = ("matmul_2048",)) -> dict:
    """One case: a first call of each contender (outputs checked against ``ours``, times kept),
    then ``repeats`` interleaved rounds (none: the first calls are the timings).

    Returns ``{"timings": {impl: {median, min, max, runs}}, "first_call_s": {impl: s},
    "agreement": {impl: max abs of normalized features vs ours}, "speedup": {impl: its median / ours}}``.
    """
    outputs, first = {}, {}
    for name, fn in contenders.items():
        start = time.perf_counter()
        out = fn()
        first[name] = time.perf_counter() - start
        if name not in unchecked:
            outputs[name] = np.asarray(out)
    agreement = {name: max_abs_normalized(outputs[ours], out) for name, out in outputs.items() if name != ours}
    for name, diff in agreement.items():
        if diff > AGREEMENT_BOUND:
            print(f"WARNING: {ours} and {name} disagree: max abs difference of normalized features {diff:.2e} "
                  f"> {AGREEMENT_BOUND:.0e}", file=sys.stderr, flush=True)
    if repeats:
        timings = interleaved(contenders, repeats=repeats, warmup=0)
    else:
        timings = {name: {"median": t, "min": t, "max": t, "runs": [t]} for name, t in first.items()}
    speedup = {name: t["median"] / timings[ours]["median"] for name, t in timings.items()
               if name not in (ours, *unchecked)}
    return {"timings": timings, "first_call_s": first, "agreement": agreement, "speedup": speedup}


def torch_features(path: Path) -> Optional[tuple[Callable, Callable]]:
    """clip_torch's ``(image(px), text(ids))`` on numpy inputs (fp32, inference mode), the
    cross-framework reference of bench_tf / bench_flax; None when clip_torch is not installed."""
    try:
        import torch

        import clip_torch
    except ImportError:
        return None
    model = clip_torch.CLIPModel.from_pretrained(path).eval()

    def image(px: np.ndarray):
        with torch.inference_mode():
            return model.get_image_features(torch.from_numpy(px)).numpy()

    def text(ids: np.ndarray):
        with torch.inference_mode():
            return model.get_text_features(torch.from_numpy(ids.astype(np.int64))).numpy()

    return image, text


def print_case(case: str, result: dict, ours: str) -> None:
    """One line per case: medians, speed-up of ours over each reference, agreement."""
    med = ", ".join(f"{k} {v['median'] * 1e3:.1f} ms" for k, v in result["timings"].items())
    up = ", ".join(f"{k} {v:.2f}x" for k, v in result["speedup"].items())
    agree = ", ".join(f"{k} {v:.1e}" for k, v in result["agreement"].items())
    print(f"{case}: {med} | {ours} speed-up vs {up} | max|Δ| normalized {agree}", flush=True)
