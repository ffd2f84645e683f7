"""clip_core as a drop-in for transformers 4.57's CLIP tokenizer, image processor, processor and configs.

Every comparison runs the same call through transformers and through clip_core, on the bundled
vocabulary / default model, and asserts identical results (pixels to <= 1e-6).
"""
from __future__ import annotations

import logging
import pickle
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

import clip_core
from clip_core import CLIPConfig, CLIPImageProcessor, CLIPProcessor, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig
from clip_core.default_model import NotInHubCacheError, default_model_path, resolve_checkpoint

try:
    import tokenizer_corpus as tc
except ImportError:  # pytest --import-mode=importlib
    from tests import tokenizer_corpus as tc

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

TOL = 1e-6
HUB_ID = "openai/clip-vit-base-patch32"


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def files():
    d = default_model_path()
    return {"vocab_file": str(d / "vocab.json"), "merges_file": str(d / "merges.txt")}


@pytest.fixture(scope="module")
def corpus():
    return tc.build_corpus()


@pytest.fixture(scope="module")
def slow(files):
    return transformers.CLIPTokenizer(**files)


@pytest.fixture(scope="module")
def fast(files):
    return transformers.CLIPTokenizerFast(**files)


@pytest.fixture(scope="module")
def ours(files):
    return CLIPTokenizer(**files)


def _images():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (230, 257, 3), dtype=np.uint8))  # 257 wide, 230 high
    return {"rgb": rgb, "gray": rgb.convert("L")}


IMAGES = _images()


# ----------------------------------------------------------------------------- 1. BatchEncoding / BatchFeature
def test_tokenizer_output_is_a_batch_encoding(ours, fast):
    got = ours(["a photo of a cat", "a dog"], padding=True, return_tensors="pt")
    want = fast(["a photo of a cat", "a dog"], padding=True, return_tensors="pt")
    assert isinstance(got, dict) and isinstance(got, clip_core.BatchEncoding)
    assert list(got.keys()) == list(want.keys()) and dict(got.data).keys() == want.data.keys()
    assert torch.equal(got.input_ids, want.input_ids) and torch.equal(got.attention_mask, want.attention_mask)
    assert [k for k, _ in got.items()] == ["input_ids", "attention_mask"]
    with pytest.raises(AttributeError):
        got.pixel_values  # noqa: B018
    # .to(dtype) leaves token ids alone (transformers logs a warning), .to(device) moves every tensor
    logging.getLogger("clip_core.batch").disabled = True
    try:
        assert got.to(torch.float16) is got and got.input_ids.dtype == want.to(torch.float16).input_ids.dtype
    finally:
        logging.getLogger("clip_core.batch").disabled = False
    assert got.to("meta") is got and {v.device.type for v in got.values()} == {"meta"}
    assert {v.device.type for v in want.to("meta").values()} == {"meta"}
    # return_tensors=None lists, converted afterwards like transformers
    lists, ref = ours(["a b c", "d"], padding=True), fast(["a b c", "d"], padding=True)
    assert lists.input_ids == ref.input_ids
    for kind in ("np", "pt"):
        a = dict(ours(["a b c", "d"], padding=True).convert_to_tensors(kind))
        b = dict(fast(["a b c", "d"], padding=True).convert_to_tensors(kind))
        for key in b:
            assert type(a[key]) is type(b[key]) and a[key].dtype == b[key].dtype, (kind, key)
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
    fresh = ours(["a photo of a cat", "a dog"], padding=True, return_tensors="pt")
    assert pickle.loads(pickle.dumps(fresh))["input_ids"].tolist() == fast(["a photo of a cat", "a dog"],
                                                                           padding=True)["input_ids"]


