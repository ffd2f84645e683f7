"""big_vision ``.npz`` SigLIP checkpoints: read (``np.load(allow_pickle=False)``, headers checked first),
write (atomic, one tensor at a time) and the config inferred from the tensor shapes.

The names and layouts are rows of :data:`conversion.siglip_names.BIG_VISION_NAMES`; this module only
moves arrays in and out of the file and checks them against the shapes those rows imply.
"""
from __future__ import annotations

import dataclasses
import math
import re
import zipfile
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from clip_core.io import atomic_open
from clip_core.schema import parameter_shapes
from clip_core.siglip_config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from clip_core.siglip_presets import get_siglip_config, siglip_models

from .errors import ConversionError
from .names import from_canonical, to_canonical
from .siglip_names import BIG_VISION_NAMES, head_dims
from .tensors import MAX_COMPRESSION_RATIO, MAX_TENSORS, LimitExceededError, cast, check_name, checked_nbytes

__all__ = ["is_npz", "read_npz", "write_npz", "infer_siglip_config", "read_big_vision", "PREFIX"]

#: big_vision's parameter tree root (``params/img/...``); files without it are read too.
PREFIX = "params/"
#: dtypes a big_vision parameter may have (anything else, object arrays above all, is refused).
_DTYPES = ("float16", "float32", "float64")
_NO_MATCH = re.compile(r"(?!)")


def is_npz(path: Path) -> bool:
    """A zip archive whose members are all ``.npy`` arrays (by name: ``np.savez`` writes nothing else)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return bool(names) and all(n.endswith(".npy") for n in names)


def _check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> None:
    """Refuse a member before loading it: compression bombs, object / odd dtypes, too-large shapes."""
    if info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1) and info.file_size > 2 ** 20:
        raise LimitExceededError(f"{where}: decompresses {info.file_size / max(info.compress_size, 1):.0f}x "
                                 f"(more than {MAX_COMPRESSION_RATIO}x is refused)")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(f, max_header_size=10000)
    if dtype.hasobject:
        raise ConversionError(f"{where}: a pickled object array (refused: loading it would run code from the file)")
    if dtype.newbyteorder("=").name not in _DTYPES:
        raise ConversionError(f"{where}: dtype {dtype} is not a parameter dtype ({', '.join(_DTYPES)})")
    nbytes = checked_nbytes(shape, dtype, where)
    if nbytes > info.file_size:
        raise ConversionError(f"{where}: shape {shape} needs {nbytes:,} bytes, the file holds {info.file_size:,}")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """``{name: array}`` of an ``.npz`` (names with the ``params/`` root), every member checked first."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise ConversionError(f"{path}: not a readable .npz archive ({str(err)[:200]})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ConversionError(f"{path}: a single .npy array, not a big_vision .npz parameter tree")
    with npz:
        if len(npz.files) > MAX_TENSORS:
            raise LimitExceededError(f"{path}: {len(npz.files):,} arrays (at most {MAX_TENSORS:,})")
        out = {}
        for key in npz.files:
            where = f"{path}: {check_name(key, str(path))}"
            try:
                _check_member(npz.zip, npz.zip.getinfo(key + ".npy"), where)
                a = npz[key]
            except (ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
                raise ConversionError(f"{where}: unreadable array ({str(err)[:200]})") from None
            out[key] = a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))
    if out and not any(k.startswith(PREFIX) for k in out):
        out = {PREFIX + k: a for k, a in out.items()}
    return out


def _shape(t: Mapping[str, np.ndarray], key: str, ndim: int, source: str) -> tuple:
    if key not in t:
        raise ConversionError(f"{source}: missing tensor {key!r} (not a big_vision SigLIP parameter tree?)")
    shape = tuple(np.shape(t[key]))
    if len(shape) != ndim:
        raise ConversionError(f"{source}: tensor {key!r} has shape {shape}, expected {ndim} dimensions")
    return shape


def _tower(t: Mapping[str, np.ndarray], enc: str, source: str) -> tuple[int, int, int]:
    """``(layers, heads, mlp)`` of one big_vision encoder (``params/img/Transformer`` ...)."""
    block = re.compile(re.escape(enc) + r"/encoderblock_(\d+)/LayerNorm_0/scale")
    layers = len({m.group(1) for m in map(block.fullmatch, t) if m})
    heads = _shape(t, f"{enc}/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel", 3, source)[1]
    mlp = _shape(t, f"{enc}/encoderblock_0/MlpBlock_0/Dense_0/kernel", 2, source)[1]
    return layers, heads, mlp


