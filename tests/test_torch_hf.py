"""clip_torch against transformers 4.57 ``CLIP*`` classes loaded from the same canonical directory."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import clip_torch  # noqa: E402
import conversion  # noqa: E402
from clip_core.testing import random_weights, tiny_vit_config  # noqa: E402
from tests.backend_harness import assert_embeds_close, assert_outputs_close, pixel_inputs, text_inputs  # noqa: E402


def _np(t):
    return t.detach().float().cpu().numpy()


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    cfg = tiny_vit_config()
    path = tmp_path_factory.mktemp("vit") / "ckpt"
    conversion.save_canonical(path, cfg, random_weights(cfg, seed=3))
    return path


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory):
    """A classification checkpoint (3 labels): vision tower + classifier."""
    cfg = tiny_vit_config()
    cfg = cfg.replace(extra={"id2label": {str(i): f"c{i}" for i in range(3)}})
    path = tmp_path_factory.mktemp("cls") / "ckpt"
    weights = random_weights(cfg, "classification", seed=5, num_labels=3)
    clip_torch.CLIPForImageClassification.from_canonical(cfg, weights).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def legacy_dir(tmp_path_factory):
    cfg = tiny_vit_config(eos_token_id=2)
    path = tmp_path_factory.mktemp("legacy") / "ckpt"
    conversion.save_canonical(path, cfg, random_weights(cfg, seed=4))
    return path


def _inputs(cfg, padding: bool, size=None):
    ti = text_inputs(cfg, batch=2, padding=padding, seed=1)
    kw = {"input_ids": torch.from_numpy(ti["input_ids"]), "pixel_values": torch.from_numpy(pixel_inputs(cfg, 2, size=size))}
    if padding:
        kw["attention_mask"] = torch.from_numpy(ti["attention_mask"])
    return kw


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("padding", [True, False])
def test_clip_model_every_field(vit_dir, impl, padding):
    ours = clip_torch.CLIPModel.from_pretrained(vit_dir, attn_implementation=impl)
    ref = transformers.CLIPModel.from_pretrained(vit_dir, attn_implementation=impl).eval()
    kw = _inputs(ours.config, padding)
    attn = impl == "eager"
    with torch.no_grad():
        a = ours(**kw, output_hidden_states=True, output_attentions=attn, return_loss=True)
        b = ref(**kw, output_hidden_states=True, output_attentions=attn, return_loss=True)
    names = assert_outputs_close(a, b, to_numpy=_np)
    assert "loss" in names and "text_model_output.hidden_states[2]" in names
    assert any("attentions" in n for n in names) == attn
    assert_embeds_close(_np(a.image_embeds), _np(b.image_embeds))


def test_legacy_argmax_pooling(legacy_dir):
    ours = clip_torch.CLIPModel.from_pretrained(legacy_dir)
    assert ours.config.text_config.legacy_eos_pooling
    ref = transformers.CLIPModel.from_pretrained(legacy_dir).eval()
    kw = _inputs(ours.config, True)
    with torch.no_grad():
        assert_outputs_close(ours(**kw), ref(**kw), to_numpy=_np)
        assert_embeds_close(_np(ours.get_text_features(kw["input_ids"])), _np(ref.get_text_features(kw["input_ids"])))


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_interpolate_pos_encoding(vit_dir, impl):
    ours = clip_torch.CLIPModel.from_pretrained(vit_dir, attn_implementation=impl)
    ref = transformers.CLIPModel.from_pretrained(vit_dir, attn_implementation=impl).eval()
    kw = _inputs(ours.config, True, size=48)  # 32 px model at 48 px (the 224 -> 336 ratio)
    with torch.no_grad():
        a = ours(**kw, interpolate_pos_encoding=True, output_hidden_states=True)
        b = ref(**kw, interpolate_pos_encoding=True, output_hidden_states=True)
        assert_outputs_close(a, b, to_numpy=_np)
        with pytest.raises(ValueError, match="interpolate_pos_encoding"):
            ours(**kw)


def test_text_fast_path_matches_full(vit_dir):
    ours = clip_torch.CLIPModel.from_pretrained(vit_dir)
    ref = transformers.CLIPModel.from_pretrained(vit_dir).eval()
    for padding in (True, False):
        kw = _inputs(ours.config, padding)
        with torch.no_grad():
            fast = ours.get_text_features(kw["input_ids"], kw.get("attention_mask"))
            full = ref.get_text_features(kw["input_ids"], kw.get("attention_mask"))
            np.testing.assert_allclose(_np(fast), _np(full), rtol=0, atol=1e-5)
            t = ours.text_model(kw["input_ids"], full_length=False)
            assert t.last_hidden_state.shape[1] == int((kw["input_ids"] == 49407).int().argmax(-1).max()) + 1


def test_sdpa_matches_eager(vit_dir):
    kw = _inputs(tiny_vit_config(), True)
    outs = []
    for impl in ("sdpa", "eager"):
        with torch.no_grad():
            outs.append(clip_torch.CLIPModel.from_pretrained(vit_dir, attn_implementation=impl)(
                **kw, output_hidden_states=True))
    names = assert_outputs_close(outs[0], outs[1], to_numpy=_np, atol_all=1e-5, skip=("logits", "loss"))
    assert "vision_model_output.hidden_states[2]" in names
    np.testing.assert_allclose(_np(outs[0].logits_per_image), _np(outs[1].logits_per_image), rtol=0, atol=1e-4)


_TOWERS = [
    ("CLIPTextModel", "text"), ("CLIPTextModelWithProjection", "text"),
    ("CLIPVisionModel", "vision"), ("CLIPVisionModelWithProjection", "vision"),
    ("CLIPForImageClassification", "vision"),
]


@pytest.mark.parametrize("name,kind", _TOWERS)
def test_tower_classes(vit_dir, cls_dir, name, kind):
    path = cls_dir if name == "CLIPForImageClassification" else vit_dir
    ours = getattr(clip_torch, name).from_pretrained(path, attn_implementation="eager")
    ref = getattr(transformers, name).from_pretrained(path, attn_implementation="eager").eval()
    kw = _inputs(ours.config, True)
    kw = {k: v for k, v in kw.items() if (k == "pixel_values") == (kind == "vision")}
    if name == "CLIPForImageClassification":
        assert ours.num_labels == 3
        kw["labels"] = torch.tensor([0, 2])
    with torch.no_grad():
        a = ours(**kw, output_hidden_states=True, output_attentions=True)
        b = ref(**kw, output_hidden_states=True, output_attentions=True)
    assert_outputs_close(a, b, to_numpy=_np)


def test_classifier_checkpoint_is_strict(vit_dir):
    with pytest.raises(ValueError, match="classifier.weight"):
        clip_torch.CLIPForImageClassification.from_pretrained(vit_dir)


@pytest.mark.parametrize("part_cls", ["CLIPModel", "CLIPVisionModelWithProjection", "CLIPTextModel"])
def test_save_pretrained_loads_in_transformers(tmp_path, vit_dir, part_cls):
    ours = getattr(clip_torch, part_cls).from_pretrained(vit_dir)
    ours.save_pretrained(tmp_path / "out")
    ref, info = getattr(transformers, part_cls).from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    kw = _inputs(ours.config, True)
    if part_cls == "CLIPModel":
        with torch.no_grad():
            assert_outputs_close(ours(**kw), ref.eval()(**kw), to_numpy=_np)
    ours2 = getattr(clip_torch, part_cls).from_pretrained(tmp_path / "out")
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(ours2.state_dict()[k], v, rtol=0, atol=0)


@pytest.mark.fullsize
def test_fullsize_vit_b32_at_336px(tmp_path):
    """Full-size ViT-B/32 (random weights) against transformers, at 336 px with interpolation."""
    from clip_core import get_config

    cfg = get_config("ViT-B/32")
    conversion.save_canonical(tmp_path / "b32", cfg, random_weights(cfg, seed=7))
    ours = clip_torch.CLIPModel.from_pretrained(tmp_path / "b32")
    ref = transformers.CLIPModel.from_pretrained(tmp_path / "b32").eval()
    kw = _inputs(cfg, True, size=336)
    kw["pixel_values"] = kw["pixel_values"][:1]
    with torch.no_grad():
        a = ours(**kw, interpolate_pos_encoding=True)
        b = ref(**kw, interpolate_pos_encoding=True)
    assert_outputs_close(a, b, to_numpy=_np)
    assert_embeds_close(_np(a.text_embeds), _np(b.text_embeds))
