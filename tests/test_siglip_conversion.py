"""SigLIP checkpoint conversion: big_vision ``.npz``, open_clip (timm) SigLIP and the canonical folder.

References: transformers 4.57 ``SiglipModel`` builds the random-weight checkpoints (in a subprocess),
the big_vision names are checked against the documented facts of transformers' ``convert_siglip_to_hf.py``
(re-stated here independently of conversion's rows), and open_clip 3.3 + timm load the open_clip folder
we write (in a subprocess, torchvision first: importing tensorflow before it segfaults).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run_cli
from clip_core.siglip_config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from clip_core.siglip_presets import get_siglip_config
from clip_core.testing import tiny_siglip_config
from conversion.api import read, save_checkpoint
from conversion.big_vision import _expected_shapes, infer_siglip_config
from conversion.cli import main as conversion_main
from conversion.errors import ConversionError

pytest.importorskip("transformers")
pytest.importorskip("torch")


def _b16_one_layer() -> SiglipConfig:
    """B/16-shaped (768 wide, 12 heads, 224 px, vocab 32,000, context 64) with one layer per tower."""
    p = get_siglip_config("siglip-base-patch16-224")
    text = SiglipTextConfig(**{**p.text_config.to_dict(), "num_hidden_layers": 1})
    vision = SiglipVisionConfig(**{**p.vision_config.to_dict(), "num_hidden_layers": 1})
    return SiglipConfig(text_config=text, vision_config=vision)


CONFIGS = {"tiny": tiny_siglip_config(), "b16": _b16_one_layer()}
_PRELUDE = """
import json, sys
try:
    import torchvision  # noqa: F401  (first: tensorflow imported before it segfaults)
except ImportError:
    pass
import numpy as np, torch
"""
# transformers builds a random SiglipModel per config, saves it and (tiny) its features on fixed inputs.
_BUILD = _PRELUDE + """
import transformers
out, configs = sys.argv[1], json.loads(sys.argv[2])
for name, cfg in configs.items():
    torch.manual_seed(0)
    model = transformers.SiglipModel(transformers.SiglipConfig.from_dict(cfg)).eval()
    with torch.no_grad():
        model.logit_bias.fill_(-7.25)
        model.logit_scale.fill_(2.5)
    model.save_pretrained(f"{out}/{name}/hf")
    if name == "tiny":
        v, t = model.config.vision_config, model.config.text_config
        g = torch.Generator().manual_seed(1)
        pixels = torch.randn(2, 3, v.image_size, v.image_size, generator=g)
        ids = torch.randint(0, t.vocab_size, (3, t.max_position_embeddings), generator=g)
        with torch.no_grad():
            img, txt = model.get_image_features(pixel_values=pixels), model.get_text_features(input_ids=ids)
        np.savez(f"{out}/tiny/io.npz", pixels=pixels.numpy(), ids=ids.numpy(), img=img.numpy(), txt=txt.numpy())
"""
# open_clip loads the folder we wrote (strict) and encodes the same inputs. open_clip builds timm towers by
# released name only (our tiny shape's name, vit_base_patch8_siglip_32, is no timm model), so the tiny ViT's
# shape and SigLIP's tanh GELU are handed to timm.create_model.
_OPEN_CLIP = _PRELUDE + """
import timm, open_clip
folder, io, trunk = sys.argv[1], np.load(sys.argv[2]), json.loads(sys.argv[3])
create = timm.create_model
timm.create_model = lambda name, **kw: create("vit_base_patch16_siglip_224", **{**kw, **trunk})
model = open_clip.create_model("local-dir:" + folder).eval()
with torch.no_grad():
    img = model.encode_image(torch.from_numpy(io["pixels"]), normalize=True)
    txt = model.encode_text(torch.from_numpy(io["ids"]), normalize=True)
np.savez(sys.argv[4], img=img.numpy(), txt=txt.numpy(), scale=model.logit_scale.detach().numpy(),
         bias=model.logit_bias.detach().numpy())
"""


def _python(script: str, *args) -> None:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """``{name: HF folder}`` written by transformers, plus ``io``: the tiny model's inputs and features."""
    root = tmp_path_factory.mktemp("siglip_ref")
    _python(_BUILD, root, json.dumps({n: c.to_dict() for n, c in CONFIGS.items()}))
    return root


