"""The bundled default model: ≥90% zero-shot top-1 on 500 fresh shapes in every installed backend,
identical predictions across backends, `load("default")`, and the README's first command on examples/."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from clip_core import CLIPImageProcessor, shapes
from clip_core import zero_shot as zs
from clip_core.default_model import default_model_info, default_model_path

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT_SEED = 777_001  # neither the training seed nor the evaluation seed in training.json
N_HELD_OUT = 500
FRAMEWORKS = {"torch": "torch", "flax": "flax", "tf": "tensorflow"}


def _installed(framework: str) -> bool:
    return importlib.util.find_spec(FRAMEWORKS[framework]) is not None


@pytest.fixture(scope="module")
def held_out():
    data = shapes.generate(N_HELD_OUT, seed=HELD_OUT_SEED, size=64)
    proc = CLIPImageProcessor.from_pretrained(default_model_path())
    return data, proc(data.images, return_tensors="np")["pixel_values"]


@pytest.fixture(scope="module")
def results(held_out):
    """Per installed backend: (predictions, image embeddings, classifier) on the held-out set."""
    from clip_zoo.engines import load_encoder

    _, pixels = held_out
    out = {}
    for framework in FRAMEWORKS:
        if not _installed(framework):
            continue
        enc = load_encoder("default", framework)
        weights = zs.build_zero_shot_weights(enc.encode_texts, shapes.label_names(), [shapes.CAPTION_TEMPLATE])
        images = enc.encode_images(pixels)
        out[framework] = (zs.zero_shot_logits(images, weights).argmax(1), images, weights)
    return out


def test_bundled_files_and_record():
    path = default_model_path()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "training.json"):
        assert (path / name).is_file(), name
    assert (path / "model.safetensors").stat().st_size < 12_000_000
    info = default_model_info()
    assert info["training"]["seed"] == 0 and info["training"]["steps"] > 0
    assert info["data"]["eval_seed"] != HELD_OUT_SEED and info["data"]["train_seed"] != HELD_OUT_SEED
    proc = CLIPImageProcessor.from_pretrained(path)
    assert proc.mode == "openai" and proc.crop_size == {"height": 64, "width": 64}


def test_recorded_metric_at_least_90_percent():
    assert default_model_info()["metrics"]["zero_shot_top1_caption_template"] >= 0.9


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_zero_shot_top1_at_least_90_percent(framework, results, held_out):
    if framework not in results:
        pytest.skip(f"{framework} is not installed")
    data, _ = held_out
    accuracy = float((results[framework][0] == data.label_ids).mean())
    assert accuracy >= 0.9, f"{framework}: zero-shot top-1 {accuracy:.3f} on {N_HELD_OUT} held-out images"


def test_backends_agree(results):
    if len(results) < 2:
        pytest.skip("needs two installed backends")
    (ref_name, (ref_pred, ref_img, ref_w)), *others = sorted(results.items())
    for name, (pred, img, w) in others:
        np.testing.assert_array_equal(pred, ref_pred, err_msg=f"{name} vs {ref_name}")
        np.testing.assert_allclose(img, ref_img, atol=1e-5, err_msg=f"{name} vs {ref_name}")
        np.testing.assert_allclose(w, ref_w, atol=1e-5, err_msg=f"{name} vs {ref_name}")


def test_openai_style_load_default(backend):
    """`load("default")` in each backend gives the bundled model and its 64-px preprocessing."""
    model, preprocess = backend.load("default")
    assert tuple(np.asarray(preprocess(shapes.generate(1, seed=3).images[0])).shape) == (3, 64, 64)
    assert model.config.vision_config.image_size == 64


def _examples() -> list[Path]:
    return sorted((ROOT / "examples").glob("*.png"))


def test_examples_are_classified_correctly(capsys):
    """The README's first command: every example's true label (its file name) comes first."""
    from clip_zoo.__main__ import main

    examples = _examples()
    assert len(examples) >= 4
    labels = ",".join(shapes.label_names())
    assert main(["classify", *map(str, examples), "--labels", labels, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    got = {Path(r["image"]).stem: r["predictions"][0]["label"] for r in rows}
    assert got == {p.stem: p.stem.replace("_", " ") for p in examples}
