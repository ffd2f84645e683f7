"""clip_torch's SigLIP classes against transformers 4.57's (the test-only reference), on checkpoints
transformers writes itself: the tiny odd shape and a B/16-shaped model with one layer per tower."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from backend_harness import EMBED_ATOL, HIDDEN_ATOL, LOGIT_ATOL, as_tensors, assert_outputs_close, to_numpy
from clip_core import get_config
from clip_core.schema import WeightMismatchError
from clip_core.testing import random_weights, tiny_siglip_config, tiny_vit_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
clip_torch = pytest.importorskip("clip_torch")

LOSS_ATOL = 1e-5


def _b16_config():
    """SigLIP B/16 at 224 px with one layer per tower and a 1,000-token vocabulary."""
    c = get_config("siglip-base-patch16-224")
    text = dataclasses.replace(c.text_config, num_hidden_layers=1, vocab_size=1000)
    vision = dataclasses.replace(c.vision_config, num_hidden_layers=1)
    return dataclasses.replace(c, text_config=text, vision_config=vision)


CONFIGS = {"tiny": tiny_siglip_config, "b16": _b16_config}


def _hf(cls_name: str, config, weights, **kwargs):
    """A transformers model of ``cls_name`` holding ``weights`` (strict), in eval mode."""
    hf_config = transformers.SiglipConfig.from_dict(config.to_dict())
    for key, value in kwargs.items():
        setattr(hf_config, key, value)
    from transformers.modeling_utils import no_init_weights

    with no_init_weights():  # every weight is assigned right after (transformers' init takes seconds at B/16)
        model = getattr(transformers, cls_name)(hf_config)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}, strict=True)
    return model.eval()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def ckpt(request, tmp_path_factory):
    """``(config, directory written by transformers.SiglipModel.save_pretrained, that model)``."""
    config = CONFIGS[request.param]()
    hf = _hf("SiglipModel", config, random_weights(config))
    path = tmp_path_factory.mktemp(f"siglip_{request.param}")
    hf.save_pretrained(path)
    return config, path, hf


@pytest.fixture(scope="module")
def ours(ckpt):
    return clip_torch.SiglipModel.from_pretrained(ckpt[1])


def _inputs(config, batch: int = 3, size=None, seed: int = 0) -> dict:
    """Random ids (B, T) with a padding mask (row 0 padded after 5 tokens) and pixels (B, C, S, S)."""
    rng = np.random.default_rng(seed)
    t, v = config.text_config, config.vision_config
    T, s = t.max_position_embeddings, size or v.image_size
    ids = rng.integers(2, t.vocab_size, (batch, T))
    mask = np.ones((batch, T), np.int64)
    mask[0, 5:], ids[0, 5:] = 0, 1
    mask[1, T - 3:], ids[1, T - 3:] = 0, 1
    pixels = rng.normal(0.0, 1.0, (batch, v.num_channels, s, s)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def _tensors(model, arrays: dict, *names: str) -> dict:
    return as_tensors(clip_torch, model, **{n: arrays[n] for n in names})


@pytest.mark.parametrize("masked", [False, True])
def test_model_matches_transformers(ckpt, ours, masked):
    config, _, hf = ckpt
    names = ("input_ids", "pixel_values") + (("attention_mask",) if masked else ())
    x = _tensors(ours, _inputs(config), *names)
    with torch.no_grad():
        a, b = ours(**x, return_loss=True), hf(**x, return_loss=True)
    fields = assert_outputs_close(a, b, to_numpy, atol={"loss": LOSS_ATOL})
    assert {"loss", "text_embeds", "image_embeds", "logits_per_image", "logits_per_text"} <= set(fields)
    assert "text_model_output.pooler_output" in fields and "vision_model_output.last_hidden_state" in fields
    assert float(a.loss) > 0 and a.logits_per_image.shape == (3, 3)


def test_features_match_transformers(ckpt, ours):
    config, _, hf = ckpt
    x = _tensors(ours, _inputs(config, seed=1), "input_ids", "attention_mask", "pixel_values")
    with torch.no_grad():
        pairs = [(ours.get_text_features(x["input_ids"], x["attention_mask"]),
                  hf.get_text_features(x["input_ids"], x["attention_mask"])),
                 (ours.get_image_features(x["pixel_values"]), hf.get_image_features(x["pixel_values"]))]
    for a, b in pairs:
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=0, atol=HIDDEN_ATOL)
        unit = [to_numpy(t) / np.linalg.norm(to_numpy(t), axis=-1, keepdims=True) for t in (a, b)]
        np.testing.assert_allclose(unit[0], unit[1], rtol=0, atol=EMBED_ATOL)


def test_return_dict_false_is_transformers_tuple(ckpt, ours):
    config, _, hf = ckpt
    x = _tensors(ours, _inputs(config), "input_ids", "pixel_values")
    with torch.no_grad():
        a, b = ours(**x, return_dict=False), hf(**x, return_dict=False)
    assert len(a) == len(b) == 6  # logits_per_image, logits_per_text, text_embeds, image_embeds, 2 tower outputs
    np.testing.assert_allclose(to_numpy(a[0]), to_numpy(b[0]), rtol=0, atol=LOGIT_ATOL)


@pytest.fixture(scope="module")
def towers(ckpt):
    """Our and transformers' (eager, so it returns attentions) text and vision towers from the checkpoint."""
    _, path, _ = ckpt
    return {name: (getattr(clip_torch, name).from_pretrained(path),
                   getattr(transformers, name).from_pretrained(path, attn_implementation="eager").eval())
            for name in ("SiglipTextModel", "SiglipVisionModel")}


