"""clip_tf vs transformers 4.57 ``TFCLIPModel`` (tf-keras) from the same canonical weights: every field."""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
transformers = pytest.importorskip("transformers")
pytest.importorskip("torch")  # from_pt=True converts the safetensors through torch

import clip_tf  # noqa: E402
import conversion  # noqa: E402
from clip_core.testing import random_weights, tiny_vit_config  # noqa: E402
from tests.backend_harness import assert_embeds_close, assert_outputs_close, pixel_inputs, text_inputs  # noqa: E402


def _np(x):
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x)


def _hf_dir(tmp_path_factory, cfg, name):
    path = tmp_path_factory.mktemp(name)
    conversion.save_canonical(path, cfg, random_weights(cfg, seed=3))
    return path


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """(checkpoint dir, clip_tf CLIPModel, transformers TFCLIPModel) for the tiny ViT."""
    path = _hf_dir(tmp_path_factory, tiny_vit_config(), "tf_vit")
    ref = transformers.TFCLIPModel.from_pretrained(path, from_pt=True)
    return path, clip_tf.CLIPModel.from_pretrained(path), ref


def _inputs(cfg, padding: bool):
    text = text_inputs(cfg, batch=2, length=12, padding=padding)
    kwargs = {"input_ids": text["input_ids"].astype(np.int32), "pixel_values": pixel_inputs(cfg, batch=2)}
    if padding:
        kwargs["attention_mask"] = text["attention_mask"].astype(np.int32)
    return kwargs


@pytest.mark.parametrize("padding", [False, True], ids=["full", "padded"])
def test_clip_model_every_field(vit, padding):
    _, ours, ref = vit
    kwargs = _inputs(ours.config, padding)
    flags = dict(output_hidden_states=True, output_attentions=True, return_loss=True)
    a, b = ours(**kwargs, **flags), ref(**kwargs, **flags)
    names = assert_outputs_close(a, b, to_numpy=_np, skip=("loss",))
    assert "vision_model_output.attentions[1]" in names and "text_model_output.hidden_states[2]" in names
    np.testing.assert_allclose(_np(a.loss), _np(b.loss).reshape(()), atol=1e-5, rtol=0)  # HF TF: shape (1,)


@pytest.mark.parametrize("cls", ["CLIPTextModel", "CLIPVisionModel"])
def test_tower_classes(vit, cls):
    path, model, _ = vit
    ours = getattr(clip_tf, cls).from_pretrained(path)
    ref = getattr(transformers, "TF" + cls).from_pretrained(path, from_pt=True)
    kwargs = _inputs(ours.config, padding=True)
    kwargs = {k: v for k, v in kwargs.items() if (k == "pixel_values") == ("Vision" in cls)}
    flags = dict(output_hidden_states=True, output_attentions=True)
    assert_outputs_close(ours(**kwargs, **flags), ref(**kwargs, **flags), to_numpy=_np)


@pytest.mark.parametrize("kind", ["text", "vision"])
def test_with_projection_classes(vit, kind):
    """transformers 4.57 has no TF *WithProjection classes: compare with TFCLIPModel's pieces."""
    path, _, ref = vit
    flags = dict(output_hidden_states=True, output_attentions=True)
    kwargs = _inputs(tiny_vit_config(), padding=True)
    full = ref(**kwargs, **flags)
    if kind == "text":
        ours = clip_tf.CLIPTextModelWithProjection.from_pretrained(path)
        out = ours(input_ids=kwargs["input_ids"], attention_mask=kwargs["attention_mask"], **flags)
        tower, embeds = full.text_model_output, ref.get_text_features(
            input_ids=tf.constant(kwargs["input_ids"]), attention_mask=tf.constant(kwargs["attention_mask"]))
        np.testing.assert_allclose(_np(out.text_embeds), _np(embeds), atol=1e-5, rtol=0)
    else:
        ours = clip_tf.CLIPVisionModelWithProjection.from_pretrained(path)
        out = ours(pixel_values=kwargs["pixel_values"], **flags)
        embeds = ref.get_image_features(pixel_values=tf.constant(kwargs["pixel_values"]))
        tower = full.vision_model_output
        np.testing.assert_allclose(_np(out.image_embeds), _np(embeds), atol=1e-5, rtol=0)
    assert_outputs_close(out, tower, to_numpy=_np, fields=("last_hidden_state", "hidden_states", "attentions"))


def test_features_match_reference(vit):
    """The XLA-compiled, length-bucketed feature paths give HF's projected features."""
    _, ours, ref = vit
    kwargs = _inputs(ours.config, padding=True)
    text = text_inputs(ours.config, batch=4, padding=True)  # 77-padded
    ids, mask = text["input_ids"].astype(np.int32), text["attention_mask"].astype(np.int32)
    theirs = ref.get_text_features(input_ids=tf.constant(ids), attention_mask=tf.constant(mask))
    assert_embeds_close(_np(ours.get_text_features(ids, mask)), _np(theirs))
    assert_embeds_close(_np(ours.get_image_features(kwargs["pixel_values"])),
                        _np(ref.get_image_features(pixel_values=tf.constant(kwargs["pixel_values"]))))


def test_legacy_argmax_pooling(tmp_path_factory):
    """eos_token_id == 2 configs pool at argmax(input_ids), as Hugging Face does."""
    cfg = tiny_vit_config(eos_token_id=2)
    path = _hf_dir(tmp_path_factory, cfg, "tf_legacy")
    ours = clip_tf.CLIPTextModel.from_pretrained(path)
    ref = transformers.TFCLIPTextModel.from_pretrained(path, from_pt=True)
    ids = text_inputs(cfg, batch=3, length=10, padding=True)["input_ids"].astype(np.int32)
    np.testing.assert_allclose(_np(ours(input_ids=ids).pooler_output), _np(ref(input_ids=ids).pooler_output),
                               atol=1e-5, rtol=0)


def test_clip_model_matches_clip_torch(vit):
    """The same weights in clip_torch (the numerical reference backend): every field."""
    torch = pytest.importorskip("torch")
    clip_torch = pytest.importorskip("clip_torch")
    path, ours, _ = vit
    ref = clip_torch.CLIPModel.from_pretrained(path).eval()
    kwargs = _inputs(ours.config, padding=True)
    flags = dict(output_hidden_states=True, output_attentions=True, return_loss=True)
    with torch.no_grad():
        theirs = ref(**{k: torch.from_numpy(v.astype(np.int64) if v.dtype == np.int32 else v)
                        for k, v in kwargs.items()}, **flags)
    names = assert_outputs_close(ours(**kwargs, **flags), theirs,
                                 to_numpy=lambda x: x.detach().numpy() if hasattr(x, "detach") else _np(x))
    assert "loss" in names and "text_model_output.attentions[1]" in names
