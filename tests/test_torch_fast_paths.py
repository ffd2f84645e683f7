"""clip_torch's pooled-only ViT path: the last encoder layer runs for the class token alone in
``get_image_features`` / ``encode_image``; it must give the full path's values (to rounding)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import clip_torch
from clip_core.testing import random_weights, tiny_vit_config


def _setup(batch: int = 3):
    cfg = tiny_vit_config()
    model = clip_torch.CLIPModel.from_canonical(cfg, random_weights(cfg, seed=1))
    size = cfg.vision_config.image_size
    image = torch.from_numpy(np.random.default_rng(2).normal(size=(batch, 3, size, size)).astype(np.float32))
    return model, image


def _full_path(model, image):
    return model.visual_projection(model.vision_model(image).pooler_output)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", ["inference", "no_grad", "fused_off"])
def test_image_features_equal_full_tower(impl, mode):
    model, image = _setup()
    model.set_attn_implementation(impl)
    if mode == "fused_off":
        for layer in model.vision_model.encoder.layers:
            layer.self_attn.fuse_qkv = False
    ctx = torch.inference_mode() if mode == "inference" else torch.no_grad()
    with ctx:
        fast, full = model.get_image_features(image), _full_path(model, image)
    assert fast.shape == (3, model.config.projection_dim)
    np.testing.assert_allclose(fast.numpy(), full.numpy(), rtol=0, atol=2e-6)


def test_pooled_only_shapes_and_fallback():
    model, image = _setup(batch=2)
    tower = model.vision_model
    n_tokens = 1 + (tower.config.image_size // tower.config.patch_size) ** 2
    with torch.no_grad():
        fast = tower(image, pooled_only=True)
        full = tower(image)
        with_hidden = tower(image, output_hidden_states=True, pooled_only=True)  # asks for all tokens
    assert fast.last_hidden_state.shape == (2, 1, tower.config.hidden_size)
    assert full.last_hidden_state.shape == (2, n_tokens, tower.config.hidden_size)
    assert with_hidden.last_hidden_state.shape == full.last_hidden_state.shape
    np.testing.assert_allclose(fast.last_hidden_state[:, 0].numpy(), full.last_hidden_state[:, 0].numpy(),
                               rtol=0, atol=2e-6)
    np.testing.assert_allclose(fast.pooler_output.numpy(), full.pooler_output.numpy(), rtol=0, atol=2e-6)


def test_pooled_only_gradients_match_full_path():
    model, image = _setup(batch=2)
    model.train()
    params = [p for n, p in model.named_parameters() if n.startswith(("vision_model.", "visual_projection."))]
    grads = []
    for fn in (model.get_image_features, lambda x: _full_path(model, x)):
        model.zero_grad()
        fn(image).square().sum().backward()
        grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params])
    last = model.vision_model.encoder.layers[-1].self_attn.q_proj.weight
    assert last.grad is not None and float(last.grad.abs().max()) > 0
    for g_fast, g_full in zip(*grads):
        np.testing.assert_allclose(g_fast.numpy(), g_full.numpy(), rtol=1e-4, atol=1e-5)


def test_first_query_only_rejects_masks():
    model, _ = _setup()
    attn = model.vision_model.encoder.layers[0].self_attn
    x = torch.randn(1, 4, attn.embed_dim)
    with pytest.raises(ValueError, match="first_query_only"):
        attn(x, is_causal=True, first_query_only=True)


# --- oneDNN inference kernels (clip_torch.layers.ONEDNN): gemm, folded BatchNorm, fused epilogues ---

def _resnet_setup(batch: int = 2):
    from clip_core.testing import tiny_resnet_config

    cfg = tiny_resnet_config()
    model = clip_torch.CLIPModel.from_canonical(cfg, random_weights(cfg, seed=3)).eval()
    size = cfg.vision_config.image_size
    image = torch.from_numpy(np.random.default_rng(4).normal(size=(batch, 3, size, size)).astype(np.float32))
    return model, image


def _with_onednn(enabled: bool, fn):
    from clip_torch import layers

    saved, layers.ONEDNN = layers.ONEDNN, enabled
    try:
        with torch.inference_mode():
            return fn()
    finally:
        layers.ONEDNN = saved


@pytest.mark.parametrize("tower", ["vit", "resnet"])
def test_onednn_kernels_match_reference_kernels(tower):
    model, image = _setup() if tower == "vit" else _resnet_setup()
    run = lambda: model.vision_model(image, output_hidden_states=True)  # noqa: E731
    fast, plain = _with_onednn(True, run), _with_onednn(False, run)
    for a, b in zip((fast.pooler_output, *fast.hidden_states), (plain.pooler_output, *plain.hidden_states)):
        assert a.is_contiguous() and a.shape == b.shape
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
    if tower == "resnet":  # the folded path ran (its cache is filled) and the plain one did not use it
        assert model.vision_model.layer1[0]._folded._key is not None


def test_onednn_linear_matches_f_linear_and_keeps_autograd_path():
    from clip_torch.layers import Linear

    layer = Linear(96, 80)
    x = torch.from_numpy(np.random.default_rng(5).normal(size=(3, 7, 96)).astype(np.float32))
    with torch.no_grad():
        fast = layer(x)
    ref = torch.nn.functional.linear(x, layer.weight, layer.bias)
    np.testing.assert_allclose(fast.numpy(), ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    y = layer(x.requires_grad_())  # with autograd: F.linear, which has a backward
    y.sum().backward()
    assert layer.weight.grad is not None and x.grad is not None


@pytest.mark.parametrize("bf16_instructions", [True, False])
def test_bf16_linear_runs_onednn_only_where_the_cpu_has_bf16(monkeypatch, bf16_instructions):
    from clip_torch import layers

    if bf16_instructions and not layers.onednn_bf16():
        pytest.skip("this CPU has no bf16 instructions for oneDNN")
    if not bf16_instructions:  # as on a CPU without them: F.linear (addmm), whatever this one has
        monkeypatch.setattr(layers, "onednn_bf16", lambda: False)
    layer = layers.Linear(96, 80).to(torch.bfloat16)
    x = torch.from_numpy(np.random.default_rng(6).normal(size=(3, 7, 96)).astype(np.float32)).to(torch.bfloat16)
    with torch.inference_mode(), torch.profiler.profile() as prof:
        out = layer(x)
    ops = {event.key for event in prof.key_averages()}
    assert ("mkldnn::_linear_pointwise" in ops) is bf16_instructions, sorted(ops)
    assert out.dtype == torch.bfloat16 and out.shape == (3, 7, 80)
    with torch.no_grad():
        ref = torch.nn.functional.linear(x.float(), layer.weight.float(), layer.bias.float())
    np.testing.assert_allclose(out.float().numpy(), ref.numpy(), rtol=1e-2, atol=1e-2)


def test_folded_resnet_follows_weight_changes_and_train_mode():
    model, image = _resnet_setup()
    tower = model.vision_model
    with torch.no_grad():
        before = tower(image).pooler_output
        bn = tower.layer2[0].bn2
        bn.running_var.mul_(4.0)  # in place: the folded weights must be rebuilt
        bn.bias.add_(0.5)
        after = tower(image).pooler_output
        reference = _with_onednn(False, lambda: tower(image).pooler_output)
    assert not np.allclose(before.numpy(), after.numpy(), atol=1e-3)
    np.testing.assert_allclose(after.numpy(), reference.numpy(), rtol=1e-5, atol=1e-5)
    tower.train()  # batch statistics: the plain path, not the folded running-statistics one
    with torch.no_grad():
        train_out = tower(image).pooler_output
    assert not np.allclose(train_out.numpy(), after.numpy(), atol=1e-3)
