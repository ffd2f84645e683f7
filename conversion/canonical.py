"""The canonical directory (HF-loadable): config.json + model.safetensors (+ tokenizer files).

:func:`save_canonical` writes into ``directory`` file by file (each file atomic), so a backend may
put its own files beside them; :func:`load_checkpoint` is re-exported from :mod:`conversion.api`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from clip_core.config import CLIPConfig
from clip_core.schema import check_weights

from .api import load_checkpoint
from .hf import write_extras
from .safetensors_io import write_safetensors

__all__ = ["WEIGHTS_NAME", "load_checkpoint", "save_canonical"]

WEIGHTS_NAME = "model.safetensors"
PathLike = Union[str, os.PathLike]


def save_canonical(directory: PathLike, config: CLIPConfig, weights: Mapping[str, np.ndarray],
                   part: str = "model", tokenizer_from: Optional[PathLike] = None) -> Path:
    """Write ``model.safetensors``, ``config.json``, ``preprocessor_config.json`` and tokenizer files
    into ``directory`` (created if needed; other files in it are left alone). A SigLIP gets the
    tokenizer files of the checkpoint folder ``tokenizer_from`` (see :func:`conversion.hf.write_extras`)."""
    from .api import _num_labels

    check_weights(weights, config, part, _num_labels(weights, config, part), source="weights to save")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(directory / WEIGHTS_NAME, weights, metadata={"format": "pt"})
    write_extras(directory, config, tokenizer_from=tokenizer_from)
    return directory