def test_processor_output_is_a_batch_feature_and_feeds_models(ours):
    directory = default_model_path()
    proc = CLIPProcessor.from_pretrained(directory)
    inputs = proc(text=["a red circle", "a blue square"], images=[IMAGES["rgb"], IMAGES["gray"]],
                  return_tensors="pt", padding=True)
    assert isinstance(inputs, clip_core.BatchFeature) and isinstance(inputs, dict)
    assert inputs.to("cpu") is inputs and inputs.pixel_values.dtype == torch.float32
    half = proc(text=["a red circle"], images=IMAGES["rgb"], return_tensors="pt").to(torch.float16)
    assert half.pixel_values.dtype == torch.float16 and half.input_ids.dtype == torch.int64  # floats only
    theirs = _quiet(transformers.CLIPProcessor.from_pretrained, directory)
    want = theirs(text=["a red circle"], images=IMAGES["rgb"], return_tensors="pt").to(torch.float16)
    assert {k: v.dtype for k, v in half.items()} == {k: v.dtype for k, v in want.items()}
    with pytest.raises(ValueError, match="cast"):
        inputs.to(np.float16)
    arrays = proc(text=["x"], images=IMAGES["rgb"], return_tensors="np")
    assert arrays.to("cpu") is arrays and isinstance(arrays["pixel_values"], np.ndarray)  # np: unchanged

    import clip_torch

    ours_model = clip_torch.CLIPModel.from_pretrained(directory).eval()
    ref_model = _quiet(transformers.CLIPModel.from_pretrained, directory).eval()
    with torch.no_grad():
        got, ref = ours_model(**inputs), ref_model(**inputs)
    np.testing.assert_allclose(got.logits_per_image.numpy(), ref.logits_per_image.numpy(), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- 2. aliases
def test_transformers_class_names():
    assert clip_core.CLIPTokenizerFast is clip_core.CLIPTokenizer
    assert clip_core.CLIPImageProcessorFast is clip_core.CLIPImageProcessor
    assert clip_core.CLIPFeatureExtractor is clip_core.CLIPImageProcessor
    from clip_core import CLIPFeatureExtractor, CLIPImageProcessorFast, CLIPTokenizerFast  # noqa: F401


# ----------------------------------------------------------------------------- 3. tokenizer
def test_constructors_from_files_match_transformers(files, corpus, ours, fast, tmp_path):
    tok_json = str(default_model_path() / "tokenizer.json")
    built = [ours, CLIPTokenizer(files["vocab_file"], files["merges_file"]), CLIPTokenizer(tokenizer_file=tok_json)]
    refs = [fast, transformers.CLIPTokenizerFast(tokenizer_file=tok_json)]
    for kwargs in ({"padding": True, "truncation": True, "max_length": 77}, {}, {"padding": "max_length"},
                   {"truncation": True}):
        logging.disable(logging.WARNING)  # both warn that there is no maximum length
        try:
            want = [r(corpus, **kwargs) for r in refs]
            got = [b(corpus, **kwargs) for b in built]
        finally:
            logging.disable(logging.NOTSET)
        for w in want[1:]:
            assert dict(w) == dict(want[0])
        for g in got:
            assert dict(g) == dict(want[0]), kwargs
    assert ours.model_max_length == fast.model_max_length and CLIPTokenizer().model_max_length == 77
    with pytest.raises(ValueError, match="bos_token"):
        CLIPTokenizer(**files, bos_token="<s>")


def test_special_token_helpers_match_transformers(ours, slow, fast):
    cases = [([], None), ([320, 1929], None), ([320], [539, 320, 2368]), ([], [])]
    for a, b in cases:
        assert ours.build_inputs_with_special_tokens(a, b) == slow.build_inputs_with_special_tokens(a, b) \
            == fast.build_inputs_with_special_tokens(a, b)
        assert ours.get_special_tokens_mask(a, b) == slow.get_special_tokens_mask(a, b)
        assert ours.create_token_type_ids_from_sequences(a, b) == slow.create_token_type_ids_from_sequences(a, b) \
            == fast.create_token_type_ids_from_sequences(a, b)
    ids = fast("a photo <|endoftext|> of a cat")["input_ids"]
    assert ours.get_special_tokens_mask(ids, already_has_special_tokens=True) == \
        slow.get_special_tokens_mask(ids, already_has_special_tokens=True) == \
        fast.get_special_tokens_mask(ids, already_has_special_tokens=True)
    with pytest.raises(ValueError, match="second sequence"):
        ours.get_special_tokens_mask(ids, ids, already_has_special_tokens=True)
    assert (ours.all_special_tokens, ours.all_special_ids) == (slow.all_special_tokens, slow.all_special_ids)


@pytest.mark.parametrize("prefix", [None, "clip"])
def test_save_vocabulary_matches_transformers(ours, slow, tmp_path, prefix, corpus):
    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    got = ours.save_vocabulary(str(tmp_path / "ours"), filename_prefix=prefix)
    want = slow.save_vocabulary(str(tmp_path / "theirs"), filename_prefix=prefix)
    assert [p.split("/")[-1] for p in got] == [p.split("/")[-1] for p in want]
    for a, b in zip(got, want):
        assert open(a, "rb").read() == open(b, "rb").read()
    again = transformers.CLIPTokenizerFast(vocab_file=got[0], merges_file=got[1])
    assert again(corpus[:50])["input_ids"] == CLIPTokenizer(got[0], got[1])(corpus[:50])["input_ids"]
    logging.disable(logging.ERROR)
    try:
        assert ours.save_vocabulary(str(tmp_path / "missing")) is None is \
            slow.save_vocabulary(str(tmp_path / "missing"))
    finally:
        logging.disable(logging.NOTSET)


def test_decode_matches_transformers(ours, slow, fast, corpus):
    ids = fast(corpus, truncation=True, max_length=77)["input_ids"]
    for skip in (False, True):
        for clean in (None, False, True):
            kwargs = {"skip_special_tokens": skip}
            if clean is not None:
                kwargs["clean_up_tokenization_spaces"] = clean
            want = fast.batch_decode(ids, **kwargs)
            assert slow.batch_decode(ids, **kwargs) == want
            assert ours.batch_decode(ids, **kwargs) == want, kwargs
            assert [ours.decode(row, **kwargs) for row in ids[:40]] == want[:40]
    tensor = torch.tensor(ids[1])
    assert ours.decode(tensor) == fast.decode(tensor) and ours.decode(320) == fast.decode(320)
    assert ours.batch_decode(np.array(ids[:1])) == fast.batch_decode(ids[:1])
    cleaned = CLIPTokenizer(clean_up_tokenization_spaces=True)
    text_ids = fast("it 's a dog , isn't it ?")["input_ids"]
    assert cleaned.decode(text_ids) == fast.decode(text_ids, clean_up_tokenization_spaces=True)
    assert cleaned.decode(text_ids) != ours.decode(text_ids)


# ----------------------------------------------------------------------------- 4. image processor
OVERRIDES = [
    {}, {"do_resize": False}, {"size": 100}, {"size": {"shortest_edge": 300}}, {"size": {"height": 100, "width": 150}},
    {"resample": 0}, {"resample": Image.Resampling.BILINEAR}, {"resample": Image.Resampling.LANCZOS},
    {"do_center_crop": False}, {"crop_size": 100}, {"crop_size": {"height": 50, "width": 80}}, {"crop_size": 300},
    {"do_rescale": False}, {"rescale_factor": 1 / 127.5}, {"do_normalize": False},
    {"do_rescale": False, "do_normalize": False}, {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.3, 0.4]},
    {"image_mean": 0.5, "image_std": 0.25}, {"do_convert_rgb": True}, {"data_format": "channels_last"},
    {"return_tensors": "pt"}, {"return_tensors": "jax"},
]


