"""clip_flax against transformers 4.57's FlaxCLIPModel / CLIPModel and OpenAI's ModifiedResNet.

Checkpoints are built from ``clip_core.testing.random_weights`` with ``conversion.save_canonical``;
the references load the same directory with their own loaders. Module-scoped fixtures keep the
number of jit compilations small.
"""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import clip_flax  # noqa: E402
import conversion  # noqa: E402
from clip_core import to_backend  # noqa: E402
from clip_core.testing import random_weights, tiny_resnet_config, tiny_vit_config  # noqa: E402
from tests.backend_harness import (EMBED_ATOL, HIDDEN_ATOL, LOGIT_ATOL, assert_close, pixel_inputs,  # noqa: E402
                                   text_inputs)

EMB, LOGIT, STATE = EMBED_ATOL, LOGIT_ATOL, HIDDEN_ATOL


def _inputs(config, batch=3, seed=0):
    """The shared battery (12 tokens, EOT at different positions, padding mask) as the int32 ids jax takes."""
    text = text_inputs(config, batch=batch, length=12, seed=seed)
    ids, mask = text["input_ids"].astype(np.int32), text["attention_mask"].astype(np.int32)
    return ids, mask, pixel_inputs(config, batch, seed)


_close = assert_close


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    cfg = tiny_vit_config()
    d = tmp_path_factory.mktemp("flax_vit") / "ckpt"
    conversion.save_canonical(d, cfg, random_weights(cfg, seed=1))
    return d


@pytest.fixture(scope="module")
def vit(vit_dir):
    return clip_flax.CLIPModel.from_pretrained(vit_dir)


@pytest.fixture(scope="module")
def hf_flax(vit_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.FlaxCLIPModel.from_pretrained(str(vit_dir), from_pt=True)


def _compare_tower(ours, ref, atol, name):
    _close(ours.last_hidden_state, ref.last_hidden_state, atol, f"{name}.last_hidden_state")
    _close(ours.pooler_output, ref.pooler_output, atol, f"{name}.pooler_output")
    assert len(ours.hidden_states) == len(ref.hidden_states)
    for i, (a, b) in enumerate(zip(ours.hidden_states, ref.hidden_states)):
        _close(a, b, atol, f"{name}.hidden_states[{i}]")
    assert len(ours.attentions) == len(ref.attentions)
    for i, (a, b) in enumerate(zip(ours.attentions, ref.attentions)):
        _close(a, b, atol, f"{name}.attentions[{i}]")


@pytest.mark.parametrize("padded", [False, True])
def test_vit_every_output_matches_hf_flax(vit, hf_flax, padded):
    ids, mask, pix = _inputs(vit.config)
    mask = mask if padded else None
    ours = vit(input_ids=ids, pixel_values=pix, attention_mask=mask, output_attentions=True,
               output_hidden_states=True)
    ref = hf_flax(input_ids=ids, pixel_values=pix, attention_mask=mask, output_attentions=True,
                  output_hidden_states=True)
    _close(ours.logits_per_image, ref.logits_per_image, LOGIT, "logits_per_image")
    _close(ours.logits_per_text, ref.logits_per_text, LOGIT, "logits_per_text")
    _close(ours.text_embeds, ref.text_embeds, EMB, "text_embeds")
    _close(ours.image_embeds, ref.image_embeds, EMB, "image_embeds")
    _compare_tower(ours.text_model_output, ref.text_model_output, STATE, "text")
    _compare_tower(ours.vision_model_output, ref.vision_model_output, STATE, "vision")


def test_features_match_hf_flax(vit, hf_flax):
    ids, mask, pix = _inputs(vit.config)
    _close(vit.get_text_features(ids, attention_mask=mask), hf_flax.get_text_features(ids, attention_mask=mask),
           STATE, "get_text_features")
    _close(vit.get_image_features(pix), hf_flax.get_image_features(pix), STATE, "get_image_features")


def test_params_are_hf_flax_pytree(vit, hf_flax):
    ours = {k: np.asarray(v) for k, v in clip_flax.models.flatten(vit.params).items()}
    ref = {k: np.asarray(v) for k, v in clip_flax.models.flatten(hf_flax.params).items()}
    assert set(ours) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)


def test_contrastive_loss_matches_hf_torch(vit, vit_dir):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    ref = transformers.CLIPModel.from_pretrained(str(vit_dir)).eval()
    ids, mask, pix = _inputs(vit.config)
    with torch.no_grad():
        r = ref(input_ids=torch.as_tensor(ids, dtype=torch.long), pixel_values=torch.as_tensor(pix),
                attention_mask=torch.as_tensor(mask), return_loss=True)
    ours = vit(input_ids=ids, pixel_values=pix, attention_mask=mask, return_loss=True)
    _close(ours.loss, r.loss.numpy(), 1e-4, "loss")
    _close(ours.logits_per_image, r.logits_per_image.numpy(), LOGIT, "logits_per_image")


