"""Full-size checks, once per architecture: ViT-B/32 vs transformers' TFCLIPModel, RN50 vs OpenAI."""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

import clip_tf  # noqa: E402
import conversion  # noqa: E402
from clip_core import get_config  # noqa: E402
from clip_core.testing import random_weights  # noqa: E402
from tests.backend_harness import assert_embeds_close, pixel_inputs, text_inputs  # noqa: E402

pytestmark = pytest.mark.fullsize


def test_vit_b32_matches_transformers_tf(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = get_config("ViT-B/32")
    conversion.save_canonical(tmp_path, cfg, random_weights(cfg, seed=1))
    ours = clip_tf.CLIPModel.from_pretrained(tmp_path)
    ref = transformers.TFCLIPModel.from_pretrained(tmp_path, from_pt=True)
    text = text_inputs(cfg, batch=2, padding=True)
    kwargs = dict(input_ids=text["input_ids"].astype(np.int32), attention_mask=text["attention_mask"].astype(np.int32),
                  pixel_values=pixel_inputs(cfg, batch=2))
    a, b = ours(**kwargs), ref(**kwargs)
    assert_embeds_close(a.text_embeds.numpy(), b.text_embeds.numpy())
    assert_embeds_close(a.image_embeds.numpy(), b.image_embeds.numpy())
    np.testing.assert_allclose(a.logits_per_image.numpy(), b.logits_per_image.numpy(), atol=1e-3, rtol=0)
    assert_embeds_close(ours.get_text_features(kwargs["input_ids"], kwargs["attention_mask"]).numpy(),
                        b.text_embeds.numpy())
    assert_embeds_close(ours.get_image_features(kwargs["pixel_values"]).numpy(), b.image_embeds.numpy())


def test_rn50_matches_openai(tmp_path):
    from tests.test_tf_resnet import openai_resnet

    cfg = get_config("RN50")
    weights = random_weights(cfg, seed=2)
    conversion.save_canonical(tmp_path, cfg, weights)
    ours = clip_tf.CLIPVisionModelWithProjection.from_pretrained(tmp_path)
    pixels = pixel_inputs(cfg, batch=2)
    with torch.no_grad():
        ref = openai_resnet(cfg, weights)(torch.from_numpy(pixels)).numpy()
    assert_embeds_close(ours.get_image_features(pixels).numpy(), ref)
    np.testing.assert_allclose(ours(pixel_values=pixels).image_embeds.numpy(), ref, atol=1e-3, rtol=1e-4)