def _compare(got, want) -> None:
    assert type(got) is type(want), (type(got), type(want))
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=0, atol=TOL)


@pytest.mark.parametrize("kwargs", OVERRIDES, ids=[str(k) for k in OVERRIDES])
@pytest.mark.parametrize("image", ["rgb", "gray"])
def test_image_processor_overrides_match_transformers(image, kwargs):
    kwargs = {"return_tensors": "np", **kwargs}
    theirs = transformers.CLIPImageProcessor()
    ours = CLIPImageProcessor()
    assert ours.mode == "hf"
    img = IMAGES[image]
    _compare(ours(img, **kwargs)["pixel_values"], _quiet(theirs, img, **kwargs)["pixel_values"])
    _compare(ours.preprocess([img, img], **kwargs)["pixel_values"],
             _quiet(theirs.preprocess, [img, img], **kwargs)["pixel_values"])


def test_image_processor_settings_in_constructor_and_layouts():
    rgb, gray = IMAGES["rgb"], IMAGES["gray"]
    settings = {"size": {"shortest_edge": 120}, "crop_size": {"height": 96, "width": 112}, "resample": 2,
                "image_mean": [0.4, 0.5, 0.6], "image_std": [0.3, 0.2, 0.1], "rescale_factor": 1 / 200,
                "do_convert_rgb": False}
    ours, theirs = CLIPImageProcessor(**settings), transformers.CLIPImageProcessor(**settings)
    _compare(ours(rgb)["pixel_values"], theirs(rgb, return_tensors="np")["pixel_values"])
    with pytest.raises(ValueError, match="do_convert_rgb"):  # transformers cannot process it either
        ours(gray)
    with pytest.raises(ValueError):
        theirs(gray, return_tensors="np")
    hwc = np.asarray(rgb)
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    want = theirs(hwc, return_tensors="np", input_data_format="channels_last")["pixel_values"]
    _compare(ours(hwc, input_data_format="channels_last")["pixel_values"], want)
    _compare(ours(chw, input_data_format="channels_first")["pixel_values"], want)
    _compare(ours(chw)["pixel_values"], theirs(chw, return_tensors="np")["pixel_values"])  # inferred, unambiguous
    _compare(ours(torch.from_numpy(chw))["pixel_values"], theirs(torch.from_numpy(chw), return_tensors="np")
             ["pixel_values"])
    default = CLIPImageProcessor()
    before = default(rgb)["pixel_values"]
    default(rgb, size=64, crop_size=32, image_mean=0.1)  # per-call overrides do not stick
    _compare(default(rgb)["pixel_values"], before)
    odd = rgb.resize((301, 225))  # OpenAI's crop rounds the offset where transformers floors it
    assert not np.allclose(CLIPImageProcessor(mode="openai")(odd)["pixel_values"],
                           CLIPImageProcessor()(odd)["pixel_values"], atol=1e-3)