@pytest.mark.parametrize("masked", [False, True])
def test_text_model_matches_transformers(ckpt, towers, masked):
    ours_t, hf_t = towers["SiglipTextModel"]
    x = _tensors(ours_t, _inputs(ckpt[0], seed=2), "input_ids", *(("attention_mask",) if masked else ()))
    with torch.no_grad():
        a = ours_t(**x, output_hidden_states=True, output_attentions=True)
        b = hf_t(**x, output_hidden_states=True, output_attentions=True)
    fields = assert_outputs_close(a, b, to_numpy)
    layers = ckpt[0].text_config.num_hidden_layers
    assert f"hidden_states[{layers}]" in fields and f"attentions[{layers - 1}]" in fields


def test_vision_model_matches_transformers(ckpt, towers):
    ours_v, hf_v = towers["SiglipVisionModel"]
    x = _tensors(ours_v, _inputs(ckpt[0], batch=2, seed=3), "pixel_values")
    with torch.no_grad():
        a = ours_v(**x, output_hidden_states=True, output_attentions=True)
        b = hf_v(**x, output_hidden_states=True, output_attentions=True)
    fields = assert_outputs_close(a, b, to_numpy)
    assert {"last_hidden_state", "pooler_output", "hidden_states[0]", "attentions[0]"} <= set(fields)


def test_interpolate_pos_encoding_matches_transformers(ckpt, ours, towers):
    config, _, hf = ckpt
    size = config.vision_config.image_size + 2 * config.vision_config.patch_size
    x = _tensors(ours, _inputs(config, batch=2, size=size, seed=4), "pixel_values")
    ours_v, hf_v = towers["SiglipVisionModel"]
    with torch.no_grad():
        assert_outputs_close(ours_v(**x, interpolate_pos_encoding=True), hf_v(**x, interpolate_pos_encoding=True),
                             to_numpy)
        a = ours.get_image_features(x["pixel_values"], interpolate_pos_encoding=True)
        b = hf.get_image_features(x["pixel_values"], interpolate_pos_encoding=True)
    np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=0, atol=HIDDEN_ATOL)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        ours.get_image_features(x["pixel_values"])


def test_image_classification_matches_transformers(ckpt, tmp_path):
    config = ckpt[0]
    weights = random_weights(config, "classification", num_labels=5, seed=5)
    hf = _hf("SiglipForImageClassification", config, weights, num_labels=5)
    hf.save_pretrained(tmp_path)
    ours = clip_torch.SiglipForImageClassification.from_pretrained(tmp_path)
    assert ours.num_labels == 5
    x = _tensors(ours, _inputs(config, batch=2, seed=6), "pixel_values")
    labels = torch.tensor([1, 4])
    with torch.no_grad():
        a, b = ours(**x, labels=labels), hf(**x, labels=labels)
    np.testing.assert_allclose(to_numpy(a.logits), to_numpy(b.logits), rtol=0, atol=LOGIT_ATOL)
    np.testing.assert_allclose(to_numpy(a.loss), to_numpy(b.loss), rtol=0, atol=LOSS_ATOL)
    assert "vision_model.head.probe" in ours.canonical_weights()  # the head stays in the checkpoint


@pytest.mark.filterwarnings("ignore:no SigLIP tokenizer files")  # these checkpoints have no tokenizer
def test_save_pretrained_loads_in_transformers(ckpt, ours, tmp_path):
    config, _, hf = ckpt
    ours.save_pretrained(tmp_path)
    back = transformers.SiglipModel.from_pretrained(tmp_path).eval()
    x = _tensors(ours, _inputs(config, seed=7), "input_ids", "attention_mask", "pixel_values")
    with torch.no_grad():
        assert_outputs_close(back(**x, return_loss=True), hf(**x, return_loss=True), to_numpy, atol_all=0.0)
        assert_outputs_close(ours(**x, return_loss=True), back(**x, return_loss=True), to_numpy,
                             atol={"loss": LOSS_ATOL})


