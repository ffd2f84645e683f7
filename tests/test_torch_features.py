"""clip_torch behaviour that needs no reference package: strict loading, zero-copy meta-device
loading, ResNet classes, dtypes, torch.compile, gradient checkpointing, the fused-QKV cache."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import clip_torch  # noqa: E402
from clip_core.schema import WeightMismatchError  # noqa: E402
from clip_core.testing import random_weights, tiny_resnet_config, tiny_vit_config  # noqa: E402
from tests.backend_harness import assert_embeds_close, assert_outputs_close, pixel_inputs, text_inputs  # noqa: E402


def _np(t):
    return t.detach().float().cpu().numpy()


def _model(cfg, cls=clip_torch.CLIPModel, seed=0, **kw):
    return cls.from_canonical(cfg, random_weights(cfg, cls.part, seed=seed,
                                                  num_labels=2 if cls.part == "classification" else None), **kw)


def _batch(cfg, b=2):
    return (torch.from_numpy(pixel_inputs(cfg, b)), torch.from_numpy(text_inputs(cfg, batch=b)["input_ids"]))


@pytest.mark.parametrize("change,pattern", [
    ("drop", r"- text_model.final_layer_norm.weight  \(missing\)"),
    ("extra", r"\+ text_model.bogus.weight  \(unexpected\)"),
    ("shape", r"~ text_projection.weight: expected shape \(16, 32\), got \(3, 3\)"),
])
def test_strict_loading_names_the_tensor(change, pattern):
    cfg = tiny_vit_config()
    w = random_weights(cfg)
    if change == "drop":
        del w["text_model.final_layer_norm.weight"]
    elif change == "extra":
        w["text_model.bogus.weight"] = np.zeros(3, np.float32)
    else:
        w["text_projection.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(WeightMismatchError, match=pattern):
        clip_torch.CLIPModel.from_canonical(cfg, w)


def test_meta_loading_is_zero_copy():
    cfg = tiny_vit_config()
    w = random_weights(cfg)
    m = clip_torch.CLIPModel.from_canonical(cfg, w)
    p = m.text_model.embeddings.token_embedding.weight
    assert p.data_ptr() == w["text_model.embeddings.token_embedding.weight"].ctypes.data
    assert not any(t.is_meta for t in list(m.parameters()) + list(m.buffers()))
    np.testing.assert_array_equal(_np(m.logit_scale), w["logit_scale"])


@pytest.mark.parametrize("cls_name", ["CLIPModel", "CLIPVisionModel", "CLIPVisionModelWithProjection",
                                      "CLIPForImageClassification", "CLIPTextModelWithProjection"])
def test_resnet_classes_roundtrip(tmp_path, cls_name):
    cfg = tiny_resnet_config()
    cls = getattr(clip_torch, cls_name)
    m = _model(cfg, cls)
    m.save_pretrained(tmp_path / "m")
    m2 = cls.from_pretrained(tmp_path / "m")
    image, text = _batch(cfg)
    kw = {"input_ids": text} if "Text" in cls_name else {"pixel_values": image}
    if cls_name == "CLIPModel":
        kw["input_ids"] = text
    with torch.no_grad():
        a, b = m(**kw, output_hidden_states=True), m2(**kw, output_hidden_states=True)
    assert_outputs_close(a, b, to_numpy=_np, atol={})
    if "Vision" in cls_name or "Classification" in cls_name:
        hs = a.hidden_states if "Model" in cls_name and cls_name != "CLIPModel" else None
        if hs is not None:
            assert len(hs) == 5 and hs[-1].shape == (2, cfg.vision_config.embed_dim, 2, 2)


def test_resnet_pooler_is_image_embedding():
    cfg = tiny_resnet_config()
    w = random_weights(cfg)
    full = clip_torch.CLIPModel.from_canonical(cfg, w)
    vis = clip_torch.CLIPVisionModel.from_canonical(cfg, w)
    image, _ = _batch(cfg)
    with torch.no_grad():
        out = vis(image, output_attentions=True)
        np.testing.assert_array_equal(_np(out.pooler_output), _np(full.get_image_features(image)))
    assert out.last_hidden_state.shape == (2, 256, 2, 2) and out.attentions == ()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inference(dtype):
    cfg = tiny_vit_config()
    m = _model(cfg)
    low = _model(cfg).to(dtype)
    image, text = _batch(cfg)
    with torch.no_grad():
        ref_i, ref_t = m.get_image_features(image), m.get_text_features(text)
        lo_i, lo_t = low.get_image_features(image.to(dtype)), low.get_text_features(text)
        x = torch.randn(2, 5, 48).to(dtype)
        ln = low.vision_model.pre_layrnorm
        expect = torch.nn.functional.layer_norm(x.float(), (48,), ln.weight.float(), ln.bias.float(), 1e-5).to(dtype)
        torch.testing.assert_close(ln(x), expect, rtol=0, atol=0)
    assert lo_i.dtype == dtype
    assert_embeds_close(_np(lo_i), _np(ref_i), atol=3e-2)
    assert_embeds_close(_np(lo_t), _np(ref_t), atol=3e-2)


def test_torch_compile():
    cfg = tiny_vit_config()
    m = _model(cfg)
    compiled = torch.compile(m, backend="eager")
    image, text = _batch(cfg)
    with torch.no_grad():
        a = compiled(input_ids=text, pixel_values=image)
        b = m(input_ids=text, pixel_values=image)
    np.testing.assert_allclose(_np(a.logits_per_image), _np(b.logits_per_image), rtol=0, atol=1e-5)


def test_gradient_checkpointing_same_gradients():
    cfg = tiny_vit_config()
    image, text = _batch(cfg)
    grads = []
    for ckpt in (False, True):
        m = _model(cfg).train()
        if ckpt:
            m.gradient_checkpointing_enable()
        m(input_ids=text, pixel_values=image, return_loss=True).loss.backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-6)


def test_contrastive_loss_value():
    cfg = tiny_vit_config()
    m = _model(cfg)
    image, text = _batch(cfg)
    with torch.no_grad():
        out = m(input_ids=text, pixel_values=image, return_loss=True)
    lp = _np(out.logits_per_text).astype(np.float64)

    def ce(x):
        x = x - x.max(1, keepdims=True)
        return -np.mean(np.diag(x) - np.log(np.exp(x).sum(1)))

    np.testing.assert_allclose(float(out.loss), (ce(lp) + ce(lp.T)) / 2, rtol=1e-5)


def test_fused_qkv_cache_follows_weight_updates():
    cfg = tiny_vit_config()
    m, fresh = _model(cfg), _model(cfg)
    image, text = _batch(cfg)
    with torch.no_grad():
        m.get_image_features(image)  # fills the cache
        for model in (m, fresh):
            model.vision_model.encoder.layers[0].self_attn.q_proj.weight.mul_(1.5)
        np.testing.assert_array_equal(_np(m.get_image_features(image)), _np(fresh.get_image_features(image)))
        m.vision_model.encoder.layers[0].self_attn.fuse_qkv = False
        np.testing.assert_allclose(_np(m.get_image_features(image)), _np(fresh.get_image_features(image)),
                                   rtol=0, atol=1e-5)


def test_openai_call_matches_keyword_call():
    cfg = tiny_vit_config()
    m = _model(cfg)
    image, text = _batch(cfg)
    with torch.no_grad():
        li, lt = m(image, text)
        out = m(input_ids=text, pixel_values=image)
    np.testing.assert_allclose(_np(li), _np(out.logits_per_image), rtol=0, atol=1e-4)
    np.testing.assert_allclose(_np(lt), _np(out.logits_per_text), rtol=0, atol=1e-4)


def test_tower_config_accepted_and_bad_inputs():
    cfg = tiny_vit_config()
    m = clip_torch.CLIPTextModel(cfg.text_config)
    assert m.config.text_config == cfg.text_config
    v = _model(cfg, clip_torch.CLIPVisionModel)
    with pytest.raises(ValueError, match="channels"):
        v(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="input_ids"):
        _model(cfg)(pixel_values=torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="attn_implementation"):
        clip_torch.CLIPModel(cfg, attn_implementation="flash")
