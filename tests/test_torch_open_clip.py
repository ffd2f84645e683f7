"""clip_torch against open_clip ``create_model`` for a QuickGELU and a GELU model (tiny configs
registered with ``open_clip.add_model_config``; random weights drawn by open_clip itself)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

import clip_torch  # noqa: E402
from tests.backend_harness import LOGIT_ATOL, assert_embeds_close, pixel_inputs, text_inputs  # noqa: E402

TINY = {"embed_dim": 32,
        "vision_cfg": {"layers": 2, "width": 128, "head_width": 64, "patch_size": 8, "image_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}}


@pytest.fixture(params=[True, False], ids=["quickgelu", "gelu"])
def open_clip_dir(request, tmp_path):
    """(reference model, open_clip checkpoint directory) for a tiny model."""
    from safetensors.torch import save_file

    name = f"clipzoo-tiny-{'quickgelu' if request.param else 'gelu'}"
    cfg = dict(TINY, quick_gelu=request.param)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfg")
    torch.manual_seed(0)
    ref = open_clip.create_model(name, pretrained=None).eval()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(ckpt / "open_clip_model.safetensors"))
    (ckpt / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    return request.param, ref, ckpt


def test_against_open_clip(open_clip_dir):
    quick, ref, ckpt = open_clip_dir
    ours = clip_torch.CLIPModel.from_pretrained(ckpt)
    assert ours.config.text_config.hidden_act == ("quick_gelu" if quick else "gelu")
    assert ours.config.vision_config.hidden_act == ("quick_gelu" if quick else "gelu")
    image = torch.from_numpy(pixel_inputs(ours.config, 2))
    text = torch.from_numpy(text_inputs(ours.config, batch=3, seed=5)["input_ids"])
    with torch.no_grad():
        assert_embeds_close(ours.encode_image(image).numpy(), ref.encode_image(image).numpy())
        assert_embeds_close(ours.encode_text(text).numpy(), ref.encode_text(text).numpy())
        img_f, txt_f, scale = ref(image, text)[:3]
        logits = (scale * img_f @ txt_f.t()).numpy()
        np.testing.assert_allclose(ours(image, text)[0].numpy(), logits, rtol=0, atol=LOGIT_ATOL)
