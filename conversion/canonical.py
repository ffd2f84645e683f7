"""The canonical directory (HF-loadable): config.json + model.safetensors (+ tokenizer files).

This first version reads and writes only the canonical safetensors directory; the conversion
issue adds every other format behind the same ``load_checkpoint`` entry point.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from clip_core.config import CLIPConfig
from clip_core.io import atomic_write_bytes

WEIGHTS_NAME = "model.safetensors"
PathLike = Union[str, os.PathLike]


def load_checkpoint(path: PathLike, config: Optional[CLIPConfig] = None) -> tuple[CLIPConfig, dict[str, np.ndarray]]:
    """Read a checkpoint into ``(config, {canonical name: array})``."""
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    directory = path if path.is_dir() else path.parent
    weights_file = path / WEIGHTS_NAME if path.is_dir() else path
    if config is None:
        config = CLIPConfig.from_pretrained(directory)
    if not weights_file.exists():
        raise FileNotFoundError(f"{directory} holds no {WEIGHTS_NAME}")
    weights = load_file(str(weights_file))
    for legacy in ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"):
        weights.pop(legacy, None)
    return config, weights


def save_canonical(directory: PathLike, config: CLIPConfig, weights: Mapping[str, np.ndarray]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (atomically) into ``directory``."""
    from safetensors.numpy import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in weights.items()}
    atomic_write_bytes(directory / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    config.save_pretrained(directory)
    return directory
