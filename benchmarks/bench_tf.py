"""clip_tf vs transformers 4.57 ``TFCLIPModel`` vs clip_torch on the same random weights, in one run.

``python -m benchmarks.bench_tf [--quick]``: fp32 image encoding of ViT-B/32 and RN50 at batch 1
and 16 (transformers has no ResNet CLIP: RN50 is compared with clip_torch only) and text encoding
(ViT-B/32 text tower) of 64 short prompts and 64 long captions (50-70 tokens), OpenAI-tokenized and
padded to 77. Each contender's first call (trace + XLA compile) is timed apart and its output
checked against clip_tf (max abs difference of normalized features, recorded); then steady-state
medians over interleaved repeats. clip_tf runs its default compiled (jit_compile="auto"),
length-bucketed feature paths; transformers' TF CLIP runs in a plain ``tf.function`` (its fastest
mode here); clip_torch in ``torch.inference_mode``. ``--quick``: images at batch 16 only, text at
batch 8, one timed round; writes ``results/tf_quick.json`` (else ``results/tf.json``).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if importlib.util.find_spec("torchvision") is not None:  # torch/torchvision before TensorFlow (segfault)
    import torch  # noqa: F401
    import torchvision  # noqa: F401

import numpy as np

from .common import write_result
from .model_inputs import checkpoint, images, measure, print_case, sizes, text_inputs, torch_features


def _hf_tf(path):
    """transformers' TFCLIPModel with plain tf.function feature paths (its fast mode on this CPU)."""
    import tensorflow as tf
    import transformers

    ref = transformers.TFCLIPModel.from_pretrained(path, from_pt=True)
    image = tf.function(lambda px: ref.get_image_features(pixel_values=px))
    text = tf.function(lambda ids, mask: ref.get_text_features(input_ids=ids, attention_mask=mask))
    return image, text


def _image_cases(ours, hf_image, torch_fns, prefix: str, batches) -> dict:
    """``{f"{prefix}image_b{b}": {impl: fn}}`` on the shared pixel batches."""
    import tensorflow as tf

    cases = {}
    for b, px in images(batches).items():
        pxt = tf.constant(px)
        case = cases[f"{prefix}image_b{b}"] = {"clip_tf": lambda px=px: ours.get_image_features(px).numpy()}
        if hf_image is not None:
            case["hf_tf"] = lambda pxt=pxt: hf_image(pxt).numpy()
        if torch_fns:
            case["clip_torch"] = lambda px=px: torch_fns[0](px)
    return cases


def _text_cases(ours, hf_text, torch_fns, size) -> dict:
    """``{"text_b{n}" | "text_long_b{n}": {impl: fn}}`` (with the padding mask for the TF models)."""
    import tensorflow as tf

    cases = {}
    for name, ids in text_inputs(size.text_batch, size.long_captions).items():
        mask = (ids != 0).astype(np.int32)
        idst, maskt = tf.constant(ids), tf.constant(mask)
        cases[name] = {"clip_tf": lambda ids=ids, mask=mask: ours.get_text_features(ids, mask).numpy(),
                       "hf_tf": lambda idst=idst, maskt=maskt: hf_text(idst, maskt).numpy()}
        if torch_fns:
            cases[name]["clip_torch"] = lambda ids=ids: torch_fns[1](ids)
    return cases


def run(quick: bool = False) -> dict:
    import clip_tf

    size = sizes(quick)
    cases, text = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_tf_") as tmp:
        for name in size.models:
            config, _, path = checkpoint(name, tmp)
            prefix = "rn50_" if config.is_resnet else ""
            ours = clip_tf.CLIPModel.from_pretrained(path)
            hf_image, hf_text = (None, None) if config.is_resnet else _hf_tf(path)
            torch_fns = torch_features(path)
            cases.update(_image_cases(ours, hf_image, torch_fns, prefix, size.image_batches))
            if not config.is_resnet:
                text = _text_cases(ours, hf_text, torch_fns, size)
    cases.update(text)
    results: dict = {"config": "ViT-B/32 and RN50 (random weights), fp32, CPU", "quick": quick,
                     "first_call_s": {}, "steady": {}, "ratios": {}, "agreement": {}}
    for case, contenders in cases.items():
        res = measure(contenders, "clip_tf", size.repeats)
        print_case(case, res, "clip_tf")
        results["first_call_s"][case] = res["first_call_s"]
        results["steady"][case] = res["timings"]
        results["ratios"][case] = {f"clip_tf_speedup_vs_{k}": v for k, v in res["speedup"].items()}
        results["agreement"][case] = res["agreement"]
    results["targets"] = {"image_vs_hf_tf": ">= 1.0", "image_vs_clip_torch": ">= 0.8",
                          "rn50_image_vs_clip_torch": ">= 0.8", "text_vs_hf_tf": ">= 4.0"}
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="image batch 16 only, text batch 8, one timed round")
    args = parser.parse_args(argv)
    results = run(args.quick)
    print(f"wrote {write_result('tf_quick' if args.quick else 'tf', results)}")


if __name__ == "__main__":
    main()
