"""The cross-framework parity matrix (bounds: docs/parity.md): source format x backend x architecture x reference.

Every checkpoint is built ONCE per module from the same canonical random weights
(``clip_core.testing.random_weights``): the weights are pushed into the reference implementation
(transformers PT/TF/Flax, OpenAI ``clip``, open_clip) and the reference writes its own format.
Each cell loads that file in one clip-zoo backend, runs the fixed battery of
``clip_zoo.parity`` and compares every output field the reference returns:
``<= 1e-5`` on normalized embeddings, ``<= 1e-3`` on logits, ``<= 1e-4 * max(1, max|ref|)`` on
hidden states / pooled outputs (fp32). fp16/bf16 rows use the measured bounds of
``clip_zoo.parity.BOUNDS``. Every cell's maxima go to ``tests/.parity_results.json``
(read by ``python -m clip_zoo.parity_doc``).
"""
from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import conversion
from clip_core.testing import random_weights
from clip_zoo import parity as P

from test_conversion_helpers import openai_tiny

torch = pytest.importorskip("torch")

RESULTS_PATH = Path(__file__).with_name(".parity_results.json")
RESULTS: dict[str, dict[str, Any]] = {}
BACKENDS = ["torch", "tf", "flax"]
FLAX_JIT: dict[tuple, dict] = {}
# format -> (architectures it exists for, reference that wrote it)
FORMATS = {
    "canonical": (("vit", "resnet"), {"vit": "transformers-pt", "resnet": "openai",
                                      "ViT-B/32": "transformers-pt", "RN50": "openai"}),
    "hf-safetensors": (("vit",), "transformers-pt"),
    "hf-bin": (("vit",), "transformers-pt"),
    "hf-tf-h5": (("vit",), "transformers-tf"),
    "hf-flax-msgpack": (("vit",), "transformers-flax"),
    "openai-torchscript": (("vit", "resnet"), "openai"),
    "openai-state-dict": (("vit", "resnet"), "openai"),
    "open_clip-quickgelu": (("vit", "resnet"), "open_clip"),
    "open_clip-gelu": (("vit", "resnet"), "open_clip"),
}
CELLS = [(fmt, arch, be) for fmt, (archs, _) in FORMATS.items() for arch in archs for be in BACKENDS]


def reference_name(fmt: str, arch: str) -> str:
    ref = FORMATS[fmt][1]
    return ref[arch] if isinstance(ref, dict) else ref


@pytest.fixture(scope="module", autouse=True)
def _results_file():
    """Merge this run's cells into the results JSON at module teardown (partial runs keep old cells)."""
    yield
    keys = {f"{f}/{a}/{b}/fp32" for f, a, b in CELLS} | {f"canonical/{a}/{b}/{d}" for d, a, b in LOW} | {
        f"canonical/{a}/{b}/fp32" for a, b in FULL}
    save_results(RESULTS, keys, "clip")
    shutil.rmtree(_workdir(), ignore_errors=True)
    clear_caches(globals())
    FLAX_JIT.clear()


def clear_caches(namespace: dict) -> None:
    """Empty every ``functools.lru_cache`` defined in the module of ``namespace`` (its work dir is removed
    with them): otherwise the full-size weights, reference models and outputs stay in the worker's memory
    for the rest of the run (several GB per matrix module)."""
    for value in list(namespace.values()):
        if hasattr(value, "cache_clear") and getattr(value, "__module__", None) == namespace["__name__"]:
            value.cache_clear()


def save_results(results: dict, keys: set, family: str) -> None:
    """Merge ``results`` into the results JSON: keep other families' cells, drop this family's stale ones."""
    old = json.loads(RESULTS_PATH.read_text()) if RESULTS_PATH.exists() else {}
    cells = {k: v for k, v in {**old.get("cells", {}), **results}.items()
             if k in keys or v.get("family", "clip") != family}
    RESULTS_PATH.write_text(json.dumps({"environment": P.environment(BACKENDS), "cells": cells}, indent=1))


@functools.lru_cache(maxsize=None)
def _workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="parity_matrix_"))


# ------------------------------------------------------------------ configs, weights, inputs
@functools.lru_cache(maxsize=None)
def config_for(arch: str, act: str = "quick_gelu"):
    """OpenAI-shaped tiny configs (OpenAI's build_model infers heads = width // 64); or full size."""
    from clip_core.presets import get_config

    if arch in ("ViT-B/32", "RN50"):
        return get_config(arch)
    config = openai_tiny(arch)
    config = config.replace(text_config=config.text_config.replace(hidden_act=act))
    if arch == "vit":
        config = config.replace(vision_config=config.vision_config.replace(hidden_act=act))
    return config


@functools.lru_cache(maxsize=None)
def weights_for(arch: str, act: str = "quick_gelu") -> dict[str, np.ndarray]:
    return random_weights(config_for(arch, act), seed=11)  # same draws for every format and activation


@functools.lru_cache(maxsize=None)
def inputs_for(arch: str) -> dict[str, dict[str, np.ndarray]]:
    return P.battery(config_for(arch))


