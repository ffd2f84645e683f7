"""clip_tf loading and saving: strict diffs, canonical directory, tf_model.h5 both ways, .keras, SavedModel."""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import keras  # noqa: E402

import clip_tf  # noqa: E402
import conversion  # noqa: E402
from clip_core.schema import WeightMismatchError  # noqa: E402
from clip_core.testing import random_weights, tiny_resnet_config, tiny_vit_config  # noqa: E402
from tests.backend_harness import assert_embeds_close, pixel_inputs, text_inputs  # noqa: E402


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    cfg = tiny_vit_config()
    path = tmp_path_factory.mktemp("tf_io_vit")
    conversion.save_canonical(path, cfg, random_weights(cfg, seed=7))
    return path, clip_tf.CLIPModel.from_pretrained(path)


def _inputs(cfg):
    text = text_inputs(cfg, batch=2, length=12, padding=True)
    return {"input_ids": text["input_ids"].astype(np.int32), "attention_mask": text["attention_mask"].astype(np.int32),
            "pixel_values": pixel_inputs(cfg, batch=2)}


def _logits(model, inputs):
    return np.asarray(model(**inputs).logits_per_image)


def test_strict_loading_names_the_missing_tensor(tmp_path):
    cfg = tiny_vit_config()
    weights = random_weights(cfg)
    del weights["text_model.encoder.layers.1.mlp.fc2.bias"]
    weights["vision_model.extra.weight"] = np.zeros(3, np.float32)
    model = clip_tf.CLIPModel(cfg)
    with pytest.raises(WeightMismatchError, match=r"layers\.1\.mlp\.fc2\.bias[\s\S]*vision_model\.extra\.weight"):
        model.load_canonical(weights)


def test_from_pretrained_draws_no_initial_values_it_overwrites(vit, monkeypatch):
    """Loading builds the model with zero variables (``weights_to_come``) and assigns every one: no random draw,
    in fp32 and in bf16 (whose float32 reference model is a second build), and the weights are the file's."""
    from clip_tf.primitives import weights_to_come

    def no_draw(*args, **kwargs):
        raise AssertionError("a random initial value was drawn")

    monkeypatch.setattr(keras.initializers.GlorotUniform, "__call__", no_draw)
    path, loaded = vit
    for precision in ("fp32", "bf16"):
        model = clip_tf.CLIPModel.from_pretrained(path, precision=precision)
        assert model.precision == precision
    expected = loaded.canonical_weights()
    for name, value in clip_tf.CLIPModel.from_pretrained(path).canonical_weights().items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
    with weights_to_come():
        blank = clip_tf.CLIPModel(tiny_vit_config())
    assert not any(np.any(v.numpy()) for v in blank.variable_index().values())
    with pytest.raises(AssertionError, match="random initial value"):
        clip_tf.CLIPModel(tiny_vit_config())


@pytest.mark.parametrize("cls,part", [("CLIPTextModel", "text"), ("CLIPVisionModelWithProjection",
                                                                  "vision_with_projection")])
def test_tower_drops_other_tower_and_round_trips(tmp_path, vit, cls, part):
    path, full = vit
    tower = getattr(clip_tf, cls).from_pretrained(path)
    tower.save_pretrained(tmp_path / "tower")
    from safetensors.numpy import load_file

    saved = load_file(str(tmp_path / "tower" / "model.safetensors"))
    again = getattr(clip_tf, cls).from_pretrained(tmp_path / "tower")  # a part-only checkpoint loads too
    assert sorted(again.canonical_weights()) == sorted(saved)
    expected = {k: v for k, v in full.canonical_weights().items() if k in saved}
    assert sorted(saved) == sorted(tower.canonical_weights()) and len(expected) == len(saved)
    for name, value in saved.items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)


@pytest.mark.parametrize("config", [tiny_vit_config(), tiny_resnet_config()], ids=["vit", "resnet"])
def test_save_pretrained_round_trip(tmp_path, config):
    weights = random_weights(config, seed=1)
    model = clip_tf.CLIPModel(config)
    model.load_canonical(weights)
    model.save_pretrained(tmp_path / "out")
    again = clip_tf.CLIPModel.from_pretrained(tmp_path / "out")
    for name, value in again.canonical_weights().items():
        np.testing.assert_array_equal(value, weights[name], err_msg=name)


def test_tf_h5_loads_in_transformers(tmp_path, vit):
    transformers = pytest.importorskip("transformers")
    _, model = vit
    model.save_tf_h5(tmp_path / "h5")
    assert (tmp_path / "h5" / "tf_model.h5").exists()
    ref = transformers.TFCLIPModel.from_pretrained(tmp_path / "h5")
    inputs = _inputs(model.config)
    np.testing.assert_allclose(_logits(model, inputs), np.asarray(ref(**inputs).logits_per_image), atol=1e-3, rtol=0)


def test_transformers_h5_loads_in_clip_tf(tmp_path, vit):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    path, model = vit
    ref = transformers.TFCLIPModel.from_pretrained(path, from_pt=True)
    ref.save_pretrained(tmp_path / "hf_tf")
    assert (tmp_path / "hf_tf" / "tf_model.h5").exists()
    ours = clip_tf.CLIPModel.from_pretrained(tmp_path / "hf_tf")
    inputs = _inputs(model.config)
    np.testing.assert_allclose(_logits(ours, inputs), np.asarray(ref(**inputs).logits_per_image), atol=1e-3, rtol=0)


@pytest.mark.parametrize("kwargs", [{}, {"data_format": "channels_last", "jit_compile": True, "name": "m",
                                         "dtype": "mixed_bfloat16"}])
def test_get_config_echoes_constructor(kwargs):
    model = clip_tf.CLIPForImageClassification(tiny_vit_config(), num_labels=3, **kwargs)
    cfg = model.get_config()
    for key, value in kwargs.items():
        assert (cfg[key]["config"]["name"] if key == "dtype" else cfg[key]) == value
    assert cfg["num_labels"] == 3 and cfg["config"] == tiny_vit_config().to_dict()
    again = clip_tf.CLIPForImageClassification.from_config(cfg)
    assert again.get_config() == cfg


def test_keras_save_and_load_model(tmp_path, vit):
    _, model = vit
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, clip_tf.CLIPModel)
    inputs = _inputs(model.config)
    np.testing.assert_array_equal(_logits(loaded, inputs), _logits(model, inputs))


def test_saved_model_serving_signatures(tmp_path, vit):
    _, model = vit
    clip_tf.export_saved_model(model, tmp_path / "sm")
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    text = text_inputs(model.config, batch=3, padding=True)
    ids, mask = text["input_ids"].astype(np.int32), text["attention_mask"].astype(np.int32)
    got = loaded.signatures["get_text_features"](input_ids=tf.constant(ids), attention_mask=tf.constant(mask))
    assert_embeds_close(got["text_embeds"].numpy(), model(input_ids=ids, attention_mask=mask,
                        pixel_values=pixel_inputs(model.config, batch=1)).text_embeds.numpy())
    pixels = pixel_inputs(model.config, batch=2)
    got = loaded.signatures["get_image_features"](pixel_values=tf.constant(pixels))
    assert_embeds_close(got["image_embeds"].numpy(), model.get_image_features(pixels).numpy())
