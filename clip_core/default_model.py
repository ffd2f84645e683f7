"""The bundled default model: a small CLIP trained by ``scripts/train_default_model.py`` on coloured shapes.

``clip_torch.load("default")``, ``clip_tf.load("default")`` and ``clip_flax.load("default")`` resolve the
name with :func:`default_model_path`; ``training.json`` beside the weights records the data recipe,
seed, steps and final metrics.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Optional

__all__ = ["DEFAULT_MODEL_NAME", "default_model_path", "default_model_info", "resolve_checkpoint",
           "ModelNotFoundError", "NotInHubCacheError", "resolve_hub_id", "hf_hub_cache_dir"]

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


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
HF_HUB_PREFIX = "hf-hub:"  # open_clip's prefix for a Hugging Face hub model


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache huggingface_hub uses: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``,
    else ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expanduser(os.environ[var]))
    if os.environ.get("HF_HOME"):
        return Path(os.path.expanduser(os.environ["HF_HOME"])) / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(os.path.expanduser(cache)) / "huggingface" / "hub"


_OPENAI_SHAPE = re.compile(r"^ViT-[A-Za-z]+/\d")  # "ViT-B/32"-like: an (unknown) OpenAI name, not a hub id
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".h5", ".msgpack", ".ckpt", ".json", ".npz")


def is_hub_id(name: str) -> bool:
    """``"org/name"`` (a Hugging Face model id) or open_clip's ``"hf-hub:org/name"`` (not a file name)."""
    if name.startswith(HF_HUB_PREFIX):
        return bool(_REPO_ID.match(name[len(HF_HUB_PREFIX):]))
    return (bool(_REPO_ID.match(name)) and not name.lower().endswith(_FILE_SUFFIXES)
            and not _OPENAI_SHAPE.match(name))


def resolve_hub_id(repo_id: str, revision: Optional[str] = None, cache_dir: Any = None) -> Path:
    """The snapshot directory of ``repo_id`` in the local Hugging Face cache (never downloads).

    The cache layout is huggingface_hub's: ``models--<org>--<name>/refs/<revision>`` holds a commit
    hash, ``snapshots/<hash>/`` the files. ``revision`` is a branch / tag (default ``main``) or a
    commit hash. Raises :class:`NotInHubCacheError` (one line) when it is not there.
    """
    repo_id = repo_id[len(HF_HUB_PREFIX):] if repo_id.startswith(HF_HUB_PREFIX) else repo_id
    revision = revision or "main"
    root = Path(os.path.expanduser(os.fspath(cache_dir))) if cache_dir is not None else hf_hub_cache_dir()
    repo = root / ("models--" + repo_id.replace("/", "--"))
    looked = repo
    if repo.is_dir():
        ref = repo / "refs" / revision
        commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else revision
        looked = repo / "snapshots" / commit
        if commit and looked.is_dir():
            return looked
    raise NotInHubCacheError(
        f"{repo_id!r} is not in the local Hugging Face cache ({looked}); download it with "
        f"`huggingface-cli download {repo_id}` (or transformers' from_pretrained) on a machine with network, "
        f"then retry")


def resolve_checkpoint(name_or_path: Any, download_root: Any = None, revision: Optional[str] = None,
                       cache_dir: Any = None) -> Path:
    """The local checkpoint a backend's ``load(name_or_path)`` means (nothing is ever downloaded).

    An existing path is returned as is; ``"default"`` is the bundled model; an OpenAI model name
    is looked up as OpenAI's file name in ``download_root`` (default ``~/.cache/clip``); a Hugging
    Face id (``"openai/clip-vit-base-patch32"``) or open_clip's ``"hf-hub:org/name"`` is the
    snapshot directory in the local Hugging Face cache (``cache_dir``, default
    :func:`hf_hub_cache_dir`) at ``revision`` (default ``main``). Anything else is a
    ``FileNotFoundError`` that says what was tried.
    """
    from .presets import available_models

    path = Path(os.fspath(name_or_path))
    if path.exists():
        return path
    name = str(name_or_path)
    if name == DEFAULT_MODEL_NAME:
        return default_model_path()
    if name in _OPENAI_FILES:  # before hub ids: "ViT-B/32" has the shape of one
        root = Path(download_root or os.path.expanduser("~/.cache/clip"))
        if (root / _OPENAI_FILES[name]).exists():
            return root / _OPENAI_FILES[name]
        raise FileNotFoundError(
            f"model {name!r} is not available locally (looked for {root / _OPENAI_FILES[name]}); clip-zoo never "
            f"downloads weights - pass the path of a checkpoint file or directory")
    if is_hub_id(name):
        return resolve_hub_id(name, revision=revision, cache_dir=cache_dir)
    raise ModelNotFoundError(f"Model {name} not found: no checkpoint at that path, and it is not a model name "
                             f"('default', one of {available_models()} or a Hugging Face id 'org/name')")


class ModelNotFoundError(FileNotFoundError, RuntimeError):
    """Neither a path nor a known name. A ``RuntimeError`` too, as OpenAI's ``clip.load`` raises."""


class NotInHubCacheError(ModelNotFoundError):
    """A Hugging Face hub id that is not in the local Hugging Face cache."""
