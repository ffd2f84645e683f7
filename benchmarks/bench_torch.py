"""clip_torch vs transformers 4.57 (sdpa, eager) vs open_clip on one random ViT-B/32, in one run.

``python -m benchmarks.bench_torch [--quick]``: fp32 image encoding at batch 1 and 16, text
encoding (64 prompts "a photo of a {label}", OpenAI-tokenized to 77), checkpoint load time, and a
plain fp32 matmul measured in the same interleaved loop so our share of matmul peak can be given.
Prints ratios and writes ``benchmarks/results/torch.json``. Timings are medians over interleaved
repeats (every implementation measured in each round), with min and max.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

VIT_B32_IMAGE_GFLOPS = 8.82  # per image
LABELS = ["cat", "dog", "car", "tree", "house", "bird", "boat", "plane", "horse", "flower", "apple", "chair",
          "guitar", "mountain", "river", "bridge"]


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _stats(xs: list[float]) -> dict:
    return {"median_s": statistics.median(xs), "min_s": min(xs), "max_s": max(xs), "n": len(xs)}


def _interleave(cases: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, dict]:
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(repeats):
        for name, fn in cases.items():
            times[name].append(_timed(fn))
        print(f"  round {r + 1}/{repeats} done", file=sys.stderr, flush=True)
    return {k: _stats(v) for k, v in times.items()}


def _open_clip_model(config, weights):
    import open_clip
    import torch
    from conversion.openai import canonical_to_openai

    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in canonical_to_openai(weights, config).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.endswith("attn_mask")] + list(unexpected)
    if bad:
        raise RuntimeError(f"open_clip state dict mismatch: {bad[:5]}")
    return model.eval()


def run(quick: bool = False) -> dict:
    os.environ.setdefault("USE_TF", "0")  # transformers must not pull in TensorFlow here
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torchvision  # noqa: F401  (before anything that may import TensorFlow: the other order segfaults)
    import torch
    import transformers

    import clip_torch
    import conversion
    from clip_core import get_config, tokenize
    from clip_core.testing import random_weights

    repeats = 3 if quick else 11
    config = get_config("ViT-B/32")
    weights = random_weights(config, seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="bench_torch_"))
    conversion.save_canonical(tmp / "vit_b32", config, weights)
    ckpt = tmp / "vit_b32"

    ours = clip_torch.CLIPModel.from_pretrained(ckpt)
    hf = {impl: transformers.CLIPModel.from_pretrained(ckpt, attn_implementation=impl).eval()
          for impl in ("sdpa", "eager")}
    oc = _open_clip_model(config, weights)

    rng = np.random.default_rng(0)
    images = {b: torch.from_numpy(rng.normal(size=(b, 3, 224, 224)).astype(np.float32)) for b in (1, 16)}
    prompts = [f"a photo of a {LABELS[i % len(LABELS)]}" for i in range(64)]
    text = torch.from_numpy(tokenize(prompts, context_length=77)).long()  # (64, 77)
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)

    # exactness check on the benchmark inputs (the speed is only worth it if the numbers agree)
    with torch.inference_mode():
        agree = {
            "image_max_abs_normalized": float((torch.nn.functional.normalize(ours.get_image_features(images[1]), dim=-1)
                                               - torch.nn.functional.normalize(hf["sdpa"].get_image_features(images[1]), dim=-1)).abs().max()),
            "text_max_abs_normalized": float((torch.nn.functional.normalize(ours.get_text_features(text), dim=-1)
                                              - torch.nn.functional.normalize(hf["sdpa"].get_text_features(text), dim=-1)).abs().max()),
        }

    cases: dict[str, Callable[[], object]] = {"matmul_2048": lambda: torch.mm(a, b)}
    for bs, x in images.items():
        cases[f"image_b{bs}/clip_torch"] = lambda x=x: ours.get_image_features(x)
        for impl, m in hf.items():
            cases[f"image_b{bs}/hf_{impl}"] = lambda x=x, m=m: m.get_image_features(pixel_values=x)
        cases[f"image_b{bs}/open_clip"] = lambda x=x: oc.encode_image(x)
    cases["text_b64/clip_torch"] = lambda: ours.get_text_features(text)
    for impl, m in hf.items():
        cases[f"text_b64/hf_{impl}"] = lambda m=m: m.get_text_features(input_ids=text)
    cases["text_b64/open_clip"] = lambda: oc.encode_text(text)
    with torch.inference_mode():
        timings = _interleave(cases, repeats)

    load_cases = {
        "load/clip_torch": lambda: clip_torch.CLIPModel.from_pretrained(ckpt),
        "load/hf": lambda: transformers.CLIPModel.from_pretrained(ckpt),
    }
    timings.update(_interleave(load_cases, 3 if quick else 5))
    return _report(timings, agree, quick)


def _report(t: dict, agree: dict, quick: bool) -> dict:
    import torch

    med = {k: v["median_s"] for k, v in t.items()}
    matmul_gflops = 2 * 2048 ** 3 / med["matmul_2048"] / 1e9
    ratios, share = {}, {}
    for task, bs in (("image_b1", 1), ("image_b16", 16), ("text_b64", 64)):
        ours = med[f"{task}/clip_torch"]
        hf_best = min(med[f"{task}/hf_sdpa"], med[f"{task}/hf_eager"])
        ratios[f"{task}_vs_hf_best"] = hf_best / ours
        ratios[f"{task}_vs_open_clip"] = med[f"{task}/open_clip"] / ours
        if task.startswith("image"):
            gflops = VIT_B32_IMAGE_GFLOPS * bs / ours / 1.0
            share[task] = {"gflops": gflops, "share_of_matmul": gflops / matmul_gflops,
                           "hf_best_share_of_matmul": VIT_B32_IMAGE_GFLOPS * bs / hf_best / matmul_gflops}
    ratios["load_time_vs_hf"] = med["load/clip_torch"] / med["load/hf"]
    result = {
        "quick": quick, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_average": os.getloadavg(), "matmul_gflops": matmul_gflops, "timings": t, "ratios": ratios,
        "image_share_of_matmul_peak": share, "agreement_with_hf": agree,
        "targets": {"image_vs_hf_best": ">=1.0", "image_vs_open_clip": ">=1.0", "image_share_of_matmul": ">=0.85",
                    "text_vs_hf_and_open_clip": ">=4.0", "load_time_vs_hf": "<=0.5"},
    }
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "torch.json"))
    args = parser.parse_args(argv)
    result = run(args.quick)
    print(f"matmul 2048: {result['matmul_gflops']:.1f} GFLOP/s   (load average {result['load_average'][0]:.1f})")
    for k, v in sorted(result["timings"].items()):
        print(f"  {k:28s} median {v['median_s'] * 1e3:9.2f} ms  [{v['min_s'] * 1e3:.2f}-{v['max_s'] * 1e3:.2f}]")
    for k, v in result["ratios"].items():
        print(f"  {k:28s} {v:6.2f}x")
    for k, v in result["image_share_of_matmul_peak"].items():
        print(f"  {k:28s} {v['gflops']:.1f} GFLOP/s = {100 * v['share_of_matmul']:.0f}% of matmul "
              f"(HF best {100 * v['hf_best_share_of_matmul']:.0f}%)")
    print(f"  agreement with HF: {result['agreement_with_hf']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
