"""clip_tf's SigLIP classes vs transformers 4.57's PyTorch SiglipModel & co. from the same random weights."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

# The references first: torch / torchvision (and triton, pulled in by transformers' torch models) crash when
# imported after TensorFlow.
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import (SiglipForImageClassification as HFClassifier, SiglipModel as HFModel,  # noqa: E402
                          SiglipTextModel as HFText, SiglipVisionModel as HFVision)

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import clip_tf  # noqa: E402
from clip_core import get_config  # noqa: E402
from clip_core.schema import WeightMismatchError  # noqa: E402
from clip_core.testing import random_weights, tiny_siglip_config  # noqa: E402
from tests.backend_harness import (EMBED_ATOL, HIDDEN_ATOL, LOGIT_ATOL, as_tensors, assert_outputs_close,  # noqa: E402
                                   pixel_inputs, to_numpy)

LOSS_ATOL = 1e-5


def _b16_config():
    """SigLIP B/16 at 224 with one layer per tower and a 1,000-token vocabulary."""
    c = get_config("siglip-base-patch16-224")
    text = dataclasses.replace(c.text_config, num_hidden_layers=1, vocab_size=1000)
    vision = dataclasses.replace(c.vision_config, num_hidden_layers=1)
    return dataclasses.replace(c, text_config=text, vision_config=vision)


def _state(weights: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}


def _hf_dir(tmp_path_factory, config, name: str, part: str = "model", num_labels=None):
    """A checkpoint written by transformers' own save_pretrained; returns (dir, reference module)."""
    weights = random_weights(config, part=part, seed=7, num_labels=num_labels)
    data = config.to_dict()
    if num_labels:
        data["num_labels"] = num_labels
    hf_config = transformers.SiglipConfig.from_dict(data)
    ref = (HFClassifier if part == "classification" else HFModel)(hf_config).eval()
    ref.set_attn_implementation("eager")  # attentions are returned by the eager path only
    ref.load_state_dict(_state(weights), strict=True)
    path = tmp_path_factory.mktemp(name)
    ref.save_pretrained(path)
    return path, ref


_BUILT: dict = {}


def _checkpoint(kind: str, tmp_path_factory):
    """(config, checkpoint dir, transformers SiglipModel, clip_tf SiglipModel), built once per module."""
    if kind not in _BUILT:
        config = tiny_siglip_config() if kind == "tiny" else _b16_config()
        path, ref = _hf_dir(tmp_path_factory, config, f"siglip_{kind}")
        _BUILT[kind] = config, path, ref, clip_tf.SiglipModel.from_pretrained(path)
    return _BUILT[kind]


