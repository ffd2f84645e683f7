"""scripts/train_default_model.py end to end at toy size: contrastive steps with clip_torch + AdamW,
deterministic for a seed, saved, and reloaded with the same outputs in another framework."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("torch")


def _train(out: Path, seed: int = 0) -> dict:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_default_model as script
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    argv = ["--steps", "4", "--warmup", "2", "--log-every", "2", "--eval-images", "48", "--seed", str(seed),
            "--vision-layers", "1", "--vision-width", "32", "--threads", "1",
            "--out", str(out), "--examples", str(out / "examples")]
    assert script.main(argv) == 0
    return json.loads((out / "training.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    a, b = tmp_path_factory.mktemp("run_a"), tmp_path_factory.mktemp("run_b")
    return a, _train(a), b, _train(b)


def test_record_and_losses(runs):
    out, record, _, _ = runs
    assert record["training"]["steps"] == 4 and record["training"]["optimizer"] == "torch.optim.AdamW"
    assert [h["step"] for h in record["history"]] == [2, 4]
    assert all(np.isfinite(h["loss"]) for h in record["history"])
    assert set(record["metrics"]) == {"zero_shot_top1_caption_template", "zero_shot_top1_simple_templates",
                                      "zero_shot_top1_openai_templates"}
    assert len(list((out / "examples").glob("*.png"))) == 8


def test_deterministic_for_a_seed(runs):
    a, _, b, _ = runs
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)


@pytest.mark.parametrize("framework", ["flax", "tf"])
def test_reloads_in_another_framework(runs, framework):
    if importlib.util.find_spec({"flax": "flax", "tf": "tensorflow"}[framework]) is None:
        pytest.skip(f"{framework} is not installed")
    from clip_zoo.engines import load_encoder

    out = runs[0]
    pixels = np.random.default_rng(0).normal(size=(4, 3, 64, 64)).astype(np.float32)
    ref, other = load_encoder(str(out), "torch"), load_encoder(str(out), framework)
    np.testing.assert_allclose(other.encode_images(pixels), ref.encode_images(pixels), atol=1e-5)
    texts = ["a photo of a red circle", "a blue star"]
    np.testing.assert_allclose(other.encode_texts(texts), ref.encode_texts(texts), atol=1e-5)
