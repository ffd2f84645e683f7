"""One behaviour, three backends: every test here runs for clip_torch, clip_tf and clip_flax through the
``backend`` fixture, on a tiny ViT and a tiny ResNet checkpoint, with the bounds of ``backend_harness``.

Strict loading, the tower classes, classifier save -> reload, text trimming against the full-length
forward, OpenAI's positional call and ``load`` / ``tokenize``, low-precision dtypes and the save ->
load round trip through every checkpoint format. Framework-specific behaviour (torch.compile, Keras
policies, jax bucketing internals) stays in the per-framework test files.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import conversion
from clip_core import tokenize as np_tokenize
from clip_core.schema import WeightMismatchError
from clip_core.testing import random_weights, tiny_resnet_config, tiny_vit_config
from tests.backend_harness import (EMBED_ATOL, HIDDEN_ATOL, LOGIT_ATOL, TENSOR_KIND, as_tensors,
                                   assert_close, assert_embeds_close, pixel_inputs, text_inputs, to_numpy)

TOWERS = ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModel", "CLIPVisionModelWithProjection")


@pytest.fixture(scope="module", params=["vit", "resnet"])
def checkpoint(request, tmp_path_factory):
    """``(config, directory)`` of a canonical checkpoint with random weights."""
    cfg = tiny_vit_config() if request.param == "vit" else tiny_resnet_config()
    path = tmp_path_factory.mktemp(request.param) / "ckpt"
    conversion.save_canonical(path, cfg, random_weights(cfg, seed=3))
    return cfg, path


@pytest.fixture(scope="module")
def models():
    """Models loaded once per (backend, checkpoint, class): jax / XLA compilations are the slow part."""
    cache = {}

    def get(backend, path, cls_name="CLIPModel", **kwargs):
        key = (backend.__name__, str(path), cls_name, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = getattr(backend, cls_name).from_pretrained(path, **kwargs)
        return cache[key]

    return get


def _inputs(backend, cfg, model=None, batch=3):
    """Padded text (rows of different lengths, one EOT near the end of the context) and pixels."""
    text = text_inputs(cfg, batch=batch, padding=True)
    ids, mask = text["input_ids"], text["attention_mask"]
    last = cfg.text_config.max_position_embeddings - 4
    ids[-1, last], mask[-1, :last + 1] = cfg.text_config.eos_token_id, 1  # pooled late: the longest bucket
    return as_tensors(backend, model, input_ids=ids, attention_mask=mask, pixel_values=pixel_inputs(cfg, batch))


# ----------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("damage,pattern", [
    ("missing", r"- text_model\.encoder\.layers\.1\.mlp\.fc1\.weight  \(missing\)"),
    ("unexpected", r"\+ text_model\.encoder\.layers\.7\.mlp\.fc1\.weight  \(unexpected\)"),
    ("shape", r"~ text_model\.encoder\.layers\.1\.mlp\.fc1\.weight: expected shape \(64, 32\), got \(64, 31\)"),
])
def test_strict_loading_names_the_tensor(backend, tmp_path, damage, pattern):
    """A checkpoint that does not fit the config is refused with a +/-/~ line naming the tensor."""
    from safetensors.numpy import save_file  # conversion's own writers refuse damaged weights

    cfg = tiny_vit_config()
    w = random_weights(cfg, seed=6)
    name = "text_model.encoder.layers.1.mlp.fc1.weight"
    if damage == "missing":
        del w[name]
    elif damage == "unexpected":
        w["text_model.encoder.layers.7.mlp.fc1.weight"] = w[name]
    else:
        w[name] = np.ascontiguousarray(w[name][:, :-1])
    save_file(w, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(tmp_path)
    with pytest.raises(WeightMismatchError, match=pattern):
        backend.CLIPModel.from_pretrained(tmp_path)


@pytest.mark.filterwarnings("ignore:this architecture does not follow OpenAI's rules")
@pytest.mark.parametrize("fmt", conversion.FORMATS_BY_FAMILY["clip"])
def test_save_load_round_trip_every_format(backend, checkpoint, models, tmp_path, fmt):
    """``save_pretrained(format=...)`` then ``from_pretrained`` gives back the same tensors bit for bit."""
    cfg, path = checkpoint
    model = models(backend, path)
    model.save_pretrained(tmp_path / fmt, format=fmt)
    back = backend.CLIPModel.from_pretrained(tmp_path / fmt).canonical_weights()
    ref = model.canonical_weights()
    assert sorted(back) == sorted(ref)
    for k in ref:
        np.testing.assert_array_equal(back[k], ref[k], err_msg=f"{fmt}: {k}")


# ----------------------------------------------------------------------------------- classes
@pytest.mark.parametrize("cls_name", TOWERS)
def test_tower_classes_match_full_model_and_round_trip(backend, checkpoint, models, tmp_path, cls_name):
    """A tower class loaded from a whole CLIP checkpoint (dropping the other tower) gives the whole model's
    tower outputs, and survives ``save_pretrained`` -> ``from_pretrained`` unchanged."""
    cfg, path = checkpoint
    full, tower = models(backend, path), models(backend, path, cls_name)
    x = _inputs(backend, cfg, full)
    out = full(**x, output_hidden_states=True)
    if "Text" in cls_name:
        got = tower(input_ids=x["input_ids"], attention_mask=x["attention_mask"])
        ref = out.text_model_output
        feats = "text_embeds", full.get_text_features(input_ids=x["input_ids"], attention_mask=x["attention_mask"])
    else:
        got = tower(pixel_values=x["pixel_values"])
        ref = out.vision_model_output
        feats = "image_embeds", full.get_image_features(pixel_values=x["pixel_values"])
    if cls_name.endswith("WithProjection"):
        assert_close(getattr(got, feats[0]), feats[1], HIDDEN_ATOL, feats[0])
    else:
        assert_close(got.last_hidden_state, ref.last_hidden_state, HIDDEN_ATOL, "last_hidden_state")
        assert_close(got.pooler_output, ref.pooler_output, HIDDEN_ATOL, "pooler_output")
    tower.save_pretrained(tmp_path / "tower")
    back = getattr(backend, cls_name).from_pretrained(tmp_path / "tower").canonical_weights()
    assert sorted(back) == sorted(tower.canonical_weights())


def test_classifier_num_labels_save_reload(backend, checkpoint, tmp_path):
    """transformers' ``CLIPForImageClassification.from_pretrained(clip_checkpoint, num_labels=5)``: a fresh
    5-way head (with transformers' warning), saved and reloaded without restating the labels."""
    cfg, path = checkpoint
    cls = backend.CLIPForImageClassification
    with pytest.warns(UserWarning, match="newly initialized"):
        clf = cls.from_pretrained(path, num_labels=5)
    x = _inputs(backend, cfg, clf)
    logits = to_numpy(clf(pixel_values=x["pixel_values"]).logits)
    assert logits.shape == (3, 5)
    clf.save_pretrained(tmp_path / "clf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is newly initialized now
        back = cls.from_pretrained(tmp_path / "clf")
    assert back.config.num_labels == 5
    assert_close(back(pixel_values=x["pixel_values"]).logits, logits, 1e-6, "reloaded logits")


# ----------------------------------------------------------------------------------- text
def test_trimmed_text_features_equal_full_length(backend, checkpoint, models):
    """``get_text_features`` runs only the padded prefix that holds every pooled EOT (trimming on); the
    model's forward runs every position (trimming off). Pooled, projected, normalized: the same."""
    cfg, path = checkpoint
    model = models(backend, path)
    for seed in range(2):  # two batches of different real lengths through one loaded model
        text = text_inputs(cfg, batch=3, padding=True, seed=seed)
        x = as_tensors(backend, model, **text, pixel_values=pixel_inputs(cfg, 1))
        trimmed = model.get_text_features(input_ids=x["input_ids"], attention_mask=x["attention_mask"])
        full = model(**x).text_embeds
        assert_embeds_close(to_numpy(trimmed), to_numpy(full), EMBED_ATOL)


# ----------------------------------------------------------------------------------- OpenAI style
def test_openai_positional_call_and_encoders(backend, checkpoint, models):
    """``model(images, tokens) -> (logits_per_image, logits_per_text)``, ``encode_image`` / ``encode_text``."""
    cfg, path = checkpoint
    model = models(backend, path)
    x = _inputs(backend, cfg, model)
    per_image, per_text = model(x["pixel_values"], x["input_ids"])
    ref = model(input_ids=x["input_ids"], pixel_values=x["pixel_values"])
    assert_close(per_image, ref.logits_per_image, LOGIT_ATOL, "logits_per_image")
    assert_close(per_text, ref.logits_per_text, LOGIT_ATOL, "logits_per_text")
    assert_close(model.encode_image(x["pixel_values"]), model.get_image_features(pixel_values=x["pixel_values"]), 1e-6,
           "encode_image")
    assert_close(model.encode_text(x["input_ids"]), model.get_text_features(input_ids=x["input_ids"]), 1e-6, "encode_text")


def test_openai_load_and_tokenize(backend, checkpoint, models, tmp_path):
    """``clip.load`` / ``clip.tokenize`` / ``clip.available_models``: one implementation behind the three."""
    from PIL import Image

    cfg, path = checkpoint
    model, preprocess = backend.load(str(path), device="cpu", jit=False)
    pixels = preprocess(Image.new("RGB", (40, 50), (120, 30, 200)))
    size = cfg.vision_config.image_size
    assert tuple(pixels.shape) == (3, size, size) and to_numpy(pixels).dtype == np.float64
    tokens = backend.tokenize(["a photo of a cat", "a dog"])
    assert np.asarray(to_numpy(tokens)).shape == (2, 77)
    assert np.dtype(str(tokens.dtype).replace("torch.", "").replace("<dtype: '", "").rstrip("'>")) \
        == TENSOR_KIND[backend.__name__][1]
    np.testing.assert_array_equal(to_numpy(tokens), np_tokenize(["a photo of a cat", "a dog"]))
    images = as_tensors(backend, model, p=np.stack([to_numpy(pixels).astype(np.float32)] * 2))["p"]
    ref = models(backend, path)
    assert_close(model.encode_image(images), ref.get_image_features(pixel_values=images), 1e-6, "encode_image")
    with pytest.warns(UserWarning, match="jit"):
        backend.load(str(path), jit=True)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        backend.load("ViT-B/32", download_root=str(tmp_path))
    assert "RN50" in backend.available_models()


# ----------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_close_to_float32(backend, checkpoint, models, dtype):
    """``from_pretrained(dtype=...)`` computes in half precision; embeddings stay within 3e-2 of fp32."""
    cfg, path = checkpoint
    ref, low = models(backend, path), models(backend, path, dtype=dtype)
    x32, xlow = _inputs(backend, cfg, ref), _inputs(backend, cfg, low)
    for name, a, b in (("image", low.get_image_features(pixel_values=xlow["pixel_values"]),
                        ref.get_image_features(pixel_values=x32["pixel_values"])),
                       ("text", low.get_text_features(input_ids=xlow["input_ids"]),
                        ref.get_text_features(input_ids=x32["input_ids"]))):
        a, b = to_numpy(a), to_numpy(b)
        assert np.isfinite(a).all(), f"{dtype} {name} features are not finite"
        assert_embeds_close(a, b, atol=3e-2)
        assert np.abs(a - b).max() > 0, f"{dtype} {name}: identical to fp32, the dtype was not applied"