def test_processor_routes_image_kwargs():
    proc = CLIPProcessor()
    theirs = transformers.CLIPImageProcessor()
    kwargs = {"crop_size": {"height": 64, "width": 96}, "size": 80, "do_normalize": False}
    got = proc(images=IMAGES["rgb"], return_tensors="np", **kwargs)
    _compare(got["pixel_values"], theirs(IMAGES["rgb"], return_tensors="np", **kwargs)["pixel_values"])


# ----------------------------------------------------------------------------- 5. configs
CONFIG_KWARGS = [{"num_labels": 3}, {"id2label": {"0": "cat", "1": "dog", "2": "bird"}},
                 {"id2label": {0: "a", 1: "b"}, "num_labels": 2}, {"output_hidden_states": True},
                 {"output_attentions": True}, {"return_dict": False}, {"torch_dtype": "float16"},
                 {"torch_dtype": torch.bfloat16}, {"problem_type": "single_label_classification"},
                 {"my_custom_key": [1, 2]}]
DEFAULT_ATTRS = ["num_labels", "id2label", "label2id", "output_hidden_states", "output_attentions", "return_dict",
                 "use_return_dict", "problem_type", "is_encoder_decoder", "tie_word_embeddings", "pruned_heads"]


@pytest.mark.parametrize("kwargs", CONFIG_KWARGS, ids=[str(k) for k in CONFIG_KWARGS])
@pytest.mark.parametrize("name", ["CLIPConfig", "CLIPTextConfig", "CLIPVisionConfig"])
def test_configs_take_pretrained_config_kwargs(name, kwargs, tmp_path):
    ours, theirs = getattr(clip_core, name)(**kwargs), getattr(transformers, name)(**kwargs)
    for attr in DEFAULT_ATTRS + [k for k in kwargs if k != "torch_dtype"]:
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    if "torch_dtype" in kwargs:
        assert ours.torch_dtype == theirs.torch_dtype
    ours.save_pretrained(tmp_path)
    loaded = _quiet(getattr(transformers, name).from_pretrained, tmp_path)
    for attr in ("num_labels", "id2label", "label2id") + tuple(k for k in kwargs if k != "torch_dtype"):
        assert getattr(loaded, attr) == getattr(theirs, attr), attr
    again = getattr(clip_core, name).from_pretrained(tmp_path)
    assert again == ours and again.id2label == ours.id2label


