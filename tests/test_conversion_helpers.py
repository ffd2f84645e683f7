"""Shared builders for the conversion tests (configs OpenAI's build_model can express, a TorchScript archive).

No tests here; test_conversion.py and test_conversion_reference.py import these.
"""
from __future__ import annotations

import numpy as np
import pytest

from clip_core.config import CLIPConfig
from clip_core.testing import tiny_resnet_config, tiny_vit_config


def openai_tiny(arch: str) -> CLIPConfig:
    """A tiny config whose widths are multiples of 64 (OpenAI infers heads = width // 64)."""
    base = tiny_vit_config() if arch == "vit" else tiny_resnet_config()
    text = base.text_config.replace(hidden_size=64, intermediate_size=256, num_attention_heads=1)
    vision = base.vision_config
    if arch == "vit":
        vision = vision.replace(hidden_size=64, intermediate_size=256, num_attention_heads=1)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=base.projection_dim)


def assert_same(got: dict, want: dict) -> None:
    """Same names, shapes, dtypes and bits."""
    assert sorted(got) == sorted(want)
    for name, a in want.items():
        b = np.asarray(got[name])
        assert b.shape == np.shape(a) and b.dtype == np.asarray(a).dtype, name
        if not np.array_equal(b, a):
            np.testing.assert_array_equal(b, a, err_msg=name)


@pytest.fixture(scope="module")
def torchscript_archive(tmp_path_factory):
    """A real ``torch.jit.save`` archive of OpenAI's model (``build_model`` on random weights, traced)."""
    import torch
    from clip.model import build_model

    from clip_core.testing import random_weights
    from conversion.openai import canonical_to_openai

    config = openai_tiny("vit")
    sd = {k: torch.from_numpy(np.array(v)) for k, v in
          canonical_to_openai(random_weights(config, seed=2), config).items()}
    model = build_model(sd).float().eval()
    image = torch.randn(1, 3, 32, 32)
    text = torch.randint(0, 49408, (1, 77))
    path = tmp_path_factory.mktemp("jit") / "ViT-tiny.pt"
    torch.jit.save(torch.jit.trace(model, (image, text)), str(path))
    return path, model.state_dict(), config
