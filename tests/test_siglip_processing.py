"""SigLIP's image processor and processor against transformers 4.57 (``SiglipImageProcessor``, ``SiglipProcessor``).

A battery of sizes, PIL modes, numpy inputs and the preprocessor configs of SigLIP (bicubic) and
fixed-resolution SigLIP 2 (bilinear) checkpoints; every output must be within 1e-6 of transformers'.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from clip_core import SiglipImageProcessor, SiglipProcessor
from clip_core.siglip_tokenizer import GemmaTokenizer, SiglipTokenizer

try:
    import test_siglip_tokenizer as tok_tests
except ImportError:  # pytest --import-mode=importlib
    from tests import test_siglip_tokenizer as tok_tests

try:  # transformers' image code imports torchvision and tensorflow; torchvision must come first
    import torchvision  # noqa: F401
except ImportError:
    pass
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore:This sequence already has")

SIZES = [(224, 224), (17, 33), (480, 640), (301, 97), (1, 5), (1000, 3), (256, 256), (385, 383)]
# preprocessor_config.json of SigLIP checkpoints (bicubic, 224-512) and fixed-resolution SigLIP 2 (bilinear)
CONFIGS = {
    "siglip-224": {"image_processor_type": "SiglipImageProcessor", "resample": 3,
                   "size": {"height": 224, "width": 224}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                   "do_normalize": True, "do_rescale": True, "do_resize": True, "rescale_factor": 1 / 255},
    "siglip-384": {"image_processor_type": "SiglipImageProcessor", "resample": 3,
                   "size": {"height": 384, "width": 384}},
    "siglip2-256-bilinear": {"image_processor_type": "SiglipImageProcessor", "resample": 2,
                             "size": {"height": 256, "width": 256}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                             "do_convert_rgb": True},
    "siglip-512-defaults": {"size": {"height": 512, "width": 512}},
}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


def _write_config(directory, config: dict) -> str:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as fh:
        json.dump(config, fh)
    return str(directory)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_image_processor_matches_transformers(tmp_path, images, name):
    directory = _write_config(tmp_path / name, CONFIGS[name])
    ref = transformers.SiglipImageProcessor.from_pretrained(directory)
    ours = SiglipImageProcessor.from_pretrained(directory)
    assert (ours.size, ours.resample, ours.do_center_crop) == (dict(ref.size), ref.resample, False)
    a, b = ref(images, return_tensors="np")["pixel_values"], ours(images, return_tensors="np")["pixel_values"]
    assert b.shape == a.shape == (len(images), 3, ref.size["height"], ref.size["width"]) and b.dtype == np.float32
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA"])
def test_other_modes_and_arrays_with_convert_rgb(images, mode):
    """Non-RGB images (converted to RGB first, as transformers with do_convert_rgb) and numpy inputs."""
    ref = transformers.SiglipImageProcessor(do_convert_rgb=True, resample=2, size={"height": 64, "width": 64})
    ours = SiglipImageProcessor(do_convert_rgb=True, resample=2, size={"height": 64, "width": 64})
    batch = [im.convert(mode) for im in images[:4]] + [np.asarray(images[1]), np.asarray(images[2]) / 255.0]
    a, b = ref(batch, return_tensors="np")["pixel_values"], ours(batch, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)


def test_save_pretrained_loads_in_transformers(tmp_path, images):
    ours = SiglipImageProcessor(size={"height": 96, "width": 128}, resample=2)
    ours.save_pretrained(str(tmp_path))
    ref = transformers.SiglipImageProcessor.from_pretrained(str(tmp_path))
    assert dict(ref.size) == {"height": 96, "width": 128} and ref.resample == 2
    np.testing.assert_allclose(ours(images, return_tensors="np")["pixel_values"],
                               ref(images, return_tensors="np")["pixel_values"], rtol=0, atol=1e-6)


def test_defaults_are_transformers_defaults(images):
    ref, ours = transformers.SiglipImageProcessor(), SiglipImageProcessor()
    assert (ours.size, ours.resample, list(ours.image_mean), list(ours.image_std)) == \
           (dict(ref.size), ref.resample, list(ref.image_mean), list(ref.image_std))
    np.testing.assert_allclose(ours(images[:3], return_tensors="np")["pixel_values"],
                               ref(images[:3], return_tensors="np")["pixel_values"], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- the processor
@pytest.fixture(scope="module")
def checkpoint_dirs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("siglip_proc"))
    siglip = tok_tests.make_siglip_dir(root)
    _write_config(siglip, CONFIGS["siglip-224"])
    gemma = tok_tests.make_gemma_dirs(root)["json"]
    _write_config(gemma, CONFIGS["siglip2-256-bilinear"])
    return {"siglip": siglip, "siglip2": gemma}


TEXTS = ["a photo of a cat", "A PHOTO OF TWO DOGS!", "", "ein Foto einer Katze", "猫の写真 😀", "x " * 100]


def test_siglip_processor_matches_transformers(checkpoint_dirs, images):
    directory = checkpoint_dirs["siglip"]
    ref = transformers.SiglipProcessor.from_pretrained(directory)
    ours = SiglipProcessor.from_pretrained(directory)
    assert isinstance(ours.tokenizer, SiglipTokenizer) and ours.text_defaults == {}
    kwargs = dict(padding="max_length", truncation=True, max_length=64, return_tensors="np")
    a, b = ref(text=TEXTS, images=images[:3], **kwargs), ours(text=TEXTS, images=images[:3], **kwargs)
    assert set(a) == set(b) == {"input_ids", "pixel_values"} | ({"attention_mask"} & set(a))
    np.testing.assert_array_equal(b["input_ids"], a["input_ids"])
    np.testing.assert_allclose(b["pixel_values"], a["pixel_values"], rtol=0, atol=1e-6)


def test_siglip2_processor_text_defaults(checkpoint_dirs, images):
    """SigLIP 2 pads to 64 and truncates by default, as ``transformers.Siglip2Processor``."""
    directory = checkpoint_dirs["siglip2"]
    ref_tok = transformers.GemmaTokenizerFast.from_pretrained(directory)
    ref = transformers.Siglip2Processor(image_processor=transformers.SiglipImageProcessor.from_pretrained(directory),
                                        tokenizer=ref_tok)
    ours = SiglipProcessor.from_pretrained(directory)
    assert isinstance(ours.tokenizer, GemmaTokenizer)
    a, b = ref(text=TEXTS, return_tensors="np"), ours(text=TEXTS, return_tensors="np")
    assert b["input_ids"].shape == (len(TEXTS), 64)
    np.testing.assert_array_equal(b["input_ids"], a["input_ids"])
    np.testing.assert_array_equal(b["attention_mask"], a["attention_mask"])
    pixels = ours(images=images[:2], return_tensors="np")["pixel_values"]
    ref_pixels = transformers.SiglipImageProcessor.from_pretrained(directory)(images[:2], return_tensors="np")
    np.testing.assert_allclose(pixels, ref_pixels["pixel_values"], rtol=0, atol=1e-6)


def test_processor_needs_a_tokenizer():
    with pytest.raises(TypeError, match="needs a tokenizer"):
        SiglipProcessor(None)
