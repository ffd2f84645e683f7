"""Verification of exported graphs: reload each artifact once in its runtime and compare it with the eager
model on held-out inputs (texts of 1, 20 and the full context length; batch 1 and a larger batch; SigLIP:
texts of several lengths through the checkpoint's tokenizer, padded to the context length).

fp32 passes when the max abs difference of the L2-normalized embeddings is at most ``FP32_BOUND``;
``--int8``, ``--dtype fp16`` and ``bf16`` graphs when every embedding's cosine similarity with the eager
fp32 one is at least ``COSINE_BOUNDS[precision]``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["FP32_BOUND", "COSINE_BOUNDS", "text_cases", "siglip_text_cases", "image_cases", "load_runner", "verify",
           "format_report"]

FP32_BOUND = 1e-5
COSINE_BOUNDS = {"int8": 0.99, "fp16": 0.999, "bf16": 0.99}


def text_cases(config, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (input_ids, attention_mask)}`` int32: lengths 1, 20 and the context length, batch 1 and 5;
    EOT at varied positions, zero padding after it."""
    t = config.text_config
    rng = np.random.default_rng(seed)
    cases = {}
    for length in (1, 20, t.max_position_embeddings):
        for batch in (1, 5):
            ids = rng.integers(1, min(t.vocab_size, t.eos_token_id) - 1, (batch, length)).astype(np.int32)
            ends = rng.integers(0, length, batch)
            ends[0] = length - 1  # one row fills the whole length
            mask = (np.arange(length)[None] <= ends[:, None]).astype(np.int32)
            ids = np.where(mask > 0, ids, 0)
            ids[np.arange(batch), ends] = t.eos_token_id
            cases[f"text T={length} B={batch}"] = (ids, mask)
    return cases


SIGLIP_TEXTS = ("a", "a photo of a dog", "two cats sleeping on a red sofa next to an open window, in the "
                "afternoon sun, with a cup of tea and a stack of old books on the wooden floor",
                "Hello, World! 123", "the quick brown fox jumps over the lazy dog")


def siglip_text_cases(encoder) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (input_ids, attention_mask)}`` int32 from the checkpoint's own tokenizer (mask of ones when it
    gives none): texts of 1 word to past the context length (truncated), batch 1 and 5, padded to the
    context length as SigLIP always is."""
    def ids(texts):
        enc = encoder.tokenizer(list(texts), padding="max_length", truncation=True,
                                max_length=encoder.context_length, return_tensors="np")
        ids = np.asarray(enc["input_ids"], np.int32)  # (B, T)
        return ids, np.asarray(enc["attention_mask"], np.int32) if "attention_mask" in enc else np.ones_like(ids)

    cases = {f"text {n} B=1": ids([t]) for n, t in zip(("short", "long"), SIGLIP_TEXTS[1:3])}
    cases["text mixed B=5"] = ids(SIGLIP_TEXTS)
    return cases


def _text_battery(encoder) -> dict:
    """The family's text cases: ``{name: (input_ids, attention_mask)}``."""
    if getattr(encoder, "family", "clip") == "siglip":
        return siglip_text_cases(encoder)
    return text_cases(encoder.config)


def image_cases(config, seed: int = 0) -> dict[str, np.ndarray]:
    """``{name: pixel_values}`` float32 NCHW, batch 1 and 4."""
    v = config.vision_config
    rng = np.random.default_rng(seed)
    return {f"image B={b}": rng.standard_normal((b, v.num_channels, v.image_size, v.image_size)).astype(np.float32)
            for b in (1, 4)}


def load_runner(path: Path, fmt: str, backend_export, part: str, threads=None) -> Callable[..., np.ndarray]:
    """One loaded runtime for ``path``: onnxruntime for ONNX, else the backend's ``load_exported``."""
    if fmt == "onnx":
        from .onnx_engine import onnx_session, run_onnx

        session = onnx_session(path, threads)
        return lambda **arrays: run_onnx(session, **arrays)
    return backend_export.load_exported(path, part)


def _unit(x: np.ndarray) -> np.ndarray:
    from clip_core.zero_shot import l2_normalize

    return l2_normalize(np.asarray(x, np.float32))


def verify(encoder, directory: Path, files: dict, fmt: str, backend_export, precision: str = "fp32") -> dict:
    """Compare each exported part with ``encoder`` (the eager fp32 model); ``precision`` fp32, fp16, bf16 or
    int8 picks the metric and bound. Returns ``{"ok", "bound", "metric", "precision",
    "parts": {part: {"load_seconds", "size_bytes", "cases": {name: value}, "worst", "ok"}}}``."""
    cosine = precision != "fp32"
    metric = "min_cosine" if cosine else "max_abs_diff"
    report = {"ok": True, "metric": metric, "bound": COSINE_BOUNDS[precision] if cosine else FP32_BOUND,
              "precision": precision, "parts": {}}
    for part, name in files.items():
        path = Path(directory) / name
        t0 = time.perf_counter()
        run = load_runner(path, fmt, backend_export, part)  # one session / interpreter / module for all cases
        load = time.perf_counter() - t0
        if part == "text":
            cases = {k: (encoder._text_features(ids, mask), dict(input_ids=ids, attention_mask=mask))
                     for k, (ids, mask) in _text_battery(encoder).items()}
        else:
            cases = {k: (encoder._image_features(px), dict(pixel_values=px))
                     for k, px in image_cases(encoder.config).items()}
        values = {}
        for case, (ref, inputs) in cases.items():
            got, want = _unit(run(**inputs)), _unit(ref)  # (B, D)
            values[case] = (float(np.min(np.sum(got * want, axis=-1))) if cosine
                            else float(np.max(np.abs(got - want))))
        worst = min(values.values()) if cosine else max(values.values())
        passed = worst >= report["bound"] if cosine else worst <= report["bound"]
        report["ok"] = report["ok"] and passed
        report["parts"][part] = {"load_seconds": round(load, 3), "size_bytes": _size(path), "worst": worst,
                                 "ok": passed, "cases": values}
    return report


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def format_report(report: dict) -> str:
    """One line per case and part: ``text T=77 B=5  max_abs_diff 3.1e-07``, then the verdict per part."""
    lines = []
    for part, r in report["parts"].items():
        for case, value in r["cases"].items():
            lines.append(f"  {case:<18} {report['metric']} {value:.3g}")
        relation = ">=" if report["metric"] == "min_cosine" else "<="
        verdict = "ok" if r["ok"] else "FAILED"
        lines.append(f"{part}_embeds: worst {report['metric']} {r['worst']:.3g} (bound {relation} {report['bound']:g})"
                     f" {verdict}; {r['size_bytes'] / 1e6:.2f} MB, loaded in {r['load_seconds']:.2f}s")
    return "\n".join(lines)