def infer_siglip_config(t: Mapping[str, np.ndarray], source: str) -> tuple[SiglipConfig, Optional[str]]:
    """The SigLIP config the tensor shapes describe, and the preset it equals (its image size) if any."""
    patch, _, channels, width = _shape(t, "params/img/embedding/kernel", 4, source)
    positions = _shape(t, "params/img/pos_embedding", 3, source)[1]
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise ConversionError(f"{source}: tensor 'params/img/pos_embedding' has {positions} positions, "
                              f"not a square grid")
    layers, heads, mlp = _tower(t, "params/img/Transformer", source)
    vision = SiglipVisionConfig(hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers,
                                num_attention_heads=heads, num_channels=channels, image_size=grid * patch,
                                patch_size=patch, vision_use_head=any(k.startswith("params/img/MAPHead_0/") for k in t))
    vocab, text_width = _shape(t, "params/txt/Embed_0/embedding", 2, source)
    context = _shape(t, "params/txt/pos_embedding", 3, source)[1]
    layers, heads, mlp = _tower(t, "params/txt/Encoder_0", source)
    projection = _shape(t, "params/txt/head/kernel", 2, source)[1]
    text = SiglipTextConfig(vocab_size=vocab, hidden_size=text_width, intermediate_size=mlp, num_hidden_layers=layers,
                            num_attention_heads=heads, max_position_embeddings=context, projection_size=projection)
    return _preset(SiglipConfig(text_config=text, vision_config=vision))


def _preset(config: SiglipConfig) -> tuple[SiglipConfig, Optional[str]]:
    """A released preset with these shapes (``384`` px at patch 14 has a 27 x 27 grid: same tensors)."""
    v = config.vision_config
    for name in siglip_models():
        p = get_siglip_config(name)
        pv = p.vision_config
        if p.text_config == config.text_config and pv.patch_size == v.patch_size and \
                pv.image_size // pv.patch_size == v.image_size // v.patch_size and \
                dataclasses.replace(pv, image_size=v.image_size) == v:
            return p, name
    return config, None


def _expected_shapes(config: SiglipConfig) -> dict[str, tuple]:
    """big_vision name -> shape for ``config`` (the rows' inverse applied to empty canonical arrays)."""
    empty = {n: np.broadcast_to(np.float32(0), s) for n, s in parameter_shapes(config).items()}  # no memory
    return {n: a.shape for n, a in from_canonical(empty, BIG_VISION_NAMES, "vit", head_dims(config)).items()}


def read_big_vision(path: Path, config: Optional[SiglipConfig] = None) -> tuple[SiglipConfig, dict[str, np.ndarray]]:
    """``(config, canonical weights)`` of a big_vision ``.npz``; each missing / mis-shaped key is named."""
    tensors = read_npz(path)
    config = config or infer_siglip_config(tensors, str(path))[0]
    expected = _expected_shapes(config)
    for key, shape in expected.items():
        if key not in tensors:
            raise ConversionError(f"{path}: missing tensor {key!r}")
        if tuple(tensors[key].shape) != shape:
            raise ConversionError(f"{path}: tensor {key!r} has shape {tuple(tensors[key].shape)}, expected {shape}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ConversionError(f"{path}: unexpected tensor(s) {', '.join(extra[:10])} (no SigLIP parameter)")
    return config, to_canonical(tensors, BIG_VISION_NAMES, "vit", str(path), _NO_MATCH)


def write_npz(path: Path, config: SiglipConfig, weights: Mapping[str, np.ndarray], dtype: Optional[str] = None,
              progress: Optional[Callable[[str], None]] = None) -> None:
    """Write canonical SigLIP ``weights`` as a big_vision ``.npz`` (uncompressed, atomically)."""
    if dtype == "bf16":
        raise ConversionError("a big_vision .npz holds numpy dtypes (fp32 / fp16); bf16 is not one, pick another")
    arrays = from_canonical(weights, BIG_VISION_NAMES, "vit", head_dims(config))
    with atomic_open(path) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(cast(np.asarray(a), dtype)), allow_pickle=False)
            if progress:
                progress(name)