def _torch_state(arch: str, act: str = "quick_gelu") -> dict:
    from conversion.openai import canonical_to_openai

    config = config_for(arch, act)
    return {k: torch.from_numpy(np.array(v)) for k, v in canonical_to_openai(weights_for(arch, act), config).items()}


# ------------------------------------------------------------------ reference models
@functools.lru_cache(maxsize=None)
def hf_torch(arch: str):
    """transformers' CLIPModel holding the canonical weights (it reads the canonical directory)."""
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(checkpoint("canonical", arch)).eval()


@functools.lru_cache(maxsize=None)
def openai_model(arch: str):
    """OpenAI's ``clip.model.build_model`` on the same weights, in fp32 (build_model rounds the weights
    to fp16, so the exact fp32 state dict is loaded again after ``.float()``)."""
    from clip.model import build_model

    state = _torch_state(arch)
    model = build_model(state).float()
    model.load_state_dict(state, strict=True)
    return model.eval()


@functools.lru_cache(maxsize=None)
def open_clip_model(arch: str, act: str):
    import open_clip

    from conversion.open_clip import config_to_open_clip

    cfg = config_to_open_clip(config_for(arch, act))["model_cfg"]
    model = open_clip.model.CLIP(**cfg)
    model.load_state_dict(_torch_state(arch, act), strict=True)
    return model.eval()


@functools.lru_cache(maxsize=None)
def hf_tf(arch: str):
    from transformers import TFCLIPModel

    return TFCLIPModel.from_pretrained(checkpoint("canonical", arch), from_pt=True)


@functools.lru_cache(maxsize=None)
def hf_flax(arch: str):
    from transformers import FlaxCLIPModel

    return FlaxCLIPModel.from_pretrained(checkpoint("canonical", arch), from_pt=True)


# ------------------------------------------------------------------ checkpoints, written by the references
def _write_canonical(arch: str, d: Path) -> None:
    conversion.save_checkpoint(d, config_for(arch), weights_for(arch), format="canonical")


def _write_hf_bin(arch: str, d: Path) -> None:
    model = hf_torch(arch)
    d.mkdir(parents=True)
    model.config.save_pretrained(d)
    torch.save(model.state_dict(), d / "pytorch_model.bin")


def _write_openai_jit(arch: str, d: Path) -> Path:
    model, arrays = openai_model(arch), inputs_for(arch)["padded"]
    traced = torch.jit.trace(model, (torch.from_numpy(arrays["pixel_values"]), _openai_ids(arrays["input_ids"], arch)),
                             check_trace=False)
    d.mkdir(parents=True)
    torch.jit.save(traced, str(d / "model.pt"))
    return d / "model.pt"


def _write_openai_sd(arch: str, d: Path) -> Path:
    d.mkdir(parents=True)
    torch.save(openai_model(arch).state_dict(), d / "model.pt")
    return d / "model.pt"


def _write_open_clip(act: str) -> Callable[[str, Path], None]:
    def write(arch: str, d: Path) -> None:
        from conversion.open_clip import config_to_open_clip

        d.mkdir(parents=True)
        (d / "open_clip_config.json").write_text(json.dumps(config_to_open_clip(config_for(arch, act))))
        torch.save(open_clip_model(arch, act).state_dict(), d / "open_clip_pytorch_model.bin")
    return write


WRITERS: dict[str, Callable[[str, Path], Any]] = {
    "canonical": _write_canonical,
    "hf-safetensors": lambda arch, d: hf_torch(arch).save_pretrained(d, safe_serialization=True),
    "hf-bin": _write_hf_bin,
    "hf-tf-h5": lambda arch, d: hf_tf(arch).save_pretrained(d),
    "hf-flax-msgpack": lambda arch, d: hf_flax(arch).save_pretrained(d),
    "openai-torchscript": _write_openai_jit,
    "openai-state-dict": _write_openai_sd,
    "open_clip-quickgelu": _write_open_clip("quick_gelu"),
    "open_clip-gelu": _write_open_clip("gelu"),
}


@functools.lru_cache(maxsize=None)
def checkpoint(fmt: str, arch: str) -> str:
    """Write ``fmt`` for ``arch`` once; returns the path a backend's ``from_pretrained`` takes."""
    d = _workdir() / f"{fmt}-{arch.replace('/', '_')}"
    path = WRITERS[fmt](arch, d)
    return str(path if isinstance(path, Path) else d)


# ------------------------------------------------------------------ reference outputs
def _openai_ids(ids: np.ndarray, arch: str) -> "torch.Tensor":
    """OpenAI / open_clip take a fixed context: pad with 0 (causal mask: EOT outputs unchanged)."""
    ctx = config_for(arch).text_config.max_position_embeddings
    out = np.zeros((ids.shape[0], ctx), np.int64)
    out[:, : ids.shape[1]] = ids
    return torch.from_numpy(out)


