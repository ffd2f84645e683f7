"""clip_flax vs transformers 4.57 ``FlaxCLIPModel`` vs clip_torch on the same random weights, in one run.

``python -m benchmarks.bench_flax [--quick]``: fp32 image encoding of ViT-B/32 and RN50 at batch 1
and 16 (transformers has no ResNet CLIP: RN50 is compared with clip_torch only) and text encoding
(ViT-B/32 text tower) of 64 short prompts and 64 long captions (50-70 tokens), OpenAI-tokenized and
zero padded to 77. The first call of each contender is timed apart (compile time for the jax ones)
and its output checked against clip_flax (max abs difference of normalized features, recorded);
then steady-state medians over interleaved repeats. Prints speed ratios (reference time /
clip_flax time). ``--quick``: images at batch 16 only, text at batch 8, one timed round; writes
``results/flax_quick.json`` (else ``results/flax.json``).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
from typing import Any, Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .common import write_result
from .model_inputs import checkpoint, images, measure, print_case, sizes, text_inputs, torch_features


def _ready(x: Any) -> Any:
    import jax

    return jax.block_until_ready(x)


def _hf_flax(directory, params) -> tuple[Callable, Callable] | None:
    """transformers' FlaxCLIPModel ``(image(px), text(ids))`` on clip_flax's params (the same HF Flax
    pytree); None without transformers."""
    if importlib.util.find_spec("transformers") is None:
        return None
    import transformers

    hf = transformers.FlaxCLIPModel(transformers.CLIPConfig.from_pretrained(directory), _do_init=False)
    return (lambda px: _ready(hf.get_image_features(px, params=params)),
            lambda ids: _ready(hf.get_text_features(ids, params=params)))


def _contenders(path, resnet: bool, size) -> dict[str, dict[str, Callable]]:
    """``{case: {impl: fn}}`` for one checkpoint: image cases, and text cases for the ViT."""
    import clip_flax

    ours = clip_flax.CLIPModel.from_pretrained(path)
    refs = {"hf_flax": None if resnet else _hf_flax(path, ours.params), "clip_torch": torch_features(path)}
    refs = {k: v for k, v in refs.items() if v is not None}
    cases: dict[str, dict[str, Callable]] = {}
    for b, pix in images(size.image_batches).items():
        case = cases[f"{'rn50_' if resnet else ''}image_b{b}"] = {
            "clip_flax": lambda pix=pix: _ready(ours.get_image_features(pix))}
        case.update({impl: lambda pix=pix, fns=fns: fns[0](pix) for impl, fns in refs.items()})
    if not resnet:
        for name, ids in text_inputs(size.text_batch, size.long_captions).items():
            cases[name] = {"clip_flax": lambda ids=ids: _ready(ours.get_text_features(ids)),
                           **{impl: lambda ids=ids, fns=fns: fns[1](ids) for impl, fns in refs.items()}}
    return cases


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="image batch 16 only, text batch 8, one timed round")
    args = parser.parse_args(argv)
    size = sizes(args.quick)
    out: dict = {"quick": args.quick, "model": "ViT-B/32 and RN50 (random weights), fp32, CPU",
                 "timings": {}, "compile_s": {}, "speed_ratios": {}, "agreement": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in size.models:
            config, _, path = checkpoint(name, tmp)
            for case, contenders in _contenders(path, config.is_resnet, size).items():
                res = measure(contenders, "clip_flax", size.repeats)
                print_case(case, res, "clip_flax")
                out["timings"][case] = {i: {k: r[k] for k in ("median", "min", "max")}
                                        for i, r in res["timings"].items()}
                out["compile_s"].update({f"{case}/{i}": s for i, s in res["first_call_s"].items() if i != "clip_torch"})
                out["speed_ratios"].update({f"{case}: clip_flax vs {i}": v for i, v in res["speedup"].items()})
                out["agreement"][case] = res["agreement"]
    out["targets"] = {"image vs hf_flax": 1.0, "image vs clip_torch": 0.8, "rn50 image vs clip_torch": 0.8,
                      "text vs hf_flax": 4.0}
    print("wrote", write_result("flax_quick" if args.quick else "flax", out))
    return out


if __name__ == "__main__":
    main()