@pytest.fixture(scope="module", params=["tiny", "b16"])
def ckpt(request, tmp_path_factory):
    """Both shapes: the tiny odd one and B/16 with one layer per tower."""
    yield _checkpoint(request.param, tmp_path_factory)
    _BUILT.pop(request.param, None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _checkpoint("tiny", tmp_path_factory)


def _inputs(config, padded: bool, batch: int = 2, size=None) -> dict:
    """Random token ids (B, T), all rows but the last padded with ``pad_token_id`` at different lengths (and an
    ``attention_mask``) when ``padded``; pixels (B, C, S, S)."""
    t = config.text_config
    rng = np.random.default_rng(1)
    ids = rng.integers(2, t.vocab_size, (batch, t.max_position_embeddings))
    mask = np.ones_like(ids)
    for row in range(batch - 1 if padded else 0):  # the last row fills the context
        n = 3 + row * 5 % (t.max_position_embeddings - 3)
        ids[row, n:], mask[row, n:] = t.pad_token_id, 0
    out = {"input_ids": ids, "pixel_values": pixel_inputs(config, batch=batch, size=size)}
    if padded:
        out["attention_mask"] = mask
    return out


def _ref(module, **arrays):
    with torch.no_grad():
        return module(**{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in arrays.items()})


def _ours(model, **kwargs):
    arrays = {k: v for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    return model(**{**kwargs, **as_tensors(clip_tf, None, **arrays)})


@pytest.mark.parametrize("padded", [False, True], ids=["no_mask", "mask"])
def test_model_matches_transformers(ckpt, padded):
    config, _, ref, ours = ckpt
    arrays = _inputs(config, padded)
    a, b = _ours(ours, **arrays, return_loss=True), _ref(ref, **arrays, return_loss=True)
    names = assert_outputs_close(a, b, to_numpy=to_numpy, fields=("text_embeds", "image_embeds", "logits"))
    assert names == ["image_embeds", "logits_per_image", "logits_per_text", "text_embeds"]
    np.testing.assert_allclose(to_numpy(a.loss), to_numpy(b.loss), atol=LOSS_ATOL, rtol=0)
    assert (EMBED_ATOL, LOGIT_ATOL) == (1e-5, 1e-3)
    if padded:  # the padding mask is applied (the padded row's embedding moves), the others are unaffected
        unmasked = to_numpy(_ours(ours, **{k: v for k, v in arrays.items() if k != "attention_mask"}).text_embeds)
        moved = np.abs(unmasked - to_numpy(a.text_embeds)).max(axis=-1)
        assert moved[0] > 1e-3 and moved[-1] < EMBED_ATOL, moved


def test_features_match_transformers(ckpt):
    config, _, ref, ours = ckpt
    arrays = _inputs(config, padded=True, batch=3)
    text = {k: arrays[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        want_t = ref.get_text_features(**{k: torch.from_numpy(v) for k, v in text.items()})
        want_i = ref.get_image_features(pixel_values=torch.from_numpy(arrays["pixel_values"]))
    got_t = ours.get_text_features(**as_tensors(clip_tf, None, **text))
    got_i = ours.get_image_features(arrays["pixel_values"])
    np.testing.assert_allclose(to_numpy(got_t), to_numpy(want_t), atol=HIDDEN_ATOL, rtol=0)
    np.testing.assert_allclose(to_numpy(got_i), to_numpy(want_i), atol=HIDDEN_ATOL, rtol=0)


@pytest.mark.parametrize("padded", [False, True], ids=["no_mask", "mask"])
def test_text_model_every_field(ckpt, padded):
    config, path, _, _ = ckpt
    ours = clip_tf.SiglipTextModel.from_pretrained(path)
    ref = HFText.from_pretrained(path, attn_implementation="eager").eval()
    arrays = {k: v for k, v in _inputs(config, padded).items() if k != "pixel_values"}
    flags = dict(output_hidden_states=True, output_attentions=True)
    names = assert_outputs_close(_ours(ours, **arrays, **flags), _ref(ref, **arrays, **flags), to_numpy=to_numpy)
    n = config.text_config.num_hidden_layers
    assert {"pooler_output", f"hidden_states[{n}]", f"attentions[{n - 1}]"} <= set(names)


def test_vision_model_every_field(ckpt):
    config, path, _, _ = ckpt
    ours = clip_tf.SiglipVisionModel.from_pretrained(path)
    ref = HFVision.from_pretrained(path, attn_implementation="eager").eval()
    flags = dict(output_hidden_states=True, output_attentions=True)
    px = pixel_inputs(config, batch=2)
    names = assert_outputs_close(_ours(ours, pixel_values=px, **flags), _ref(ref, pixel_values=px, **flags),
                                 to_numpy=to_numpy)
    n = config.vision_config.num_hidden_layers
    assert {"last_hidden_state", "pooler_output", f"hidden_states[{n}]", f"attentions[{n - 1}]"} <= set(names)


def test_interpolate_pos_encoding_at_another_size(ckpt):
    config, _, ref, ours = ckpt
    size = config.vision_config.image_size + 2 * config.vision_config.patch_size
    arrays = _inputs(config, padded=True, size=size)
    a = _ours(ours, **arrays, interpolate_pos_encoding=True)
    b = _ref(ref, **arrays, interpolate_pos_encoding=True)
    assert_outputs_close(a, b, to_numpy=to_numpy, fields=("image_embeds", "logits"))
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        _ours(ours, **arrays)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    config = tiny_siglip_config()
    path, ref = _hf_dir(tmp_path_factory, config, "siglip_cls", part="classification", num_labels=3)
    return config, path, ref


def test_image_classification_matches_transformers(classifier):
    config, path, ref = classifier
    ours = clip_tf.SiglipForImageClassification.from_pretrained(path)
    assert ours.num_labels == 3
    px = pixel_inputs(config, batch=3)
    labels = np.array([0, 2, 1])
    flags = dict(output_hidden_states=True, output_attentions=True)
    a = _ours(ours, pixel_values=px, labels=labels, **flags)
    b = _ref(ref, pixel_values=px, labels=labels, **flags)
    names = assert_outputs_close(a, b, to_numpy=to_numpy, atol={"loss": LOSS_ATOL})
    assert {"loss", "logits", "hidden_states[2]", "attentions[1]"} <= set(names)


def test_save_pretrained_loads_in_transformers(ckpt, tmp_path):
    config, _, ref, ours = ckpt
    ours.save_pretrained(tmp_path)
    again = HFModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    want = ref.state_dict()
    assert sorted(again.state_dict()) == sorted(want)
    for name, tensor in again.state_dict().items():  # float32 weights survive bit for bit
        assert torch.equal(tensor, want[name]), name
    arrays = _inputs(config, padded=True)
    a, b = _ref(again, **arrays, return_loss=True), _ref(ref, **arrays, return_loss=True)
    for field in ("text_embeds", "image_embeds", "logits_per_text", "loss"):
        np.testing.assert_allclose(to_numpy(a[field]), to_numpy(b[field]), atol=1e-6, rtol=0, err_msg=field)


def _broken_dir(src, dst, edit):
    """A copy of checkpoint ``src`` whose safetensors tensors went through ``edit``."""
    from safetensors.numpy import load_file, save_file

    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    tensors = load_file(str(src / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("kind, name, sign", [
    ("missing", "vision_model.head.probe", "-"),
    ("extra", "text_model.encoder.layers.9.mlp.fc1.bias", "+"),
    ("mis-shaped", "text_model.head.bias", "~")])
def test_strict_loading_names_the_tensor(tiny, tmp_path, kind, name, sign):
    path = tiny[1]

    def edit(t):
        if kind == "missing":
            del t[name]
        elif kind == "extra":
            t[name] = np.zeros(3, np.float32)
        else:
            t[name] = np.zeros(t[name].shape[0] + 1, np.float32)

    broken = _broken_dir(path, tmp_path / "broken", edit)
    with pytest.raises(WeightMismatchError) as err:
        clip_tf.SiglipModel.from_pretrained(broken)
    assert f"{sign} {name}" in str(err.value)


def test_wrong_family_is_an_error(tiny):
    config = tiny[0]
    with pytest.raises(ValueError, match="SiglipModel needs a siglip config"):
        clip_tf.SiglipModel(get_config("ViT-B-32"))
    with pytest.raises(ValueError, match="CLIPModel needs a clip config"):
        clip_tf.CLIPModel(config)


def test_siglip_loss_formula():
    """-mean over rows of sum log sigmoid(z * logits), z = +1 on the diagonal, -1 elsewhere (numpy)."""
    logits = np.random.default_rng(0).normal(0, 3, (4, 4)).astype(np.float32)
    z = 2 * np.eye(4) - 1
    want = -np.mean(np.sum(-np.logaddexp(0.0, -z * logits.astype(np.float64)), axis=-1))
    np.testing.assert_allclose(float(clip_tf.siglip_loss(logits)), want, rtol=1e-6)


def test_train_step_loss_equals_transformers(tiny):
    config, path, ref, _ = tiny
    model = clip_tf.SiglipModel.from_pretrained(path)
    batch = {k: v.astype(np.int32) if v.dtype.kind == "i" else v for k, v in _inputs(config, True, batch=4).items()}
    before = {k: v.numpy().copy() for k, v in model.variable_index().items()}
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    data = tf.data.Dataset.from_tensor_slices(batch).batch(4)
    history = model.fit(data, epochs=1, verbose=0)
    want = _ref(ref, **_inputs(config, True, batch=4), return_loss=True).loss
    np.testing.assert_allclose(history.history["loss"][0], to_numpy(want), atol=LOSS_ATOL, rtol=0)
    after = model.variable_index()
    for name in ("logit_bias", "text_model/head/kernel", "vision_model/head/probe"):
        assert not np.allclose(after[name].numpy(), before[name]), f"{name} was not updated"
    assert json.loads((path / "config.json").read_text())["model_type"] == "siglip"
