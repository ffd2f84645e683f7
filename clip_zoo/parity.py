"""`clip-zoo parity`: load one checkpoint in every installed backend and compare every output.

The battery is fixed (real tokenizer prompts, padded and unpadded; preprocessed synthetic images)
so two runs on two machines compare the same thing. Each backend's outputs are flattened to
``{field: np.ndarray}`` (``text_embeds``, ``logits_per_image``, ``text_model_output.hidden_states.3`` ...)
and every pair of backends is compared field by field against the bounds in :data:`BOUNDS`.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import itertools
import json
import platform
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

__all__ = ["FRAMEWORKS", "BOUNDS", "Comparison", "battery", "run_backend", "compare", "parity", "main",
           "JSON_SCHEMA"]

FRAMEWORKS = {"torch": ("torch", "clip_torch"), "tf": ("tensorflow", "clip_tf"), "flax": ("flax", "clip_flax")}

PROMPTS = ["a photo of a cat", "a diagram", "a photo of a red circle on a blue background",
           "an extremely long caption " + "that keeps going " * 12 + "until it ends.",
           "", "L'été & the 5 «quotes» — ünïcödé 🙂"]

# (max abs on L2-normalised embeddings, on logits (x100 scale), on everything else relative to its scale)
BOUNDS = {
    "fp32": {"embeds": 1e-5, "logits": 1e-3, "other": 1e-4},
    "bf16": {"embeds": 3e-2, "logits": 0.5, "other": 1e-1},
    "fp16": {"embeds": 5e-3, "logits": 5e-2, "other": 2e-2},
}

JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "clip-zoo parity report",
    "type": "object",
    "required": ["checkpoint", "dtype", "frameworks", "bounds", "comparisons", "passed", "environment"],
    "properties": {
        "checkpoint": {"type": "string"},
        "dtype": {"enum": sorted(BOUNDS)},
        "frameworks": {"type": "array", "items": {"enum": sorted(FRAMEWORKS)}},
        "bounds": {"type": "object", "additionalProperties": {"type": "number"}},
        "passed": {"type": "boolean"},
        "environment": {"type": "object"},
        "comparisons": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["pair", "field", "max_abs", "max_rel", "bound", "passed"],
                "properties": {
                    "pair": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
                    "field": {"type": "string"},
                    "max_abs": {"type": "number"},
                    "max_rel": {"type": "number"},
                    "bound": {"type": "number"},
                    "passed": {"type": "boolean"},
                },
            },
        },
    },
}


@dataclasses.dataclass
class Comparison:
    """One output field compared between two backends."""

    pair: tuple[str, str]
    field: str
    max_abs: float
    max_rel: float
    bound: float
    passed: bool


def installed_frameworks() -> list[str]:
    return [name for name, (module, _) in FRAMEWORKS.items() if importlib.util.find_spec(module) is not None]


def _siglip_texts(config, seed: int) -> tuple[dict, dict]:
    """SigLIP's text battery, the same without its tokenizer files: seeded ids, padded to the full context
    (as SigLIP is run) with and without a mask, and one unpadded row."""
    t = config.text_config
    rng = np.random.default_rng(seed)
    lengths = np.array([3, 1, 12, t.max_position_embeddings, 2, 7]).clip(1, t.max_position_embeddings)
    ids = rng.integers(2, t.vocab_size, (len(lengths), t.max_position_embeddings)).astype(np.int32)
    mask = (np.arange(t.max_position_embeddings)[None, :] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask == 1, ids, t.pad_token_id or 0).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask}, {"input_ids": ids[:1, :lengths[0]]}


def battery(config, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """The fixed inputs: ``padded`` (HF-style padding + mask) and ``unpadded`` (one prompt, no mask)."""
    from clip_core import CLIPImageProcessor, CLIPTokenizer

    ctx = config.text_config.max_position_embeddings
    size = config.vision_config.image_size
    if getattr(config, "family", "clip") == "siglip":
        from clip_core.siglip_processing import SiglipImageProcessor

        padded, single = _siglip_texts(config, seed)
        proc = SiglipImageProcessor(size={"height": size, "width": size})
    else:
        tok = CLIPTokenizer()
        padded = tok(PROMPTS, padding=True, truncation=True, max_length=ctx, return_tensors="np")
        single = tok(PROMPTS[:1], padding=False, truncation=True, max_length=ctx, return_tensors="np")
        proc = CLIPImageProcessor(mode="hf", size=size, crop_size=size)
    pixels = proc(_synthetic_images(seed), return_tensors="np")["pixel_values"]
    return {
        "padded": {"input_ids": np.asarray(padded["input_ids"], np.int32),
                   "attention_mask": np.asarray(padded["attention_mask"], np.int32), "pixel_values": pixels},
        "unpadded": {"input_ids": np.asarray(single["input_ids"], np.int32), "pixel_values": pixels[:1]},
    }


def _synthetic_images(seed: int) -> list:
    """Three deterministic images: a gradient, noise, and a disc on a plain background."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:240, 0:320]
    gradient = np.stack([xx * 255 // 319, yy * 255 // 239, (xx + yy) * 255 // 558], -1).astype(np.uint8)
    noise = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    disc = Image.new("RGB", (256, 256), (30, 60, 200))
    ImageDraw.Draw(disc).ellipse((60, 60, 190, 190), fill=(220, 20, 30))
    return [Image.fromarray(gradient), Image.fromarray(noise), disc]


def _flatten(prefix: str, value: Any, out: dict[str, np.ndarray]) -> None:
    if value is None:
        return
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            _flatten(f"{prefix}{f.name}.", getattr(value, f.name), out)
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            _flatten(f"{prefix}{i}.", v, out)
    else:
        out[prefix[:-1]] = np.asarray(_to_numpy(value), dtype=np.float64)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch
        return x.detach().float().cpu().numpy()
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):  # tf
        x = x.numpy()
    return np.asarray(x, dtype=np.float32)  # jax arrays and numpy


def _to_framework(framework: str, array: np.ndarray) -> Any:
    if framework == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(array)).long() if array.dtype.kind == "i" else torch.from_numpy(array)
    if framework == "tf":
        import tensorflow as tf

        return tf.constant(array)
    return array  # flax takes numpy


