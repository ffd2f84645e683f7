"""clip_core.CLIPImageProcessor against OpenAI's ``_transform`` and transformers' CLIPImageProcessor.

Every comparison is max abs difference ≤ 1e-6 (in practice 0: same PIL calls, same arithmetic).
Images are generated: odd sizes, both orientations, every PIL mode, numpy and file inputs.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_core.image_processing import CLIPImageProcessor, ImageTooLargeError

torch = pytest.importorskip("torch")
transforms = pytest.importorskip("torchvision.transforms")
transformers = pytest.importorskip("transformers")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # clip imports pkg_resources
    clip_module = pytest.importorskip("clip.clip")

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
TOL = 1e-6

MODES = ["RGB", "L", "LA", "P", "P+transparency", "RGBA", "CMYK", "I;16", "F", "1", "I"]
SIZES = [(225, 301), (301, 225), (223, 224), (1, 1)]  # (width, height)
EXTRA = [("RGB", (1, 500)), ("RGB", (500, 1)), ("P", (1, 500)), ("I;16", (500, 1)), ("LA", (7, 3)),
         ("RGBA", (3, 7)), ("CMYK", (224, 224)), ("F", (640, 480)), ("1", (480, 640)),
         ("RGB", (4000, 3000)), ("L", (3000, 4000))]
CASES = [(m, s) for m in MODES for s in SIZES] + EXTRA  # 55 images


# -- references ---------------------------------------------------------------------------------
def openai_ref(img: Image.Image, size: int = 224, crop=None) -> np.ndarray:
    """OpenAI's own transform (its ``_transform`` when size == crop)."""
    if crop is None:
        tf = clip_module._transform(size)
    else:
        tf = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                                 transforms.CenterCrop(crop), clip_module._convert_image_to_rgb,
                                 transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    return tf(img).numpy()[None]  # (1, 3, H, W)


def hf_ref(images, size: int = 224, crop=None, **kwargs) -> np.ndarray:
    """transformers' slow CLIPImageProcessor, told that arrays are channels-last."""
    crop = crop if crop is not None else size
    crop = crop if isinstance(crop, dict) else {"height": crop, "width": crop}
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": size}, crop_size=crop)
    return proc(images, return_tensors="np", input_data_format="channels_last", **kwargs)["pixel_values"]


def assert_close(ours, ref) -> None:
    assert ours.dtype == np.float32 and ours.shape == ref.shape, (ours.shape, ref.shape)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)


# -- image generation ---------------------------------------------------------------------------
def make_image(mode: str, size, seed: int = 0) -> Image.Image:
    """A deterministic image: a smooth gradient plus noise, in PIL mode ``mode``."""
    w, h = size
    rng = np.random.default_rng(seed + w * 7 + h * 13)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    smooth = 127 + 100 * np.sin(xx / 9.0 + yy / 13.0)
    rgba = np.clip(smooth[..., None] + rng.normal(0, 40, (h, w, 4)), 0, 255).astype(np.uint8)
    base = Image.fromarray(rgba, "RGBA")
    if mode == "I;16":  # 0..600: exercises PIL's clipping of values > 255 when converting to RGB
        return Image.fromarray((smooth * 2.3 + rng.integers(0, 20, (h, w))).astype(np.uint16))
    if mode == "I":
        return Image.fromarray((smooth * 3 - 100).astype(np.int32))
    if mode == "F":
        return Image.fromarray((smooth * 1.3 - 20 + rng.random((h, w))).astype(np.float32))
    if mode.startswith("P"):
        img = base.convert("RGB").quantize(32)
        if mode == "P+transparency":
            img.info["transparency"] = 5
        return img
    return base.convert(mode)


@pytest.fixture(scope="module")
def procs():
    return {"openai": CLIPImageProcessor("openai"), "hf": CLIPImageProcessor("hf")}