@pytest.mark.parametrize("edit, pattern", [
    ("missing", r"- logit_bias  \(missing\)"),
    ("extra", r"\+ vision_model\.extra\.weight  \(unexpected\)"),
    ("shape", r"~ text_model\.head\.bias: expected shape \(48,\), got \(47,\)"),
])
def test_strict_loading_names_the_tensor(tmp_path, edit, pattern):
    from safetensors.numpy import save_file

    config = tiny_siglip_config()
    weights = random_weights(config)
    if edit == "missing":
        del weights["logit_bias"]
    elif edit == "extra":
        weights["vision_model.extra.weight"] = np.zeros(3, np.float32)
    else:
        weights["text_model.head.bias"] = weights["text_model.head.bias"][:47]
    config.save_pretrained(tmp_path)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightMismatchError, match=pattern):
        clip_torch.SiglipModel.from_pretrained(tmp_path)


def test_train_step_loss_and_gradients_match_transformers():
    config = tiny_siglip_config()
    weights = random_weights(config, seed=8)
    ours = clip_torch.SiglipModel.from_canonical(config, weights).train()
    hf = _hf("SiglipModel", config, weights).train()
    x = _tensors(ours, _inputs(config, batch=4, seed=9), "input_ids", "attention_mask", "pixel_values")
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.1)
    loss = ours(**x, return_loss=True).loss
    ref = hf(**x, return_loss=True).loss
    np.testing.assert_allclose(float(loss.detach()), float(ref.detach()), rtol=0, atol=LOSS_ATOL)
    loss.backward()
    ref.backward()
    hf_params = dict(hf.named_parameters())
    for name in ("logit_scale", "logit_bias", "text_model.head.weight", "vision_model.head.probe",
                 "vision_model.head.attention.in_proj_weight", "vision_model.embeddings.patch_embedding.bias"):
        grad = dict(ours.named_parameters())[name].grad
        np.testing.assert_allclose(to_numpy(grad), to_numpy(hf_params[name].grad), rtol=0, atol=1e-5, err_msg=name)
    optimizer.step()
    optimizer.zero_grad()
    assert float(ours(**x, return_loss=True).loss.detach()) < float(loss.detach())


def test_siglip_loss_values():
    logits = torch.zeros(3, 3)
    np.testing.assert_allclose(float(clip_torch.siglip_loss(logits)), 3 * np.log(2.0), rtol=1e-6)
    rng = np.random.default_rng(10)
    z = rng.normal(0, 5, (4, 4))
    labels = 2 * np.eye(4) - 1
    expected = np.mean(np.sum(np.log1p(np.exp(-labels * z)), axis=-1))  # -logsigmoid(t) = log(1 + e^-t)
    np.testing.assert_allclose(float(clip_torch.siglip_loss(torch.tensor(z))), expected, rtol=1e-10)


def test_families_are_not_mixed():
    with pytest.raises(TypeError, match="siglip config"):
        clip_torch.SiglipModel(tiny_vit_config())
    with pytest.raises(TypeError, match="clip config"):
        clip_torch.CLIPModel(tiny_siglip_config())
    text = clip_torch.SiglipTextModel(tiny_siglip_config().text_config)  # a lone tower config is accepted
    assert text.config.text_config.hidden_size == 40


@pytest.mark.filterwarnings("ignore:no SigLIP tokenizer files")
@pytest.mark.parametrize("name", ["SiglipTextModel", "SiglipVisionModel"])
def test_tower_save_pretrained_round_trip(name, tmp_path):
    config = tiny_siglip_config()
    part = "text_model" if name == "SiglipTextModel" else "vision_model"
    weights = {k: v for k, v in random_weights(config, seed=11).items() if k.startswith(part)}
    ours = getattr(clip_torch, name).from_canonical(config, weights)
    ours.save_pretrained(tmp_path)
    again = getattr(clip_torch, name).from_pretrained(tmp_path)
    ref = getattr(transformers, name).from_pretrained(tmp_path).eval()
    arrays = _inputs(config, batch=2, seed=12)
    x = _tensors(ours, arrays, *(("input_ids", "attention_mask") if part == "text_model" else ("pixel_values",)))
    with torch.no_grad():
        assert_outputs_close(again(**x), ours(**x), to_numpy, atol_all=0.0)
        assert_outputs_close(ours(**x), ref(**x), to_numpy)