DTYPE_NAMES = {"fp16": "float16", "bf16": "bfloat16"}


def load_model(framework: str, checkpoint: str, dtype: str = "fp32"):
    """``<backend>.CLIPModel.from_pretrained(checkpoint)`` for one framework, computing in ``dtype``.

    torch: the loaded model cast with ``.to``; tf: a Keras dtype policy (``dtype="float16"``);
    flax: ``dtype``/``param_dtype`` of the modules. Inputs stay fp32; outputs are compared in float64.
    """
    from .console import import_framework

    from .engines import checkpoint_family

    module = import_framework(FRAMEWORKS[framework][1])  # minus the C++ log noise when run quietly
    cls = module.SiglipModel if checkpoint_family(Path(checkpoint)) == "siglip" else module.CLIPModel
    if dtype == "fp32":
        return cls.from_pretrained(checkpoint)
    if framework == "torch":
        import torch

        return cls.from_pretrained(checkpoint).to(getattr(torch, DTYPE_NAMES[dtype]))
    if framework == "flax":
        import jax.numpy as jnp

        jdt = getattr(jnp, DTYPE_NAMES[dtype])
        return cls.from_pretrained(checkpoint, dtype=jdt, param_dtype=jdt)
    return cls.from_pretrained(checkpoint, dtype=DTYPE_NAMES[dtype])


