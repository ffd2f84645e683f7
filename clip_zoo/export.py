"""``clip-zoo export``: deployable graphs of a checkpoint, verified against the eager model before they are kept.

``clip-zoo export MODEL OUT --to onnx|litert|stablehlo|pt2|savedmodel [--framework F] [--parts text,image]
[--dtype fp32|fp16|bf16] [--int8] [--opset N]``
writes OUT/ with the graphs, ``model.json`` (architecture, graph files and inputs,
context length, the source checkpoint's hash, the verification report) and the checkpoint's tokenizer
and preprocessing files. Each graph is reloaded in its runtime and compared with the eager model
(see :mod:`clip_zoo.export_verify`); past the bound the command exits 1 and OUT is not written.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Union

from .errors import CLIZooError

__all__ = ["add_parser", "run", "quantize_onnx", "FORMATS"]

# format -> (the frameworks that write it, the backend function)
FORMATS = {"onnx": (("torch", "tf", "flax"), "export_onnx"), "litert": (("tf",), "export_litert"),
           "stablehlo": (("flax",), "export_native"), "pt2": (("torch",), "export_native"),
           "savedmodel": (("tf",), "export_native")}
SIDE_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "preprocessor_config.json", "spiece.model", "tokenizer.model", "added_tokens.json")  # + SigLIP's


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export the image and text towers to ONNX, LiteRT, StableHLO, .pt2 or "
                                      "SavedModel, verified against the eager model",
                       description="Export the image and text towers as deployable graphs, each reloaded in its "
                                   "runtime and checked against the eager model before OUT is written.")
    p.add_argument("model", metavar="MODEL", help="checkpoint path or 'default' (the bundled model)")
    p.add_argument("out", metavar="OUT", help="the directory to write (must not exist)")
    p.add_argument("--to", required=True, choices=sorted(FORMATS), help="the format")
    p.add_argument("--framework", default=None,
                   help="the framework that exports (default: the first installed that writes the format: "
                        "onnx/pt2 torch, litert/savedmodel tf, stablehlo flax)")
    p.add_argument("--parts", default="text,image", help="towers to export: text, image or text,image (default)")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="weights and compute dtype (fp16 / bf16: --framework torch, onnx or pt2; float32 in and out)")
    p.add_argument("--int8", action="store_true", help="int8 weights, activations quantized per call: ONNX "
                   "(onnxruntime's dynamic quantization) or LiteRT (its dynamic-range quantization)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.set_defaults(run=run)


def _framework(args: argparse.Namespace) -> str:
    from .engines import installed_frameworks, resolve_framework

    allowed = FORMATS[args.to][0]
    if args.framework is None:
        found = [f for f in allowed if f in installed_frameworks()]
        if not found:
            raise CLIZooError(f"--to {args.to} needs {' or '.join(allowed)}, install one with: "
                              f"pip install 'clip-zoo[{allowed[0]}]'")
        return found[0]
    name = resolve_framework(args.framework)
    if name not in allowed:
        raise CLIZooError(f"--to {args.to} cannot be written from {name}, pass --framework {' or '.join(allowed)}")
    return name


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not parts or any(p not in ("text", "image") for p in parts):
        raise CLIZooError(f"--parts {text!r} is not valid, pass text, image or text,image")
    return parts


def _check_precision(args: argparse.Namespace, framework: str) -> None:
    """``--int8`` / ``--dtype`` only where a runtime can run the result."""
    if args.int8 and (args.to not in ("onnx", "litert") or args.dtype != "fp32"):
        raise CLIZooError("--int8 works with --to onnx or litert and fp32 only, drop --int8 or pass --to onnx")
    if args.dtype != "fp32" and (framework != "torch" or args.to not in ("onnx", "pt2")):
        raise CLIZooError(f"--dtype {args.dtype} is exported from torch to onnx or pt2 only, "
                          "pass --framework torch or drop --dtype")
    if args.dtype == "bf16" and args.to == "onnx":  # ORT: "Could not find an implementation for Add(14)"
        raise CLIZooError("onnxruntime's CPU kernels do not run bf16 graphs, pass --dtype fp16 or --to pt2")


_INT8_OPS = ["MatMul", "Gemm", "Gather"]  # products and embedding tables: see quantize_onnx


def quantize_onnx(directory: Union[str, os.PathLike], files: dict[str, str]) -> None:
    """What ``--int8`` does to an ONNX export: onnxruntime's dynamic quantization, in place, of each graph
    ``directory / files[part]`` (``files`` as in ``model.json``: ``{part: file name}``).

    Weights are int8 per output channel in 7 bits (``reduce_range``), u8 activations quantized per call. The
    file outlives the CPU that wrote it, and on x86 without VNNI onnxruntime adds u8 x s8 pairs into int16 with
    saturation: full 8-bit weights came out 6% off on a worst-case product there, 7-bit ones 0.05%.
    Per-channel scales win back what the lost bit costs (ViT-B/32 random weights, least cosine to fp32: image
    0.9987, text 0.9984; 8-bit per tensor 0.9993 / 0.9989), at the same speed. Only products (MatMul, Gemm)
    and embedding tables (Gather, stored int8 and dequantized after the lookup) are quantized: onnxruntime's
    dynamic int8 convolution (ConvInteger) ran RN50's image b16 in 5.4-5.9 s against 1.47 s in fp32, and the
    products alone in 1.37 s; a ViT keeps its one patch convolution in fp32 (~3% slower than with it)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for name in files.values():
        path = Path(directory) / name
        tmp = path.with_suffix(".fp32.onnx")
        path.rename(tmp)
        quantize_dynamic(str(tmp), str(path), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=_INT8_OPS)
        tmp.unlink()