@pytest.mark.parametrize("act,eos", [("gelu", 2)])
def test_gelu_and_legacy_eos_pooling_match_hf_flax(tmp_path, act, eos):
    transformers = pytest.importorskip("transformers")
    cfg = tiny_vit_config(hidden_act=act, eos_token_id=eos)
    conversion.save_canonical(tmp_path, cfg, random_weights(cfg, "model", seed=2))
    ours = clip_flax.CLIPTextModelWithProjection.from_pretrained(tmp_path)
    ref = transformers.FlaxCLIPTextModelWithProjection.from_pretrained(str(tmp_path), from_pt=True)
    ids, mask, _ = _inputs(cfg)
    ids[0, 4] = 49407  # the largest id is not the (legacy) eos token 2: pooling differs between the rules
    a, b = ours(ids, attention_mask=mask), ref(ids, attention_mask=mask)
    _close(a.text_embeds, b.text_embeds, STATE, "text_embeds")
    _close(a.last_hidden_state, b.last_hidden_state, STATE, "last_hidden_state")


def test_text_bucketing_equals_full_length(vit):
    ids, mask, _ = _inputs(vit.config, batch=4)
    full = np.zeros((4, 77), np.int32)
    full[:, :ids.shape[1]] = ids
    full_mask = np.zeros((4, 77), np.int32)
    full_mask[:, :ids.shape[1]] = mask
    trimmed = vit.get_text_features(full, attention_mask=full_mask)
    untrimmed = vit.get_text_features(full, attention_mask=full_mask, trim=False)
    _close(trimmed, untrimmed, 1e-5, "trimmed vs full length")
    from clip_flax.text_speed import bucket_length, trim_text_inputs
    assert trim_text_inputs(full, full_mask, None, vit.config.text_config)[0].shape == (4, 16)
    assert [bucket_length(n, 77) for n in (1, 8, 9, 33, 65, 77)] == [8, 8, 16, 64, 77, 77]


def test_interpolate_pos_encoding_matches_hf_torch(vit, vit_dir):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    ref = transformers.CLIPVisionModel.from_pretrained(str(vit_dir)).eval()
    model = clip_flax.CLIPVisionModel.from_pretrained(vit_dir)
    pix = np.random.default_rng(3).normal(0, 1, (2, 3, 48, 56)).astype(np.float32)
    with torch.no_grad():
        r = ref(pixel_values=torch.as_tensor(pix), interpolate_pos_encoding=True)
    out = model(pix, interpolate_pos_encoding=True)
    _close(out.last_hidden_state, r.last_hidden_state.numpy(), STATE, "last_hidden_state")
    _close(out.pooler_output, r.pooler_output.numpy(), STATE, "pooler_output")
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(pix)


