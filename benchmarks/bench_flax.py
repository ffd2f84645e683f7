"""clip_flax vs transformers 4.57 ``FlaxCLIPModel`` vs clip_torch on one random ViT-B/32, in one run.

``python -m benchmarks.bench_flax [--quick]``: fp32 image encoding at batch 1 and 16 and text
encoding of 64 prompts ("a photo of a {label}.", OpenAI-tokenized, zero padded to 77). Steady
state after compilation (the first call of each jax function is timed apart as compile time);
runs of all contenders are interleaved; medians. Prints speed ratios (reference time / clip_flax
time) and writes ``benchmarks/results/flax.json``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from typing import Any, Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from .common import interleaved, write_result

LABELS = ["cat", "dog", "car", "tree", "house", "bird", "boat", "plane", "horse", "flower", "apple", "chair",
          "guitar", "mountain", "river", "bridge"]


def _ready(x: Any) -> Any:
    import jax

    return jax.block_until_ready(x)


def _compile_time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _contenders(directory: str, config, images: dict, ids: np.ndarray) -> tuple[dict, dict]:
    """``{case: {impl: fn}}`` and compile times ``{case/impl: s}``."""
    import clip_flax

    ours = clip_flax.CLIPModel.from_pretrained(directory)
    cases: dict[str, dict[str, Callable]] = {}
    for b, pix in images.items():
        cases[f"image_b{b}"] = {"clip_flax": lambda pix=pix: _ready(ours.get_image_features(pix))}
    cases["text_b64"] = {"clip_flax": lambda: _ready(ours.get_text_features(ids))}
    if importlib.util.find_spec("transformers") is not None:
        import transformers

        hf_cfg = transformers.CLIPConfig.from_pretrained(directory)
        hf = transformers.FlaxCLIPModel(hf_cfg, _do_init=False)
        params = ours.params  # identical pytree: HF Flax paths
        for b, pix in images.items():
            cases[f"image_b{b}"]["hf_flax"] = lambda pix=pix: _ready(hf.get_image_features(pix, params=params))
        cases["text_b64"]["hf_flax"] = lambda: _ready(hf.get_text_features(ids, params=params))
    if importlib.util.find_spec("clip_torch") is not None and importlib.util.find_spec("torch") is not None:
        try:
            import torch
            import clip_torch

            tm = clip_torch.CLIPModel.from_pretrained(directory).eval()

            def run_torch(fn, x):
                with torch.inference_mode():
                    return fn(x)

            for b, pix in images.items():
                t_pix = torch.from_numpy(pix)
                cases[f"image_b{b}"]["clip_torch"] = lambda t=t_pix: run_torch(tm.get_image_features, t)
            t_ids = torch.from_numpy(ids.astype(np.int64))
            cases["text_b64"]["clip_torch"] = lambda: run_torch(tm.get_text_features, t_ids)
        except Exception as err:  # clip_torch still in progress: report, don't fail
            print(f"clip_torch unavailable: {type(err).__name__}: {err}")
    compile_s = {f"{case}/{impl}": _compile_time(fn) for case, impls in cases.items() for impl, fn in impls.items()
                 if impl != "clip_torch"}
    return cases, compile_s


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    import conversion
    from clip_core import get_config, tokenize
    from clip_core.testing import random_weights

    config = get_config("ViT-B/32")
    rng = np.random.default_rng(0)
    images = {b: rng.normal(0, 1, (b, 3, 224, 224)).astype(np.float32) for b in (1, 16)}
    ids = tokenize([f"a photo of a {LABELS[i % len(LABELS)]}." for i in range(64)]).astype(np.int32)  # (64, 77)
    repeats = 3 if args.quick else 6
    with tempfile.TemporaryDirectory() as tmp:
        conversion.save_canonical(tmp, config, random_weights(config, seed=0))
        cases, compile_s = _contenders(tmp, config, images, ids)
        results = {case: interleaved(impls, repeats=repeats, warmup=1) for case, impls in cases.items()}
    ratios = {}
    for case, res in results.items():
        ours = res["clip_flax"]["median"]
        for impl, r in res.items():
            if impl != "clip_flax":
                ratios[f"{case}: clip_flax vs {impl}"] = r["median"] / ours
    for case, res in results.items():
        print(case + ": " + ", ".join(f"{k} {v['median'] * 1e3:.1f} ms" for k, v in res.items()))
    for k, v in compile_s.items():
        print(f"compile {k}: {v:.2f} s")
    for k, v in ratios.items():
        print(f"speed {k}: {v:.2f}x")
    out = {"quick": args.quick, "model": "ViT-B/32 (random weights), fp32, CPU",
           "timings": {c: {i: {k: r[k] for k in ("median", "min", "max")} for i, r in res.items()}
                       for c, res in results.items()},
           "compile_s": compile_s, "speed_ratios": ratios,
           "targets": {"image vs hf_flax": 1.0, "image vs clip_torch": 0.8, "text vs hf_flax": 4.0}}
    print("wrote", write_result("flax", out))
    return out


if __name__ == "__main__":
    main()
