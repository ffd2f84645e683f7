"""clip_tf training: contrastive loss under ``model.fit`` and under MirroredStrategy (logical CPUs)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import keras  # noqa: E402

import clip_tf  # noqa: E402
from clip_core.testing import random_weights, tiny_vit_config  # noqa: E402
from tests.backend_harness import pixel_inputs, text_inputs  # noqa: E402


def _batch(cfg, n: int = 4) -> dict:
    text = text_inputs(cfg, batch=n, length=16, padding=True, seed=2)
    return {"input_ids": text["input_ids"].astype(np.int32), "attention_mask": text["attention_mask"].astype(np.int32),
            "pixel_values": pixel_inputs(cfg, batch=n, seed=2)}


def test_contrastive_loss_value():
    """Symmetric cross-entropy with labels arange(B), computed independently in numpy."""
    logits = np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32)

    def ce(z):
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - np.diag(z)))

    np.testing.assert_allclose(float(clip_tf.contrastive_loss(logits)), (ce(logits) + ce(logits.T)) / 2, rtol=1e-6)


def test_fit_reduces_loss():
    cfg = tiny_vit_config()
    model = clip_tf.CLIPModel(cfg)
    model.load_canonical(random_weights(cfg, seed=4))
    batch = _batch(cfg)
    data = tf.data.Dataset.from_tensor_slices(batch).batch(4).repeat()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    history = model.fit(data, steps_per_epoch=6, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    initial = clip_tf.CLIPModel(cfg)
    initial.load_canonical(random_weights(cfg, seed=4))
    start = float(initial(**batch, return_loss=True).loss)
    end = float(model(**batch, return_loss=True).loss)
    assert end < start - 0.05, (start, end)


_MIRRORED = """
import os, sys
sys.path.insert(0, {root!r})
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
import clip_tf
from clip_core.testing import random_weights, tiny_vit_config
from tests.test_tf_train import _batch
cfg = tiny_vit_config()
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
batch = _batch(cfg)
with strategy.scope():
    model = clip_tf.CLIPModel(cfg)
    model.load_canonical(random_weights(cfg, seed=4))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
start = float(model(**batch, return_loss=True).loss)
data = tf.data.Dataset.from_tensor_slices(batch).batch(4).repeat()
model.fit(data, steps_per_epoch=5, epochs=1, verbose=0)
end = float(model(**batch, return_loss=True).loss)
print("LOSS", start, end)
assert end < start - 0.05, (start, end)
"""


def test_mirrored_strategy_on_logical_cpus():
    """Logical devices must be configured before TF initialises: run in a fresh interpreter."""
    root = str(Path(__file__).resolve().parents[1])
    code = "import torchvision\n" + textwrap.dedent(_MIRRORED.format(root=root))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOSS" in proc.stdout
