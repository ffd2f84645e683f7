"""Inference precisions (``from_pretrained(..., precision=...)``): each offered precision keeps its cosine
bound to the fp32 embeddings on random ViT-B/32 and RN50 weights, on the tiny test architectures and on the
bundled model, agrees with fp32's zero-shot top-1 on 1,000 generated images, and is refused — with a
message — where it is not offered or misses its bound."""
from __future__ import annotations

import numpy as np
import pytest

import conversion
from clip_core import precision as P
from clip_core.presets import get_config
from clip_core.testing import random_weights, tiny_resnet_config, tiny_vit_config
from tests.backend_harness import as_tensors, framework_name, pixel_inputs, text_inputs, to_numpy
from tests.conftest import backend_module

OFFERED = {"torch": ("bf16", "int8"), "tf": ("bf16",), "flax": ("bf16",)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> canonical directory: the tiny ViT / ResNet and random full-size ViT-B/32 / RN50."""
    root = tmp_path_factory.mktemp("precision")
    out = {"default": "default"}
    for name, cfg in (("tiny-vit", tiny_vit_config()), ("tiny-resnet", tiny_resnet_config()),
                      ("ViT-B/32", get_config("ViT-B/32")), ("RN50", get_config("RN50"))):
        out[name] = root / name.replace("/", "")
        conversion.save_canonical(out[name], cfg, random_weights(cfg, seed=7))
    return out


def _features(backend, model, cfg, batch=6):
    """(text, image) features of a held-out batch (not the load-time probe batch)."""
    text = text_inputs(cfg, batch=batch, padding=True, seed=99)
    x = as_tensors(backend, model, input_ids=text["input_ids"], pixel_values=pixel_inputs(cfg, batch, seed=99))
    return (to_numpy(model.get_text_features(input_ids=x["input_ids"])),
            to_numpy(model.get_image_features(pixel_values=x["pixel_values"])))


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet", "default",
                                  pytest.param("ViT-B/32", marks=pytest.mark.fullsize),
                                  pytest.param("RN50", marks=pytest.mark.fullsize)])
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_precision_keeps_its_cosine_bound(backend, checkpoints, name, precision):
    fw = framework_name(backend)
    if precision not in OFFERED[fw]:
        with pytest.raises(P.PrecisionError, match=f"not offered by clip_{fw}"):
            backend.CLIPModel.from_pretrained(checkpoints[name], precision=precision)
        return
    ref = backend.CLIPModel.from_pretrained(checkpoints[name])
    low = backend.CLIPModel.from_pretrained(checkpoints[name], precision=precision)
    for tower, a, b in zip(("text", "image"), _features(backend, ref, ref.config), _features(backend, low, ref.config)):
        cos = P.min_cosine(a, b)
        assert cos >= P.MIN_COSINE[precision], f"{name} {precision} {tower}: min cosine {cos}"
        if not (precision == "int8" and tower == "image" and ref.config.is_resnet):  # ResNet convs stay fp32
            assert cos < 1.0 - 1e-9, f"{name} {precision} {tower}: identical to fp32, the precision was not applied"


def test_a_missed_bound_refuses(backend, checkpoints, monkeypatch):
    """A precision whose embeddings fall below the bound is refused instead of loaded."""
    monkeypatch.setitem(P.MIN_COSINE, "bf16", 1.0)  # no lower precision can reach it
    with pytest.raises(P.PrecisionError, match=r"below the bound 1\.0; use precision='fp32'"):
        backend.CLIPModel.from_pretrained(checkpoints["tiny-vit"], precision="bf16")


def test_unknown_precision_is_named():
    with pytest.raises(P.PrecisionError, match="unknown precision 'fp8', choose one of fp32, bf16, int8"):
        P.check_precision("fp8")


@pytest.mark.slow
@pytest.mark.parametrize("framework,precision", [(fw, p) for fw, offered in OFFERED.items() for p in offered])
def test_zero_shot_agrees_with_fp32_on_1000_images(framework, precision):
    """The bundled model's zero-shot top-1 on 1,000 generated shape images: >= 99% the same as fp32."""
    from clip_core import CLIPImageProcessor, CLIPTokenizer
    from clip_core.default_model import default_model_path
    from clip_core.shapes import label_names, render_index

    backend = backend_module(framework)
    path = default_model_path()
    processor, tokenizer = CLIPImageProcessor.from_pretrained(path), CLIPTokenizer.from_pretrained(path)
    labels = label_names()
    images = [render_index(11, i, i % len(labels)) for i in range(1000)]
    pixels = processor(images, return_tensors="np")["pixel_values"]
    ids = tokenizer([f"a photo of a {label}" for label in labels], padding=True, return_tensors="np")["input_ids"]
    preds = {}
    for name, kwargs in (("fp32", {}), (precision, {"precision": precision})):
        model = backend.CLIPModel.from_pretrained(path, **kwargs)
        text = to_numpy(model.get_text_features(**as_tensors(backend, model, input_ids=ids)))
        image = np.concatenate([to_numpy(model.get_image_features(**as_tensors(backend, model, pixel_values=pixels[i:i + 250])))
                                for i in range(0, 1000, 250)])
        preds[name] = np.argmax(image @ text.T, axis=1)
    agree = float(np.mean(preds["fp32"] == preds[precision]))
    assert agree >= 0.99, f"{precision}: zero-shot top-1 agrees with fp32 on {agree:.1%} of 1,000 images"
