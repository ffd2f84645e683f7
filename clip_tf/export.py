"""SavedModel with serving signatures, and the deployable graphs built from it: ONNX (tf2onnx from the
SavedModel signature; Keras 3 ``from_keras`` is broken upstream, tensorflow-onnx #2329) and LiteRT
(builtin ops only).

Every backend's ``export`` module has the same four functions (``export_onnx``, ``export_native``,
``export_litert``, ``load_exported``); ``export_saved_model`` is this backend's earlier entry point.
Graphs map int32 ``input_ids`` / ``attention_mask`` (B, T) or float32 ``pixel_values`` to
``text_embeds`` / ``image_embeds`` (B, D), projected, not normalized, with a dynamic batch and length.
SigLIP: the text signature has the same inputs at the fixed context length (last-position pooling + head);
the image signature returns the attention-pooling head's output.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

__all__ = ["export_saved_model", "export_onnx", "export_native", "export_litert", "load_exported"]

PathLike = Union[str, os.PathLike]
PARTS = ("image", "text")
SIGNATURES = {"text": "get_text_features", "image": "get_image_features"}
_TEXT_SPEC = [tf.TensorSpec([None, None], tf.int32, name="input_ids"),
              tf.TensorSpec([None, None], tf.int32, name="attention_mask")]


def _text_spec(model) -> list:
    """The text signature's inputs: ids + mask, of any length (CLIP) or the context length (SigLIP)."""
    if getattr(model, "family", "clip") != "siglip":
        return _TEXT_SPEC
    length = model.config.text_config.max_position_embeddings
    return [tf.TensorSpec([None, length], tf.int32, name=s.name) for s in _TEXT_SPEC]


def _endpoints(model, full_length: bool) -> dict:
    """``{part: (function of the signature's inputs -> embeddings, input signature)}`` for the model's family."""
    if getattr(model, "family", "clip") == "siglip":
        return {"text": (lambda ids, mask: model.get_text_features(ids, mask), _text_spec(model)),
                "image": (model.get_image_features, [model._pixel_spec()])}
    out = {}
    if hasattr(model, "_text_features_prefix"):
        out["text"] = (model._text_features if full_length else model._text_features_prefix, _TEXT_SPEC)
    if hasattr(model, "_image_features"):
        out["image"] = (model._image_features, [model._pixel_spec()])
    return out


def _named(fn: Callable, key: str) -> Callable:
    """``fn`` returning ``{key: fn(...)}`` (the signature's output name)."""
    return lambda *args: {key: fn(*args)}


def export_saved_model(model, path: PathLike, full_length: bool = False,
                       parts: Sequence[str] = PARTS) -> str:
    """Write a SavedModel with signatures ``get_text_features`` (int ``input_ids`` (B, T) and
    ``attention_mask`` in) and ``get_image_features`` (float32 pixels (B, C, H, W) in), each returning
    ``{"text_embeds" | "image_embeds": (B, projection_dim)}``. Text runs only up to the last EOT unless
    ``full_length`` (a static graph for converters: EOT pooling by gather, no dynamic slice).

    Reload with ``tf.saved_model.load(path).signatures["get_text_features"](input_ids=..., attention_mask=...)``.
    """
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    for part, (fn, spec) in _endpoints(model, full_length).items():
        if part in parts:
            archive.add_endpoint(SIGNATURES[part], _named(fn, f"{part}_embeds"), input_signature=spec)
    archive.write_out(str(path), verbose=False)
    return str(path)


def _fp32_only(dtype: str) -> None:
    if dtype != "fp32":
        raise NotImplementedError(f"{dtype} export is available from torch only: use --framework torch")


def export_native(model, directory: PathLike, parts: Sequence[str] = PARTS, dtype: str = "fp32") -> dict[str, str]:
    """Write one SavedModel ``saved_model/`` holding the signatures of ``parts``; returns ``{part: "saved_model"}``."""
    _fp32_only(dtype)
    export_saved_model(model, Path(directory) / "saved_model", parts=parts)
    return {part: "saved_model" for part in parts}


def _onnx_part(signature, part: str, spec: list, path: Path, opset: Optional[int]) -> None:
    import tf2onnx

    names = [s.name for s in spec]
    fn = tf.function(lambda *args: signature(**dict(zip(names, args))))
    tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset, output_path=str(path))


def export_onnx(model, directory: PathLike, parts: Sequence[str] = PARTS,
                opset: Optional[int] = None, dtype: str = "fp32") -> dict[str, str]:
    """Write ``{part}.onnx`` with tf2onnx from a full-length SavedModel's signatures; returns ``{part: file name}``."""
    _fp32_only(dtype)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        export_saved_model(model, Path(tmp) / "sm", full_length=True, parts=parts)
        loaded = tf.saved_model.load(str(Path(tmp) / "sm"))
        for part in parts:
            spec = _text_spec(model) if part == "text" else [model._pixel_spec()]
            path = Path(directory) / f"{part}.onnx"
            _onnx_part(loaded.signatures[SIGNATURES[part]], part, spec, path, opset)
            out[part] = path.name
    return out


def export_litert(model, directory: PathLike, parts: Sequence[str] = PARTS, int8: bool = False) -> dict[str, str]:
    """Write ``{part}.tflite`` (LiteRT builtin ops only, no Flex) from a full-length SavedModel; returns
    ``{part: file name}``. The signature keeps the SavedModel's name and input / output names.

    ``int8``: LiteRT's dynamic-range quantization (``Optimize.DEFAULT`` without a representative dataset):
    weights int8 per output channel, activations quantized per call by the kernels, float32 in and out."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        export_saved_model(model, Path(tmp) / "sm", full_length=True, parts=parts)
        for part in parts:
            conv = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "sm"), signature_keys=[SIGNATURES[part]])
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            if int8:
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
            path = Path(directory) / f"{part}.tflite"
            path.write_bytes(conv.convert())
            out[part] = path.name
    return out


def load_exported(path: PathLike, part: str) -> Callable[..., np.ndarray]:
    """Reload a SavedModel directory (``tf.saved_model.load``) or a ``.tflite`` file (one LiteRT interpreter
    on every core, as TensorFlow runs: the interpreter's own default is one thread): a function of numpy
    inputs (by name) returning numpy."""
    output = "text_embeds" if part == "text" else "image_embeds"
    dtype = np.int32 if part == "text" else np.float32
    if str(path).endswith(".tflite"):
        interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
        runner = interpreter.get_signature_runner(SIGNATURES[part])
        return lambda **arrays: runner(**{k: np.asarray(v, dtype) for k, v in arrays.items()})[output]
    loaded = tf.saved_model.load(str(path))  # kept alive by the closure: the signature needs its variables

    def run(**arrays: np.ndarray) -> np.ndarray:
        feed = {k: tf.constant(np.asarray(v, dtype)) for k, v in arrays.items()}
        return loaded.signatures[SIGNATURES[part]](**feed)[output].numpy()

    return run
