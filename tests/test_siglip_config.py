"""SigLIP configs, presets and canonical schema against transformers 4.57's SigLIP classes."""
from __future__ import annotations

import numpy as np
import pytest

from clip_core import get_config
from clip_core.families import config_from_dict, family_of
from clip_core.schema import from_backend, parameter_shapes, to_backend
from clip_core.siglip_config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from clip_core.siglip_presets import get_siglip_config, siglip_models
from clip_core.testing import random_weights, tiny_siglip_config

transformers = pytest.importorskip("transformers")


def _hf_shapes(module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def hf_config():
    return transformers.SiglipConfig.from_dict(tiny_siglip_config().to_dict())


def test_config_round_trip_through_transformers(tmp_path):
    config = tiny_siglip_config()
    config.save_pretrained(tmp_path)
    hf = transformers.SiglipConfig.from_pretrained(tmp_path)
    assert (hf.text_config.projection_size, hf.vision_config.hidden_size) == (48, 48)
    assert hf.text_config.layer_norm_eps == hf.vision_config.layer_norm_eps == 1e-6
    hf.save_pretrained(tmp_path / "hf")
    assert SiglipConfig.from_pretrained(tmp_path / "hf") == config
    assert family_of(config_from_dict(hf.to_dict())) == "siglip"
    assert family_of(config_from_dict(get_config("ViT-B-32").to_dict())) == "clip"


@pytest.mark.parametrize("part, cls, num_labels", [
    ("model", "SiglipModel", None), ("text", "SiglipTextModel", None), ("vision", "SiglipVisionModel", None),
    ("classification", "SiglipForImageClassification", 3)])
def test_schema_equals_transformers_state_dict(hf_config, part, cls, num_labels):
    config = tiny_siglip_config()
    if part == "text":
        module = transformers.SiglipTextModel(hf_config.text_config)
    elif part == "vision":
        module = transformers.SiglipVisionModel(hf_config.vision_config)
    else:
        data = {k: v for k, v in hf_config.to_dict().items() if k not in ("id2label", "label2id")}
        module = getattr(transformers, cls)(transformers.SiglipConfig.from_dict({**data, "num_labels": num_labels or 2}))
    assert parameter_shapes(config, part, num_labels) == _hf_shapes(module)


@pytest.mark.parametrize("backend", ["flax", "tf"])
def test_backend_layout_round_trip(backend):
    config = tiny_siglip_config()
    weights = random_weights(config)
    params = to_backend(weights, config, backend)
    assert params["params/logit_bias" if backend == "flax" else "logit_bias"].shape == (() if backend == "flax" else (1,))
    kernel = "params/vision_model/head/attention/in_proj/kernel" if backend == "flax" else \
        "vision_model/head/attention/in_proj/kernel"
    assert params[kernel].shape == (48, 144)  # (D, 3D): q | k | v columns
    back = from_backend(params, config, backend)
    assert back.keys() == weights.keys()
    for name, value in weights.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_presets_match_published_shapes():
    assert len(siglip_models()) >= 20
    base = get_siglip_config("google/siglip-base-patch16-224")
    assert get_config("ViT-B-16-SigLIP") == base
    assert (base.vision_config.num_patches, base.text_config.vocab_size, base.projection_dim) == (196, 32000, 768)
    so400m = get_config("ViT-SO400M-14-SigLIP-384")
    assert (so400m.vision_config.hidden_size, so400m.vision_config.intermediate_size,
            so400m.vision_config.num_hidden_layers, so400m.vision_config.num_patches) == (1152, 4304, 27, 729)
    giant = get_config("siglip2-giant-opt-patch16-256")
    assert (giant.text_config.hidden_size, giant.text_config.projection_size, giant.text_config.vocab_size) == \
        (1152, 1536, 256000)
    n = sum(int(np.prod(s)) for s in parameter_shapes(base).values())
    assert 202e6 < n < 204e6  # google/siglip-base-patch16-224 has 203.2M parameters
    with pytest.raises(ValueError, match="unknown"):
        get_siglip_config("siglip-tiny")


@pytest.mark.parametrize("bad, match", [
    ({"text_config": {"hidden_size": 30, "num_attention_heads": 4}}, "divisible"),
    ({"vision_config": {"image_size": 12, "patch_size": 16}}, "at least"),
    ({"text_config": {"projection_size": 64}, "vision_config": {"hidden_size": 32, "num_attention_heads": 4}},
     "projection_size"),
    ({"vision_config": {"vision_use_head": "yes"}}, "vision_use_head"),
])
def test_bad_configs_name_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        SiglipConfig.from_dict({"model_type": "siglip", **bad})


def test_tower_configs_from_whole_config():
    data = tiny_siglip_config().to_dict()
    assert SiglipTextConfig.from_dict(data).hidden_size == 40
    assert SiglipVisionConfig.from_dict(data).hidden_size == 48
