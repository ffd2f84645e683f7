"""Inference precisions shared by the backends: names, accuracy bounds and the load-time check.

``fp32`` is exact. ``bf16`` computes the transformer in bfloat16 (LayerNorm, softmax, the final
projection and the normalization stay float32); ``int8`` runs the transformer's linear layers with
int8 weights (per output channel) and int8 activations quantized per call. A lower precision is
accepted for a model only when its normalized embeddings stay within :data:`MIN_COSINE` of the fp32
ones on a fixed probe batch (:func:`probe_inputs`); otherwise loading refuses with
:class:`PrecisionError` rather than return worse embeddings.
"""
from __future__ import annotations

import inspect
import os
import warnings
from typing import Optional

import numpy as np

from .cpu import native_bf16

__all__ = ["PRECISIONS", "MIN_COSINE", "PrecisionError", "check_precision", "probe_inputs", "check_embeddings",
           "min_cosine", "numpy_probe", "probe_flags", "probe_rows", "verify_precision", "PrecisionWarning",
           "warn_if_emulated"]

PRECISIONS = ("fp32", "bf16", "int8")
#: The least cosine similarity to the fp32 embeddings a precision must keep on every probe row.
MIN_COSINE = {"fp32": 1.0 - 1e-6, "bf16": 0.999, "int8": 0.99}
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "qint8": "int8", None: "fp32"}


class PrecisionError(ValueError):
    """A precision this model or backend cannot run within its accuracy bound."""


class PrecisionWarning(UserWarning):
    """A precision that keeps its accuracy bound but runs slower than fp32 on this CPU."""


_LIBRARY = tuple(os.path.join(os.path.dirname(os.path.dirname(__file__)), package, "")
                 for package in ("clip_core", "clip_torch", "clip_tf", "clip_flax", "conversion"))


def _caller_stacklevel() -> int:
    """The ``warnings.warn`` stacklevel, from this function's caller, of the first frame outside the model
    packages: the line of the user (or of ``clip_zoo``) that asked for the model."""
    frame, level = inspect.currentframe(), 0
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARY):
        frame, level = frame.f_back, level + 1
    return max(level, 1)


def warn_if_emulated(precision: str, where: str) -> bool:
    """Warn (:class:`PrecisionWarning`, at the first caller outside the model packages) when ``precision`` is
    bf16 and this CPU has no bfloat16 instructions (:func:`clip_core.cpu.native_bf16` is False): the frameworks
    emulate it there, slower than fp32. Returns whether it warned."""
    if precision != "bf16" or native_bf16() is not False:
        return False
    warnings.warn(f"{where}: this CPU has no bfloat16 instructions (its flags lack avx512_bf16, amx_bf16 and bf16), "
                  "so bf16 is emulated and runs slower than fp32 here; for speed use precision='fp32', or int8 "
                  "(clip_torch, or ONNX Runtime after `clip-zoo export --int8`). To silence: "
                  "warnings.filterwarnings('ignore', category=clip_core.precision.PrecisionWarning)",
                  PrecisionWarning, stacklevel=_caller_stacklevel())
    return True


def check_precision(precision: Optional[str], offered: tuple[str, ...] = PRECISIONS, where: str = "") -> str:
    """``precision`` as one of :data:`PRECISIONS` (``None`` -> ``fp32``), else a :class:`PrecisionError`
    naming what ``where`` (a backend) offers."""
    name = _ALIASES.get(precision, precision)
    if name not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}, choose one of {', '.join(PRECISIONS)}")
    if name not in offered:
        raise PrecisionError(f"precision {name!r} is not offered by {where or 'this backend'} (it offers "
                             f"{', '.join(offered)}); int8 runs in clip_torch, in ONNX Runtime after "
                             "`clip-zoo export --int8`, or in LiteRT after `clip-zoo export --to litert --int8`")
    return name


