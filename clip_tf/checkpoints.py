"""Checkpoint reading/writing for clip_tf through ``conversion`` (no porting code of our own):
whole or part-only checkpoints (as ``CLIPTextModel.save_pretrained`` writes them) in any format."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from clip_core.config import CLIPConfig
from clip_core.schema import schema

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
    """``(config, canonical weights)``: a whole CLIP checkpoint or one holding exactly ``part``."""
    import conversion

    return conversion.load_for_part(path, part)


def write_checkpoint(directory: PathLike, config: CLIPConfig, weights: Mapping[str, np.ndarray], part: str,
                     format: str = "canonical", dtype: Optional[str] = None) -> Path:
    """Write ``weights`` of ``part`` in ``format``; a tower / classifier only as canonical, hf or flax
    (``conversion.ConversionError`` otherwise)."""
    import conversion

    return Path(conversion.save_checkpoint(directory, config, weights, format=format, dtype=dtype, part=part))
