"""The SigLIP rows of the parity matrix (bounds: docs/parity.md): source format x backend x architecture.

The same machinery as ``tests/test_parity_matrix.py`` (its ``check_cell`` / ``save_results`` are imported):
every checkpoint is built ONCE per module from ``clip_core.testing.random_weights``, the weights are pushed
into transformers 4.57's ``SiglipModel`` (the reference), which writes the Hugging Face formats itself;
``canonical``, ``big_vision-npz`` and ``open_clip`` are written by clip-zoo's conversion writers from the
same weights, and their reference outputs are transformers' on those weights. Each cell loads the file in
one clip-zoo backend, runs ``clip_zoo.parity.battery`` (SigLIP's seeded ids, padded to the full context with
and without a mask; the SigLIP image processor) and compares every field transformers returns
(embeddings, logits, every hidden state, pooled outputs) at the fp32 bounds. Cells are recorded under
``siglip/...`` keys with ``"family": "siglip"`` in ``tests/.parity_results.json``.
"""
from __future__ import annotations

import functools
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import conversion
from clip_core.siglip_config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from clip_core.siglip_presets import get_siglip_config
from clip_core.testing import random_weights, tiny_siglip_config
from clip_zoo import parity as P

from test_parity_matrix import BACKENDS, _hf_outputs, check_cell, clear_caches, save_results

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

RESULTS: dict[str, dict[str, Any]] = {}
REFERENCE = "transformers-pt"
FORMATS = ("hf-safetensors", "hf-bin", "canonical", "big_vision-npz", "open_clip")
ARCHS = ("tiny", "B/16x1")  # the odd tiny config; B/16-shaped with one layer per tower and a small vocab
CELLS = [(fmt, arch, be) for fmt in FORMATS for arch in ARCHS for be in BACKENDS]
FULL = [("B/16", be) for be in BACKENDS]  # full-size SigLIP B/16 (224), canonical format


def _key(fmt: str, arch: str, backend: str) -> str:
    return f"siglip/{fmt}/{arch}/{backend}/fp32"


@pytest.fixture(scope="module", autouse=True)
def _results_file():
    """Merge this run's SigLIP cells into the shared results JSON at module teardown."""
    yield
    save_results(RESULTS, {_key(*c) for c in CELLS} | {_key("canonical", a, b) for a, b in FULL}, "siglip")
    shutil.rmtree(_workdir(), ignore_errors=True)
    clear_caches(globals())


@functools.lru_cache(maxsize=None)
def _workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="siglip_parity_matrix_"))


# ------------------------------------------------------------------ configs, weights, inputs
@functools.lru_cache(maxsize=None)
def config_for(arch: str) -> SiglipConfig:
    if arch == "tiny":
        return tiny_siglip_config()
    preset = get_siglip_config("siglip-base-patch16-224")  # 768 wide, 12 heads, 224 px, context 64
    if arch == "B/16":
        return preset
    text = SiglipTextConfig(**{**preset.text_config.to_dict(), "num_hidden_layers": 1, "vocab_size": 1000})
    vision = SiglipVisionConfig(**{**preset.vision_config.to_dict(), "num_hidden_layers": 1})
    return SiglipConfig(text_config=text, vision_config=vision)


@functools.lru_cache(maxsize=None)
def weights_for(arch: str) -> dict[str, np.ndarray]:
    return random_weights(config_for(arch), seed=11)  # the same draws for every format


@functools.lru_cache(maxsize=None)
def inputs_for(arch: str) -> dict[str, dict[str, np.ndarray]]:
    return P.battery(config_for(arch))


# ------------------------------------------------------------------ the reference and its outputs
@functools.lru_cache(maxsize=None)
def hf_torch(arch: str):
    """transformers' ``SiglipModel`` holding the canonical weights (pushed in with a strict load)."""
    model = transformers.SiglipModel(transformers.SiglipConfig.from_dict(config_for(arch).to_dict()))
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights_for(arch).items()}, strict=True)
    return model.eval()


@functools.lru_cache(maxsize=None)
def hf_towers(arch: str) -> tuple:
    """transformers' ``SiglipTextModel`` / ``SiglipVisionModel`` wrapped around the reference's own towers.

    transformers 4.57's ``SiglipModel`` ignores ``output_hidden_states`` (the recording hooks sit on these
    wrappers, not on the towers it calls), so the hidden states come from the same modules through them."""
    model = hf_torch(arch)
    with torch.device("meta"):  # the wrappers' own random towers are replaced at once
        text = transformers.SiglipTextModel(model.config.text_config)
        vision = transformers.SiglipVisionModel(model.config.vision_config)
    text.text_model, vision.vision_model = model.text_model, model.vision_model
    return text.eval(), vision.eval()