def test_classification_matches_hf_torch(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    base = tiny_vit_config()
    cfg = type(base)(text_config=base.text_config, vision_config=base.vision_config, projection_dim=16,
                     extra={"id2label": {"0": "a", "1": "b", "2": "c"}, "label2id": {"a": 0, "b": 1, "c": 2}})
    model = clip_flax.CLIPForImageClassification(cfg, _do_init=False)
    assert model.num_labels == 3
    model.load_flat(to_backend(random_weights(cfg, "classification", seed=4, num_labels=3), cfg, "flax",
                               "classification", num_labels=3))
    model.save_pretrained(tmp_path)  # a classification checkpoint (conversion writes whole CLIPs only)
    ours = clip_flax.CLIPForImageClassification.from_pretrained(tmp_path)
    ref = transformers.CLIPForImageClassification.from_pretrained(str(tmp_path)).eval()
    _, _, pix = _inputs(cfg)
    labels = np.array([0, 2, 1])
    with torch.no_grad():
        r = ref(pixel_values=torch.as_tensor(pix), labels=torch.as_tensor(labels))
    out = ours(pix, labels=labels)
    _close(out.logits, r.logits.numpy(), STATE, "logits")
    _close(out.loss, r.loss.numpy(), 1e-4, "loss")


# ------------------------------------------------------------------------------------- ResNet
@pytest.fixture(scope="module")
def rn_weights():
    cfg = tiny_resnet_config()
    return cfg, random_weights(cfg, seed=5)


def _openai_resnet(cfg, weights):
    """OpenAI's own ModifiedResNet loaded with the canonical tensors (canonical = OpenAI's names)."""
    torch = pytest.importorskip("torch")
    model_mod = pytest.importorskip("clip.model")
    v = cfg.vision_config
    net = model_mod.ModifiedResNet(list(v.layers), v.projection_dim, v.num_attention_heads, v.image_size, v.width)
    sd = {k[len("vision_model."):]: torch.as_tensor(a) for k, a in weights.items() if k.startswith("vision_model.")}
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return net.eval()


def test_resnet_matches_openai(tmp_path, rn_weights):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg, weights = rn_weights
    conversion.save_canonical(tmp_path, cfg, weights)
    ours = clip_flax.CLIPModel.from_pretrained(tmp_path)
    net = _openai_resnet(cfg, weights)
    text_ref = transformers.CLIPTextModelWithProjection.from_pretrained(str(tmp_path)).eval()
    ids, mask, pix = _inputs(cfg, batch=2)
    with torch.no_grad():
        img = net(torch.as_tensor(pix)).numpy()
        stem = net.avgpool(net.relu3(net.bn3(net.conv3(net.relu2(net.bn2(net.conv2(
            net.relu1(net.bn1(net.conv1(torch.as_tensor(pix))))))))))).numpy()
        txt = text_ref(input_ids=torch.as_tensor(ids, dtype=torch.long),
                       attention_mask=torch.as_tensor(mask)).text_embeds.numpy()
    out = ours(input_ids=ids, pixel_values=pix, attention_mask=mask, output_hidden_states=True)
    norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    _close(out.image_embeds, norm(img), EMB, "image_embeds")
    _close(out.text_embeds, norm(txt), EMB, "text_embeds")
    logits = np.exp(weights["logit_scale"]) * norm(img) @ norm(txt).T
    _close(out.logits_per_image, logits, LOGIT, "logits_per_image")
    vo = out.vision_model_output
    assert vo.last_hidden_state.shape == (2, cfg.vision_config.embed_dim, 2, 2)  # NCHW
    assert len(vo.hidden_states) == 5
    _close(vo.hidden_states[0], stem, STATE, "stem output")
    _close(ours.get_image_features(pix), img, STATE, "get_image_features")
    assert set(clip_flax.models.flatten(ours.batch_stats)) >= {"vision_model/bn1/mean", "vision_model/bn1/var"}


# ------------------------------------------------------------------------------------- loading / saving
def test_msgpack_interchange_with_hf_flax(vit, hf_flax, tmp_path):
    transformers = pytest.importorskip("transformers")
    ids, mask, pix = _inputs(vit.config)
    vit.save_pretrained(tmp_path / "ours", format="flax")
    hf_back = transformers.FlaxCLIPModel.from_pretrained(str(tmp_path / "ours"))
    _close(hf_back(input_ids=ids, pixel_values=pix).logits_per_image,
           vit(input_ids=ids, pixel_values=pix).logits_per_image, LOGIT, "HF reading our msgpack")
    hf_flax.save_pretrained(str(tmp_path / "theirs"))
    ours_back = clip_flax.CLIPModel.from_pretrained(tmp_path / "theirs")
    _close(ours_back(input_ids=ids, pixel_values=pix).logits_per_image,
           hf_flax(input_ids=ids, pixel_values=pix).logits_per_image, LOGIT, "clip_flax reading HF's msgpack")


@pytest.mark.parametrize("fmt", ["canonical", "flax"])
def test_resnet_save_load_round_trip(tmp_path, rn_weights, fmt):
    cfg, weights = rn_weights
    model = clip_flax.CLIPModel(cfg, _do_init=False)
    model.load_flat(to_backend(weights, cfg, "flax"))
    assert "mean" in model.batch_stats["vision_model"]["bn1"]
    assert not any(k.endswith(("/mean", "/var")) for k in clip_flax.models.flatten(model.params))
    model.save_pretrained(tmp_path, format=fmt)
    back = clip_flax.CLIPModel.from_pretrained(tmp_path).canonical_weights()
    assert set(back) == set(weights)
    for k in weights:
        np.testing.assert_array_equal(back[k], weights[k], err_msg=k)


# ---------------------------------------------------------------------------- towers
@pytest.mark.parametrize("part", ["text", "vision", "vision_with_projection"])
def test_tower_msgpack_round_trip_and_hf_reads_it(tmp_path, vit_dir, part):
    """A tower-only model saved as HF Flax msgpack: our loader reads it back bit-exact and
    transformers' Flax tower class (text / vision; HF Flax has no vision-with-projection) reads it too."""
    cls = {"text": clip_flax.CLIPTextModel, "vision": clip_flax.CLIPVisionModel,
           "vision_with_projection": clip_flax.CLIPVisionModelWithProjection}[part]
    tower = cls.from_pretrained(vit_dir)
    tower.save_pretrained(tmp_path / "fx", format="flax")
    assert (tmp_path / "fx" / "flax_model.msgpack").is_file()
    back = cls.from_pretrained(tmp_path / "fx").canonical_weights()
    ref = tower.canonical_weights()
    assert set(back) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(back[k], ref[k], err_msg=k)
    if part == "vision_with_projection":
        return
    transformers = pytest.importorskip("transformers")
    ids, mask, pix = _inputs(tower.config)
    if part == "text":
        hf = transformers.FlaxCLIPTextModel.from_pretrained(str(tmp_path / "fx"))
        ours, theirs = tower(ids, attention_mask=mask), hf(input_ids=ids, attention_mask=mask)
    else:
        hf = transformers.FlaxCLIPVisionModel.from_pretrained(str(tmp_path / "fx"))
        ours, theirs = tower(pix), hf(pixel_values=pix)
    _close(theirs.pooler_output, ours.pooler_output, STATE, f"HF {part} tower reading our msgpack")
