"""clip_flax against clip_torch (the numerical reference backend) on tiny ViT and ResNet configs,
every output field, and full-size ViT-B/32 / RN50 against transformers / OpenAI (``fullsize``)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jax")
torch = pytest.importorskip("torch")

import clip_flax  # noqa: E402
import conversion  # noqa: E402
from clip_core import get_config  # noqa: E402
from clip_core.testing import random_weights, tiny_resnet_config, tiny_vit_config  # noqa: E402

EMB, LOGIT, STATE = 1e-5, 1e-3, 1e-4


def _close(a, b, atol, what):
    a = a.detach().numpy() if hasattr(a, "detach") else np.asarray(a)
    b = b.detach().numpy() if hasattr(b, "detach") else np.asarray(b)
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=atol, rtol=0,
                               err_msg=what)


def _inputs(config, batch=2, t=10, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 49000, (batch, t)).astype(np.int32)
    mask = np.ones((batch, t), np.int32)
    ids[:, 0] = 49406
    for i in range(batch):
        end = t - 1 - 2 * i
        ids[i, end], ids[i, end + 1:], mask[i, end + 1:] = config.text_config.eos_token_id, 0, 0
    v = config.vision_config
    pix = rng.normal(0, 1, (batch, 3, v.image_size, v.image_size)).astype(np.float32)
    return ids, mask, pix


def _compare_all(ours, ref, with_attn: bool):
    for f in ("logits_per_image", "logits_per_text"):
        _close(getattr(ours, f), getattr(ref, f), LOGIT, f)
    for f in ("text_embeds", "image_embeds"):
        _close(getattr(ours, f), getattr(ref, f), EMB, f)
    for tower in ("text_model_output", "vision_model_output"):
        a, b = getattr(ours, tower), getattr(ref, tower)
        _close(a.last_hidden_state, b.last_hidden_state, STATE, f"{tower}.last_hidden_state")
        _close(a.pooler_output, b.pooler_output, STATE, f"{tower}.pooler_output")
        assert len(a.hidden_states) == len(b.hidden_states)
        for i, (x, y) in enumerate(zip(a.hidden_states, b.hidden_states)):
            _close(x, y, STATE, f"{tower}.hidden_states[{i}]")
        if with_attn:
            assert len(a.attentions) == len(b.attentions)
            for i, (x, y) in enumerate(zip(a.attentions, b.attentions)):
                _close(x, y, STATE, f"{tower}.attentions[{i}]")


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_every_output_matches_clip_torch(tmp_path, arch):
    clip_torch = pytest.importorskip("clip_torch")
    cfg = tiny_vit_config() if arch == "vit" else tiny_resnet_config()
    conversion.save_canonical(tmp_path, cfg, random_weights(cfg, seed=11))
    ours = clip_flax.CLIPModel.from_pretrained(tmp_path)
    ref = clip_torch.CLIPModel.from_pretrained(tmp_path).eval()
    ids, mask, pix = _inputs(cfg)
    with torch.no_grad():
        r = ref(input_ids=torch.as_tensor(ids, dtype=torch.long), pixel_values=torch.as_tensor(pix),
                attention_mask=torch.as_tensor(mask), output_attentions=True, output_hidden_states=True,
                return_loss=True)
    o = ours(input_ids=ids, pixel_values=pix, attention_mask=mask, output_attentions=True,
             output_hidden_states=True, return_loss=True)
    _compare_all(o, r, with_attn=True)
    _close(o.loss, r.loss, 1e-4, "loss")


# ------------------------------------------------------------------------------------- full size
@pytest.mark.fullsize
def test_vit_b32_matches_hf_flax(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = get_config("ViT-B/32")
    conversion.save_canonical(tmp_path, cfg, random_weights(cfg, seed=12))
    ours = clip_flax.CLIPModel.from_pretrained(tmp_path)
    conversion.save_checkpoint(tmp_path / "hf_flax", cfg, random_weights(cfg, seed=12), format="flax")
    hf, params = transformers.FlaxCLIPModel.from_pretrained(str(tmp_path / "hf_flax"), _do_init=False)
    ids, mask, pix = _inputs(cfg, t=77)
    o = ours(input_ids=ids, pixel_values=pix, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    r = hf(input_ids=ids, pixel_values=pix, attention_mask=mask, params=params, output_attentions=True,
           output_hidden_states=True)
    _compare_all(o, r, with_attn=True)
    _close(ours.get_text_features(ids, attention_mask=mask), hf.get_text_features(ids, mask, params=params),
           1e-3, "trimmed get_text_features")


@pytest.mark.fullsize
def test_rn50_matches_openai(tmp_path):
    clip_model = pytest.importorskip("clip.model")
    cfg = get_config("RN50")
    weights = random_weights(cfg, seed=13)
    path = tmp_path / "RN50.pt"
    # fp16 like OpenAI's files: build_model() rounds Linear / conv weights to fp16 anyway
    conversion.save_checkpoint(path, cfg, weights, format="openai", dtype="fp16")
    ours = clip_flax.CLIPModel.from_pretrained(path)  # OpenAI's own format, read without torch
    sd = torch.jit.load(str(path), map_location="cpu").state_dict() if _is_torchscript(path) else \
        torch.load(str(path), map_location="cpu")
    ref = clip_model.build_model({k: v.float() for k, v in sd.items()}).float().eval()
    ids, mask, pix = _inputs(cfg, t=77)
    ids[:, 10:] = 0
    with torch.no_grad():
        per_image, _ = ref(torch.as_tensor(pix), torch.as_tensor(ids, dtype=torch.long))
        img = ref.encode_image(torch.as_tensor(pix)).numpy()
        txt = ref.encode_text(torch.as_tensor(ids, dtype=torch.long)).numpy()
    o = ours(input_ids=ids, pixel_values=pix)
    norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    _close(o.image_embeds, norm(img), EMB, "image_embeds")
    _close(o.text_embeds, norm(txt), EMB, "text_embeds")
    _close(o.logits_per_image, per_image, LOGIT, "logits_per_image")


def _is_torchscript(path) -> bool:
    import zipfile

    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())
