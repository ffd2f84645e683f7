"""``load_checkpoint`` / ``save_checkpoint``: any supported format in, any supported format out."""
from __future__ import annotations

import json
import lzma
import os
import struct
import time
import warnings
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import numpy as np

from clip_core.default_model import resolve_checkpoint
from clip_core.config import CLIPConfig
from clip_core.families import config_from_dict
from clip_core.schema import WeightMismatchError, check_weights

from . import open_clip as oc
from .detect import sniff, weights_file
from .errors import ConversionError, MissingDependencyError
from .folders import clean_beside, into_directory
from .hf import drop_legacy, read_sharded, read_tensor_file, write_extras
from .hf_flax import read_flax_msgpack, write_flax_msgpack
from .hf_tf import read_tf_h5, write_tf_h5
from .names import from_canonical, to_canonical
from .openai import canonical_to_openai, infer_config, is_openai_names, openai_to_canonical
from .safetensors_io import write_safetensors
from .siglip_names import OPEN_CLIP_IGNORED, OPEN_CLIP_SIGLIP_NAMES, is_open_clip_siglip, siglip_to_open_clip
from .tensors import OUTPUT_DTYPES
from .torch_zip import read_extra_record, write_torch_zip

__all__ = ["FORMATS", "FORMATS_BY_FAMILY", "Checkpoint", "read", "load_checkpoint", "load_for_part", "save_checkpoint",
           "default_format"]

PathLike = Union[str, os.PathLike]
FORMATS = ("canonical", "hf", "openai", "open_clip", "tf", "flax", "big_vision")
#: The formats each model family can be written in (SigLIP has no OpenAI, TF .h5 or Flax msgpack form here).
FORMATS_BY_FAMILY = {"clip": ("canonical", "hf", "openai", "open_clip", "tf", "flax"),
                     "siglip": ("canonical", "hf", "open_clip", "big_vision")}
#: Internal test hook, never read from the environment: seconds to sleep after each tensor written
#: (a test sets it in a subprocess through ``tests/hooked.py`` to kill a conversion mid-write).
_test_tick_delay = 0.0


@dataclass
class Checkpoint:
    """What :func:`read` found: detected format, config, canonical weights (memory-mapped views)."""

    format: str
    config: CLIPConfig
    weights: dict
    source: Path

    @property
    def num_parameters(self) -> int:
        return int(sum(np.size(a) for a in self.weights.values()))


#: Bytes of a JSON side file read with the weights (config.json, open_clip_config.json, *.index.json).
MAX_JSON_BYTES = 64 * 2 ** 20


def _json_file(path: Path) -> object:
    """Parse an untrusted JSON file; every failure is a one-line :class:`ConversionError` naming it."""
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ConversionError(f"{path}: {size:,} bytes is too large for a JSON side file (at most {MAX_JSON_BYTES:,})")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise ConversionError(f"{path}: not valid JSON ({type(err).__name__}: {str(err)[:200]})") from None


def _config_from(data: object, where: str) -> CLIPConfig:
    """The CLIP or SigLIP config (by ``model_type``) of an untrusted ``config.json`` dict; wrong types name
    ``where`` and the key."""
    if not isinstance(data, dict):
        raise ConversionError(f"{where}: a config must be a JSON object, got {type(data).__name__}")
    try:
        return config_from_dict(data)
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as err:
        raise ConversionError(f"{where}: invalid config: {str(err)[:300]}") from None


def _hf_config(directory: Path, file: Path, arch: Optional[str]) -> CLIPConfig:
    if arch:
        return oc.config_from_arch(arch)
    if not (directory / "config.json").is_file():
        raise ConversionError(f"{file}: Hugging Face-named weights need a config.json beside them "
                              f"(none in {directory}); pass a config or an architecture name")
    return _config_from(_json_file(directory / "config.json"), str(directory / "config.json"))


#: Record clip-zoo adds to the OpenAI ``.pt`` it writes: the exact config (OpenAI's loaders ignore it).
CONFIG_RECORD = "clip_zoo_config.json"


def _openai_config(tensors: Mapping, directory: Path, file: Path, arch: Optional[str]) -> tuple[str, CLIPConfig]:
    if arch:
        return "open_clip", oc.config_from_arch(arch)
    stored = read_extra_record(file, CONFIG_RECORD) if sniff(file) == "zip" else None
    if stored is not None:
        where = f"{file}:{CONFIG_RECORD}"
        try:
            data = json.loads(stored.decode("utf-8"))
        except (ValueError, RecursionError) as err:
            raise ConversionError(f"{where}: not valid JSON ({type(err).__name__}: {str(err)[:200]})") from None
        return "openai", _config_from(data, where)
    if (directory / oc.CONFIG_NAME).is_file():
        where = directory / oc.CONFIG_NAME
        data = _json_file(where)
        if not isinstance(data, dict) or not isinstance(data.get("model_cfg", data), dict):
            raise ConversionError(f"{where}: not an open_clip config ('model_cfg' must be a JSON object)")
        try:
            return "open_clip", oc.config_from_open_clip(data, str(where))
        except ConversionError:
            raise
        except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as err:
            raise ConversionError(f"{where}: invalid open_clip config: {str(err)[:300]}") from None
    return "openai", infer_config(tensors, str(file))


