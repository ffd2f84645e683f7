"""clip_flax training: the optax train step lowers the contrastive loss; dropout follows its RNG."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")

import clip_flax  # noqa: E402
from clip_core import to_backend  # noqa: E402
from clip_core.testing import random_weights, tiny_vit_config  # noqa: E402


@pytest.fixture(scope="module")
def model():
    base = tiny_vit_config()
    cfg = dataclasses.replace(base, text_config=dataclasses.replace(base.text_config, attention_dropout=0.3),
                              vision_config=dataclasses.replace(base.vision_config, attention_dropout=0.3))
    m = clip_flax.CLIPModel(cfg, _do_init=False)
    m.load_flat(to_backend(random_weights(cfg, seed=7), cfg, "flax"))
    return m


@pytest.fixture(scope="module")
def batch(model):
    rng = np.random.default_rng(8)
    ids = rng.integers(1, 49000, (4, 8)).astype(np.int32)
    ids[:, -1] = model.config.text_config.eos_token_id
    pix = rng.normal(0, 1, (4, 3, 32, 32)).astype(np.float32)
    return {"input_ids": ids, "pixel_values": pix}


def test_train_step_reduces_contrastive_loss(model, batch):
    optimizer = optax.adam(1e-3)
    params, opt_state = model.params, optimizer.init(model.params)
    before = float(model(**batch, return_loss=True).loss)
    losses = []
    for i in range(6):
        params, opt_state, loss = clip_flax.train_step(model, params, opt_state, batch, optimizer,
                                                       dropout_rng=jax.random.PRNGKey(i))
        losses.append(float(loss))
    after = float(model(**batch, params=params, return_loss=True).loss)
    assert np.isfinite(losses).all()
    assert after < before - 0.05, (before, after, losses)
    assert len([k for k in model._jit_cache if k[0] == "train_step"]) == 1  # compiled once, reused


def test_dropout_uses_the_rng(model, batch):
    run = lambda **kw: np.asarray(model(**batch, **kw).logits_per_image)
    a = run(train=True, dropout_rng=jax.random.PRNGKey(1))
    b = run(train=True, dropout_rng=jax.random.PRNGKey(1))
    c = run(train=True, dropout_rng=jax.random.PRNGKey(2))
    d = run()
    np.testing.assert_allclose(a, b, rtol=0, atol=0)
    assert np.abs(a - c).max() > 1e-3 and np.abs(a - d).max() > 1e-3
    np.testing.assert_allclose(d, run(training=False), rtol=0, atol=0)


def test_contrastive_loss_definition():
    logits = np.array([[3.0, 0.5, -1.0], [0.0, 2.0, 1.0], [1.0, -2.0, 0.5]], np.float32)
    logp_t = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    logp_i = logits.T - np.log(np.exp(logits.T).sum(1, keepdims=True))
    want = -(np.diag(logp_t).mean() + np.diag(logp_i).mean()) / 2
    np.testing.assert_allclose(float(clip_flax.contrastive_loss(logits)), want, rtol=1e-6)