def run_backend(framework: str, model: Any, inputs: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Run the battery through one loaded model; returns flattened numpy outputs."""
    out: dict[str, np.ndarray] = {}
    ctx = _no_grad(framework)
    with ctx:
        for case, arrays in inputs.items():
            kwargs = {k: _to_framework(framework, v) for k, v in arrays.items()}
            if framework == "torch" and "pixel_values" in kwargs:  # a half-precision torch model needs half pixels
                kwargs["pixel_values"] = kwargs["pixel_values"].to(next(model.parameters()).dtype)
            result = model(**kwargs, output_hidden_states=True)
            _flatten(f"{case}/", result, out)
    return out


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _no_grad(framework: str):
    if framework == "torch":
        import torch

        return torch.inference_mode()
    return _Null()


def _bound_for(field: str, bounds: Mapping[str, float]) -> tuple[str, float]:
    leaf = field.split("/", 1)[1]
    if leaf in ("text_embeds", "image_embeds"):
        return "embeds", bounds["embeds"]
    if leaf.startswith("logits") or leaf == "loss":
        return "logits", bounds["logits"]
    return "other", bounds["other"]


def compare(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], pair: tuple[str, str],
            bounds: Mapping[str, float]) -> list[Comparison]:
    """Compare every field two backends both returned (a field only one returned is a failure)."""
    rows = []
    for field in sorted(set(a) | set(b)):
        kind, bound = _bound_for(field, bounds)
        if field not in a or field not in b or a[field].shape != b[field].shape:
            rows.append(Comparison(pair, field, float("inf"), float("inf"), bound, False))
            continue
        diff = np.abs(a[field] - b[field])
        scale = max(1.0, float(np.abs(a[field]).max(initial=0.0)))
        max_abs = float(diff.max(initial=0.0))
        max_rel = float((diff / np.maximum(np.abs(a[field]), 1e-6)).max(initial=0.0))
        limit = bound * scale if kind == "other" else bound
        rows.append(Comparison(pair, field, max_abs, max_rel, limit, bool(max_abs <= limit)))
    return rows


def parity(checkpoint: str, frameworks: Optional[Sequence[str]] = None, dtype: str = "fp32",
           perturb: Optional[Callable[[str, Any], None]] = None) -> dict[str, Any]:
    """Load ``checkpoint`` in each framework, run the battery, compare every pair.

    ``perturb(framework, model)`` is a test hook to corrupt one backend's model after loading.
    """
    from conversion import load_checkpoint

    frameworks = list(frameworks or installed_frameworks())
    if len(frameworks) < 2:
        raise ValueError(f"parity needs at least two frameworks; installed/selected: {frameworks}")
    if dtype not in BOUNDS:
        raise ValueError(f"unknown --dtype {dtype!r}; expected one of {sorted(BOUNDS)}")
    config, _ = load_checkpoint(checkpoint)
    inputs = battery(config)
    outputs = {}
    for fw in frameworks:
        model = load_model(fw, checkpoint, dtype)
        if perturb is not None:
            perturb(fw, model)
        outputs[fw] = run_backend(fw, model, inputs)
    rows = [row for a, b in itertools.combinations(frameworks, 2)
            for row in compare(outputs[a], outputs[b], (a, b), BOUNDS[dtype])]
    return {
        "checkpoint": str(checkpoint), "dtype": dtype, "frameworks": frameworks, "bounds": BOUNDS[dtype],
        "comparisons": [dataclasses.asdict(r) | {"pair": list(r.pair)} for r in rows],
        "passed": all(r.passed for r in rows), "environment": environment(frameworks),
    }


def environment(frameworks: Iterable[str]) -> dict[str, Any]:
    import os

    env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "numpy": np.__version__}
    for fw in frameworks:
        module = importlib.import_module(FRAMEWORKS[fw][0])
        env[FRAMEWORKS[fw][0]] = getattr(module, "__version__", "?")
    return env


def format_table(report: Mapping[str, Any], only_failures: bool = False) -> str:
    """A plain-text table: pair, field, max abs, max rel, bound, verdict."""
    rows = [r for r in report["comparisons"] if r["passed"] is False or not only_failures]
    head = f"{'pair':<12} {'field':<58} {'max abs':>10} {'max rel':>10} {'bound':>9}  ok"
    lines = [head, "-" * len(head)]
    for r in rows:
        pair = "-".join(r["pair"])
        lines.append(f"{pair:<12} {r['field']:<58} {r['max_abs']:>10.3g} {r['max_rel']:>10.3g} "
                     f"{r['bound']:>9.2g}  {'ok' if r['passed'] else 'FAIL'}")
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines.append(f"{verdict}: {sum(r['passed'] for r in report['comparisons'])}/{len(report['comparisons'])} "
                 f"comparisons within bounds ({report['dtype']}, {', '.join(report['frameworks'])})")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint in any supported format, or 'default' (the bundled model)")
    parser.add_argument("--frameworks", default=None,
                        help="comma-separated subset of torch,tf,flax (default: every installed one)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(BOUNDS))
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the table")


def _check_frameworks(frameworks: Optional[list[str]]) -> None:
    """Refuse unknown names and fewer than two frameworks with a message that says what to do."""
    from .errors import CLIZooError

    unknown = [f for f in frameworks or [] if f not in FRAMEWORKS]
    if unknown:
        raise CLIZooError(f"unknown framework(s) {', '.join(unknown)}, choose from {', '.join(sorted(FRAMEWORKS))}")
    chosen = frameworks or installed_frameworks()
    if len(chosen) >= 2:
        return
    what = f"parity needs at least two frameworks (got: {', '.join(chosen) or 'none'})"
    if frameworks:
        raise CLIZooError(f"{what}, list two or more in --frameworks")
    other = next(f for f in FRAMEWORKS if f not in chosen)
    raise CLIZooError(f"{what}, install another with: pip install 'clip-zoo[{other}]'")


def run(args) -> int:
    from clip_core.default_model import resolve_checkpoint

    frameworks = args.frameworks.split(",") if args.frameworks else None
    _check_frameworks(frameworks)
    checkpoint = str(resolve_checkpoint(args.checkpoint))  # a path as is; "default" = the bundled model
    report = parity(checkpoint, frameworks, args.dtype)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0 if report["passed"] else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="clip-zoo parity", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    from .console import describe
    from .errors import CLIZooError

    try:
        return run(args)
    except (CLIZooError, ValueError, OSError, ImportError, KeyError) as err:  # ConversionError is a ValueError
        print(f"clip-zoo parity: error: {describe(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
