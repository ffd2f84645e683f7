"""Deployable graphs of the two towers: StableHLO (``jax.export``) and ONNX (jax2onnx).

Every backend's ``export`` module has the same four functions (``export_onnx``, ``export_native``,
``export_litert``, ``load_exported``). Graphs map int32 ``input_ids`` / ``attention_mask`` (B, T) or
float32 ``pixel_values`` (B, C, H, W) to ``text_embeds`` / ``image_embeds`` (B, D), projected, not
normalized, with a symbolic batch and text length; the text graph runs the full length and pools at
the EOT position by argmax + gather (``trim`` is off: it needs concrete ids). SigLIP: the text graph
has the same inputs at the fixed context length (last-position pooling + head).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["export_onnx", "export_native", "export_litert", "load_exported"]

PathLike = Union[str, os.PathLike]
PARTS = ("image", "text")


def _siglip(model) -> bool:
    from clip_core.families import family_of

    return family_of(model.config) == "siglip"


def _function(model, part: str) -> Callable:
    """The pure function of ``part`` with the model's variables closed over."""
    variables = model.variables()
    if part == "text":
        return lambda input_ids, attention_mask: model.module.apply(
            variables, input_ids, attention_mask, method="get_text_features")
    return lambda pixel_values: model.module.apply(variables, pixel_values, method="get_image_features")


def _specs(model, part: str, batch, length) -> list[jax.ShapeDtypeStruct]:
    if part == "text" and _siglip(model):  # fixed length: the context length
        return [jax.ShapeDtypeStruct((batch, model.config.text_config.max_position_embeddings), jnp.int32)] * 2
    if part == "text":
        return [jax.ShapeDtypeStruct((batch, length), jnp.int32)] * 2
    v = model.config.vision_config
    return [jax.ShapeDtypeStruct((batch, v.num_channels, v.image_size, v.image_size), jnp.float32)]


def _names(part: str) -> tuple[list[str], list[str]]:
    """The graph's input and output names."""
    if part == "text":
        return ["input_ids", "attention_mask"], ["text_embeds"]
    return ["pixel_values"], ["image_embeds"]


def _fp32_only(dtype: str) -> None:
    if dtype != "fp32":
        raise NotImplementedError(f"{dtype} export is available from torch only: use --framework torch")


def export_native(model, directory: PathLike, parts: Sequence[str] = PARTS, dtype: str = "fp32") -> dict[str, str]:
    """Write serialized ``jax.export`` modules ``{part}.stablehlo`` (symbolic batch ``b`` and length
    ``t <= context length``); returns ``{part: file name}``."""
    _fp32_only(dtype)
    from jax import export

    limit = model.config.text_config.max_position_embeddings
    out = {}
    for part in parts:  # the length is a dimension of the text inputs only
        dims = export.symbolic_shape("b, t", constraints=[f"t <= {limit}"]) if part == "text" and not _siglip(
            model) else (*export.symbolic_shape("b"), None)  # SigLIP's text: fixed length
        exported = export.export(jax.jit(_function(model, part)))(*_specs(model, part, *dims))
        path = Path(directory) / f"{part}.stablehlo"
        path.write_bytes(exported.serialize())
        out[part] = path.name
    return out


def export_onnx(model, directory: PathLike, parts: Sequence[str] = PARTS,
                opset: Optional[int] = None, dtype: str = "fp32") -> dict[str, str]:
    """Write ``{part}.onnx`` with jax2onnx (dynamic ``B`` and ``T``); returns ``{part: file name}``."""
    _fp32_only(dtype)
    import onnx
    from jax2onnx import to_onnx

    out = {}
    for part in parts:
        inputs, outputs = _names(part)
        proto = to_onnx(_function(model, part), _specs(model, part, "B", "T"), input_names=inputs,
                        output_names=outputs, model_name=f"clip_{part}", **({"opset": opset} if opset else {}))
        path = Path(directory) / f"{part}.onnx"
        onnx.save(proto, str(path))
        out[part] = path.name
    return out


def export_litert(model, directory: PathLike, parts: Sequence[str] = PARTS, int8: bool = False) -> dict[str, str]:
    """LiteRT from JAX needs jax2tf + the TF converter, which clip-zoo does not support: export from TensorFlow."""
    raise NotImplementedError("LiteRT export is available from TensorFlow only: use --framework tf")


def load_exported(path: PathLike, part: str) -> Callable[..., np.ndarray]:
    """Reload ``{part}.stablehlo`` with ``jax.export.deserialize`` (one module for every batch and length):
    a function of numpy inputs (by name) returning numpy."""
    from jax import export

    exported = export.deserialize(bytearray(Path(path).read_bytes()))
    inputs, _ = _names(part)
    dtype = np.int32 if part == "text" else np.float32
    return lambda **arrays: np.asarray(exported.call(*[np.asarray(arrays[n], dtype) for n in inputs]))
