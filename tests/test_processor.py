"""clip_core.CLIPProcessor against transformers.CLIPProcessor (same saved directory, same inputs)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("clip_core.tokenizer")
transformers = pytest.importorskip("transformers")

from clip_core import CLIPImageProcessor, CLIPProcessor  # noqa: E402

TEXTS = ["a photo of a cat", "A DOG'S dinner &amp; two birds!!", "", "naïve café ☕ 123"]


def images():
    rng = np.random.default_rng(1)
    out = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(225, 301), (301, 225)]]
    return out + [out[0].convert("RGBA"), np.asarray(out[1])]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Our default processor and transformers' CLIPProcessor loaded from the directory we saved."""
    directory = tmp_path_factory.mktemp("processor")
    ours = CLIPProcessor()
    ours.save_pretrained(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.CLIPProcessor.from_pretrained(directory)
    return ours, theirs, directory


def assert_same(ours, theirs) -> None:
    assert set(ours) == set(theirs), (set(ours), set(theirs))
    for key in theirs:
        want = np.asarray(theirs[key])
        got = np.asarray(ours[key])
        assert got.shape == want.shape, key
        if key == "pixel_values":
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        else:
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kwargs", [
    {"padding": True},
    {"padding": "max_length", "max_length": 77, "truncation": True},
    {"padding": True, "max_length": 5, "truncation": True},
])
def test_matches_transformers(pair, kwargs):
    ours, theirs, _ = pair
    imgs = images()
    hf_imgs = [x if isinstance(x, Image.Image) else Image.fromarray(x) for x in imgs]  # HF: channels-first guess
    got = ours(text=TEXTS, images=imgs, return_tensors="np", **kwargs)
    want = theirs(text=TEXTS, images=hf_imgs, return_tensors="np", **kwargs)
    assert_same(got, want)


def test_text_only_and_images_only(pair):
    ours, theirs, _ = pair
    assert_same(ours(text=TEXTS[:2], return_tensors="np", padding=True),
                theirs(text=TEXTS[:2], return_tensors="np", padding=True))
    img = images()[0]
    assert_same(ours(images=img, return_tensors="np"), theirs(images=img, return_tensors="np"))
    with pytest.raises(ValueError, match="neither"):
        ours()


def test_positional_orders(pair):
    """text-first (older transformers) and images-first (transformers 4.57) positional calls."""
    ours, theirs, _ = pair
    img = images()[:2]
    want = theirs(text=TEXTS[:2], images=img, return_tensors="np", padding=True)
    assert_same(ours(TEXTS[:2], img, return_tensors="np", padding=True), want)
    assert_same(ours(img, TEXTS[:2], return_tensors="np", padding=True), want)
    assert_same(ours(img, return_tensors="np"), theirs(images=img, return_tensors="np"))


def test_return_tensors_pt(pair):
    torch = pytest.importorskip("torch")
    ours, _, _ = pair
    out = ours(text=TEXTS, images=images(), return_tensors="pt", padding=True)
    assert all(isinstance(out[k], torch.Tensor) for k in ("input_ids", "attention_mask", "pixel_values"))
    assert out.pixel_values.shape == (4, 3, 224, 224) and out.pixel_values.dtype == torch.float32


def test_decode_forwarded(pair):
    ours, theirs, _ = pair
    ids = ours(text=TEXTS, return_tensors="np", padding=True)["input_ids"]
    assert ours.batch_decode(ids, skip_special_tokens=True) == theirs.batch_decode(ids, skip_special_tokens=True)
    assert ours.decode(ids[1]) == theirs.decode(ids[1])


def test_from_pretrained_round_trip(pair, tmp_path):
    ours, theirs, directory = pair
    again = CLIPProcessor.from_pretrained(directory)
    assert again.image_processor.to_dict() == ours.image_processor.to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.save_pretrained(tmp_path)  # a directory written by transformers
    loaded = CLIPProcessor.from_pretrained(tmp_path)
    assert loaded.image_processor.mode == "hf"
    assert_same(loaded(text=TEXTS, images=images()[:2], return_tensors="np", padding=True),
                theirs(text=TEXTS, images=images()[:2], return_tensors="np", padding=True))
    with pytest.raises(FileNotFoundError, match="not found"):
        CLIPProcessor.from_pretrained(tmp_path / "missing")


def test_openai_mode_and_bad_arguments():
    torch = pytest.importorskip("torch")
    del torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip_module = pytest.importorskip("clip.clip")
    proc = CLIPProcessor(image_processor=CLIPImageProcessor("openai"))
    img = images()[0]
    want = clip_module._transform(224)(img).numpy()[None]
    np.testing.assert_allclose(proc(images=img, return_tensors="np")["pixel_values"], want, rtol=0, atol=1e-6)
    swapped = CLIPProcessor(CLIPImageProcessor("openai"), proc.tokenizer)  # transformers' argument order
    assert swapped.image_processor.mode == "openai" and swapped.tokenizer is proc.tokenizer
    with pytest.raises(TypeError, match="image_processor"):
        CLIPProcessor(image_processor="hf")
    assert CLIPProcessor().model_input_names == ["input_ids", "attention_mask", "pixel_values"]