@functools.lru_cache(maxsize=None)
def reference_outputs(arch: str) -> dict[str, np.ndarray]:
    """``{case/field: array}`` from transformers on the battery (the same for every format of ``arch``)."""
    out, (text, vision) = {}, hf_towers(arch)
    for case, arrays in inputs_for(arch).items():
        got = _hf_outputs("torch", hf_torch(arch), arrays)
        texts = {k: v for k, v in arrays.items() if k != "pixel_values"}
        got |= {f"text_model_output.{k}": v for k, v in _hf_outputs("torch", text, texts).items()}
        got |= {f"vision_model_output.{k}": v
                for k, v in _hf_outputs("torch", vision, {"pixel_values": arrays["pixel_values"]}).items()}
        out.update({f"{case}/{k}": np.asarray(v, np.float64) for k, v in got.items()})
    return out


# ------------------------------------------------------------------ checkpoints
def _save(format: str, name: str = "") -> Callable[[str, Path], Path]:
    def write(arch: str, d: Path) -> Path:
        with warnings.catch_warnings():  # a canonical folder without tokenizer files is the point here
            warnings.filterwarnings("ignore", message="no SigLIP tokenizer files")
            conversion.save_checkpoint(d / name if name else d, config_for(arch), weights_for(arch), format=format)
        return d / name if name else d
    return write


WRITERS: dict[str, Callable[[str, Path], Any]] = {
    "hf-safetensors": lambda arch, d: hf_torch(arch).save_pretrained(d, safe_serialization=True),
    "hf-bin": lambda arch, d: hf_torch(arch).save_pretrained(d, safe_serialization=False),
    "canonical": _save("canonical"),
    "big_vision-npz": _save("big_vision", "params.npz"),
    "open_clip": _save("open_clip"),
}


@functools.lru_cache(maxsize=None)
def checkpoint(fmt: str, arch: str) -> str:
    """Write ``fmt`` for ``arch`` once; returns the path a backend's ``from_pretrained`` takes."""
    d = _workdir() / f"{fmt}-{arch.replace('/', '_')}"
    d.mkdir(parents=True)
    path = WRITERS[fmt](arch, d)
    return str(path if isinstance(path, Path) else d)


def _check(fmt: str, arch: str, backend: str) -> None:
    check_cell(_key(fmt, arch, backend), backend, checkpoint(fmt, arch), arch, fmt, inputs=inputs_for(arch),
               want=reference_outputs(arch), reference=REFERENCE, results=RESULTS, family="siglip")


# ------------------------------------------------------------------ the cells
def test_every_format_holds_the_same_weights():
    """Each written file reads back (clip-zoo's reader) to the canonical weights, bit for bit."""
    for fmt in FORMATS:
        config, weights = conversion.load_checkpoint(checkpoint(fmt, "tiny"))
        assert getattr(config, "family", "clip") == "siglip", fmt
        want = weights_for("tiny")
        assert set(weights) == set(want), fmt
        for name, value in want.items():
            np.testing.assert_array_equal(np.asarray(weights[name]).reshape(value.shape), value, err_msg=f"{fmt}: {name}")
    hidden = [k for k in reference_outputs("tiny") if ".hidden_states." in k]  # 2 cases x 2 towers x 3 states
    assert len(hidden) == 12, hidden


@pytest.mark.parametrize("fmt,arch,backend", CELLS, ids=[f"{f}-{a.replace('/', '')}-{b}" for f, a, b in CELLS])
def test_siglip_matrix_fp32(fmt, arch, backend):
    _check(fmt, arch, backend)


@pytest.fixture(scope="module")
def fullsize_setup() -> None:
    """The full-size checkpoint and transformers' outputs, built once in setup (the cells then time only
    loading and running one backend)."""
    for arch, _ in FULL:
        checkpoint("canonical", arch), reference_outputs(arch)


@pytest.mark.fullsize
@pytest.mark.parametrize("arch,backend", FULL, ids=[f"{a.replace('/', '')}-{b}" for a, b in FULL])
def test_siglip_matrix_fullsize(arch, backend, fullsize_setup):
    """Full-size SigLIP B/16 (224) vs transformers, canonical format, once per backend."""
    _check("canonical", arch, backend)
