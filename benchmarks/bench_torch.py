"""clip_torch vs transformers 4.57 (sdpa, eager) vs open_clip vs OpenAI ``clip``, same random weights, one run.

``python -m benchmarks.bench_torch [--quick]``: fp32 image encoding of ViT-B/32 and RN50 at batch 1
and 16, text encoding (ViT-B/32 text tower) of 64 short prompts and of 64 long captions (50-70
tokens), all OpenAI-tokenized and padded to 77, and the checkpoint load time. A plain fp32 2048³
matmul runs in the same interleaved rounds as every image case, so each image throughput (FLOPs
counted once with ``torch.utils.flop_counter`` on the meta device) is also given as a share of it. Each
implementation's output is checked against clip_torch before timing (max abs difference of
normalized features, recorded). transformers has no ResNet CLIP: RN50 is compared with open_clip
``RN50-quickgelu`` and OpenAI ``clip``. ``--quick``: images at batch 16 only, text at batch 8, the
checked first call as the only timing, no transformers eager path; writes ``results/torch_quick.json`` (else ``results/torch.json``).
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import warnings

import numpy as np

from .common import interleaved, write_result
from .model_inputs import checkpoint, images, measure, print_case, sizes, text_inputs

OPEN_CLIP_NAMES = {"ViT-B/32": "ViT-B-32-quickgelu", "RN50": "RN50-quickgelu"}
MATMUL_N = 2048


def _openai_state(config, weights) -> dict:
    import torch

    from conversion.openai import canonical_to_openai

    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in canonical_to_openai(weights, config).items()}


def _open_clip_model(name: str, config, weights):
    """open_clip's model for ``name`` holding our weights (OpenAI names), fp32, eval."""
    import open_clip

    logging.disable(logging.WARNING)  # "No pretrained weights loaded ... initialized randomly": ours follow
    try:
        model = open_clip.create_model(OPEN_CLIP_NAMES[name], pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
    missing, unexpected = model.load_state_dict(_openai_state(config, weights), strict=False)
    bad = [k for k in missing if not k.endswith("attn_mask")] + list(unexpected)
    if bad:
        raise RuntimeError(f"open_clip {OPEN_CLIP_NAMES[name]} state dict mismatch: {bad[:5]}")
    return model.eval()


def _openai_model(config, weights):
    """OpenAI's ``clip.model.build_model`` on our weights in fp32 (build_model rounds weights to fp16,
    so the exact fp32 state dict is loaded again, strictly, after ``.float()``)."""
    with warnings.catch_warnings():  # clip imports the deprecated pkg_resources
        warnings.simplefilter("ignore")
        from clip.model import build_model

    state = _openai_state(config, weights)
    model = build_model(dict(state)).float()
    model.load_state_dict(state, strict=True)
    return model.eval()


def _flops_per_image(config) -> float:
    """FLOPs of one image through clip_torch's ``get_image_features``, counted by ``FlopCounterMode``
    on the meta device (no compute) with eager attention, so attention matmuls are counted too."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import clip_torch

    size = config.vision_config.image_size
    with torch.device("meta"):
        model = clip_torch.CLIPModel(config, attn_implementation="eager")
        with FlopCounterMode(display=False) as counter:
            model.get_image_features(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def _models(tmp: str, quick: bool) -> dict:
    """``{"ViT-B/32" | "RN50": {"path", "flops", impl: model}}``; transformers only for the ViT."""
    import transformers

    import clip_torch

    models = {}
    for name in ("ViT-B/32", "RN50"):
        config, weights, path = checkpoint(name, tmp)
        ours = clip_torch.CLIPModel.from_pretrained(path)
        entry = {"path": path, "flops": _flops_per_image(config), "clip_torch": ours}
        if not config.is_resnet:
            for impl in ("sdpa",) if quick else ("sdpa", "eager"):
                entry[f"hf_{impl}"] = transformers.CLIPModel.from_pretrained(path, attn_implementation=impl).eval()
        entry["open_clip"] = _open_clip_model(name, config, weights)
        entry["openai"] = _openai_model(config, weights)
        models[name] = entry
    return models


def _impls(entry: dict) -> dict:
    """The implementations (``{impl: model}``) of one :func:`_models` entry."""
    return {k: v for k, v in entry.items() if k not in ("path", "flops")}


def _image_fn(impl: str, model, x):
    if impl.startswith("hf_") or impl == "clip_torch":
        return lambda: model.get_image_features(pixel_values=x)
    return lambda: model.encode_image(x)


def _text_fn(impl: str, model, ids):
    if impl.startswith("hf_") or impl == "clip_torch":
        return lambda: model.get_text_features(input_ids=ids)
    return lambda: model.encode_text(ids)


def _cases(models: dict, size) -> dict:
    """``{case: {impl: fn}}``: image cases (with the matmul) for both models, text cases on the ViT."""
    import torch

    a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
    cases = {}
    for name, prefix in (("ViT-B/32", ""), ("RN50", "rn50_")):
        impls = _impls(models[name])
        for bs, px in images(size.image_batches).items():
            x = torch.from_numpy(px)
            cases[f"{prefix}image_b{bs}"] = {"matmul_2048": lambda: torch.mm(a, b),
                                             **{impl: _image_fn(impl, m, x) for impl, m in impls.items()}}
    impls = _impls(models["ViT-B/32"])
    for case, ids in text_inputs(size.text_batch, size.long_captions).items():
        t = torch.from_numpy(ids).long()  # (B, 77)
        cases[case] = {impl: _text_fn(impl, m, t) for impl, m in impls.items()}
    return cases


def _ratios(results: dict) -> dict:
    """``{case}_vs_{impl}`` speed-ups of clip_torch, plus ``_vs_hf_best`` and ``_vs_best_reference``."""
    ratios = {}
    for case, res in results.items():
        up = res["speedup"]
        hf = [v for k, v in up.items() if k.startswith("hf_")]
        if hf:
            ratios[f"{case}_vs_hf_best"] = min(hf)
        for impl in ("open_clip", "openai"):
            ratios[f"{case}_vs_{impl}"] = up[impl]
        ratios[f"{case}_vs_best_reference"] = min(up.values())
    return ratios


def _shares(results: dict, models: dict) -> dict:
    """Per image case: GFLOP/s of clip_torch and its share of the matmul GFLOP/s of the same rounds."""
    shares = {}
    for case, res in results.items():
        if "matmul_2048" not in res["timings"]:
            continue
        t = {k: v["median"] for k, v in res["timings"].items()}
        flops = models["RN50" if case.startswith("rn50") else "ViT-B/32"]["flops"] * int(case.rsplit("_b", 1)[1])
        peak = 2 * MATMUL_N ** 3 / t["matmul_2048"] / 1e9
        refs = [k for k in t if k not in ("clip_torch", "matmul_2048")]
        best = min(refs, key=t.get)
        shares[case] = {"gflops": flops / t["clip_torch"] / 1e9, "matmul_gflops": peak,
                        "share_of_matmul": flops / t["clip_torch"] / 1e9 / peak,
                        "best_reference": best, "best_reference_share_of_matmul": flops / t[best] / 1e9 / peak}
        hf = [k for k in refs if k.startswith("hf_")]
        if hf:
            shares[case]["hf_best_share_of_matmul"] = flops / min(t[k] for k in hf) / 1e9 / peak
    return shares


def run(quick: bool = False) -> dict:
    os.environ.setdefault("USE_TF", "0")  # transformers must not pull in TensorFlow here
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torchvision  # noqa: F401  (before anything that may import TensorFlow: the other order segfaults)
    import torch
    import transformers

    import clip_torch

    size = sizes(quick, compiled=False)
    with tempfile.TemporaryDirectory(prefix="bench_torch_") as tmp:
        models = _models(tmp, quick)
        results = {}
        with torch.inference_mode():
            for case, contenders in _cases(models, size).items():
                results[case] = measure(contenders, "clip_torch", size.repeats)
                print_case(case, results[case], "clip_torch")
        vit = models["ViT-B/32"]["path"]
        load = interleaved({"clip_torch": lambda: clip_torch.CLIPModel.from_pretrained(vit),
                            "hf": lambda: transformers.CLIPModel.from_pretrained(vit)}, repeats=2 if quick else 5)
    return _summary(results, load, models, quick)


def _summary(results: dict, load: dict, models: dict, quick: bool) -> dict:
    import torch

    image, text = (next(c for c in results if c.startswith(p)) for p in ("image_b", "text_b"))
    matmul_runs = [r for res in results.values() for r in res["timings"].get("matmul_2048", {}).get("runs", [])]
    ratios = _ratios(results)
    ratios["load_time_vs_hf"] = load["clip_torch"]["median"] / load["hf"]["median"]
    return {
        "quick": quick, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_average": os.getloadavg(), "matmul_gflops": 2 * MATMUL_N ** 3 / float(np.median(matmul_runs)) / 1e9,
        "flops_per_image": {name: m["flops"] for name, m in models.items()},
        "timings": {**{case: res["timings"] for case, res in results.items()}, "load": load},
        "first_call_s": {case: res["first_call_s"] for case, res in results.items()},
        "ratios": ratios, "image_share_of_matmul_peak": _shares(results, models),
        "agreement": {case: res["agreement"] for case, res in results.items()},
        "agreement_with_hf": {"image_max_abs_normalized": results[image]["agreement"]["hf_sdpa"],
                              "text_max_abs_normalized": results[text]["agreement"]["hf_sdpa"]},
        "targets": {"image_vs_hf_best": ">=1.0", "image_vs_open_clip": ">=1.0", "image_vs_openai": ">=1.0",
                    "rn50_image_vs_best_of_open_clip_openai": ">=1.0", "image_share_of_matmul": ">=0.85",
                    "text_vs_hf_open_clip_openai": ">=4.0", "load_time_vs_hf": "<=0.5"},
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="image batch 16 only, text batch 8, first call timed only")
    args = parser.parse_args(argv)
    result = run(args.quick)
    print(f"matmul {MATMUL_N}: {result['matmul_gflops']:.1f} GFLOP/s   (load average {result['load_average'][0]:.1f})")
    for k, v in result["ratios"].items():
        print(f"  {k:36s} {v:6.2f}x")
    for k, v in result["image_share_of_matmul_peak"].items():
        print(f"  {k:20s} {v['gflops']:.1f} GFLOP/s = {100 * v['share_of_matmul']:.0f}% of matmul "
              f"(best reference {v['best_reference']} {100 * v['best_reference_share_of_matmul']:.0f}%)")
    print(f"wrote {write_result('torch_quick' if args.quick else 'torch', result)}")


if __name__ == "__main__":
    main()
