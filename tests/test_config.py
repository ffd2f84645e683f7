"""Configs and presets: validation, HF config.json round trips, legacy keys."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clip_core import CLIPConfig, CLIPResNetVisionConfig, CLIPTextConfig, CLIPVisionConfig, available_models, get_config
from clip_core.presets import resolve_name

VIT_PRESETS = [n for n in available_models() if n.startswith("ViT")]
OPENAI_NAMES = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"]


def test_available_models_are_the_nine_openai_names():
    assert available_models() == OPENAI_NAMES


@pytest.mark.parametrize("name", OPENAI_NAMES)
def test_preset_round_trips_through_dict_and_json(name, tmp_path):
    cfg = get_config(name)
    assert CLIPConfig.from_dict(cfg.to_dict()) == cfg
    cfg.save_pretrained(tmp_path)
    assert CLIPConfig.from_pretrained(tmp_path) == cfg
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "clip"


@pytest.mark.parametrize("name,embed,image,layers,width,heads,text_width", [
    ("RN50", 1024, 224, (3, 4, 6, 3), 64, 32, 512),
    ("RN101", 512, 224, (3, 4, 23, 3), 64, 32, 512),
    ("RN50x4", 640, 288, (4, 6, 10, 6), 80, 40, 640),
    ("RN50x16", 768, 384, (6, 8, 18, 8), 96, 48, 768),
    ("RN50x64", 1024, 448, (3, 15, 36, 10), 128, 64, 1024),
])
def test_resnet_presets(name, embed, image, layers, width, heads, text_width):
    cfg = get_config(name)
    v, t = cfg.vision_config, cfg.text_config
    assert cfg.is_resnet and cfg.projection_dim == embed
    assert (v.image_size, v.layers, v.width, v.num_attention_heads) == (image, layers, width, heads)
    assert (t.hidden_size, t.max_position_embeddings, t.vocab_size) == (text_width, 77, 49408)


@pytest.mark.parametrize("name,embed,image,layers,width,patch", [
    ("ViT-B/32", 512, 224, 12, 768, 32), ("ViT-B/16", 512, 224, 12, 768, 16),
    ("ViT-L/14", 768, 224, 24, 1024, 14), ("ViT-L/14@336px", 768, 336, 24, 1024, 14),
])
def test_vit_presets(name, embed, image, layers, width, patch):
    v = get_config(name).vision_config
    assert (v.image_size, v.num_hidden_layers, v.hidden_size, v.patch_size, v.num_attention_heads) == (
        image, layers, width, patch, width // 64)
    assert get_config(name).projection_dim == embed


@pytest.mark.parametrize("alias,name,act", [
    ("openai/clip-vit-base-patch32", "ViT-B/32", "quick_gelu"),
    ("openai/clip-vit-large-patch14-336", "ViT-L/14@336px", "quick_gelu"),
    ("ViT-B-32", "ViT-B/32", "gelu"),
    ("ViT-B-32-quickgelu", "ViT-B/32", "quick_gelu"),
    ("RN50-quickgelu", "RN50", "quick_gelu"),
    ("RN50", "RN50", "quick_gelu"),
])
def test_aliases(alias, name, act):
    assert resolve_name(alias) == (name, act)
    assert get_config(alias).text_config.hidden_act == act


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown CLIP model name 'ViT-Z/99'"):
        get_config("ViT-Z/99")


@pytest.mark.parametrize("name", VIT_PRESETS)
def test_saved_config_loads_in_transformers(name, tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = get_config(name)
    cfg.save_pretrained(tmp_path)
    hf = transformers.CLIPConfig.from_pretrained(tmp_path)
    for ours, theirs in ((cfg.text_config, hf.text_config), (cfg.vision_config, hf.vision_config)):
        for key, value in ours.to_dict().items():
            if key != "extra" and hasattr(theirs, key):
                assert getattr(theirs, key) == value, key
    assert hf.projection_dim == cfg.projection_dim
    assert hf.logit_scale_init_value == pytest.approx(cfg.logit_scale_init_value)


def test_transformers_config_loads_here(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.CLIPConfig(text_config={"hidden_size": 64, "num_attention_heads": 4, "eos_token_id": 2},
                                 vision_config={"hidden_size": 96, "num_attention_heads": 4, "patch_size": 16},
                                 projection_dim=32)
    hf.save_pretrained(tmp_path)
    cfg = CLIPConfig.from_pretrained(tmp_path)
    assert cfg.text_config.hidden_size == 64 and cfg.vision_config.patch_size == 16
    assert cfg.text_config.legacy_eos_pooling  # eos_token_id == 2: argmax pooling
    assert cfg.projection_dim == 32
    # every key transformers wrote comes back (unknown ones through `extra`)
    written = json.loads((tmp_path / "config.json").read_text())
    back = cfg.to_dict()
    for key in written:
        assert key in back or key in ("text_config_dict", "vision_config_dict"), key


def test_legacy_config_dict_keys_take_precedence():
    data = {"model_type": "clip", "projection_dim": 16,
            "text_config": {"hidden_size": 32, "num_attention_heads": 4},
            "text_config_dict": {"hidden_size": 64},
            "vision_config_dict": {"hidden_size": 48, "num_attention_heads": 4, "image_size": 32, "patch_size": 8}}
    cfg = CLIPConfig.from_dict(data)
    assert cfg.text_config.hidden_size == 64 and cfg.text_config.num_attention_heads == 4
    assert cfg.vision_config.image_size == 32


def test_unknown_keys_are_kept():
    data = get_config("ViT-B/32").to_dict()
    data["my_key"] = [1, 2]
    data["text_config"]["custom"] = "x"
    cfg = CLIPConfig.from_dict(data)
    assert cfg.extra["my_key"] == [1, 2] and cfg.text_config.extra["custom"] == "x"
    again = cfg.to_dict()
    assert again["my_key"] == [1, 2] and again["text_config"]["custom"] == "x"


def test_resnet_vision_config_round_trip():
    cfg = get_config("RN50x4")
    d = cfg.to_dict()
    assert d["vision_config"]["model_type"] == "clip_resnet_vision_model"
    assert d["vision_config"]["layers"] == [4, 6, 10, 6]
    assert CLIPConfig.from_dict(d).vision_config == cfg.vision_config


def test_from_text_vision_configs():
    cfg = CLIPConfig.from_text_vision_configs(CLIPTextConfig(projection_dim=64), CLIPVisionConfig(projection_dim=64))
    assert cfg.projection_dim == 64 and cfg.text_config.projection_dim == 64


@pytest.mark.parametrize("cls,kwargs,match", [
    (CLIPTextConfig, {"hidden_size": 100, "num_attention_heads": 8}, "divisible by num_attention_heads"),
    (CLIPTextConfig, {"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
    (CLIPTextConfig, {"hidden_act": 3}, "hidden_act"),
    (CLIPTextConfig, {"eos_token_id": 10 ** 6}, "eos_token_id must be a token id"),
    (CLIPVisionConfig, {"image_size": 225}, "divisible by patch_size"),
    (CLIPVisionConfig, {"patch_size": -4}, "patch_size must be a positive integer"),
    (CLIPVisionConfig, {"hidden_size": 1.5}, "hidden_size must be a positive integer"),
    (CLIPVisionConfig, {"layer_norm_eps": -1.0}, "layer_norm_eps must be a non-negative number"),
    (CLIPResNetVisionConfig, {"layers": (3, 4, 6)}, "four positive integers"),
    (CLIPResNetVisionConfig, {"image_size": 100}, "divisible by 32"),
    (CLIPResNetVisionConfig, {"num_attention_heads": 7}, "divisible by num_attention_heads"),
    (CLIPConfig, {"text_config": 3}, "text_config must be a CLIPTextConfig"),
    (CLIPConfig, {"projection_dim": 0}, "projection_dim must be a positive integer"),
])
def test_invalid_values_raise_clear_errors(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_configs_are_mutable_like_transformers():
    cfg = get_config("ViT-B/32")
    cfg.projection_dim = 256  # transformers code assigns config attributes routinely
    assert cfg.projection_dim == cfg.text_config.projection_dim == cfg.vision_config.projection_dim == 256
    assert get_config("ViT-B/32").projection_dim == 512  # the preset itself is untouched
    assert cfg.replace(projection_dim=128).text_config.projection_dim == 128


def test_bad_json_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CLIPConfig.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config file"):
        CLIPConfig.from_pretrained(tmp_path / "missing")