def _embed_outputs(model, arrays: dict, arch: str) -> dict[str, np.ndarray]:
    """encode_image / encode_text of OpenAI-style models -> normalized embeds and logits."""
    with torch.inference_mode():
        img = model.encode_image(torch.from_numpy(arrays["pixel_values"]))
        txt = model.encode_text(_openai_ids(arrays["input_ids"], arch))
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        logits = model.logit_scale.exp() * img @ txt.t()
    return {"image_embeds": img.numpy(), "text_embeds": txt.numpy(), "logits_per_image": logits.numpy(),
            "logits_per_text": logits.t().numpy()}


def _hf_outputs(framework: str, model, arrays: dict) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if framework == "torch":
        with torch.inference_mode():
            result = model(**{k: torch.from_numpy(v).long() if v.dtype.kind == "i" else torch.from_numpy(v)
                              for k, v in arrays.items()}, output_hidden_states=True)
    else:
        result = model(**arrays, output_hidden_states=True)
    P._flatten("", result, out)
    return out


@functools.lru_cache(maxsize=None)
def reference_outputs(fmt: str, arch: str) -> dict[str, np.ndarray]:
    """``{case/field: array}`` from the reference that wrote ``fmt``."""
    ref, out = reference_name(fmt, arch), {}
    for case, arrays in inputs_for(arch).items():
        if ref.startswith("transformers"):
            fw = ref.split("-")[1]
            model = {"pt": hf_torch, "tf": hf_tf, "flax": hf_flax}[fw](arch)
            got = _hf_outputs("torch" if fw == "pt" else fw, model, arrays)
        elif ref == "openai":
            got = _embed_outputs(openai_model(arch), arrays, arch)
        else:
            got = _embed_outputs(open_clip_model(arch, "gelu" if fmt.endswith("-gelu") else "quick_gelu"), arrays, arch)
        out.update({f"{case}/{k}": np.asarray(v, np.float64) for k, v in got.items()})
    return out


# ------------------------------------------------------------------ the check
def check_cell(key: str, backend: str, path: str, arch: str, fmt: str, dtype: str = "fp32", *,
               inputs: Any = None, want: Any = None, reference: Any = None, results: Any = None,
               family: str = "clip") -> None:
    """Load ``path`` in ``backend``, compare to the reference, record, assert every field in bounds.

    ``inputs`` / ``want`` / ``reference`` / ``results`` default to this module's (other matrix files pass theirs)."""
    model = P.load_model(backend, path, dtype)
    if backend == "flax":  # clip_flax jits per instance: share compiled functions between equal models
        model._jit_cache = FLAX_JIT.setdefault((model.config.to_json_string(), dtype), model._jit_cache)
    got = P.run_backend(backend, model, inputs_for(arch) if inputs is None else inputs)
    want = reference_outputs(fmt, arch) if want is None else want
    reference = reference or reference_name(fmt, arch)
    rows = P.compare({k: got[k] for k in want if k in got}, want, (backend, reference), P.BOUNDS[dtype])
    maxima: dict[str, float] = {}
    for r in rows:
        kind = P._bound_for(r.field, P.BOUNDS[dtype])[0]
        maxima[kind] = max(maxima.get(kind, 0.0), r.max_abs)
    (RESULTS if results is None else results)[key] = {
        "family": family, "format": fmt, "backend": backend, "arch": arch, "reference": reference, "dtype": dtype,
        "fields": len(rows), "max_abs": maxima, "bounds": P.BOUNDS[dtype], "passed": all(r.passed for r in rows)}
    assert len(rows) >= 4
    for r in rows:  # every field the reference produced, at its bound
        np.testing.assert_array_less(r.max_abs, r.bound + 1e-30, err_msg=f"{key}: {r.field} diverged")


@pytest.mark.parametrize("fmt,arch,backend", CELLS, ids=[f"{f}-{a}-{b}" for f, a, b in CELLS])
def test_matrix_fp32(fmt, arch, backend):
    check_cell(f"{fmt}/{arch}/{backend}/fp32", backend, checkpoint(fmt, arch), arch, fmt)


LOW = [(dt, arch, be) for dt in ("fp16", "bf16") for arch in ("vit", "resnet") for be in BACKENDS]


@pytest.mark.parametrize("dtype,arch,backend", LOW, ids=[f"{d}-{a}-{b}" for d, a, b in LOW])
def test_matrix_low_precision(dtype, arch, backend):
    """Half-precision backends vs the fp32 reference, from the canonical checkpoint."""
    check_cell(f"canonical/{arch}/{backend}/{dtype}", backend, checkpoint("canonical", arch), arch, "canonical", dtype)


FULL = [(arch, be) for arch in ("ViT-B/32", "RN50") for be in BACKENDS]


@pytest.mark.fullsize
@pytest.mark.parametrize("arch,backend", FULL, ids=[f"{a}-{b}" for a, b in FULL])
def test_matrix_fullsize(arch, backend):
    """Full-size ViT-B/32 (vs transformers PT) and RN50 (vs OpenAI), canonical format, once per backend."""
    check_cell(f"canonical/{arch}/{backend}/fp32", backend, checkpoint("canonical", arch), arch, "canonical")