def _hf_weights(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("fmt", ["big_vision", "open_clip"])
def test_round_trip_is_bit_identical(ref, tmp_path, name, fmt):
    src = read(ref / name / "hf")
    assert src.format == "hf-safetensors"
    dst = tmp_path / ("m.npz" if fmt == "big_vision" else "oc")
    save_checkpoint(dst, src.config, src.weights, format=fmt)
    back = read(dst)
    assert back.format == ("big_vision-npz" if fmt == "big_vision" else "open_clip-safetensors")
    expected = _hf_weights(ref / name / "hf")
    assert sorted(back.weights) == sorted(expected)
    for key, a in expected.items():
        assert back.weights[key].dtype == a.dtype and np.array_equal(back.weights[key], a), key
    # the architecture survives; big_vision stores no token ids (they default as in transformers' presets)
    assert back.config.vision_config == src.config.vision_config
    ignore = {"pad_token_id", "bos_token_id", "eos_token_id"}
    strip = lambda c: {k: v for k, v in c.text_config.to_dict().items() if k not in ignore}  # noqa: E731
    assert strip(back.config) == strip(src.config)


# The documented facts of transformers' convert_siglip_to_hf.py (big_vision -> HF), re-stated here:
# q/k/v/out kernels: reshape(-1, hidden).T; patch kernel: transpose(3, 2, 0, 1); other Dense kernels: .T;
# position embeddings: reshape(-1, hidden); biases: reshape(-1); MAP head query/key/value concatenated
# (q, k, v) into in_proj; "params/t" -> logit_scale, "params/b" -> logit_bias.
def _hf_from_bv(bv: dict, key: str, hidden: int) -> np.ndarray:
    a = bv[key]
    if key.endswith("/bias") or key in ("params/t", "params/b"):
        return a.reshape(-1)
    if "MultiHeadDotProductAttention_0" in key:
        return a.reshape(-1, hidden).T
    if key.endswith("embedding/kernel"):
        return a.transpose(3, 2, 0, 1)
    if key.endswith("pos_embedding"):
        return a.reshape(-1, hidden)
    return a.T if key.endswith("kernel") else a


_FACTS = {  # big_vision key -> HF key (the script's rename table), >= 10 representative rows
    "params/img/embedding/kernel": "vision_model.embeddings.patch_embedding.weight",
    "params/img/embedding/bias": "vision_model.embeddings.patch_embedding.bias",
    "params/img/pos_embedding": "vision_model.embeddings.position_embedding.weight",
    "params/img/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel":
        "vision_model.encoder.layers.0.self_attn.q_proj.weight",
    "params/img/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/value/bias":
        "vision_model.encoder.layers.0.self_attn.v_proj.bias",
    "params/img/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/out/kernel":
        "vision_model.encoder.layers.0.self_attn.out_proj.weight",
    "params/img/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel": "vision_model.encoder.layers.0.mlp.fc1.weight",
    "params/img/Transformer/encoderblock_0/LayerNorm_1/scale": "vision_model.encoder.layers.0.layer_norm2.weight",
    "params/img/Transformer/encoder_norm/scale": "vision_model.post_layernorm.weight",
    "params/img/MAPHead_0/probe": "vision_model.head.probe",
    "params/img/MAPHead_0/MultiHeadDotProductAttention_0/out/kernel": "vision_model.head.attention.out_proj.weight",
    "params/img/MAPHead_0/MlpBlock_0/Dense_1/kernel": "vision_model.head.mlp.fc2.weight",
    "params/txt/Embed_0/embedding": "text_model.embeddings.token_embedding.weight",
    "params/txt/pos_embedding": "text_model.embeddings.position_embedding.weight",
    "params/txt/Encoder_0/encoderblock_1/MultiHeadDotProductAttention_0/key/kernel":
        "text_model.encoder.layers.1.self_attn.k_proj.weight",
    "params/txt/Encoder_0/encoder_norm/bias": "text_model.final_layer_norm.bias",
    "params/txt/head/kernel": "text_model.head.weight",
    "params/t": "logit_scale",
    "params/b": "logit_bias",
}


def test_npz_matches_transformers_conversion_names(ref, tmp_path):
    cfg = CONFIGS["tiny"]
    src = read(ref / "tiny" / "hf")
    save_checkpoint(tmp_path / "m.npz", src.config, src.weights, format="big_vision")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as npz:
        bv = {k: npz[k] for k in npz.files}
    hf = _hf_weights(ref / "tiny" / "hf")
    for key, hf_key in _FACTS.items():
        hidden = cfg.text_config.hidden_size if key.startswith("params/txt") else cfg.vision_config.hidden_size
        np.testing.assert_array_equal(_hf_from_bv(bv, key, hidden), hf[hf_key], err_msg=key)
    # head-split shapes: (D, H, Dh) kernels, (H, Dh) biases, (H, Dh, D) output; (1, N, D) positions; t, b (1,)
    v, t = cfg.vision_config, cfg.text_config
    mha = "params/img/Transformer/encoderblock_0/MultiHeadDotProductAttention_0"
    assert bv[f"{mha}/query/kernel"].shape == (v.hidden_size, v.num_attention_heads, v.head_dim)
    assert bv[f"{mha}/key/bias"].shape == (v.num_attention_heads, v.head_dim)
    assert bv[f"{mha}/out/kernel"].shape == (v.num_attention_heads, v.head_dim, v.hidden_size)
    assert bv["params/txt/Encoder_0/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"].shape == (
        t.hidden_size, t.num_attention_heads, t.head_dim)
    assert bv["params/img/pos_embedding"].shape == (1, v.num_positions, v.hidden_size)
    assert bv["params/img/embedding/kernel"].shape == (v.patch_size, v.patch_size, 3, v.hidden_size)
    assert bv["params/t"].shape == bv["params/b"].shape == (1,)
    # the MAP head: the script packs query, key, value (each reshaped and transposed) into in_proj
    head = "params/img/MAPHead_0/MultiHeadDotProductAttention_0"
    for leaf, hf_key in (("kernel", "in_proj_weight"), ("bias", "in_proj_bias")):
        parts = [_hf_from_bv(bv, f"{head}/{p}/{leaf}", v.hidden_size) for p in ("query", "key", "value")]
        np.testing.assert_array_equal(np.concatenate(parts), hf[f"vision_model.head.attention.{hf_key}"])


def test_open_clip_loads_our_folder_and_matches_transformers(ref, tmp_path):
    cfg = CONFIGS["tiny"]
    src = read(ref / "tiny" / "hf")
    save_checkpoint(tmp_path / "oc", src.config, src.weights, format="open_clip")
    v = cfg.vision_config
    trunk = {"img_size": v.image_size, "patch_size": v.patch_size, "embed_dim": v.hidden_size,
             "depth": v.num_hidden_layers, "num_heads": v.num_attention_heads,
             "mlp_ratio": v.intermediate_size / v.hidden_size, "act_layer": "gelu_tanh"}
    _python(_OPEN_CLIP, tmp_path / "oc", ref / "tiny" / "io.npz", json.dumps(trunk), tmp_path / "out.npz")
    got, io = np.load(tmp_path / "out.npz"), np.load(ref / "tiny" / "io.npz")
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(got["img"], unit(io["img"]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["txt"], unit(io["txt"]), atol=1e-5, rtol=0)
    assert float(got["scale"]) == 2.5 and float(got["bias"]) == -7.25


def test_convert_round_trip_hf_npz_open_clip_hf(ref, tmp_path, capsys):
    hf = ref / "tiny" / "hf"
    steps = [(hf, tmp_path / "m.npz"), (tmp_path / "m.npz", tmp_path / "oc"), (tmp_path / "oc", tmp_path / "hf2")]
    for src, dst in steps:
        extra = ["--to", "open_clip"] if dst.name == "oc" else []
        rc, out, err = run_cli(capsys, "convert", src, dst, *extra, "--verify", "--quiet")
        assert rc == 0, err
        assert "verified: all" in out
        # no tokenizer files anywhere on this route: the HF folder says so in one warning line
        assert ("clip-zoo: warning: no SigLIP tokenizer files written" in err) == (dst.name == "hf2"), err
    expected, back = _hf_weights(hf), _hf_weights(tmp_path / "hf2")
    assert sorted(back) == sorted(expected)
    assert all(np.array_equal(back[k], a) and back[k].dtype == a.dtype for k, a in expected.items())
    config = json.loads((tmp_path / "hf2" / "config.json").read_text())
    assert config["model_type"] == "siglip" and config["architectures"] == ["SiglipModel"]


def test_canonical_save_writes_siglip_processor_and_copies_tokenizer(ref, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for f in (ref / "tiny" / "hf").iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    files = {"spiece.model": b"\x0a\x05fake-sentencepiece", "tokenizer_config.json": b'{"do_lower_case": true}\n',
             "special_tokens_map.json": b'{"eos_token": "</s>"}\n'}
    for name, blob in files.items():
        (src / name).write_bytes(blob)
    rc, _, err = conversion_main_rc([str(src), str(tmp_path / "out"), "--quiet"], capsys)
    assert rc == 0, err
    out = tmp_path / "out"
    assert {n: (out / n).read_bytes() for n in files} == files
    assert not (out / "vocab.json").exists() and not (out / "merges.txt").exists()
    proc = json.loads((out / "preprocessor_config.json").read_text())
    assert proc["image_processor_type"] == "SiglipImageProcessor" and proc["resample"] == 2
    assert proc["size"] == {"height": 32, "width": 32} and proc["image_mean"] == [0.5] * 3
    assert proc["image_std"] == [0.5] * 3 and "crop_size" not in proc and abs(proc["rescale_factor"] - 1 / 255) < 1e-12


def conversion_main_rc(argv, capsys):
    rc = conversion_main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_config_inference_matches_a_preset():
    preset = get_siglip_config("siglip-so400m-patch14-384")  # 384 px at patch 14: a 27 x 27 grid
    fake = {k: np.broadcast_to(np.float32(0), s) for k, s in _expected_shapes(preset).items()}
    config, name = infer_siglip_config(fake, "fake.npz")
    assert name == "siglip-so400m-patch14-384" and config == preset
    config, name = infer_siglip_config(
        {k: np.broadcast_to(np.float32(0), s) for k, s in _expected_shapes(CONFIGS["tiny"]).items()}, "t.npz")
    assert name is None and config.vision_config == CONFIGS["tiny"].vision_config
    assert config.text_config.num_attention_heads == 4 and config.text_config.projection_size == 48


def _hostile(path: Path, good: Path, change: dict, drop: str = "") -> Path:
    with np.load(good, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k != drop}
    arrays.update(change)
    np.savez(path, **arrays)
    return path


_QUERY = "params/txt/Encoder_0/encoderblock_1/MultiHeadDotProductAttention_0/query/kernel"


@pytest.mark.parametrize("case", ["pickled", "wrong_shape", "missing", "wrong_dtype"])
def test_hostile_npz_is_a_one_line_error(ref, tmp_path, capsys, case):
    good = tmp_path / "good.npz"
    src = read(ref / "tiny" / "hf")
    save_checkpoint(good, src.config, src.weights, format="big_vision")
    change, drop = {}, ""
    if case == "pickled":
        change = {"params/t": np.array([print], dtype=object)}
    elif case == "wrong_shape":
        change = {_QUERY: np.zeros((40, 5, 8), np.float32)}
    elif case == "wrong_dtype":
        change = {_QUERY: np.zeros((40, 4, 10), np.int64)}
    else:
        drop = _QUERY
    bad = _hostile(tmp_path / f"{case}.npz", good, change, drop)
    key = "params/t" if case == "pickled" else _QUERY
    rc, out, err = run_cli(capsys, "convert", bad, tmp_path / "out")
    assert rc != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clip-zoo: error:"), err
    assert str(bad) in lines[0] and key in lines[0], lines[0]
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    with pytest.raises(ConversionError, match=key.replace("/", ".")):
        read(bad)


def test_big_vision_and_openai_refuse_the_other_family(ref, tmp_path):
    src = read(ref / "tiny" / "hf")
    with pytest.raises(ConversionError, match="CLIP models only"):
        save_checkpoint(tmp_path / "x.pt", src.config, src.weights, format="openai")
    from clip_core.testing import random_weights, tiny_vit_config

    clip = tiny_vit_config()
    with pytest.raises(ConversionError, match="SigLIP models only"):
        save_checkpoint(tmp_path / "x.npz", clip, random_weights(clip), format="big_vision")
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "x.npz").exists()


def test_npz_members_are_plain_uncompressed_arrays(ref, tmp_path):
    src = read(ref / "b16" / "hf")
    save_checkpoint(tmp_path / "b16.npz", src.config, src.weights, format="big_vision")
    with zipfile.ZipFile(tmp_path / "b16.npz") as zf:
        infos = zf.infolist()
    assert all(i.filename.endswith(".npy") and i.compress_type == zipfile.ZIP_STORED for i in infos)
    with np.load(tmp_path / "b16.npz", allow_pickle=False) as npz:
        config, name = infer_siglip_config({k: npz[k] for k in npz.files}, "b16.npz")
    assert name is None and config.vision_config == CONFIGS["b16"].vision_config


def _open_clip_config_names() -> list[str]:
    from clip_core.siglip_presets import _OPEN_CLIP

    return sorted(_OPEN_CLIP)


@pytest.mark.parametrize("name", _open_clip_config_names())
def test_open_clips_own_siglip_configs_read_as_the_presets(name):
    """open_clip's shipped ``model_configs/*.json`` (no clip-zoo key) give the preset's architecture."""
    import importlib.util

    from conversion.siglip_names import siglip_from_open_clip

    spec = importlib.util.find_spec("open_clip")  # the package's data only; open_clip is not imported
    if spec is None:
        pytest.skip("open_clip is not installed")
    file = Path(spec.submodule_search_locations[0]) / "model_configs" / f"{name}.json"
    config, preset = siglip_from_open_clip(json.loads(file.read_text()), str(file)), get_siglip_config(name)
    assert config.text_config == preset.text_config
    v, pv = config.vision_config, preset.vision_config
    assert v.image_size // v.patch_size == pv.image_size // pv.patch_size  # open_clip says 378 px where HF says 384
    assert SiglipVisionConfig(**{**v.to_dict(), "image_size": pv.image_size}) == pv
