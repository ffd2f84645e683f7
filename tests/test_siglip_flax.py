"""clip_flax's SigLIP classes against transformers 4.57's SigLIP (PyTorch) on random-weight checkpoints.

Checkpoints are written by transformers itself (a tiny odd shape and a one-layer B/16 shape);
bounds from tests/backend_harness.py: 1e-5 normalized embeddings, 1e-3 logits, 1e-4 hidden states,
1e-5 on the sigmoid loss (logits: default_atol of backend_harness).
"""
from __future__ import annotations

import dataclasses
import shutil
import types

import numpy as np
import pytest

from clip_core import get_config
from clip_core.schema import WeightMismatchError
from clip_core.testing import random_weights, tiny_siglip_config
from conversion.safetensors_io import read_safetensors, write_safetensors

from backend_harness import EMBED_ATOL, HIDDEN_ATOL, as_tensors, assert_outputs_close, normalized, to_numpy

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
clip_flax = pytest.importorskip("clip_flax")

LOSS_ATOL = 1e-5
B = 3  # square batch: the sigmoid loss pairs text i with image i


def _b16_config():
    """siglip-base-patch16-224 widths, one layer per tower, a 1,000-token vocabulary."""
    c = get_config("siglip-base-patch16-224")
    text = dataclasses.replace(c.text_config, num_hidden_layers=1, vocab_size=1000)
    vision = dataclasses.replace(c.vision_config, num_hidden_layers=1)
    return dataclasses.replace(c, text_config=text, vision_config=vision)


CONFIGS = {"tiny": tiny_siglip_config, "b16": _b16_config}


def _hf_model(cls_name: str, config, part: str = "model", num_labels=None):
    """A transformers ``cls_name`` holding our random weights (eval mode)."""
    data = config.to_dict()
    if num_labels:
        data.update(id2label={str(i): f"LABEL_{i}" for i in range(num_labels)},
                    label2id={f"LABEL_{i}": i for i in range(num_labels)})
    hf_config = transformers.SiglipConfig.from_dict(data)
    if cls_name == "SiglipTextModel":
        hf_config = hf_config.text_config
    elif cls_name == "SiglipVisionModel":
        hf_config = hf_config.vision_config
    hf_config._attn_implementation = "eager"  # sdpa returns no attention weights
    model = getattr(transformers, cls_name)(hf_config)
    weights = random_weights(config, part, seed=1, num_labels=num_labels)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()},
                                                strict=False)
    assert not unexpected and not [k for k in missing if "position_ids" not in k], (missing, unexpected)
    return model.eval()


