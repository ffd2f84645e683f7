"""conversion against the reference implementations: OpenAI's clip, transformers (PyTorch, TF, Flax), open_clip.

Every check compares tensors (or, across naming families, model outputs) with what the reference
code itself reads or writes; the conversion package never imports a framework, the tests do.
"""
from __future__ import annotations

import numpy as np
import pytest

import conversion
from clip_core.schema import to_backend
from clip_core.testing import random_weights
from conversion.openai import canonical_to_openai

from test_conversion_helpers import assert_same, openai_tiny

torch = pytest.importorskip("torch")


def _np(state: dict) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in state.items() if not k.endswith("position_ids")}


def _openai_fp32_model(config, state):
    """OpenAI's CLIP module in fp32 (build_model would cast to fp16), loaded strictly."""
    from clip.model import CLIP

    v, t = config.vision_config, config.text_config
    vision = dict(vision_layers=v.layers, vision_width=v.width) if config.is_resnet else dict(
        vision_layers=v.num_hidden_layers, vision_width=v.hidden_size, vision_patch_size=v.patch_size)
    model = CLIP(embed_dim=config.projection_dim, image_resolution=v.image_size,
                 context_length=t.max_position_embeddings,
                 vocab_size=t.vocab_size, transformer_width=t.hidden_size, transformer_heads=t.num_attention_heads,
                 transformer_layers=t.num_hidden_layers, vision_patch_size=None if config.is_resnet else v.patch_size,
                 **{k: val for k, val in vision.items() if k != "vision_patch_size"})
    model.load_state_dict(state, strict=True)
    return model.eval()


