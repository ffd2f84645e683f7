"""Inference precisions, one run: our fp32 / bf16 / int8 paths against transformers, ONNX Runtime and OpenVINO.

``python -m benchmarks.bench_precision [--quick]``: ViT-B/32 image encoding at batch 16 and text encoding
of 64 short prompts (77-padded), on the same random weights, in

- clip_torch fp32, bf16 and int8; clip_flax and clip_tf fp32 and bf16 (``from_pretrained(precision=)``);
- transformers 4.57 ``CLIPModel`` in fp32 and with ``torch_dtype=bfloat16``;
- ONNX Runtime on graphs written by ``clip-zoo export --to onnx`` (torch), fp32 and int8 (the export's
  ``--int8`` quantization applied to a copy of the fp32 graphs);
- OpenVINO (where it installs: the ``bench`` extra) on the fp32 graph, with its inference precision
  hint ``f32`` and ``bf16`` (ONNX Runtime has no bfloat16 CPU path, so OpenVINO is the bf16 reference);

all interleaved, with the same-run rates of a 2048³ matmul per framework and precision (torch fp32,
bf16 and int8 through :class:`clip_torch.precision.Int8Linear`; JAX and TF fp32 and bf16; TF int8
through LiteRT) as the ceilings: each model's GFLOP/s (FLOPs counted once on the meta device) is also given
as a share of its framework's rate at its precision. Every contender's features are checked against our fp32 ones
first (least cosine similarity, recorded). ``--quick`` uses the bundled model (image b16, text b8,
one round) to prove the command works; writes ``results/precision[_quick].json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from clip_core.precision import min_cosine

from .common import interleaved, timed, write_result
from .model_inputs import checkpoint, images, text_inputs

MATMUL_N = 2048


def _torch_contenders(path: Path, px: np.ndarray, ids: np.ndarray) -> dict[str, tuple[Callable, Callable]]:
    import torch

    import clip_torch

    out = {}
    for precision in ("fp32", "bf16", "int8"):
        model = clip_torch.CLIPModel.from_pretrained(path, precision=precision)
        out[f"torch_{precision}"] = _torch_pair(model, px, ids, torch.bfloat16 if precision == "bf16" else None)
    try:
        import transformers
    except ImportError:
        return out
    for name, dtype in (("transformers_fp32", torch.float32), ("transformers_bf16", torch.bfloat16)):
        model = transformers.CLIPModel.from_pretrained(str(path), torch_dtype=dtype).eval()
        out[name] = _torch_pair(model, px, ids, dtype if dtype != torch.float32 else None)
    return out


def _torch_pair(model, px: np.ndarray, ids: np.ndarray, pixel_dtype) -> tuple[Callable, Callable]:
    import torch

    pixels = torch.from_numpy(px) if pixel_dtype is None else torch.from_numpy(px).to(pixel_dtype)
    tokens = torch.from_numpy(ids.astype(np.int64))

    def image():
        with torch.inference_mode():
            return model.get_image_features(pixel_values=pixels).float().numpy()

    def text():
        with torch.inference_mode():
            return model.get_text_features(input_ids=tokens).float().numpy()

    return image, text


def _numpy_contenders(backend: str, path: Path, px: np.ndarray, ids: np.ndarray) -> dict:
    import importlib

    module = importlib.import_module(backend)
    out = {}
    for precision in ("fp32", "bf16"):
        model = module.CLIPModel.from_pretrained(path, precision=precision)
        out[f"{backend.split('_')[1]}_{precision}"] = (
            lambda m=model: np.asarray(m.get_image_features(px), np.float32),
            lambda m=model: np.asarray(m.get_text_features(ids.astype(np.int32)), np.float32))
    return out


def _onnx_contenders(path: Path, px: np.ndarray, ids: np.ndarray, root: Path) -> dict:
    """ONNX Runtime on ``clip-zoo export --to onnx``'s fp32 graphs and on their int8 version. The int8 graphs
    are what ``--int8`` writes: the same (deterministic) fp32 export passed through the command's quantization
    (:func:`clip_zoo.export.quantize_onnx`); applied to a copy here, which saves a second ~30 s export."""
    from clip_zoo.export import quantize_onnx
    from clip_zoo.onnx_engine import OnnxEncoder

    out, feed = {}, _text_feed(ids, path, np.int64)
    cmd = [sys.executable, "-m", "clip_zoo", "export", str(path), str(root / "onnxruntime_fp32"), "--to", "onnx",
           "--framework", "torch"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    shutil.copytree(root / "onnxruntime_fp32", root / "onnxruntime_int8")
    files = json.loads((root / "onnxruntime_fp32" / "model.json").read_text())["files"]
    quantize_onnx(root / "onnxruntime_int8", files)
    for name in ("onnxruntime_fp32", "onnxruntime_int8"):
        enc = OnnxEncoder(root / name)
        out[name] = (lambda e=enc: e._image_features(px), lambda e=enc: e._text_features(**feed))
    return out


def _text_feed(ids: np.ndarray, path: Path, dtype) -> dict[str, np.ndarray]:
    """``input_ids`` / ``attention_mask`` as the ONNX engine feeds an exported graph: cut after the last EOT
    (:func:`clip_zoo.onnx_engine.trim_text`; an export's text graph runs every column it is given)."""
    from clip_core import CLIPConfig
    from clip_zoo.onnx_engine import trim_text

    mask = (ids != 0).astype(dtype)
    mask[:, 0] = 1
    ids, mask = trim_text(ids.astype(dtype), mask, CLIPConfig.from_pretrained(path).text_config)
    return {"input_ids": ids, "attention_mask": mask}


def _litert_contenders(path: Path, px: np.ndarray, ids: np.ndarray, root: Path) -> dict:
    """TensorFlow's int8 (``tf_int8``): the LiteRT dynamic-range export (``clip-zoo export --to litert --int8``)
    in the interpreter on every core, text cut after the last EOT (:func:`_text_feed`). Empty without TensorFlow."""
    try:
        from clip_tf.export import load_exported
    except ImportError:
        return {}
    target = root / "litert_int8"
    cmd = [sys.executable, "-m", "clip_zoo", "export", str(path), str(target), "--to", "litert", "--framework", "tf",
           "--int8"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    image, text = load_exported(target / "image.tflite", "image"), load_exported(target / "text.tflite", "text")
    feed = _text_feed(ids, path, np.int32)
    return {"tf_int8": (lambda: image(pixel_values=px), lambda: text(**feed))}


def _openvino_contenders(path: Path, px: np.ndarray, ids: np.ndarray, root: Path) -> dict:
    """OpenVINO on the fp32 ONNX graphs (written by :func:`_onnx_contenders`), precision hint f32 and bf16;
    text cut after the last EOT as the ONNX engine does. Empty when OpenVINO is missing."""
    try:
        import openvino
    except ImportError:
        return {}
    core = openvino.Core()
    feeds = {"image": {"pixel_values": px}, "text": _text_feed(ids, path, np.int64)}
    out = {}
    for hint in ("f32", "bf16"):
        calls = []
        for tower in ("image", "text"):
            compiled = core.compile_model(str(root / "onnxruntime_fp32" / f"{tower}.onnx"), "CPU",
                                          {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
            request, feed = compiled.create_infer_request(), feeds[tower]
            calls.append(lambda r=request, f=feed: np.asarray(next(iter(r.infer(f).values())), np.float32))
        out[f"openvino_{'fp32' if hint == 'f32' else hint}"] = tuple(calls)
    return out


def _flops(path: Path, px: np.ndarray, ids: np.ndarray) -> dict[str, float]:
    """FLOPs of the image batch and the text batch through clip_torch (eager attention, so its matmuls
    count; the text tower computes only the columns some prompt uses, so the count runs on real inputs,
    with autograd on: its inference fast paths call oneDNN ops the counter does not see)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import clip_torch

    model = clip_torch.CLIPModel.from_pretrained(path, attn_implementation="eager")
    out = {}
    for case, call in (("image", lambda: model.get_image_features(torch.from_numpy(px))),
                       ("text", lambda: model.get_text_features(torch.from_numpy(ids.astype(np.int64))))):
        with FlopCounterMode(display=False) as counter:
            call()
        out[case] = float(counter.get_total_flops())
    return out


def _framework_matmuls() -> dict[str, Callable]:
    """2048³ products per framework and precision (bf16 accumulating in float32 where the framework lets us say
    so), keyed like the contenders (``torch_int8``, ``flax_bf16`` ...). torch's are linears (``x @ Wᵀ``), the
    layout its models run: without native bf16 its ``mm`` of two row-major bf16 matrices falls back to a
    kernel ~10x slower than the transposed one (AVX2 EPYC, 512³: 1.3 against 14.5 GFLOP/s)."""
    import torch

    from clip_torch.precision import Int8Linear

    n = MATMUL_N
    a, b = torch.randn(n, n), torch.randn(n, n)
    linear = torch.nn.Linear(n, n, bias=False)
    linear.weight.data.copy_(b)
    q = Int8Linear(linear)
    a16, b16 = a.bfloat16(), b.bfloat16()
    linear_ = torch.nn.functional.linear
    fns = {"torch_fp32": lambda: linear_(a, b), "torch_bf16": lambda: linear_(a16, b16), "torch_int8": lambda: q(a)}
    try:
        import jax
        import jax.numpy as jnp

        x32 = jnp.asarray(a.numpy())
        x16 = x32.astype(jnp.bfloat16)
        f32 = jax.jit(lambda u, v: u @ v)
        f16 = jax.jit(lambda u, v: jnp.matmul(u, v, preferred_element_type=jnp.float32))
        fns["flax_fp32"] = lambda: f32(x32, x32).block_until_ready()
        fns["flax_bf16"] = lambda: f16(x16, x16).block_until_ready()
    except ImportError:
        pass
    try:
        import tensorflow as tf

        t32 = tf.constant(a.numpy())
        t16 = tf.cast(t32, tf.bfloat16)
        mm = tf.function(tf.matmul)
        fns["tf_fp32"] = lambda: mm(t32, t32).numpy()
        fns["tf_bf16"] = lambda: mm(t16, t16).numpy()
        fns["tf_int8"] = _litert_int8_matmul(a.numpy(), b.numpy())
    except ImportError:
        pass
    return fns


def _litert_int8_matmul(a: np.ndarray, b: np.ndarray) -> Callable:
    """``a @ b`` with ``b`` a constant through LiteRT's dynamic-range int8, as ``clip-zoo export --to litert
    --int8`` converts a Dense (``Optimize.DEFAULT``), in an interpreter on every core: TensorFlow's int8
    ceiling. On the AVX2 EPYC (no VNNI) its kernels ran this at 128 GOP/s against 113 in float32."""
    import tensorflow as tf

    weight = tf.constant(b)
    product = tf.function(lambda x: tf.matmul(x, weight), input_signature=[tf.TensorSpec(a.shape, tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([product.get_concrete_function()])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    interpreter = tf.lite.Interpreter(model_content=converter.convert(), num_threads=os.cpu_count() or 1)
    interpreter.allocate_tensors()
    x, y = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]

    def run() -> np.ndarray:
        interpreter.set_tensor(x, a)
        interpreter.invoke()
        return interpreter.get_tensor(y)
    return run


def _matmul_rates(repeats: int) -> dict[str, float]:
    """Same-run GFLOP/s (GOP/s for int8) of a 2048³ product per framework and precision."""
    import torch

    with torch.inference_mode():
        t = interleaved(_framework_matmuls(), repeats=max(repeats, 1), warmup=1)
    return {k: 2 * MATMUL_N ** 3 / v["median"] / 1e9 for k, v in t.items()}


def _case(contenders: dict[str, Callable], repeats: int) -> dict:
    outputs = {name: fn() for name, fn in contenders.items()}
    cosine = {name: min_cosine(outputs["torch_fp32"], out) for name, out in outputs.items()}
    timings = interleaved(contenders, repeats=repeats, warmup=0) if repeats else \
        {name: {"median": timed(fn), "min": 0.0, "max": 0.0} for name, fn in contenders.items()}
    base = timings["torch_fp32"]["median"]
    return {"timings": timings, "min_cosine_to_torch_fp32": cosine,
            "speedup_vs_torch_fp32": {name: base / t["median"] for name, t in timings.items()}}


BACKENDS = ("torch", "tf", "flax")


def _ratios(result: dict) -> dict[str, float]:
    """Per case: each contender against our torch fp32; each backend's lower precisions against its own
    fp32 and against the ONNX Runtime / OpenVINO run at the same precision; shares of the matmul rates."""
    out = {}
    for case in ("image", "text"):
        t = {k: v["median"] for k, v in result[case]["timings"].items()}
        for name in t:
            if name != "torch_fp32":
                out[f"{case}_{name}_vs_torch_fp32"] = t["torch_fp32"] / t[name]
        for backend in BACKENDS:
            for precision in ("fp32", "bf16", "int8"):
                ours = f"{backend}_{precision}"
                if ours not in t:
                    continue
                if precision != "fp32" and backend != "torch":
                    out[f"{case}_{ours}_vs_{backend}_fp32"] = t[f"{backend}_fp32"] / t[ours]
                for ref in ("onnxruntime", "openvino"):
                    if f"{ref}_{precision}" in t:
                        out[f"{case}_{ours}_vs_{ref}_{precision}"] = t[f"{ref}_{precision}"] / t[ours]
                rate = result.get("matmul_rates", {}).get(ours)
                if rate and result.get("flops"):
                    out[f"{case}_{ours}_share_of_matmul"] = result["flops"][case] / t[ours] / 1e9 / rate
        if "transformers_bf16" in t:
            out[f"{case}_torch_bf16_vs_transformers_bf16"] = t["transformers_bf16"] / t["torch_bf16"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_precision", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the bundled model, small batches, one round")
    args = parser.parse_args(argv)
    repeats, text_batch = (1, 8) if args.quick else (5, 64)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.quick:
            from clip_core.default_model import default_model_path

            path, size = default_model_path(), None
        else:
            config, _, path = checkpoint("ViT-B/32", root)
            size = config.vision_config.image_size
        if size is None:
            from clip_core import CLIPConfig

            size = CLIPConfig.from_pretrained(path).vision_config.image_size
        px = images((16,), size=size)[16]
        ids = text_inputs(text_batch, long=False)[f"text_b{text_batch}"]
        start = time.perf_counter()
        pairs = _torch_contenders(path, px, ids)
        for backend in ("clip_flax", "clip_tf"):
            pairs.update(_numpy_contenders(backend, path, px, ids))
        pairs.update(_onnx_contenders(path, px, ids, root))
        pairs.update(_litert_contenders(path, px, ids, root))
        pairs.update(_openvino_contenders(path, px, ids, root))
        flops = _flops(path, px, ids)
        setup = time.perf_counter() - start
        result = {case: _case({n: p[i] for n, p in pairs.items()}, repeats)
                  for i, case in enumerate(("image", "text"))}
    result["matmul_rates"] = _matmul_rates(repeats)
    result["flops"] = flops
    result["ratios"] = _ratios(result)
    result["setup_s"] = setup
    result["model"] = "bundled default" if args.quick else "ViT-B/32 (random weights)"
    out = write_result("precision_quick" if args.quick else "precision", result)
    for key, value in result["ratios"].items():
        print(f"{key}: {value:.2f}x")
    print("matmul GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in result["matmul_rates"].items()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