def _inputs(config, seed: int = 0, size=None) -> dict:
    """``input_ids`` (B, T) with padding after different lengths, ``attention_mask``, ``pixel_values`` (B, C, S, S)."""
    t, v = config.text_config, config.vision_config
    rng = np.random.default_rng(seed)
    length = t.max_position_embeddings
    ids = rng.integers(2, t.vocab_size, (B, length))
    mask = np.ones((B, length), np.int64)
    for i, n in enumerate((length // 3, length // 2, length)):
        ids[i, n:], mask[i, n:] = t.pad_token_id, 0
    s = size or v.image_size
    return {"input_ids": ids, "attention_mask": mask,
            "pixel_values": rng.normal(0.0, 1.0, (B, v.num_channels, s, s)).astype(np.float32)}


#: as_tensors reads only the backend's module name: transformers' torch tensors without importing clip_torch
_TORCH = types.SimpleNamespace(__name__="clip_torch")


def _pt(**arrays):
    """numpy -> torch tensors as the torch backend takes them (int64 ids)."""
    return as_tensors(_TORCH, **arrays)


def _jx(**arrays):
    return as_tensors(clip_flax, **arrays)


_CHECKPOINTS: dict = {}


def _checkpoint(name: str, tmp_path_factory):
    """(config, transformers SiglipModel, directory it saved, clip_flax.SiglipModel loaded from it), built once."""
    if name not in _CHECKPOINTS:
        config = CONFIGS[name]()
        hf = _hf_model("SiglipModel", config)
        path = tmp_path_factory.mktemp(f"siglip_{name}")
        hf.save_pretrained(path)
        _CHECKPOINTS[name] = config, hf, path, clip_flax.SiglipModel.from_pretrained(path)
    return _CHECKPOINTS[name]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory):
    """Both shapes (tiny odd, one-layer B/16)."""
    return _checkpoint(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """The tiny shape only (for the tests whose compilations cost more than a second shape adds)."""
    return _checkpoint("tiny", tmp_path_factory)


@pytest.mark.parametrize("name, masked", [("tiny", True), ("tiny", False), ("b16", True)],
                         ids=["tiny-mask", "tiny-nomask", "b16-mask"])
def test_siglip_model_matches_transformers(name, masked, tmp_path_factory):
    config, hf, _, model = _checkpoint(name, tmp_path_factory)
    x = _inputs(config)
    if not masked:
        x.pop("attention_mask")
    with torch.no_grad():
        ref = hf(**_pt(**x), return_loss=True, output_hidden_states=True, output_attentions=True)
    ours = model(**_jx(**x), return_loss=True, output_hidden_states=True, output_attentions=True)
    # transformers 4.57's SiglipModel drops the towers' hidden states / attentions (it passes the flags to the
    # inner transformers, which record nothing); ours returns them, compared per tower below.
    towers = tuple(f"{t}_model_output.{f}" for t in ("text", "vision") for f in ("hidden_states", "attentions"))
    names = assert_outputs_close(ours, ref, to_numpy=to_numpy, atol={"loss": LOSS_ATOL}, skip=towers)
    assert {"loss", "logits_per_image", "logits_per_text", "text_embeds", "image_embeds",
            "text_model_output.pooler_output", "vision_model_output.pooler_output"} <= set(names)
    layers = config.vision_config.num_hidden_layers
    assert len(ours.vision_model_output.attentions) == layers
    assert len(ours.text_model_output.hidden_states) == config.text_config.num_hidden_layers + 1
    assert to_numpy(ours.loss).shape == () and float(to_numpy(ours.loss)) > 0


def test_siglip_features_match_transformers(checkpoint):
    config, hf, _, model = checkpoint
    x = _inputs(config, seed=3)
    with torch.no_grad():
        ref_t = hf.get_text_features(**_pt(input_ids=x["input_ids"]))
        ref_i = hf.get_image_features(**_pt(pixel_values=x["pixel_values"]))
    ours_t = model.get_text_features(**_jx(input_ids=x["input_ids"]))
    ours_i = model.get_image_features(**_jx(pixel_values=x["pixel_values"]))
    for ours, ref in ((ours_t, ref_t), (ours_i, ref_i)):
        np.testing.assert_allclose(to_numpy(ours), to_numpy(ref), rtol=0, atol=HIDDEN_ATOL)
        np.testing.assert_allclose(normalized(to_numpy(ours)), normalized(to_numpy(ref)), rtol=0, atol=EMBED_ATOL)


@pytest.mark.parametrize("tower", ["SiglipTextModel", "SiglipVisionModel"])
def test_siglip_towers_match_transformers(checkpoint, tower):
    config, _, path, _ = checkpoint
    hf = getattr(transformers, tower).from_pretrained(path, attn_implementation="eager").eval()
    model = getattr(clip_flax, tower).from_pretrained(path)
    x = _inputs(config, seed=5)
    keys = ("input_ids", "attention_mask") if tower == "SiglipTextModel" else ("pixel_values",)
    x = {k: x[k] for k in keys}
    with torch.no_grad():
        ref = hf(**_pt(**x), output_hidden_states=True, output_attentions=True)
    ours = model(**_jx(**x), output_hidden_states=True, output_attentions=True)
    names = assert_outputs_close(ours, ref, to_numpy=to_numpy)
    assert {"last_hidden_state", "pooler_output", "hidden_states[0]", "attentions[0]"} <= set(names)


def test_siglip_classification_matches_transformers(tmp_path):
    config = tiny_siglip_config()
    hf = _hf_model("SiglipForImageClassification", config, "classification", num_labels=3)
    hf.save_pretrained(tmp_path)
    model = clip_flax.SiglipForImageClassification.from_pretrained(tmp_path)
    x = _inputs(config, seed=7)
    labels = np.array([0, 2, 1])
    with torch.no_grad():
        ref = hf(**_pt(pixel_values=x["pixel_values"], labels=labels), output_hidden_states=True)
    ours = model(**_jx(pixel_values=x["pixel_values"], labels=labels), output_hidden_states=True)
    names = assert_outputs_close(ours, ref, to_numpy=to_numpy, atol={"loss": LOSS_ATOL})
    assert {"loss", "logits"} <= set(names) and model.num_labels == 3


def test_siglip_interpolate_pos_encoding_matches_transformers(tiny_checkpoint):
    config, hf, path, model = tiny_checkpoint
    size = config.vision_config.image_size + 2 * config.vision_config.patch_size
    x = _inputs(config, seed=9, size=size)
    with torch.no_grad():
        ref = hf(**_pt(**x), interpolate_pos_encoding=True)
    ours = model(**_jx(**x), interpolate_pos_encoding=True)
    assert_outputs_close(ours, ref, to_numpy=to_numpy, fields=("logits", "text_embeds", "image_embeds"))
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        model(**_jx(**x))


def test_siglip_save_pretrained_loads_in_transformers(checkpoint, tmp_path):
    config, hf, _, model = checkpoint
    model.save_pretrained(tmp_path / "out")
    back = transformers.SiglipModel.from_pretrained(tmp_path / "out").eval()
    x = _pt(**_inputs(config, seed=11))
    with torch.no_grad():
        a, b = hf(**x), back(**x)
    for field in ("logits_per_image", "text_embeds", "image_embeds"):
        np.testing.assert_allclose(to_numpy(getattr(b, field)), to_numpy(getattr(a, field)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("damage, sign", [("missing", "-"), ("extra", "+"), ("shape", "~")])
def test_siglip_strict_loading_names_the_tensor(tiny_checkpoint, tmp_path, damage, sign):
    _, _, path, _ = tiny_checkpoint
    weights = read_safetensors(path / "model.safetensors")
    name = "vision_model.head.attention.in_proj_weight"
    if damage == "missing":
        del weights[name]
    elif damage == "extra":
        name = "vision_model.head.extra.weight"
        weights[name] = np.zeros((2,), np.float32)
    else:
        weights[name] = weights[name][:-1]
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(path / "config.json", bad / "config.json")
    write_safetensors(bad / "model.safetensors", weights)
    with pytest.raises(WeightMismatchError) as info:
        clip_flax.SiglipModel.from_pretrained(bad)
    assert f"  {sign} {name}" in str(info.value)


def test_siglip_train_step_loss_equals_transformers(tiny_checkpoint):
    optax = pytest.importorskip("optax")
    jax = pytest.importorskip("jax")
    config, hf, _, model = tiny_checkpoint
    x = _inputs(config, seed=13)
    with torch.no_grad():
        ref = hf(**_pt(**x), return_loss=True).loss
    optimizer = optax.sgd(1e-2)
    params = model.params
    new_params, _, loss = clip_flax.train_step(model, params, optimizer.init(params), _jx(**x), optimizer)
    np.testing.assert_allclose(float(loss), float(to_numpy(ref)), rtol=0, atol=LOSS_ATOL)
    moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), params, new_params)
    assert moved["logit_bias"] > 0 and moved["vision_model"]["head"]["probe"] > 0


def test_siglip_loss_is_the_sigmoid_loss():
    logits = np.array([[2.0, -1.0], [0.5, 3.0]], np.float32)
    signs = 2 * np.eye(2) - 1
    expected = -np.mean(np.sum(np.log(1 / (1 + np.exp(-signs * logits))), axis=-1))
    np.testing.assert_allclose(float(clip_flax.siglip_loss(logits)), expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        ref = torch.nn.functional.logsigmoid(torch.tensor(signs * logits)).sum(-1).neg().mean()
    np.testing.assert_allclose(float(clip_flax.siglip_loss(logits)), float(ref), rtol=0, atol=1e-6)
    wide = np.array([[2.0, -1.0, 0.25], [0.5, 3.0, -2.0]], np.float32)  # more images than texts: extra negatives
    signs = 2 * np.eye(2, 3) - 1
    expected = np.mean(np.sum(np.log1p(np.exp(-signs * wide)), axis=-1))
    np.testing.assert_allclose(float(clip_flax.siglip_loss(wide)), expected, rtol=0, atol=1e-6)
