"""The fine-tuning trainers on SigLIP: the sigmoid loss (with ``logit_bias``) trains in every backend, and the
three frameworks agree step by step from the same checkpoint and batches."""
from __future__ import annotations

import numpy as np
import pytest

import conversion
from clip_core.finetune_plan import FinetuneOptions
from clip_core.testing import random_weights, tiny_siglip_config

STEPS = 4


@pytest.fixture(scope="module")
def siglip_checkpoint(tmp_path_factory):
    config = tiny_siglip_config()
    path = tmp_path_factory.mktemp("siglip_ft") / "model"
    conversion.save_checkpoint(path, config, random_weights(config, seed=5))
    return path


def _batches(config, n: int = STEPS) -> list:
    rng = np.random.default_rng(0)
    t, v = config.text_config, config.vision_config
    return [{"input_ids": rng.integers(2, t.vocab_size, (6, t.max_position_embeddings)).astype(np.int64),
             "pixel_values": rng.standard_normal((6, 3, v.image_size, v.image_size)).astype(np.float32)}
            for _ in range(n)]


def _losses(framework: str, path) -> tuple[list, dict]:
    import importlib

    backend = importlib.import_module(f"clip_{framework}")
    trainer = importlib.import_module(f"clip_{framework}.finetune").Trainer(
        backend.SiglipModel.from_pretrained(path), FinetuneOptions(total_steps=STEPS, lr=1e-3, warmup=1))
    losses = [trainer.step(b)["loss"] for b in _batches(trainer.model.config)]
    trainer.model.save_pretrained(path.parent / f"out_{framework}")
    return losses, conversion.load_checkpoint(path.parent / f"out_{framework}")[1]


@pytest.fixture(scope="module")
def runs(siglip_checkpoint):
    from clip_zoo.engines import installed_frameworks

    return {fw: _losses(fw, siglip_checkpoint) for fw in installed_frameworks()}


def test_sigmoid_loss_trains_and_frameworks_agree(runs, siglip_checkpoint):
    if "torch" not in runs or len(runs) < 2:
        pytest.skip("needs torch and another framework")
    ref_losses, ref_weights = runs["torch"]
    assert ref_losses[-1] < ref_losses[0] - 0.5  # it learns
    start = conversion.load_checkpoint(siglip_checkpoint)[1]
    assert not np.array_equal(ref_weights["logit_bias"], start["logit_bias"])  # the bias trains too
    for fw, (losses, weights) in runs.items():
        np.testing.assert_allclose(losses, ref_losses, atol=1e-4, err_msg=fw)
        for name in ("logit_bias", "vision_model.head.probe", "text_model.head.weight"):
            np.testing.assert_allclose(weights[name], ref_weights[name], atol=1e-4, err_msg=f"{fw} {name}")