# -- parity on PIL images -----------------------------------------------------------------------
@pytest.mark.parametrize("mode,size", CASES, ids=[f"{m}-{w}x{h}" for m, (w, h) in CASES])
def test_pil_parity(procs, mode, size):
    img = make_image(mode, size)
    assert_close(procs["openai"](img)["pixel_values"], openai_ref(img))
    assert_close(procs["hf"](img)["pixel_values"], hf_ref(img))


def test_modes_differ_between_references(procs):
    """The two references differ (crop offset round() vs floor, RGB before/after resize)."""
    img = make_image("RGBA", (225, 301))
    a, b = procs["openai"](img)["pixel_values"], procs["hf"](img)["pixel_values"]
    assert np.abs(a - b).max() > 0.5


@pytest.mark.parametrize("size,crop", [(224, 224), (288, 288), (336, 336), (384, 384), (448, 448),
                                       (224, 230), (200, 231), (240, 200)])
@pytest.mark.parametrize("mode", ["RGB", "P"])
def test_sizes_and_padding(mode, size, crop):
    """Preset resolutions, and crops larger than the resized image (both references pad differently)."""
    img = make_image(mode, (227, 211), seed=3)
    ours_oa = CLIPImageProcessor("openai", size=size, crop_size=crop)(img)["pixel_values"]
    ours_hf = CLIPImageProcessor("hf", size=size, crop_size=crop)(img)["pixel_values"]
    assert ours_oa.shape == (1, 3, crop, crop)
    assert_close(ours_oa, openai_ref(img, size, crop))
    assert_close(ours_hf, hf_ref(img, size, crop))


def test_rectangular_crop():
    img = make_image("RGB", (301, 225))
    crop = {"height": 200, "width": 240}
    ours = CLIPImageProcessor("openai", crop_size=crop)(img)["pixel_values"]
    assert_close(ours, openai_ref(img, 224, (200, 240)))
    assert_close(CLIPImageProcessor("hf", crop_size=crop)(img)["pixel_values"], hf_ref(img, 224, crop))


# -- numpy inputs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(301, 225, 3), (224, 223, 3), (3, 500, 3)])
def test_numpy_uint8(procs, shape):
    arr = np.asarray(make_image("RGB", shape[1::-1]))
    assert_close(procs["openai"](arr)["pixel_values"], openai_ref(Image.fromarray(arr)))
    assert_close(procs["hf"](arr)["pixel_values"], hf_ref(arr))


def test_numpy_float(procs):
    """Float [0, 1]: openai mode = torchvision ToPILImage; hf mode = transformers (incl. its double rescale)."""
    arr = np.asarray(make_image("RGB", (230, 301))).astype(np.float32) / 255 * 0.999 + 0.0003
    pil = transforms.ToPILImage()(torch.from_numpy(arr).permute(2, 0, 1))
    assert_close(procs["openai"](arr)["pixel_values"], openai_ref(pil))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_close(procs["hf"](arr)["pixel_values"], hf_ref(arr))
        assert_close(procs["hf"](arr.astype(np.float64))["pixel_values"], hf_ref(arr.astype(np.float64)))
    ints = np.round(arr * 255).astype(np.float64)  # integer-valued floats are taken as 0..255
    assert_close(procs["hf"](ints)["pixel_values"], hf_ref(ints))


@pytest.mark.parametrize("channels", [None, 1, 4])
def test_numpy_gray_and_rgba(procs, channels):
    """(H, W), (H, W, 1), (H, W, 4): read as PIL L / RGBA (transformers itself rejects these arrays)."""
    img = make_image("L" if channels in (None, 1) else "RGBA", (230, 240))
    arr = np.asarray(img) if channels != 1 else np.asarray(img)[:, :, None]
    assert_close(procs["openai"](arr)["pixel_values"], openai_ref(img))
    assert_close(procs["hf"](arr)["pixel_values"], hf_ref(img))