def _siglip_open_clip_config(tensors: Mapping, directory: Path, file: Path, arch: Optional[str]) -> CLIPConfig:
    """open_clip's SigLIP: an architecture name or the ``open_clip_config.json`` beside the weights."""
    if not arch and not (directory / oc.CONFIG_NAME).is_file():
        raise ConversionError(f"{file}: open_clip SigLIP weights need the {oc.CONFIG_NAME} beside them, or pass an "
                              f"architecture name (e.g. --arch ViT-B-16-SigLIP)")
    return _openai_config(tensors, directory, file, arch)[1]


def _check_index(index: Path) -> None:
    """A sharded index names shards beside it only (no absolute paths, no ``..``), as strings."""
    data = _json_file(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise ConversionError(f"{index}: not a sharded-checkpoint index (no 'weight_map' object)")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise ConversionError(f"{index}: 'weight_map' entry {name[:80]!r} is a {type(shard).__name__}, "
                                  f"not a file name")
        if shard in ("", ".", "..") or "/" in shard or "\\" in shard or Path(shard).name != shard or "\0" in shard:
            raise ConversionError(f"{index}: 'weight_map' entry {name[:80]!r} names shard {shard[:80]!r}; shards "
                                  f"must be plain file names beside the index")


def _num_labels(weights: Mapping, config: CLIPConfig, part: str) -> Optional[int]:
    if part != "classification":
        return None
    shape = np.shape(weights["classifier.weight"]) if "classifier.weight" in weights else ()
    if shape:
        return int(shape[0])
    extra = config.extra
    labels, id2label = extra.get("num_labels"), extra.get("id2label")
    if labels is not None and (type(labels) is not int or labels < 0):
        raise ConversionError(f"config: 'num_labels' must be a non-negative integer, got {type(labels).__name__}")
    if id2label is not None and not isinstance(id2label, dict):
        raise ConversionError(f"config: 'id2label' must be a JSON object, got {type(id2label).__name__}")
    return int(labels or len(id2label or {}) or 2)


#: Errors a malformed file may still provoke deep inside a parser; :func:`read` reports them in one line.
_MALFORMED = (ValueError, RecursionError, OverflowError, IndexError, KeyError, TypeError, AttributeError,
              struct.error, zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError)


def read(path: PathLike, config: Optional[CLIPConfig] = None, arch: Optional[str] = None,
         part: str = "model") -> Checkpoint:
    """Detect and read any supported checkpoint into canonical names (zero-copy where possible).

    ``part`` (``model``, ``text``, ``vision_with_projection``, ``classification`` ...) is what the
    tensors are checked against; OpenAI and open_clip checkpoints are always whole models.
    Every problem with the file — malformed, hostile or over a limit (``docs/security.md``) — is a
    :class:`ConversionError` naming the file (a :class:`WeightMismatchError` for well-formed files
    holding the wrong tensors).
    """
    path = resolve_checkpoint(path)  # a path as is; "default" / cached OpenAI names; else a clear error
    file = weights_file(path) if path.is_dir() else path
    try:
        return _read(file, config, arch, part)
    except (ConversionError, WeightMismatchError, MissingDependencyError):
        raise
    except _MALFORMED as err:
        raise ConversionError(f"{file}: malformed checkpoint ({type(err).__name__}: {str(err)[:200]})") from None
    except MemoryError:
        raise ConversionError(f"{file}: ran out of memory while reading the checkpoint") from None


def _read(file: Path, config: Optional[CLIPConfig], arch: Optional[str], part: str) -> Checkpoint:
    directory, kind = file.parent, sniff(file)
    if kind in ("hdf5", "msgpack"):
        config = config or _hf_config(directory, file, arch)
        reader = read_tf_h5 if kind == "hdf5" else read_flax_msgpack
        weights = reader(file, config, part)
        fmt = "hf-tf" if kind == "hdf5" else "hf-flax"
    elif kind == "npz":  # big_vision (SigLIP)
        from .big_vision import read_big_vision

        config, weights = read_big_vision(file, config)
        fmt = "big_vision-npz"
    elif kind in ("zip", "safetensors", "index", "pickle"):
        if kind == "index":
            _check_index(file)
        sub, tensors = read_sharded(file) if kind == "index" else read_tensor_file(file)
        if tensors and all(n.startswith("module.") for n in tensors):  # saved from DataParallel / DDP
            tensors = {n[len("module."):]: a for n, a in tensors.items()}
        if is_open_clip_siglip(tensors):
            config = config or _siglip_open_clip_config(tensors, directory, file, arch)
            weights = to_canonical(tensors, OPEN_CLIP_SIGLIP_NAMES, "vit", str(file), OPEN_CLIP_IGNORED)
            fmt = f"open_clip-{sub}"
        elif is_openai_names(tensors):
            if config is None:
                family, config = _openai_config(tensors, directory, file, arch)
            else:
                family = "open_clip" if arch or (directory / oc.CONFIG_NAME).is_file() else "openai"
            weights, fmt = openai_to_canonical(tensors, config, str(file)), f"{family}-{sub}"
        else:
            config = config or _hf_config(directory, file, arch)
            weights, fmt = drop_legacy(dict(tensors)), f"hf-{sub}"
    else:
        raise ConversionError(f"{file}: unrecognised checkpoint format (not safetensors, a torch zip archive, "
                              f"HDF5, flax msgpack or a sharded index)")
    check_weights(weights, config, part, _num_labels(weights, config, part), source=str(file))
    return Checkpoint(fmt, config, weights, file)


def load_checkpoint(path: PathLike, config: Optional[CLIPConfig] = None, *, arch: Optional[str] = None,
                    part: str = "model") -> tuple[CLIPConfig, dict[str, np.ndarray]]:
    """Read a checkpoint of any supported format into ``(config, {canonical name: array})``.

    ``config`` overrides the stored / inferred architecture; ``arch`` names one (open_clip bare
    state dicts: ``"ViT-B-32-quickgelu"``); ``part`` is what a tower-only / classification
    checkpoint must hold (see :func:`read`). Arrays keep the stored dtype and are writable,
    C-contiguous (copy-on-write views of the file where possible).
    """
    ckpt = read(path, config, arch, part)
    _check_finite(ckpt.weights, path)
    return ckpt.config, {k: v if v.flags.c_contiguous else np.ascontiguousarray(v)
                         for k, v in ckpt.weights.items()}


def _check_finite(weights: Mapping[str, np.ndarray], path: PathLike) -> None:
    """A model loaded from NaN / Inf weights would only ever print NaN scores: refuse it here, by name."""
    bad = [name for name, a in weights.items()
           if np.asarray(a).dtype.kind in "fV" and a.size and not np.isfinite(a).all()]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ConversionError(f"{path}: {len(bad)} tensor(s) hold NaN or Inf values ({shown}); the checkpoint is "
                              f"corrupt or was saved from a diverged run")


def load_for_part(path: PathLike, part: str, config: Optional[CLIPConfig] = None
                  ) -> tuple[CLIPConfig, dict[str, np.ndarray]]:
    """What a model class holding ``part`` loads: a whole CLIP checkpoint (every tensor is returned;
    the caller keeps its part's), or else one holding exactly ``part`` (as ``CLIPTextModel`` /
    ``CLIPForImageClassification`` save them). The whole-model error is raised for ``part="model"``."""
    try:
        return load_checkpoint(path, config)
    except WeightMismatchError:
        if part == "model":
            raise
    return load_checkpoint(path, config, part=part)


# ----------------------------------------------------------------------------- writing


def default_format(path: PathLike) -> str:
    """The output format a destination name implies (``.pt`` -> openai, ``.h5`` -> tf ...)."""
    suffix = Path(path).suffix
    return {".pt": "openai", ".pth": "openai", ".h5": "tf", ".msgpack": "flax", ".npz": "big_vision"}.get(suffix,
                                                                                                        "canonical")


def _ticker(progress: Optional[Callable[[str], None]]) -> Callable[[str], None]:
    delay = _test_tick_delay

    def tick(name: str) -> None:
        if progress:
            progress(name)
        if delay:
            time.sleep(delay)

    return tick


def save_checkpoint(path: PathLike, config: CLIPConfig, weights: Mapping[str, np.ndarray], format: str = "canonical",
                    dtype: Optional[str] = None, progress: Optional[Callable[[str], None]] = None,
                    part: str = "model", tokenizer_from: Optional[PathLike] = None) -> Path:
    """Write canonical ``weights`` in ``format`` (see :data:`FORMATS`), optionally cast to ``dtype``.

    The weights are checked against ``part`` of ``config`` first; nothing is written if they do not
    match. A part other than ``model`` can be written as canonical / hf / flax only.
    Every file is written atomically, a folder all-or-nothing (a new one appears only once complete,
    an existing one is swapped for the new one: :func:`~conversion.folders.into_directory`); what killed writes of
    ``path`` left beside it is cleaned up first (:func:`clean_beside`). A SigLIP's canonical / hf folder gets the
    tokenizer files of the checkpoint folder ``tokenizer_from`` (none, with a warning, without one);
    ``big_vision`` (a ``.npz`` file) is for SigLIP only, ``openai`` for CLIP only.
    """
    if format not in FORMATS:
        raise ConversionError(f"unknown output format {format!r}; expected one of {', '.join(FORMATS)}")
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise ConversionError(f"unknown dtype {dtype!r}; expected fp32, fp16 or bf16")
    num_labels = _num_labels(weights, config, part)
    check_weights(weights, config, part, num_labels, source="weights to save")
    if part != "model" and format not in ("canonical", "hf", "flax"):
        raise ConversionError(f"only a whole CLIP model can be written as {format!r}, not the {part!r} part")
    siglip = getattr(config, "family", "clip") == "siglip"
    if siglip != (format == "big_vision") and format in ("big_vision", "openai"):
        raise ConversionError(f"the {format!r} format holds {'SigLIP' if format == 'big_vision' else 'CLIP'} models "
                              f"only, this is a {'SigLIP' if siglip else 'CLIP'}; write canonical, hf or open_clip")
    path, tick = Path(path), _ticker(progress)
    if format in ("canonical", "hf"):
        into_directory(path, lambda d: _together(
            lambda: write_safetensors(d / "model.safetensors", weights, dtype=dtype, progress=tick),
            lambda: write_extras(d, config, tokenizer_from=tokenizer_from)))
    elif format == "big_vision":
        from .big_vision import write_npz

        clean_beside(path)
        write_npz(path, config, weights, dtype=dtype, progress=tick)
    elif format == "open_clip":
        into_directory(path, lambda d: _write_open_clip(d, config, weights, dtype, tick))
    elif format == "openai":
        if config.text_config.hidden_act != "quick_gelu":
            raise ConversionError(f"an OpenAI checkpoint always means QuickGELU, this model uses "
                                  f"{config.text_config.hidden_act!r}; write the open_clip format instead")
        _warn_if_not_openai_shaped(config)
        clean_beside(path)
        write_torch_zip(path, canonical_to_openai(weights, config), dtype=dtype, archive=path.stem or "archive",
                        progress=tick, extra_records={CONFIG_RECORD: config.to_json_string().encode("utf-8")})
    else:
        writer, name = (write_tf_h5, "tf_model.h5") if format == "tf" else (write_flax_msgpack, "flax_model.msgpack")
        kwargs = dict(dtype=dtype, progress=tick, part=part, num_labels=num_labels)
        if path.suffix in (".h5", ".msgpack"):
            clean_beside(path)
            writer(path, config, weights, **kwargs)
        else:
            into_directory(path, lambda d: _together(lambda: writer(d / name, config, weights, **kwargs),
                                                      lambda: write_extras(d, config, tokenizer_from=tokenizer_from)))
    return path


def _together(*jobs: Callable[[], object]) -> None:
    """Run ``jobs`` in threads (the weights are I/O-bound, the tokenizer files CPU-bound); re-raise errors."""
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()


def _warn_if_not_openai_shaped(config: CLIPConfig) -> None:
    """OpenAI's ``build_model`` infers heads / MLP width; warn when it would infer other values."""
    t, v = config.text_config, config.vision_config
    rules = [t.num_attention_heads == t.hidden_size // 64, t.intermediate_size == 4 * t.hidden_size]
    if config.is_resnet:
        rules.append(v.num_attention_heads == v.width * 32 // 64)
    else:
        rules += [v.num_attention_heads == v.hidden_size // 64, v.intermediate_size == 4 * v.hidden_size]
    if not all(rules):
        warnings.warn("this architecture does not follow OpenAI's rules (heads = width // 64, MLP = 4 x width): "
                      "OpenAI's clip.load would build a different model; clip-zoo reads the exact config "
                      f"back from the archive's {CONFIG_RECORD} record", stacklevel=3)


def _write_open_clip(directory: Path, config: CLIPConfig, weights: Mapping, dtype: Optional[str], tick) -> None:
    from clip_core.io import atomic_write_bytes

    if getattr(config, "family", "clip") == "siglip":
        tensors = from_canonical(weights, OPEN_CLIP_SIGLIP_NAMES, "vit")
        meta = siglip_to_open_clip(config, float(np.asarray(weights["logit_bias"]).reshape(-1)[0]))
    else:
        tensors, meta = canonical_to_openai(weights, config), oc.config_to_open_clip(config)
    write_safetensors(directory / oc.WEIGHT_NAMES[0], tensors, dtype=dtype, progress=tick)
    blob = json.dumps(meta, indent=2) + "\n"
    atomic_write_bytes(directory / oc.CONFIG_NAME, blob.encode("utf-8"))
