"""Property-based equivalence: random small architectures and inputs, all three backends agree.

hypothesis draws the architecture (ViT or ResNet, 1-2 layers, head_dim 8 or 16, patch / image
sizes, ResNet stage depths of 1-2, context length, activation) and the inputs (batch sizes
including 1, padding pattern); the canonical checkpoint is loaded by clip_torch, clip_tf and
clip_flax and every output field compared at the fp32 bounds of ``clip_zoo.parity.BOUNDS``.
A failure shrinks to a minimal config (hypothesis' shrinking on the drawn integers).
"""
from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conversion
from clip_core.config import CLIPConfig, CLIPResNetVisionConfig, CLIPTextConfig, CLIPVisionConfig
from clip_core.testing import random_weights
from clip_zoo import parity as P

VOCAB = 64  # tiny vocabulary: eos = 63 (first-EOS pooling), bos = 62


@st.composite
def configs(draw) -> CLIPConfig:
    act = draw(st.sampled_from(["quick_gelu", "gelu"]))
    proj = draw(st.sampled_from([8, 16]))
    t_heads, t_dim = draw(st.integers(1, 2)), draw(st.sampled_from([8, 16]))
    text = CLIPTextConfig(vocab_size=VOCAB, hidden_size=t_heads * t_dim, intermediate_size=2 * t_heads * t_dim,
                          projection_dim=proj, num_hidden_layers=draw(st.integers(1, 2)),
                          num_attention_heads=t_heads, max_position_embeddings=draw(st.sampled_from([8, 12, 16])),
                          hidden_act=act, bos_token_id=VOCAB - 2, eos_token_id=VOCAB - 1, pad_token_id=VOCAB - 1)
    if draw(st.booleans()):
        heads, dim, patch = draw(st.integers(1, 2)), draw(st.sampled_from([8, 16])), draw(st.sampled_from([4, 8]))
        vision = CLIPVisionConfig(hidden_size=heads * dim, intermediate_size=2 * heads * dim, projection_dim=proj,
                                  num_hidden_layers=draw(st.integers(1, 2)), num_attention_heads=heads,
                                  image_size=patch * draw(st.integers(1, 3)), patch_size=patch, hidden_act=act)
    else:
        layers = tuple(draw(st.lists(st.integers(1, 2), min_size=4, max_size=4)))
        vision = CLIPResNetVisionConfig(layers=layers, width=8, num_attention_heads=draw(st.sampled_from([16, 32])),
                                        projection_dim=proj, image_size=draw(st.sampled_from([32, 64])))
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=proj)


@st.composite
def inputs(draw, config: CLIPConfig) -> dict[str, np.ndarray]:
    """Token ids with BOS, random tokens, EOS then padding (per-row lengths), mask, pixels."""
    ctx, size = config.text_config.max_position_embeddings, config.vision_config.image_size
    lengths = draw(st.lists(st.integers(2, ctx), min_size=1, max_size=3))  # includes EOS; batch 1..3
    width = draw(st.integers(max(lengths), ctx))  # padded to the longest, or further
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    ids = np.full((len(lengths), width), VOCAB - 1, np.int32)
    mask = np.zeros((len(lengths), width), np.int32)
    for row, n in enumerate(lengths):
        ids[row, 0], ids[row, 1:n - 1], mask[row, :n] = VOCAB - 2, rng.integers(0, VOCAB - 2, n - 2), 1
    pixels = rng.normal(0, 1, (draw(st.integers(1, 3)), 3, size, size)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="parity_prop_") as d:
        yield Path(d)


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_backends_agree_on_random_architectures(workdir, data):
    config = data.draw(configs(), label="config")
    arrays = data.draw(inputs(config), label="inputs")
    path = workdir / f"ckpt{len(list(workdir.iterdir()))}"
    conversion.save_checkpoint(path, config, random_weights(config, seed=1))
    outputs = {fw: P.run_backend(fw, P.load_model(fw, str(path)), {"case": arrays}) for fw in P.FRAMEWORKS}
    assert {"case/text_embeds", "case/image_embeds", "case/logits_per_image"} <= set(outputs["torch"])
    for a, b in itertools.combinations(sorted(outputs), 2):
        for row in P.compare(outputs[a], outputs[b], (a, b), P.BOUNDS["fp32"]):
            np.testing.assert_array_less(row.max_abs, row.bound + 1e-30,
                                         err_msg=f"{a} vs {b}: {row.field} diverged for {config}")
