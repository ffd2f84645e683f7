"""clip_torch-only behaviour (the shared behaviour is in tests/test_backends.py): zero-copy meta-device
loading, the ResNet pooler, LayerNorm precision, torch.compile, gradient checkpointing, the fused-QKV cache."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import clip_torch  # noqa: E402
from clip_core.testing import random_weights, tiny_resnet_config, tiny_vit_config  # noqa: E402
from tests.backend_harness import pixel_inputs, text_inputs  # noqa: E402


def _np(t):
    return t.detach().float().cpu().numpy()


def _model(cfg, cls=clip_torch.CLIPModel, seed=0, **kw):
    return cls.from_canonical(cfg, random_weights(cfg, cls.part, seed=seed,
                                                  num_labels=2 if cls.part == "classification" else None), **kw)


def _batch(cfg, b=2):
    return (torch.from_numpy(pixel_inputs(cfg, b)), torch.from_numpy(text_inputs(cfg, batch=b)["input_ids"]))


def test_meta_loading_is_zero_copy():
    cfg = tiny_vit_config()
    w = random_weights(cfg)
    m = clip_torch.CLIPModel.from_canonical(cfg, w)
    p = m.text_model.embeddings.token_embedding.weight
    assert p.data_ptr() == w["text_model.embeddings.token_embedding.weight"].ctypes.data
    assert not any(t.is_meta for t in list(m.parameters()) + list(m.buffers()))
    np.testing.assert_array_equal(_np(m.logit_scale), w["logit_scale"])


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
def test_low_precision_layer_norm_computes_in_float32(dtype):
    """A half-precision model's LayerNorm normalizes in float32 and rounds once (the embeddings' bound
    is checked for every backend in tests/test_backends.py)."""
    low = _model(tiny_vit_config()).to(dtype)
    x = torch.randn(2, 5, 48).to(dtype)
    ln = low.vision_model.pre_layrnorm
    with torch.no_grad():
        expect = torch.nn.functional.layer_norm(x.float(), (48,), ln.weight.float(), ln.bias.float(), 1e-5).to(dtype)
        torch.testing.assert_close(ln(x), expect, rtol=0, atol=0)


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