def probe_inputs(config, batch: int = 4, seed: int = 1234) -> dict[str, np.ndarray]:
    """A fixed probe batch: ``pixel_values`` (B, C, S, S) float32 with the spread of normalized images and
    ``input_ids`` (B, T) int64 (BOS, random tokens, EOT, zero padding) of different lengths."""
    rng = np.random.default_rng(seed)
    v, t = config.vision_config, config.text_config
    pixels = rng.normal(0.0, 1.0, (batch, v.num_channels, v.image_size, v.image_size)).astype(np.float32)
    T = min(t.max_position_embeddings, 32)
    ids = np.zeros((batch, T), np.int64)
    bos, eos = min(49406, t.vocab_size - 2), t.eos_token_id if t.eos_token_id < t.vocab_size else t.vocab_size - 1
    for b in range(batch):
        n = 4 + (b * (T - 4)) // max(batch - 1, 1)  # lengths 4 ... T
        ids[b, 0], ids[b, n - 1] = bos, eos
        ids[b, 1:n - 1] = rng.integers(1, min(bos, t.vocab_size) - 1, n - 2)
    return {"pixel_values": pixels, "input_ids": ids}


def min_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """The least row-wise cosine similarity of two (N, D) embedding matrices."""
    a = np.asarray(reference, np.float64)
    b = np.asarray(candidate, np.float64)
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=-1)))


def check_embeddings(precision: str, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                     model_name: str = "this model") -> dict[str, float]:
    """Each tower's least cosine to fp32; a :class:`PrecisionError` when one is below :data:`MIN_COSINE`."""
    found = {tower: min_cosine(reference[tower], candidate[tower]) for tower in reference}
    bound = MIN_COSINE[precision]
    for tower, cos in found.items():
        if not np.isfinite(cos) or cos < bound:
            raise PrecisionError(f"{precision} {tower} embeddings of {model_name} reach cosine {cos:.5f} to fp32 on "
                                 f"the probe batch, below the bound {bound}; use precision='fp32' (or bf16) for it")
    return found


def numpy_probe(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{"text"|"image": (B, D) float32}`` from a model whose feature methods take numpy arrays (clip_tf,
    clip_flax); a tower without them gives its ``pooler_output``, an image classifier its last hidden state."""
    out = {}
    if hasattr(model, "get_text_features"):
        out["text"] = np.asarray(model.get_text_features(inputs["input_ids"].astype(np.int32)), np.float32)
    if hasattr(model, "get_image_features"):
        out["image"] = np.asarray(model.get_image_features(inputs["pixel_values"]), np.float32)
    if not out:
        key = "input_ids" if "Text" in type(model).__name__ else "pixel_values"
        value = inputs[key].astype(np.int32) if key == "input_ids" else inputs[key]
        rows = np.asarray(probe_rows(model(**{key: value}, **probe_flags(model))), np.float32)
        out[key] = rows.reshape(len(rows), -1)
    return out


def probe_flags(model) -> dict:
    """Call flags for the probe: an image classifier is asked for its hidden states (see :func:`probe_rows`)."""
    return {"output_hidden_states": True} if "ForImageClassification" in type(model).__name__ else {}


def probe_rows(output):
    """What the probe compares for a model without feature methods: a tower's ``pooler_output``, or an image
    classifier's last hidden state (B, ...), the input of its classifier: its logits have as few columns as
    labels, too few for a cosine to mean anything (3 labels: 0.9987 for a bf16 model whose states keep 0.9999)."""
    pooled = getattr(output, "pooler_output", None)
    return pooled if pooled is not None else output.hidden_states[-1]


def verify_precision(precision: str, reference, candidate) -> dict[str, float]:
    """Check ``candidate`` (a model computing in ``precision``) against ``reference`` (the same weights in
    float32) on :func:`probe_inputs`; see :func:`check_embeddings`."""
    inputs = probe_inputs(reference.config)
    return check_embeddings(precision, numpy_probe(reference, inputs), numpy_probe(candidate, inputs),
                            type(candidate).__name__)
