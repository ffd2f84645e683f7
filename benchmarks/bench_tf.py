"""clip_tf vs transformers 4.57 ``TFCLIPModel`` vs clip_torch on one random ViT-B/32, in one run.

``python -m benchmarks.bench_tf [--quick]``: fp32 image encoding at batch 1 and 16 and text encoding
(64 prompts "a photo of a {label}", OpenAI-tokenized and padded to 77). Steady-state medians over
interleaved repeats; the first call (trace + XLA compile) is reported apart. clip_tf runs its default
compiled (jit_compile="auto"), length-bucketed feature paths; transformers' TF CLIP runs in a plain ``tf.function``
(its fastest mode here); clip_torch in ``torch.inference_mode``. Prints ratios, writes
``benchmarks/results/tf.json``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if importlib.util.find_spec("torchvision") is not None:  # torch/torchvision before TensorFlow (segfault)
    import torch  # noqa: F401
    import torchvision  # noqa: F401

import numpy as np

from benchmarks.common import interleaved, write_result

LABELS = ["cat", "dog", "car", "tree", "house", "bird", "boat", "plane", "horse", "flower", "apple", "chair",
          "guitar", "mountain", "river", "bridge"]


def _first_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _hf_tf(path):
    """transformers' TFCLIPModel with plain tf.function feature paths (its fast mode on this CPU)."""
    import tensorflow as tf
    import transformers

    ref = transformers.TFCLIPModel.from_pretrained(path, from_pt=True)
    image = tf.function(lambda px: ref.get_image_features(pixel_values=px))
    text = tf.function(lambda ids, mask: ref.get_text_features(input_ids=ids, attention_mask=mask))
    return image, text


def _clip_torch(path):
    try:
        import clip_torch
        import torch
    except ImportError:
        return None
    model = clip_torch.CLIPModel.from_pretrained(path).eval()

    def image(px):
        with torch.inference_mode():
            return model.get_image_features(pixel_values=torch.from_numpy(px))

    def text(ids, mask):
        with torch.inference_mode():
            return model.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))

    return image, text


def run(quick: bool = False) -> dict:
    import tensorflow as tf

    import clip_tf
    import conversion
    from clip_core import get_config, tokenize
    from clip_core.testing import random_weights

    config = get_config("ViT-B/32")
    repeats = 3 if quick else 7
    tmp = tempfile.mkdtemp(prefix="bench_tf_")
    conversion.save_canonical(tmp, config, random_weights(config, seed=0))
    ours = clip_tf.CLIPModel.from_pretrained(tmp)
    hf_image, hf_text = _hf_tf(tmp)
    torch_fns = _clip_torch(tmp)

    rng = np.random.default_rng(0)
    ids = np.asarray(tokenize([f"a photo of a {LABELS[i % len(LABELS)]}" for i in range(64)]), np.int32)
    mask = (ids != 0).astype(np.int32)
    results: dict = {"config": "ViT-B/32 (random weights), fp32, CPU", "first_call_s": {}, "steady": {},
                     "ratios": {}}
    cases = {}
    for batch in (1, 16):
        px = rng.normal(size=(batch, 3, 224, 224)).astype(np.float32)
        pxt = tf.constant(px)
        cases[f"image_b{batch}"] = {"clip_tf": lambda px=px: ours.get_image_features(px).numpy(),
                                    "hf_tf": lambda pxt=pxt: hf_image(pxt).numpy()}
        if torch_fns:
            cases[f"image_b{batch}"]["clip_torch"] = lambda px=px: torch_fns[0](px).numpy()
    idst, maskt = tf.constant(ids), tf.constant(mask)
    cases["text_b64"] = {"clip_tf": lambda: ours.get_text_features(ids, mask).numpy(),
                         "hf_tf": lambda: hf_text(idst, maskt).numpy()}
    if torch_fns:
        cases["text_b64"]["clip_torch"] = lambda: torch_fns[1](ids, mask).numpy()

    for case, contenders in cases.items():
        results["first_call_s"][case] = {name: _first_call(fn) for name, fn in contenders.items()}
        stats = interleaved(contenders, repeats=repeats, warmup=1)
        results["steady"][case] = stats
        base = stats["clip_tf"]["median"]
        results["ratios"][case] = {f"clip_tf_speedup_vs_{name}": stats[name]["median"] / base
                                   for name in contenders if name != "clip_tf"}
        line = ", ".join(f"{name} {s['median'] * 1e3:.1f} ms" for name, s in stats.items())
        ratio = ", ".join(f"{k.split('_vs_')[1]} {v:.2f}x" for k, v in results["ratios"][case].items())
        print(f"{case}: {line} | clip_tf speed-up: {ratio}", flush=True)
    results["targets"] = {"image_vs_hf_tf": ">= 1.0", "image_vs_clip_torch": ">= 0.8", "text_vs_hf_tf": ">= 4.0"}
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    results = run(args.quick)
    print(f"wrote {write_result('tf', results)}")


if __name__ == "__main__":
    main()