def test_config_defaults_and_attribute_assignment(tmp_path):
    ours, theirs = CLIPConfig(), transformers.CLIPConfig()
    for attr in DEFAULT_ATTRS:
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    for cfg in (ours, theirs):
        cfg.projection_dim = 256
        cfg.logit_scale_init_value = 1.5
        cfg.text_config.hidden_act = "gelu_new"
        cfg.vision_config.image_size = 336
        cfg.num_labels = 4
        cfg.output_hidden_states = True
        cfg.my_note = "x"
    for attr in ("projection_dim", "logit_scale_init_value", "num_labels", "id2label", "output_hidden_states",
                 "my_note"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert ours.text_config.hidden_act == "gelu_new" and ours.vision_config.image_size == 336
    assert ours.text_config.projection_dim == ours.vision_config.projection_dim == 256
    ours.save_pretrained(tmp_path)
    loaded = transformers.CLIPConfig.from_pretrained(tmp_path)
    assert (loaded.projection_dim, loaded.text_config.hidden_act, loaded.vision_config.image_size,
            loaded.num_labels, loaded.my_note) == (256, "gelu_new", 336, 4, "x")
    with pytest.raises(AttributeError):
        ours.text_config.head_dim = 3  # a derived value, as in transformers it is no setting


def test_mutable_configs_keep_the_schema_cache_correct():
    from clip_core.schema import parameter_shapes
    from clip_core.testing import tiny_vit_config

    cfg = tiny_vit_config()
    assert parameter_shapes(cfg)["text_projection.weight"] == (16, 32)
    cfg.text_config.hidden_size, cfg.text_config.num_attention_heads = 64, 8
    assert parameter_shapes(cfg)["text_projection.weight"] == (16, 64)
    cfg.projection_dim = 24
    assert parameter_shapes(cfg)["text_projection.weight"] == (24, 64)
    assert parameter_shapes(tiny_vit_config())["text_projection.weight"] == (16, 32)
    assert hash(tiny_vit_config()) == hash(tiny_vit_config()) and tiny_vit_config() == tiny_vit_config()
    copy = cfg.replace(logit_scale_init_value=1.0)
    copy.text_config.hidden_size = 128  # replace() shares nothing mutable
    assert cfg.text_config.hidden_size == 64


def test_every_transformers_activation_is_accepted():
    from transformers.activations import ACT2CLS

    for name in sorted(ACT2CLS) + ["selu"]:
        assert CLIPTextConfig(hidden_act=name).hidden_act == name
        assert CLIPVisionConfig(hidden_act=name).hidden_act == name
        assert transformers.CLIPTextConfig(hidden_act=name).hidden_act == name
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPTextConfig(hidden_act=3)


def test_backend_without_an_activation_names_it():
    import clip_torch
    from clip_core.testing import tiny_vit_config

    with pytest.raises(ValueError, match="'selu'"):
        clip_torch.CLIPModel(tiny_vit_config(hidden_act="selu"))


# ----------------------------------------------------------------------------- 6. name resolver
@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    root = tmp_path / "hub"
    repo = root / ("models--" + HUB_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / "abc123"
    shutil.copytree(default_model_path(), snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    return root, snapshot


def test_hub_ids_resolve_from_the_local_cache(hub_cache, monkeypatch, tmp_path):
    import conversion

    root, snapshot = hub_cache
    assert resolve_checkpoint(HUB_ID) == snapshot
    assert resolve_checkpoint("hf-hub:" + HUB_ID) == snapshot  # open_clip's spelling
    assert resolve_checkpoint(HUB_ID, revision="abc123") == snapshot
    config, weights = conversion.load_checkpoint(HUB_ID)
    want_config, want = conversion.load_checkpoint(default_model_path())
    assert config == want_config and weights.keys() == want.keys()
    np.testing.assert_array_equal(weights["logit_scale"], want["logit_scale"])
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(root.parent))  # $HF_HOME/hub
    assert resolve_checkpoint(HUB_ID) == snapshot


def test_hub_id_missing_from_the_cache_is_one_clear_line(hub_cache):
    root, _ = hub_cache
    missing = "openai/clip-vit-large-patch14"
    with pytest.raises(NotInHubCacheError) as info:
        resolve_checkpoint(missing)
    path = root / "models--openai--clip-vit-large-patch14"
    assert str(info.value) == (
        f"'{missing}' is not in the local Hugging Face cache ({path}); download it with "
        f"`huggingface-cli download {missing}` (or transformers' from_pretrained) on a machine with network, "
        f"then retry")
    assert isinstance(info.value, FileNotFoundError) and "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download hf-org/model"):
        resolve_checkpoint("hf-hub:hf-org/model")
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        resolve_checkpoint(HUB_ID, revision="v2")
    with pytest.raises(FileNotFoundError, match="ViT-B-32.pt"):  # OpenAI names keep OpenAI's download dir
        resolve_checkpoint("ViT-B/32", download_root=str(root))
