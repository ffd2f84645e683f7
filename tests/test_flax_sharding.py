"""clip_flax under a 4-device CPU mesh (data parallel) equals the single-device result.

The device count flag must be set before jax starts, so the check runs in a subprocess.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import numpy as np, jax, optax
    import clip_flax
    from clip_flax import sharding
    from clip_core import to_backend
    from clip_core.testing import random_weights, tiny_vit_config

    assert len(jax.devices()) == 4, jax.devices()
    cfg = tiny_vit_config()
    model = clip_flax.CLIPModel(cfg, _do_init=False)
    model.load_flat(to_backend(random_weights(cfg, seed=9), cfg, "flax"))
    rng = np.random.default_rng(0)
    ids = np.zeros((8, 77), np.int32)
    ids[:, :10] = rng.integers(1, 49000, (8, 10))
    ids[np.arange(8), 3 + np.arange(8)] = cfg.text_config.eos_token_id
    batch = {"input_ids": ids, "pixel_values": rng.normal(0, 1, (8, 3, 32, 32)).astype(np.float32)}

    mesh = sharding.data_parallel_mesh()
    params = sharding.replicate(model.params, mesh)
    sbatch = sharding.shard_batch(batch, mesh)
    assert len(sbatch["pixel_values"].sharding.device_set) == 4

    def check(a, b, what, atol=1e-5):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=0, err_msg=what)

    img = model.get_image_features(sbatch["pixel_values"], params=params)
    assert len(img.sharding.device_set) == 4 and not img.sharding.is_fully_replicated
    check(img, model.get_image_features(batch["pixel_values"]), "image features")
    check(model.get_text_features(sbatch["input_ids"], params=params),
          model.get_text_features(batch["input_ids"]), "text features")
    check(model(**sbatch, params=params).logits_per_image, model(**batch).logits_per_image, "logits", 1e-4)

    opt = optax.sgd(0.1)
    step = clip_flax.make_train_step(model, opt)
    p1, _, l1 = step(model.params, opt.init(model.params), batch, jax.random.PRNGKey(0))
    p4, _, l4 = step(params, sharding.replicate(opt.init(model.params), mesh), sbatch, jax.random.PRNGKey(0))
    check(l4, l1, "loss", 1e-5)
    for (k, a), b in zip(jax.tree_util.tree_leaves_with_path(p4), jax.tree_util.tree_leaves(p1)):
        check(a, b, jax.tree_util.keystr(k), 1e-5)
    print("SHARDED-OK")
""")


def test_data_parallel_mesh_matches_single_device():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "SHARDED-OK" in proc.stdout, proc.stderr[-4000:]
