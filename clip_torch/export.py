"""Deployable graphs of the two towers: ONNX (dynamo exporter) and ``torch.export`` ``.pt2``.

Every backend's ``export`` module has the same four functions (``export_onnx``, ``export_native``,
``export_litert``, ``load_exported``). Each graph maps ``input_ids`` / ``attention_mask`` (B, T) or
``pixel_values`` (B, C, H, W) to ``text_embeds`` / ``image_embeds`` (B, D): projected, not normalized.
Batch and text length are dynamic; the text graph runs the full length and pools at the EOT position
by argmax + gather, with no data-dependent Python control flow (eager inference keeps its trimming).
SigLIP (``config.family == "siglip"``): the text graph takes the same two inputs at the fixed context length
(its tokenizer pads to it; the mask, as its tokenizer gives it, masks the padding in the bidirectional
encoder) and returns the head of the last position; the image graph returns the attention-pooling head's output.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

__all__ = ["export_onnx", "export_native", "export_litert", "load_exported"]

PathLike = Union[str, os.PathLike]
PARTS = ("image", "text")


class _TextEmbeds(nn.Module):
    """``(input_ids, attention_mask) -> text_embeds``: the full-length, exportable text path. Holds only the
    text tower, so an exported program carries no image weights."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.text_model, self.text_projection = model.text_model, model.text_projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.text_model(input_ids, attention_mask, full_length=True).pooler_output  # (B, C)
        return self.text_projection(pooled)  # (B, D)


class _ImageEmbeds(nn.Module):
    """``pixel_values -> image_embeds`` with the image tower only (a ResNet's pooled output is the embedding)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = None if model.config.is_resnet else model.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.visual_projection is None:
            return self.vision_model(pixel_values, False, False, False).pooler_output  # (B, D)
        pooled = self.vision_model(pixel_values, False, False, False, pooled_only=True).pooler_output  # (B, C)
        return self.visual_projection(pooled)  # (B, D)


class _SiglipText(nn.Module):
    """SigLIP ``(input_ids, attention_mask) -> text_embeds``: last-position pooling + head (the text tower only)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.text_model = model.text_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_model(input_ids, attention_mask).pooler_output  # (B, D)


class _SiglipImage(nn.Module):
    """SigLIP ``pixel_values -> image_embeds``: the attention-pooling head's output (the image tower only)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vision_model = model.vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values).pooler_output  # (B, D)


# family -> part -> wrapper module
WRAPPERS = {"clip": {"text": _TextEmbeds, "image": _ImageEmbeds},
            "siglip": {"text": _SiglipText, "image": _SiglipImage}}


def _family(model) -> str:
    from clip_core.families import family_of

    return family_of(model.config)


class _Cast(nn.Module):
    """Run ``inner`` (already converted to ``dtype``) on float32 pixels / int ids; float32 embeddings out."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner, self.dtype = inner, dtype

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        cast = [x.to(self.dtype) if x.is_floating_point() else x for x in inputs]
        return self.inner(*cast).float()  # (B, D)


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _example(model, part: str, dtype: str = "fp32") -> tuple[nn.Module, tuple, tuple]:
    """The wrapper module (weights in ``dtype``, a copy unless fp32), example inputs and dynamic shapes."""
    from torch.export import Dim

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    source = model if dtype == "fp32" else copy.deepcopy(model).to(DTYPES[dtype])
    batch, family = Dim("batch", min=1, max=65536), _family(model)
    module = WRAPPERS[family][part](source)
    t = model.config.text_config
    if part == "text" and family == "siglip":  # fixed length: the context length
        ids = torch.ones((2, t.max_position_embeddings), dtype=torch.long)
        args, dims = (ids, torch.ones_like(ids)), ({0: batch},) * 2
    elif part == "text":
        length = Dim("length", min=1, max=t.max_position_embeddings)
        ids = torch.full((2, 8), 1, dtype=torch.long)
        ids[:, -1] = t.eos_token_id
        args, dims = (ids, torch.ones_like(ids)), ({0: batch, 1: length},) * 2
    else:
        v = model.config.vision_config
        args, dims = (torch.zeros(2, v.num_channels, v.image_size, v.image_size),), ({0: batch},)
    if dtype != "fp32":  # one *inputs argument: its shapes nest one level down
        module, dims = _Cast(module, DTYPES[dtype]), (dims,)
    return module.eval(), args, dims


def _names(part: str) -> tuple[list[str], list[str]]:
    """The graph's input and output names."""
    if part == "text":
        return ["input_ids", "attention_mask"], ["text_embeds"]
    return ["pixel_values"], ["image_embeds"]


def export_onnx(model, directory: PathLike, parts: Sequence[str] = PARTS,
                opset: Optional[int] = None, dtype: str = "fp32") -> dict[str, str]:
    """Write ``{part}.onnx`` for each of ``parts`` into ``directory`` with the dynamo exporter; returns
    ``{part: file name}``. Text inputs are int64; ``dtype`` fp16 / bf16 holds weights and compute in that
    dtype with float32 pixels in and float32 embeddings out."""
    out = {}
    for part in parts:
        module, args, dynamic = _example(model, part, dtype)
        inputs, outputs = _names(part)
        path = Path(directory) / f"{part}.onnx"
        torch.onnx.export(module, args, str(path), dynamo=True, input_names=inputs, output_names=outputs,
                          dynamic_shapes=dynamic, opset_version=opset, external_data=False, verbose=False)
        out[part] = path.name
    return out


def export_native(model, directory: PathLike, parts: Sequence[str] = PARTS, dtype: str = "fp32") -> dict[str, str]:
    """Write ``torch.export`` programs ``{part}.pt2`` (``dtype`` as in :func:`export_onnx`); returns
    ``{part: file name}``."""
    out = {}
    for part in parts:
        module, args, dynamic = _example(model, part, dtype)
        program = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
        path = Path(directory) / f"{part}.pt2"
        torch.export.save(program, str(path))
        out[part] = path.name
    return out


def export_litert(model, directory: PathLike, parts: Sequence[str] = PARTS, int8: bool = False) -> dict[str, str]:
    """LiteRT from PyTorch needs ai-edge-torch, which clip-zoo does not support: export from TensorFlow."""
    raise NotImplementedError("LiteRT export is available from TensorFlow only: use --framework tf")


def load_exported(path: PathLike, part: str) -> Callable[..., np.ndarray]:
    """Reload ``{part}.pt2`` with ``torch.export.load``: a function of numpy inputs (by name) returning numpy."""
    program = torch.export.load(str(path)).module()
    inputs, _ = _names(part)

    def run(**arrays: np.ndarray) -> np.ndarray:
        args = [torch.from_numpy(np.asarray(arrays[n], np.int64 if part == "text" else np.float32)) for n in inputs]
        with torch.no_grad():
            return program(*args).float().numpy()

    return run