def test_batch_array_and_mixed_list(procs):
    """A 4-D array is a batch; a list may mix PIL images, arrays and sizes; threads change nothing."""
    stack = np.stack([np.asarray(make_image("RGB", (240, 230), seed=s)) for s in range(3)])
    ours = procs["hf"](stack)["pixel_values"]
    assert_close(ours, np.concatenate([hf_ref(a) for a in stack]))
    mixed = [make_image("P", (300, 260)), stack[0], make_image("CMYK", (260, 300)), make_image("I;16", (99, 41))]
    want = np.concatenate([openai_ref(x if isinstance(x, Image.Image) else Image.fromarray(x)) for x in mixed])
    assert_close(procs["openai"](mixed)["pixel_values"], want)
    single = CLIPImageProcessor("openai", num_threads=1)(tuple(mixed))["pixel_values"]
    np.testing.assert_array_equal(single, want)
    nested = procs["openai"]([mixed[:2], mixed[2:]])["pixel_values"]  # transformers flattens nested lists
    np.testing.assert_array_equal(nested, want)


# -- file inputs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,mode", [("png", "RGB"), ("png", "RGBA"), ("png", "P"), ("png", "I;16"), ("gif", "P"),
                                      ("jpeg", "RGB"), ("jpeg", "L"), ("jpeg", "CMYK")])
def test_file_paths(procs, tmp_path, fmt, mode):
    path = tmp_path / f"img.{fmt}"
    make_image(mode, (333, 250)).save(path)
    assert_close(procs["openai"](path)["pixel_values"], openai_ref(Image.open(path)))
    assert_close(procs["openai"](str(path))["pixel_values"], openai_ref(Image.open(path)))
    assert_close(procs["hf"](str(path))["pixel_values"], hf_ref(str(path)))


def test_exif_orientation(procs, tmp_path):
    """hf mode rotates by EXIF for paths (as transformers' load_image); openai mode never does."""
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    make_image("RGB", (320, 240)).save(path, exif=exif)
    hf_out = procs["hf"](str(path))["pixel_values"]
    assert_close(hf_out, hf_ref(str(path)))
    assert_close(procs["openai"](path)["pixel_values"], openai_ref(Image.open(path)))
    upright = hf_ref(Image.open(path).convert("RGB"))  # the same file without EXIF rotation
    assert np.abs(hf_out - upright).max() > 0.5
    forced = CLIPImageProcessor("openai", exif_transpose=True)(path)["pixel_values"]
    from PIL import ImageOps
    assert_close(forced, openai_ref(ImageOps.exif_transpose(Image.open(path))))


def test_fast_draft_is_close(tmp_path):
    """``fast=True`` (JPEG draft decoding) is opt-in and only approximately equal."""
    path = tmp_path / "big.jpg"
    make_image("RGB", (1280, 960)).save(path, quality=95)
    exact = CLIPImageProcessor("openai")(path)["pixel_values"]
    fast = CLIPImageProcessor("openai", fast=True)(path)["pixel_values"]
    assert fast.shape == exact.shape
    assert 0 < np.abs(fast - exact).mean() < 0.1


# -- outputs and persistence ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["np", "pt", "jax", "tf", None])
def test_return_tensors(procs, kind):
    if kind in ("jax", "tf"):
        pytest.importorskip({"jax": "jax", "tf": "tensorflow"}[kind])
    img = make_image("RGB", (230, 240))
    out = procs["openai"]([img, img], return_tensors=kind)
    value = out.pixel_values
    assert value is out["pixel_values"]
    assert tuple(value.shape) == (2, 3, 224, 224)
    if kind == "pt":
        assert isinstance(value, torch.Tensor) and value.dtype == torch.float32
    else:
        want = {"np": "numpy", None: "numpy", "jax": "jaxlib", "tf": "tensorflow"}[kind]
        assert type(value).__module__.split(".")[0] == want
    assert_close(np.asarray(value)[:1], openai_ref(img))


