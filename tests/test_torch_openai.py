"""clip_torch against OpenAI's ``clip`` (``clip.model.build_model``) and the drop-in ``clip_torch.load``.

The OpenAI model is drawn at random by OpenAI's own code (``clip.model.CLIP`` + its
``initialize_parameters``, BatchNorm statistics randomised), rebuilt with ``build_model(state_dict)``
and saved as a plain state dict and as a TorchScript archive (``torch.jit.trace`` / ``save``).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
clip = pytest.importorskip("clip")

import clip_torch  # noqa: E402
from clip_core.config import CLIPConfig, CLIPResNetVisionConfig, CLIPTextConfig, CLIPVisionConfig  # noqa: E402
from tests.backend_harness import (LOGIT_ATOL, assert_embeds_close, openai_to_canonical, pixel_inputs,  # noqa: E402
                                   text_inputs)

# (embed_dim, image_resolution, vision_layers, vision_width, patch, text width, text layers)
TINY = {"vit": (32, 32, 2, 128, 8, 128, 2), "resnet": (64, 64, (1, 1, 1, 1), 8, None, 128, 2)}
FULL = {"ViT-B/32": (512, 224, 12, 768, 32, 512, 12), "RN50": (1024, 224, (3, 4, 6, 3), 64, None, 512, 12)}


def openai_model(dims, seed: int = 0):
    """A random OpenAI CLIP with realistic scale, passed through ``build_model`` (fp32, eval)."""
    from clip.model import CLIP, build_model

    embed, res, vl, vw, patch, tw, tl = dims
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = CLIP(embed, res, vl, vw, patch, 77, 49408, tw, tw // 64, tl)
    state = m.state_dict()
    g = torch.Generator().manual_seed(seed)
    for k, v in state.items():
        if k.endswith("running_mean"):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
        elif k.endswith("running_var"):
            v.copy_(torch.rand(v.shape, generator=g) + 0.5)
        elif k.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")):
            v.copy_(1 + 0.1 * torch.randn(v.shape, generator=g))  # OpenAI zero-inits bn3
    return build_model(state).float().eval()


def config_of(dims) -> CLIPConfig:
    embed, res, vl, vw, patch, tw, tl = dims
    text = CLIPTextConfig(hidden_size=tw, intermediate_size=4 * tw, projection_dim=embed, num_hidden_layers=tl,
                          num_attention_heads=tw // 64)
    if patch is None:
        vision = CLIPResNetVisionConfig(layers=vl, width=vw, num_attention_heads=vw * 32 // 64, projection_dim=embed,
                                        image_size=res)
    else:
        vision = CLIPVisionConfig(hidden_size=vw, intermediate_size=4 * vw, projection_dim=embed, num_hidden_layers=vl,
                                  num_attention_heads=vw // 64, image_size=res, patch_size=patch)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed)


def canonical_of(ref, resnet: bool) -> dict:
    return openai_to_canonical({k: v.numpy() for k, v in ref.state_dict().items()}, resnet)


def _inputs(cfg, batch=2):
    return (torch.from_numpy(pixel_inputs(cfg, batch)),
            torch.from_numpy(text_inputs(cfg, batch=3, seed=2)["input_ids"]).int())


def check_against(ref, ours, cfg, batch=2) -> None:
    image, text = _inputs(cfg, batch)
    with torch.no_grad():
        a_img, a_txt = ours(image, text)
        b_img, b_txt = ref(image, text)
        assert_embeds_close(ours.encode_image(image).numpy(), ref.encode_image(image).numpy())
        assert_embeds_close(ours.encode_text(text).numpy(), ref.encode_text(text).numpy())
    np.testing.assert_allclose(a_img.numpy(), b_img.numpy(), rtol=0, atol=LOGIT_ATOL)
    np.testing.assert_allclose(a_txt.numpy(), b_txt.numpy(), rtol=0, atol=LOGIT_ATOL)


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_tiny_against_build_model(arch):
    ref = openai_model(TINY[arch])
    cfg = config_of(TINY[arch])
    ours = clip_torch.CLIPModel.from_canonical(cfg, canonical_of(ref, arch == "resnet"))
    check_against(ref, ours, cfg)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("arch", ["vit", "resnet"])
@pytest.mark.parametrize("kind", ["state_dict", "torchscript"])
def test_load_openai_file(tmp_path, arch, kind):
    ref = openai_model(TINY[arch], seed=1)
    cfg = config_of(TINY[arch])
    path = tmp_path / f"{arch}.pt"
    if kind == "state_dict":
        torch.save(ref.state_dict(), path)
    else:
        image, text = _inputs(cfg, 1)
        with torch.no_grad():
            traced = torch.jit.trace(ref, (image, text), check_trace=False)
        torch.jit.save(traced, str(path))
    model, preprocess = clip_torch.load(str(path), device="cpu")
    assert model.config.is_resnet == (arch == "resnet")
    check_against(ref, model, cfg)
    from PIL import Image

    x = preprocess(Image.new("RGB", (50, 40), (120, 30, 200)))
    assert isinstance(x, torch.Tensor) and tuple(x.shape) == (3, cfg.vision_config.image_size, cfg.vision_config.image_size)


@pytest.mark.fullsize
@pytest.mark.parametrize("name", ["ViT-B/32", "RN50"])
def test_fullsize_against_build_model(name):
    ref = openai_model(FULL[name])
    cfg = config_of(FULL[name])
    ours = clip_torch.CLIPModel.from_canonical(cfg, canonical_of(ref, name == "RN50"))
    check_against(ref, ours, cfg)


def test_drop_in_api():
    assert clip_torch.available_models() == clip.available_models()
    texts = ["a photo of a cat", "a diagram"]
    np.testing.assert_array_equal(clip_torch.tokenize(texts).numpy(), clip.tokenize(texts).numpy())
    assert clip_torch.tokenize(texts).dtype == clip.tokenize(texts).dtype
    with pytest.raises(FileNotFoundError, match="never downloads"):
        clip_torch.load("ViT-B/32", download_root="/nonexistent")
    with pytest.raises(RuntimeError, match="not found"):
        clip_torch.load("ViT-Z/99")
