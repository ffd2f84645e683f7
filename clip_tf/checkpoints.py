"""Checkpoint reading/writing for clip_tf through ``conversion`` (no porting code of our own).

``conversion.load_checkpoint`` / ``save_checkpoint`` check tensors against the whole CLIP model;
tower-only and classification checkpoints (as ``CLIPTextModel.save_pretrained`` writes them) go
through conversion's file readers/writers directly and are checked strictly by the schema here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from clip_core.config import CLIPConfig
from clip_core.schema import WeightMismatchError, schema

__all__ = ["read_checkpoint", "write_checkpoint", "select_part"]

PathLike = Union[str, os.PathLike]


def select_part(weights: Mapping[str, np.ndarray], config: CLIPConfig, part: str,
                num_labels: Optional[int]) -> dict[str, np.ndarray]:
    """Drop the tensors that belong to other parts (other tower, projections, classifier); keep unknowns
    so the strict check still names them."""
    mine = set(schema(config, part, num_labels))
    others = set(schema(config, "model")) | {"classifier.weight", "classifier.bias"}
    return {k: v for k, v in weights.items() if k in mine or k not in others}


def read_checkpoint(path: PathLike, part: str) -> tuple[CLIPConfig, dict[str, np.ndarray]]:
    """``(config, canonical weights)`` of any format; part-only HF checkpoints for tower classes."""
    import conversion

    try:
        return conversion.load_checkpoint(path)
    except WeightMismatchError:
        if part == "model":
            raise
    from conversion.detect import sniff, weights_file
    from conversion.hf import drop_legacy, read_sharded, read_tensor_file

    path = Path(path)
    file = weights_file(path) if path.is_dir() else path
    kind = sniff(file)
    if kind not in ("zip", "safetensors", "index"):
        raise ValueError(f"{file}: a part-only checkpoint must be safetensors, sharded or pytorch_model.bin")
    _, tensors = read_sharded(file) if kind == "index" else read_tensor_file(file)
    return CLIPConfig.from_pretrained(file.parent), drop_legacy(dict(tensors))


def write_checkpoint(directory: PathLike, config: CLIPConfig, weights: Mapping[str, np.ndarray], part: str,
                     format: str = "canonical", dtype: Optional[str] = None) -> Path:
    """Write ``weights`` of ``part`` in ``format`` (a tower / classifier only as the canonical directory)."""
    import conversion

    if part == "model":
        return Path(conversion.save_checkpoint(directory, config, weights, format=format, dtype=dtype))
    if format not in ("canonical", "hf"):
        raise NotImplementedError(f"only a whole CLIPModel can be written as {format!r}; "
                                  f"a {part} part is written as the canonical directory")
    from conversion.hf import write_extras
    from conversion.safetensors_io import write_safetensors

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(directory / "model.safetensors", weights, metadata={"format": "pt"}, dtype=dtype)
    write_extras(directory, config)
    return directory