def test_no_center_crop_keeps_sizes(procs):
    imgs = [make_image("RGB", (300, 224)), make_image("RGB", (224, 300))]
    proc = CLIPImageProcessor("hf", do_center_crop=False)
    out = proc(imgs, return_tensors=None)["pixel_values"]
    assert [a.shape for a in out] == [(3, 224, 300), (3, 300, 224)]
    with pytest.raises(ValueError, match="different sizes"):
        proc(imgs, return_tensors="np")


def test_save_pretrained_round_trip(tmp_path):
    ours = CLIPImageProcessor("hf", size=336, crop_size=336)
    ours.save_pretrained(tmp_path)
    theirs = transformers.CLIPImageProcessor.from_pretrained(tmp_path)
    assert theirs.size == {"shortest_edge": 336} and theirs.crop_size == {"height": 336, "width": 336}
    img = make_image("RGBA", (400, 351))
    assert_close(ours(img)["pixel_values"], theirs(img, return_tensors="np")["pixel_values"])
    again = CLIPImageProcessor.from_pretrained(tmp_path)
    assert again.mode == "hf" and again.to_dict() == ours.to_dict()
    CLIPImageProcessor("openai").save_pretrained(tmp_path / "oa")
    assert CLIPImageProcessor.from_pretrained(tmp_path / "oa").mode == "openai"


def test_from_pretrained_reads_transformers_and_legacy_configs(tmp_path):
    transformers.CLIPImageProcessor(size={"shortest_edge": 288}, crop_size={"height": 288, "width": 288}
                                    ).save_pretrained(tmp_path)
    proc = CLIPImageProcessor.from_pretrained(tmp_path)
    assert (proc.mode, proc.size, proc.crop_size) == ("hf", {"shortest_edge": 288}, {"height": 288, "width": 288})
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "preprocessor_config.json").write_text(
        '{"feature_extractor_type": "CLIPFeatureExtractor", "size": 224, "crop_size": 224, "resample": 3,'
        ' "do_resize": true, "do_center_crop": true, "do_normalize": true,'
        ' "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}')
    proc = CLIPImageProcessor.from_pretrained(legacy)
    img = make_image("RGB", (250, 300))
    assert_close(proc(img)["pixel_values"], hf_ref(img))
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        CLIPImageProcessor.from_pretrained(tmp_path / "missing")


def test_lazy_export():
    import clip_core

    assert clip_core.CLIPImageProcessor is CLIPImageProcessor


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,exc,match", [
    (None, TypeError, "image 0 is None"),
    (5, TypeError, "unsupported type int"),
    ({"a": 1}, TypeError, "unsupported type dict"),
    (Image.new("RGB", (0, 4)), ValueError, "zero size"),
    (np.zeros((0, 5, 3), np.uint8), ValueError, "zero size"),
    (np.zeros((5, 5, 2), np.uint8), ValueError, "shape"),
    (np.zeros((5, 5, 3), np.int64), TypeError, "int64"),
    (np.full((5, 5, 3), 2.5), ValueError, r"\[0, 1\]"),
    (np.full((5, 5, 3), np.nan, np.float32), ValueError, "NaN|\\[0, 1\\]"),
    ([], ValueError, "no images"),
])
@pytest.mark.parametrize("mode", ["openai", "hf"])
def test_bad_input(mode, bad, exc, match):
    with pytest.raises(exc, match=match):
        CLIPImageProcessor(mode)(bad)


def test_bad_input_in_batch_names_index(procs):
    with pytest.raises(TypeError, match="image 1 is None"):
        procs["hf"]([make_image("RGB", (5, 5)), None])


def test_bad_files(procs, tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        procs["openai"](missing)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="junk.png"):
        procs["hf"](str(junk))
    truncated = tmp_path / "cut.png"
    make_image("RGB", (64, 64)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="cut.png"):
        procs["openai"](truncated)


@pytest.mark.parametrize("factor", [1.5, 3])  # PIL warns above the limit and refuses above twice it
def test_decompression_bomb(procs, tmp_path, monkeypatch, factor):
    path = tmp_path / "bomb.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(10000 / factor))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageTooLargeError, match="bomb.png"):
            procs["openai"](path)
        with pytest.raises(ImageTooLargeError, match="MAX_IMAGE_PIXELS"):
            procs["hf"](Image.new("L", (100, 100)))