def _model_json(args, framework: str, encoder, files: dict, report: dict, source: Path) -> dict:
    from .embed import model_fingerprint

    text_dtype = "int64" if args.to in ("onnx", "pt2") and framework == "torch" else "int32"
    siglip = encoder.family == "siglip"  # fixed length (see docs/export.md)
    ids = [text_dtype, ["batch", encoder.context_length if siglip else "length"]]
    inputs = {"text": {"input_ids": ids, "attention_mask": ids},
              "image": {"pixel_values": ["float32", ["batch", "channels", "height", "width"]]}}
    return {"format_version": 1, "format": args.to, "framework": framework, "int8": bool(args.int8),
            "family": encoder.family, **_logit_params(encoder),
            "dtype": args.dtype,
            "files": files, "inputs": {p: inputs[p] for p in files},
            "outputs": {p: f"{p}_embeds (batch, {encoder.dim}) projected, not normalized" for p in files},
            "context_length": encoder.context_length, "config": encoder.config.to_dict(),
            "source": {"path": str(source), "sha256": model_fingerprint(source)}, "verification": report}


def _logit_params(encoder) -> dict:
    """SigLIP's raw ``logit_scale`` (log) and ``logit_bias``, for the sigmoid probabilities of the onnx engine."""
    if encoder.family != "siglip":
        return {}
    return {n: float(encoder._parameter(n).reshape(-1)[0]) for n in ("logit_scale", "logit_bias")}


def run(args: argparse.Namespace) -> int:
    from .console import import_framework
    from .engines import load_encoder, resolve_model
    from .export_verify import format_report, verify

    out = Path(args.out)
    if out.exists():
        raise CLIZooError(f"{out} already exists, pass a new directory")
    parts, framework = _parts(args.parts), _framework(args)
    _check_precision(args, framework)
    source = resolve_model(args.model)
    encoder = load_encoder(args.model, framework)
    if framework == "tf":
        # The verification's reference runs TF's plain graph, as the exported graphs do: under XLA it would
        # compile once per shape of the text battery (6 x ~2 s for the bundled model, 3-5 s each for ViT-B/32).
        encoder.model.jit_compile = False
    backend_export = import_framework(f"clip_{framework}.export")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        kwargs = {"opset": args.opset} if args.to == "onnx" else {"int8": True} if args.int8 else {}
        if args.dtype != "fp32":
            kwargs["dtype"] = args.dtype
        print(f"exporting {', '.join(parts)} from {framework} to {args.to} ...", file=sys.stderr)
        files = getattr(backend_export, FORMATS[args.to][1])(encoder.model, tmp, parts=parts, **kwargs)
        if args.int8 and args.to == "onnx":
            quantize_onnx(tmp, files)
        report = verify(encoder, tmp, files, args.to, backend_export, "int8" if args.int8 else args.dtype)
        print(format_report(report))
        if not report["ok"]:
            print(f"clip-zoo: error: the exported graphs differ from the eager model past the bound, {out} "
                  "was not written", file=sys.stderr)
            return 1
        for name in SIDE_FILES:
            if source.is_dir() and (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        meta = _model_json(args, framework, encoder, files, report, source)
        (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out}", file=sys.stderr)
    return 0
