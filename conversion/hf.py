"""Flat tensor files in any naming (safetensors, torch ``.bin``/``.pt``, sharded ``*.index.json``)
and the canonical / Hugging Face directory written around ``model.safetensors``."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from clip_core.config import CLIPConfig
from clip_core.io import atomic_write_bytes

from .errors import ConversionError
from .safetensors_io import read_safetensors
from .torch_zip import ZIP_MAGIC, read_torch_zip

__all__ = ["LEGACY", "read_tensor_file", "read_sharded", "drop_legacy", "write_extras", "preprocessor_config",
           "siglip_preprocessor_config", "SIGLIP_TOKENIZER_FILES"]

#: Keys old Hugging Face checkpoints carry that are not parameters.
LEGACY = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def read_tensor_file(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """``(kind, tensors)`` of one safetensors or torch zip file, by content."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:4] == ZIP_MAGIC:
        return read_torch_zip(path)
    from .safetensors_io import is_safetensors

    if is_safetensors(head):
        return "safetensors", read_safetensors(path)
    if head[:1] == b"\x80":
        from .torch_legacy import read_legacy_torch

        return "legacy_state_dict", read_legacy_torch(path)
    raise ConversionError(f"{path}: unrecognised tensor file (expected safetensors or a torch zip archive)")


def read_sharded(index: Path) -> tuple[str, dict[str, np.ndarray]]:
    """Merge the shards listed in a ``*.index.json`` ``weight_map``; every listed tensor must exist."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ConversionError(f"{index}: not a sharded-checkpoint index ({err})") from None
    out: dict[str, np.ndarray] = {}
    kind = "sharded"
    for shard in sorted(set(weight_map.values())):
        shard_path = index.parent / shard
        if not shard_path.exists():
            raise ConversionError(f"{index}: shard {shard_path} is missing")
        kind, tensors = read_tensor_file(shard_path)
        for name, file in weight_map.items():
            if file == shard and name not in tensors:
                raise ConversionError(f"{shard_path}: tensor {name!r} listed in {index.name} is missing")
        out.update(tensors)
    return f"sharded-{kind}", out


def drop_legacy(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for name in LEGACY:
        tensors.pop(name, None)
    return tensors


def preprocessor_config(config: CLIPConfig) -> dict:
    """Hugging Face ``CLIPImageProcessor`` settings for ``config``'s image size (OpenAI's normalisation)."""
    size = config.vision_config.image_size
    return {"crop_size": {"height": size, "width": size}, "do_center_crop": True, "do_convert_rgb": True,
            "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
            "image_processor_type": "CLIPImageProcessor", "resample": 3, "rescale_factor": 1 / 255,
            "size": {"shortest_edge": size}}


#: A SigLIP checkpoint's own tokenizer files (SentencePiece / Gemma), copied as they are.
SIGLIP_TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                          "special_tokens_map.json")


def siglip_preprocessor_config(config) -> dict:
    """Hugging Face ``SiglipImageProcessor`` settings: squash-resize (bilinear), rescale, mean/std 0.5, no crop."""
    size = config.vision_config.image_size
    return {"do_convert_rgb": None, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "image_processor_type": "SiglipImageProcessor",
            "processor_class": "SiglipProcessor", "resample": 2, "rescale_factor": 1 / 255,
            "size": {"height": size, "width": size}}


def _copy_siglip_tokenizer(directory: Path, source) -> None:
    """Copy the source checkpoint's tokenizer files; warn when there are none (SigLIP has no bundled one)."""
    found = [Path(source) / n for n in SIGLIP_TOKENIZER_FILES if source and (Path(source) / n).is_file()]
    for file in found:
        atomic_write_bytes(directory / file.name, file.read_bytes())
    if not found:
        warnings.warn(f"no SigLIP tokenizer files written (the source checkpoint folder has none of "
                      f"{', '.join(SIGLIP_TOKENIZER_FILES)}); copy the model's own tokenizer files there", stacklevel=2)


def write_extras(directory: Path, config: CLIPConfig, tokenizer: bool = True, tokenizer_from=None) -> None:
    """``config.json``, ``preprocessor_config.json`` and tokenizer files: clip_core's CLIP tokenizer (if it
    has one), a SigLIP's own copied from the checkpoint folder ``tokenizer_from``."""
    config.save_pretrained(directory)
    siglip = getattr(config, "family", "clip") == "siglip"
    settings = siglip_preprocessor_config(config) if siglip else preprocessor_config(config)
    blob = json.dumps(settings, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(directory / "preprocessor_config.json", blob.encode("utf-8"))
    if tokenizer and siglip:
        _copy_siglip_tokenizer(directory, tokenizer_from)
    elif tokenizer:
        try:
            from clip_core.tokenizer import CLIPTokenizer
        except ImportError:
            return
        CLIPTokenizer().save_pretrained(str(directory))


