"""The bundled default model: a small CLIP trained by ``scripts/train_default_model.py`` on coloured shapes.

``clip_torch.load("default")``, ``clip_tf.load("default")`` and ``clip_flax.load("default")`` resolve the
name with :func:`default_model_path`; ``training.json`` beside the weights records the data recipe,
seed, steps and final metrics.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_MODEL_NAME", "default_model_path", "default_model_info", "resolve_checkpoint",
           "ModelNotFoundError"]

DEFAULT_MODEL_NAME = "default"
_DIR = Path(__file__).resolve().parent / "data" / "default"


def default_model_path() -> Path:
    """The directory of the bundled model (canonical format: config.json + model.safetensors + ...)."""
    if not (_DIR / "config.json").is_file() or not (_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the bundled default model is missing from {_DIR}; rebuild it with "
            "`python scripts/train_default_model.py`")
    return _DIR


def default_model_info() -> dict[str, Any]:
    """The bundled model's ``training.json`` (data recipe, seed, steps, time, final metrics)."""
    return json.loads((default_model_path() / "training.json").read_text(encoding="utf-8"))


# OpenAI's file names, as `clip.load` caches them under ~/.cache/clip.
_OPENAI_FILES = {
    "RN50": "RN50.pt", "RN101": "RN101.pt", "RN50x4": "RN50x4.pt", "RN50x16": "RN50x16.pt",
    "RN50x64": "RN50x64.pt", "ViT-B/32": "ViT-B-32.pt", "ViT-B/16": "ViT-B-16.pt",
    "ViT-L/14": "ViT-L-14.pt", "ViT-L/14@336px": "ViT-L-14-336px.pt",
}


def resolve_checkpoint(name_or_path: Any, download_root: Any = None) -> Path:
    """The local checkpoint a backend's ``load(name_or_path)`` means.

    An existing path is returned as is; ``"default"`` is the bundled model; an OpenAI model name
    is looked up (never downloaded) as OpenAI's file name in ``download_root`` (default
    ``~/.cache/clip``). Anything else is a ``FileNotFoundError`` that says what was tried.
    """
    import os

    from .presets import available_models

    path = Path(os.fspath(name_or_path))
    if path.exists():
        return path
    name = str(name_or_path)
    if name == DEFAULT_MODEL_NAME:
        return default_model_path()
    if name in _OPENAI_FILES:
        root = Path(download_root or os.path.expanduser("~/.cache/clip"))
        if (root / _OPENAI_FILES[name]).exists():
            return root / _OPENAI_FILES[name]
        raise FileNotFoundError(
            f"model {name!r} is not available locally (looked for {root / _OPENAI_FILES[name]}); clip-zoo never "
            f"downloads weights - pass the path of a checkpoint file or directory")
    raise ModelNotFoundError(f"Model {name} not found: no checkpoint at that path, and it is not a model name "
                             f"('default' or one of {available_models()})")


class ModelNotFoundError(FileNotFoundError, RuntimeError):
    """Neither a path nor a known name. A ``RuntimeError`` too, as OpenAI's ``clip.load`` raises."""