def _inputs(config, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = config.vision_config.image_size
    ids = torch.randint(1, 1000, (2, 77), generator=g)
    ids[:, 0], ids[0, 5], ids[1, 9] = 49406, 49407, 49407
    ids[0, 6:], ids[1, 10:] = 0, 0
    return torch.randn(2, 3, size, size, generator=g), ids


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_openai_pt_is_what_torch_and_clip_load(tmp_path, arch):
    import clip

    config = openai_tiny(arch)
    weights = random_weights(config, seed=4)
    conversion.save_checkpoint(tmp_path / "m.pt", config, weights, format="openai")
    state = torch.load(tmp_path / "m.pt", weights_only=True)  # torch's own (safe) reader
    assert_same(_np(state), canonical_to_openai(weights, config))
    model, _ = clip.load(str(tmp_path / "m.pt"), device="cpu", jit=False)  # build_model loads strictly
    for name, value in model.state_dict().items():  # build_model rounds weights to fp16
        np.testing.assert_allclose(value.float().numpy(), state[name].float().numpy(), rtol=2e-3, atol=1e-4,
                                   err_msg=name)
    # and OpenAI's model reads back as the same canonical tensors
    assert_same(conversion.load_checkpoint(tmp_path / "m.pt")[1], weights)


def test_openai_hf_open_clip_agree(tmp_path):
    """OpenAI -> canonical -> transformers and -> open_clip: the three reference models give the same logits."""
    import open_clip
    from transformers import CLIPModel

    config = openai_tiny("vit")
    conversion.save_checkpoint(tmp_path / "m.pt", config, random_weights(config, seed=5), format="openai")
    openai_model = _openai_fp32_model(config, torch.load(tmp_path / "m.pt", weights_only=True))
    assert subprocess_free_convert(tmp_path / "m.pt", tmp_path / "hf", "canonical")
    assert subprocess_free_convert(tmp_path / "hf", tmp_path / "oc", "open_clip")
    hf_model = CLIPModel.from_pretrained(tmp_path / "hf").eval()
    oc_model = open_clip.create_model(f"local-dir:{tmp_path / 'oc'}").eval()
    image, ids = _inputs(config)
    with torch.no_grad():
        ref = openai_model(image, ids)[0].numpy()
        hf = hf_model(input_ids=ids, pixel_values=image).logits_per_image.numpy()
        oc_img, oc_txt, scale = oc_model(image, ids)[:3]
        oc = (scale * oc_img @ oc_txt.T).numpy()
    np.testing.assert_allclose(hf, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(oc, ref, rtol=1e-4, atol=1e-4)


def subprocess_free_convert(src, dst, fmt) -> bool:
    ckpt = conversion.read(src)
    conversion.save_checkpoint(dst, ckpt.config, ckpt.weights, format=fmt)
    return True


def test_hf_pytorch_reads_and_writes_canonical(tmp_path):
    from transformers import CLIPModel

    config = openai_tiny("vit")
    weights = random_weights(config, seed=6)
    conversion.save_checkpoint(tmp_path / "ours", config, weights)
    model = CLIPModel.from_pretrained(tmp_path / "ours")
    assert_same(_np(model.state_dict()), weights)
    model.save_pretrained(tmp_path / "theirs")  # transformers' own safetensors
    assert_same(conversion.load_checkpoint(tmp_path / "theirs")[1], weights)


def _tf_weights(model) -> dict:
    import re
    return {re.sub(r"^[^/]+/clip/|:0$", "", w.name if "/clip/" in w.name else w.path): w.numpy() for w in model.weights}


def test_hf_tensorflow_h5_matches_from_pt(tmp_path):
    pytest.importorskip("tensorflow")
    from transformers import TFCLIPModel

    config = openai_tiny("vit")
    weights = random_weights(config, seed=7)
    conversion.save_checkpoint(tmp_path / "pt", config, weights)
    ref = TFCLIPModel.from_pretrained(tmp_path / "pt", from_pt=True)  # transformers' own PT -> TF port
    want = to_backend(weights, config, "tf")
    assert_same(_tf_weights(ref), want)
    conversion.save_checkpoint(tmp_path / "tf", config, weights, format="tf")
    ours = TFCLIPModel.from_pretrained(tmp_path / "tf")
    assert_same(_tf_weights(ours), want)
    ref.save_pretrained(tmp_path / "tf_ref")  # transformers' own h5 writer
    assert_same(conversion.load_checkpoint(tmp_path / "tf_ref")[1], weights)


def test_hf_flax_msgpack_matches_transformers_port(tmp_path):
    pytest.importorskip("flax")
    import jax
    import transformers
    from flax.traverse_util import flatten_dict
    from transformers import CLIPModel, FlaxCLIPModel
    from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

    config = openai_tiny("vit")
    weights = random_weights(config, seed=8)
    conversion.save_checkpoint(tmp_path / "pt", config, weights)
    # transformers' own PyTorch -> Flax port (what from_pt=True runs), on a shape-only Flax model
    shell = FlaxCLIPModel(transformers.CLIPConfig.from_pretrained(tmp_path / "pt"), _do_init=False)
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shell.params_shape_tree)
    stub = type("Stub", (), {"base_model_prefix": shell.base_model_prefix, "params": zeros})
    ref_params = convert_pytorch_state_dict_to_flax(CLIPModel.from_pretrained(tmp_path / "pt").state_dict(), stub)
    want = {k[len("params/"):]: v for k, v in to_backend(weights, config, "flax").items()}
    flat = lambda params: {"/".join(k): np.asarray(v) for k, v in flatten_dict(params).items()}  # noqa: E731
    assert_same(flat(ref_params), want)
    conversion.save_checkpoint(tmp_path / "fx", config, weights, format="flax")
    assert_same(flat(FlaxCLIPModel.from_pretrained(tmp_path / "fx", _do_init=False)[1]), want)
    shell.save_pretrained(tmp_path / "fx_ref", params=ref_params)  # flax's own serializer
    assert_same(conversion.load_checkpoint(tmp_path / "fx_ref")[1], weights)


@pytest.mark.parametrize("arch", ["vit", "resnet"])
@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_open_clip_loader_accepts_ours_and_we_read_theirs(tmp_path, arch, act):
    import open_clip
    from open_clip.transformer import QuickGELU

    base = openai_tiny(arch)
    config = base.replace(text_config=base.text_config.replace(hidden_act=act))
    if arch == "vit":
        config = config.replace(vision_config=config.vision_config.replace(hidden_act=act))
    weights = random_weights(config, seed=9)
    conversion.save_checkpoint(tmp_path / "oc", config, weights, format="open_clip")
    model = open_clip.create_model(f"local-dir:{tmp_path / 'oc'}")
    assert_same(_np(model.state_dict()), canonical_to_openai(weights, config))
    uses_quick = any(isinstance(m, QuickGELU) for m in model.modules())
    assert uses_quick == (act == "quick_gelu")
    # open_clip's own state dict file, beside our config: read with the right activation
    (tmp_path / "theirs").mkdir()
    config_json = (tmp_path / "oc" / "open_clip_config.json").read_bytes()
    (tmp_path / "theirs" / "open_clip_config.json").write_bytes(config_json)
    torch.save(model.state_dict(), tmp_path / "theirs" / "open_clip_pytorch_model.bin")
    got_config, got = conversion.load_checkpoint(tmp_path / "theirs")
    assert got_config == config
    assert_same(got, weights)


@pytest.fixture(scope="module")
def vit_b32():
    from clip_core.presets import get_config
    config = get_config("ViT-B/32")
    return config, random_weights(config, seed=10)


@pytest.mark.fullsize
def test_full_size_vit_b32_openai_hf_round_trip(tmp_path, vit_b32):
    from transformers import CLIPModel

    config, weights = vit_b32
    conversion.save_checkpoint(tmp_path / "ViT-B-32.pt", config, weights, format="openai")
    got_config, got = conversion.load_checkpoint(tmp_path / "ViT-B-32.pt")
    assert got_config == config
    assert_same(got, weights)
    conversion.save_checkpoint(tmp_path / "hf", got_config, got)
    assert_same(_np(CLIPModel.from_pretrained(tmp_path / "hf").state_dict()), weights)
    again = tmp_path / "again" / "ViT-B-32.pt"
    conversion.save_checkpoint(again, *conversion.load_checkpoint(tmp_path / "hf"), format="openai")
    assert again.read_bytes() == (tmp_path / "ViT-B-32.pt").read_bytes()


@pytest.mark.fullsize
@pytest.mark.parametrize("fmt", ["open_clip", "tf", "flax"])
def test_full_size_vit_b32_format_round_trip(tmp_path, vit_b32, fmt):
    """ViT-B/32 in ``fmt`` -> canonical -> ``fmt`` again: bit-exact."""
    config, weights = vit_b32
    conversion.save_checkpoint(tmp_path / "a", config, weights, format=fmt)
    got_config, got = conversion.load_checkpoint(tmp_path / "a")
    assert got_config == config
    conversion.save_checkpoint(tmp_path / "canonical", got_config, got)
    conversion.save_checkpoint(tmp_path / "b", *conversion.load_checkpoint(tmp_path / "canonical"), format=fmt)
    assert_same(conversion.load_checkpoint(tmp_path / "b")[1], weights)