@pytest.mark.parametrize("image_wh,size", [((100000, 1), 224), ((300, 200), 100000)])
def test_resize_target_is_bounded(image_wh, size):
    """A 1x100000 strip or a size=100000 config would allocate GBs in the resize: refused before it."""
    proc = CLIPImageProcessor(mode="hf", size=size, crop_size=224)
    with pytest.raises(ImageTooLargeError, match="aspect ratio and the processor's size"):
        proc(Image.new("RGB", image_wh), return_tensors="np")


def test_no_rgb_conversion_refuses_a_grayscale_image():
    """``do_convert_rgb=False`` is accepted (as in transformers); a non-RGB image then fails clearly."""
    proc = CLIPImageProcessor(do_convert_rgb=False)
    assert proc(Image.new("RGB", (40, 30)), return_tensors="np")["pixel_values"].shape == (1, 3, 224, 224)
    with pytest.raises(ValueError, match="do_convert_rgb"):
        proc(Image.new("L", (40, 30)), return_tensors="np")


@pytest.mark.parametrize("kwargs,match", [
    ({"mode": "torch"}, "mode"), ({"size": 0}, "positive"), ({"size": "big"}, "size"),
    ({"crop_size": {"w": 3}}, "crop_size"), ({"image_std": [1, 0, 1]}, "std"),
    ({"mode": "openai", "rescale_factor": 0.5}, "1/255"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CLIPImageProcessor(**kwargs)


def test_bad_return_tensors(procs):
    with pytest.raises(ValueError, match="return_tensors"):
        procs["hf"](make_image("RGB", (5, 5)), return_tensors="mx")


def test_documented_transformers_quirks(procs):
    """docs/preprocessing.md lists inputs transformers itself mishandles; we process them correctly."""
    gray = np.asarray(make_image("L", (40, 30)))[:, :, None]  # (H, W, 1)
    tiny = make_image("RGB", (1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proc = transformers.CLIPImageProcessor()
        for bad in (gray, tiny):  # grayscale arrays; height-1 images guessed channels-first
            with pytest.raises(ValueError, match="mean must have 1 elements"):
                proc(bad, return_tensors="np")
        wide = make_image("RGB", (500, 3))  # height 3: guessed channels-first, silently wrong
        assert np.abs(proc(wide, return_tensors="np")["pixel_values"] - hf_ref(wide)).max() > 0.1
    assert_close(procs["hf"](gray)["pixel_values"], hf_ref(Image.fromarray(gray[:, :, 0])))
    assert_close(procs["hf"](tiny)["pixel_values"], hf_ref(tiny))
    assert_close(procs["hf"](wide)["pixel_values"], hf_ref(wide))


def test_exact_resize_size():
    """``size={"height", "width"}`` resizes to exactly that size (no aspect ratio), in both modes."""
    img = make_image("LA", (301, 225))
    size = {"height": 250, "width": 236}
    ours_oa = CLIPImageProcessor("openai", size=size, crop_size=224)(img)["pixel_values"]
    assert_close(ours_oa, openai_ref(img, (250, 236), 224))
    theirs = transformers.CLIPImageProcessor(size=size, crop_size={"height": 224, "width": 224})
    want = theirs(img, return_tensors="np", input_data_format="channels_last")["pixel_values"]
    assert_close(CLIPImageProcessor("hf", size=size, crop_size=224)(img)["pixel_values"], want)


def test_pickle_round_trip(procs):
    """Processors go to DataLoader worker processes: picklable, thread pool recreated on demand."""
    import pickle

    imgs = [make_image("RGB", (250, 230)), make_image("P", (230, 250))]
    want = procs["openai"](imgs)["pixel_values"]
    clone = pickle.loads(pickle.dumps(procs["openai"]))
    np.testing.assert_array_equal(clone(imgs)["pixel_values"], want)
