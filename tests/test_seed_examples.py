"""The code of the documentation clip-zoo's users follow, run on clip_torch, clip_tf and clip_flax.

The documents are transformers 4.57's CLIP model page (English and Korean), its older RST version
(``CLIPFeatureExtractor``), its expanded API reference, and OpenAI's CLIP README. Each example below
keeps the documented calls and changes only

- the imports: ``from transformers import X`` -> ``clip_core`` (configs, tokenizer, processors) and
  ``clip_torch`` / ``clip_tf`` / ``clip_flax`` (models: ``CLIPModel``, ``TFCLIPModel``, ``FlaxCLIPModel`` ...);
  ``import clip`` -> ``import clip_torch as clip`` (``clip_tf``, ``clip_flax``);
- what would be downloaded: the hub id ``openai/clip-vit-base-patch32`` resolves to a Hugging Face cache
  built here from the bundled default model (``$HF_HUB_CACHE/models--openai--clip-vit-base-patch32``);
  ``"ViT-B/32"`` to a ``ViT-B-32.pt`` written by ``conversion.save_checkpoint(format="openai")`` into a
  temporary ``~/.cache/clip`` (a tiny random model with OpenAI's head layout, so OpenAI's own
  ``build_model`` reads it too); the COCO photo, ``CLIP.png`` and CIFAR-100 are images drawn with PIL (the
  examples' ``requests.get(url).raw`` is a local stand-in, CIFAR100 a class with torchvision's interface).

The PyTorch-only code of the transformers pages is run for TF / Flax in the form transformers' TF / Flax
classes document (``return_tensors="tf"`` / ``"np"``, the framework's softmax); OpenAI's examples use torch
tensor methods (``.unsqueeze``, ``.to(device)``, ``torch.no_grad``), which the TF / Flax runs replace by their
framework's own. Every run is compared with the reference on the same weights — transformers 4.57's
PyTorch / TF / Flax classes, OpenAI's ``clip`` — at 1e-5 on L2-normalised embeddings and 1e-3 on logits.

Each example records an outcome per framework: ``works`` (runs as documented), ``differs`` (runs with the
stated change), ``impossible`` (cannot run here, why) or ``n/a`` (the documented API does not exist for that
framework in transformers either). With ``CLIP_ZOO_SEED_RESULTS=<file>`` the outcomes are written as JSON,
which ``scripts/migration_table.py`` renders into ``docs/migration.md``; the last test checks that the
document is what the outcomes render to.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import io
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
openai_clip = pytest.importorskip("clip")
tf = pytest.importorskip("tensorflow")
jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
from PIL import Image  # noqa: E402

import clip_core  # noqa: E402
import clip_flax  # noqa: E402
import clip_tf  # noqa: E402
import clip_torch  # noqa: E402
import conversion  # noqa: E402
from clip_core import shapes  # noqa: E402
from clip_core.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig  # noqa: E402
from clip_core.testing import random_weights  # noqa: E402
from tests.backend_harness import LOGIT_ATOL, assert_embeds_close, assert_outputs_close  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import migration_table  # noqa: E402

HUB_ID = "openai/clip-vit-base-patch32"
COCO_URL = "http://images.cocodataset.org/val2017/000000039769.jpg"
FRAMEWORKS = ("torch", "tf", "flax")
RESULTS_ENV = "CLIP_ZOO_SEED_RESULTS"

# The documents, as the migration table names them.
HF_EN = "transformers CLIP page (4.57, English)"
HF_KO = "transformers CLIP page (Korean)"
HF_RST = "transformers CLIP page (older RST version)"
HF_API = "transformers CLIP API reference"
OPENAI = "OpenAI CLIP README"

OUTCOMES: list[dict] = []
RAN: set = set()  # the test runs (node ids) that recorded outcomes


def record(doc: str, element: str, framework: str, status: str, equivalent: str = "", note: str = "") -> None:
    """One row cell of the migration table; ``status`` is works / differs / impossible / n/a."""
    assert status in migration_table.STATUSES, status
    entry = {"doc": doc, "element": element, "framework": framework, "status": status,
             "equivalent": equivalent, "note": note}
    OUTCOMES.append(entry)
    RAN.add(os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0])
    if not os.environ.get(RESULTS_ENV):  # each run checks its own rows against the committed outcomes
        assert entry in _committed_outcomes(), (
            f"outcome {entry} differs from docs/migration.json: regenerate it with {RESULTS_ENV}=docs/migration.json "
            f"pytest {Path(__file__).name} (no -n), then python scripts/migration_table.py docs/migration.json")


def _committed_outcomes() -> list[dict]:
    return json.loads((ROOT / "docs" / "migration.json").read_text(encoding="utf-8"))


def np_(x) -> np.ndarray:
    """Any framework's array as float64 numpy."""
    if torch.is_tensor(x):
        return x.detach().float().cpu().numpy().astype(np.float64)
    return np.asarray(x, dtype=np.float64)


def close(ours, ref, atol: float, what: str = "") -> None:
    np.testing.assert_allclose(np_(ours), np_(ref), rtol=0, atol=atol, err_msg=what)


# ============================================================================ namespaces
def ours(framework: str) -> SimpleNamespace:
    """What ``from transformers import ...`` becomes: clip_core for the framework-free classes and the
    backend for the models (under their transformers names, ``TFCLIPModel`` / ``FlaxCLIPModel`` included)."""
    backend = {"torch": clip_torch, "tf": clip_tf, "flax": clip_flax}[framework]
    names = {n: getattr(clip_core, n) for n in ("CLIPConfig", "CLIPTextConfig", "CLIPVisionConfig", "CLIPProcessor",
                                                "CLIPTokenizer", "CLIPTokenizerFast", "CLIPImageProcessor",
                                                "CLIPImageProcessorFast", "CLIPFeatureExtractor")}
    prefix = {"torch": "", "tf": "TF", "flax": "Flax"}[framework]
    for cls in ("CLIPModel", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModel",
                "CLIPVisionModelWithProjection", "CLIPForImageClassification"):
        names[prefix + cls] = getattr(backend, prefix + cls)
    return SimpleNamespace(**names)


class _FlaxReference:
    """transformers' Flax class loaded with ``_do_init=False``, its params bound and its calls jitted
    (its eager random init and op-by-op calls cost ~20 s of XLA compilations; the arithmetic is the same)."""

    def __init__(self, cls):
        self.cls = cls

    def from_pretrained(self, path, **kwargs):
        return _BoundFlax(*self.cls.from_pretrained(path, _do_init=False, **kwargs))


_FLAX_REF_JIT: dict = {}  # (class, config, method, static arguments) -> jitted call, shared by equal models


class _BoundFlax:
    def __init__(self, model, params):
        self.model, self.params, self.config = model, params, model.config

    def _run(self, method: str, kwargs: dict):
        arrays = {k: v for k, v in kwargs.items() if hasattr(v, "shape")}
        static = tuple(sorted((k, v) for k, v in kwargs.items() if k not in arrays))
        key = (type(self.model).__name__, self.config.to_json_string(), method, static)
        if key not in _FLAX_REF_JIT:
            fn = getattr(self.model, method)
            _FLAX_REF_JIT[key] = jax.jit(lambda params, arrays: fn(**arrays, **dict(static), params=params))
        return _FLAX_REF_JIT[key](self.params, {k: jnp.asarray(v) for k, v in arrays.items()})

    def __call__(self, **kwargs):
        return self._run("__call__", kwargs)

    def get_text_features(self, input_ids, **kwargs):
        return self._run("get_text_features", {"input_ids": input_ids, **kwargs})

    def get_image_features(self, pixel_values, **kwargs):
        return self._run("get_image_features", {"pixel_values": pixel_values, **kwargs})


def reference(framework: str) -> SimpleNamespace:
    """transformers itself (Flax classes through :class:`_FlaxReference`)."""
    if framework != "flax":
        return transformers
    names = {n: getattr(transformers, n) for n in dir(transformers) if n.startswith("CLIP")}
    for n in ("FlaxCLIPModel", "FlaxCLIPTextModel", "FlaxCLIPTextModelWithProjection", "FlaxCLIPVisionModel"):
        names[n] = _FlaxReference(getattr(transformers, n))
    return SimpleNamespace(**names)


# ============================================================================ local stand-ins for downloads
def coco_standin() -> Image.Image:
    """A 640x480 RGB photo-sized picture (an orange circle on a blended background) for the COCO image."""
    canvas = Image.new("RGB", (640, 480), (90, 120, 160))
    canvas.paste(shapes.render("orange", "circle", np.random.default_rng(7), size=400), (120, 40))
    return canvas


class _Response:
    """What ``requests.get(url, stream=True)`` returns, for ``Image.open(response.raw)``."""

    def __init__(self, data: bytes):
        self.raw = io.BytesIO(data)
        self.status_code = 200


class _OfflineRequests:
    """Stands in for the ``requests`` package the examples download the COCO photo with: ``get(url).raw`` is
    :func:`coco_standin` as PNG (``requests`` is not a dependency of the tests, and nothing is downloaded)."""

    @functools.cached_property
    def _png(self) -> bytes:
        buf = io.BytesIO()
        coco_standin().save(buf, format="PNG")
        return buf.getvalue()

    def get(self, url, *args, **kwargs):
        assert url == COCO_URL, f"unexpected download {url}"
        return _Response(self._png)


requests = _OfflineRequests()


@pytest.fixture
def offline(monkeypatch, openai_home, tmp_path):
    """OpenAI names resolve in a temporary ``~/.cache/clip``; the working directory holds ``CLIP.png``."""
    monkeypatch.setenv("HOME", str(openai_home))
    shapes.render("red", "triangle", np.random.default_rng(3), size=96).save(tmp_path / "CLIP.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cifar100_standin(test_size: int, train_size: int):
    """A class with ``torchvision.datasets.CIFAR100``'s interface over the generated coloured shapes
    (48 classes ``"red circle"`` ...): the dataset would be downloaded."""

    class CIFAR100:
        def __init__(self, root, download=False, train=True, transform=None):
            self.root, self.train, self.transform = root, train, transform
            self.classes = shapes.label_names()
            self.size = train_size if train else test_size

        def __len__(self):
            return self.size

        def __getitem__(self, index):
            if not 0 <= index < self.size:
                raise IndexError(index)
            label = (index * 7 + (0 if self.train else 3)) % len(self.classes)
            image = shapes.render_index(11 if self.train else 12, index, label, size=64)
            return (self.transform(image) if self.transform else image), label

    return CIFAR100


class LeastSquaresClassifier:
    """scikit-learn is not installed here: a least-squares fit on one-hot targets stands in for
    ``LogisticRegression`` with the same ``fit`` / ``predict`` calls (the example's clip part is unchanged)."""

    def __init__(self, random_state=0, C=1.0, max_iter=100, verbose=0):
        self.weights = None

    def fit(self, x, y):
        x1 = np.concatenate([x, np.ones((len(x), 1))], axis=1).astype(np.float64)
        self.classes_ = np.unique(y)
        targets = (y[:, None] == self.classes_[None]).astype(np.float64)
        self.weights = np.linalg.lstsq(x1, targets, rcond=None)[0]
        return self

    def predict(self, x):
        x1 = np.concatenate([x, np.ones((len(x), 1))], axis=1).astype(np.float64)
        return self.classes_[(x1 @ self.weights).argmax(axis=1)]


if importlib.util.find_spec("sklearn") is not None:  # an optional extra: not a declared test dependency
    LogisticRegression = importlib.import_module("sklearn.linear_model").LogisticRegression
else:
    LogisticRegression = LeastSquaresClassifier


# ============================================================================ checkpoints
@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """``$HF_HUB_CACHE`` with ``openai/clip-vit-base-patch32`` = the bundled default model (files copied),
    and float32 reference copies in transformers' own TF (``tf_model.h5``) and Flax (``flax_model.msgpack``)
    formats. Yields ``{"pt": snapshot, "tf": dir, "flax": dir}``."""
    root = tmp_path_factory.mktemp("hf_hub")
    repo = root / ("models--" + HUB_ID.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for f in clip_core.default_model_path().iterdir():
        if f.is_file():
            shutil.copy2(f, snapshot / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    config, weights = conversion.load_checkpoint(snapshot)
    weights = {k: v.astype(np.float32) for k, v in weights.items()}
    dirs = {"torch": snapshot}
    for fw, fmt in (("tf", "tf"), ("flax", "flax")):
        conversion.save_checkpoint(root / f"ref_{fw}", config, weights, format=fmt)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                     "merges.txt", "preprocessor_config.json"):
            shutil.copy2(snapshot / name, root / f"ref_{fw}" / name)
        dirs[fw] = root / f"ref_{fw}"
    saved = os.environ.get("HF_HUB_CACHE")
    os.environ["HF_HUB_CACHE"] = str(root)
    yield dirs
    if saved is None:
        os.environ.pop("HF_HUB_CACHE", None)
    else:
        os.environ["HF_HUB_CACHE"] = saved


def openai_config() -> CLIPConfig:
    """A tiny ViT CLIP with OpenAI's head layout (64-wide heads), so ``clip.model.build_model`` infers it."""
    text = CLIPTextConfig(hidden_size=128, intermediate_size=512, projection_dim=64, num_hidden_layers=2,
                          num_attention_heads=2)
    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=512, projection_dim=64, num_hidden_layers=2,
                              num_attention_heads=2, image_size=64, patch_size=16)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


@pytest.fixture(scope="module")
def openai_home(tmp_path_factory):
    """A home directory whose ``.cache/clip/ViT-B-32.pt`` is a random tiny model in OpenAI's format."""
    home = tmp_path_factory.mktemp("home")
    cfg = openai_config()
    # fp16-representable values: OpenAI's build_model rounds every weight through fp16 (convert_weights)
    weights = {k: v.astype(np.float16).astype(np.float32) for k, v in random_weights(cfg, seed=3).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conversion.save_checkpoint(home / ".cache" / "clip" / "ViT-B-32.pt", cfg, weights, format="openai")
    return home


@pytest.fixture(scope="module")
def openai_ref(openai_home):
    """OpenAI's own ``clip.load`` of the same file (by path: its name lookup would check the download's hash)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, preprocess = openai_clip.load(str(openai_home / ".cache" / "clip" / "ViT-B-32.pt"), device="cpu",
                                             jit=False)
    return model.eval(), preprocess


@pytest.fixture(scope="module")
def ref_model(hub):
    """transformers' CLIPModel (PyTorch, eager attention) on the bundled model's weights: the numeric reference
    of the checks that exercise clip-zoo's own calls (the examples run transformers' class of their framework)."""
    return transformers.CLIPModel.from_pretrained(hub["torch"], attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def our_models(hub):
    return {fw: getattr(ours(fw), {"torch": "", "tf": "TF", "flax": "Flax"}[fw] + "CLIPModel").from_pretrained(HUB_ID)
            for fw in FRAMEWORKS}


@pytest.fixture(scope="module")
def batch(hub):
    """The usage example's inputs from transformers' processor, as numpy."""
    processor = transformers.CLIPProcessor.from_pretrained(hub["torch"])
    out = processor(text=["a photo of a cat", "a photo of a dog"], images=coco_standin(), return_tensors="np",
                    padding=True)
    return {k: np.asarray(v) for k, v in out.items()}


def as_framework(arrays: dict, framework: str) -> dict:
    convert = {"torch": torch.from_numpy, "tf": tf.constant, "flax": jnp.asarray}[framework]
    return {k: convert(v) for k, v in arrays.items()}


# ============================================================================ the transformers usage example
def usage_example(T, name: str, framework: str) -> dict:
    """Processor + model -> image-text similarity and label probabilities (transformers' usage example)."""
    from PIL import Image

    model = getattr(T, {"torch": "", "tf": "TF", "flax": "Flax"}[framework] + "CLIPModel").from_pretrained(name)
    processor = T.CLIPProcessor.from_pretrained(name)
    url = COCO_URL
    image = Image.open(requests.get(url, stream=True).raw)
    if framework == "torch":
        inputs = processor(text=["a photo of a cat", "a photo of a dog"], images=image, return_tensors="pt",
                           padding=True)
        outputs = model(**inputs)
        logits_per_image = outputs.logits_per_image  # this is the image-text similarity score
        probs = logits_per_image.softmax(dim=1)  # we can take the softmax to get the label probabilities
    elif framework == "tf":
        inputs = processor(text=["a photo of a cat", "a photo of a dog"], images=image, return_tensors="tf",
                           padding=True)
        outputs = model(**inputs)
        logits_per_image = outputs.logits_per_image
        probs = tf.nn.softmax(logits_per_image, axis=1)
    else:
        inputs = processor(text=["a photo of a cat", "a photo of a dog"], images=image, return_tensors="np",
                           padding=True)
        outputs = model(**inputs)
        logits_per_image = outputs.logits_per_image
        probs = jax.nn.softmax(logits_per_image, axis=1)
    return {"logits_per_image": logits_per_image, "probs": probs, "text_embeds": outputs.text_embeds,
            "image_embeds": outputs.image_embeds, "pixel_values": inputs["pixel_values"],
            "input_ids": inputs["input_ids"]}


def check_same(a: dict, b: dict) -> None:
    for key in a:
        if key.endswith("embeds"):
            assert_embeds_close(np_(a[key]), np_(b[key]))
        else:
            close(a[key], b[key], LOGIT_ATOL if key != "probs" else 1e-5, key)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_usage_example(framework, hub, offline):
    a = usage_example(ours(framework), HUB_ID, framework)
    b = usage_example(reference(framework), str(hub[framework]), framework)
    check_same(a, b)
    form = {"torch": "", "tf": " (TF form: `return_tensors=\"tf\"`, `tf.nn.softmax`)",
            "flax": " (Flax form: `return_tensors=\"np\"`, `jax.nn.softmax`)"}[framework]
    for doc in (HF_EN, HF_KO, HF_API):
        record(doc, "Usage example: `CLIPProcessor` + `CLIPModel`, `logits_per_image.softmax`", framework, "works",
               f"`{ours_prefix(framework)}CLIPModel`, `clip_core.CLIPProcessor`", "same probabilities" + form)


def ours_prefix(framework: str) -> str:
    return {"torch": "clip_torch.", "tf": "clip_tf.TF", "flax": "clip_flax.Flax"}[framework]


# ============================================================================ the RST-era example
def legacy_example(T, directory: str, framework: str) -> dict:
    """``CLIPFeatureExtractor`` + ``CLIPTokenizer`` + ``model(**text_inputs, **image_inputs)``."""
    from PIL import Image

    model = getattr(T, {"torch": "", "tf": "TF", "flax": "Flax"}[framework] + "CLIPModel").from_pretrained(directory)
    tokenizer = T.CLIPTokenizer.from_pretrained(directory + "/")
    feature_extractor = T.CLIPFeatureExtractor.from_pretrained(directory + "/")

    def prepare_img():
        url = COCO_URL
        im = Image.open(requests.get(url, stream=True).raw)
        return im

    image = prepare_img()
    tensors = {"torch": "pt", "tf": "tf", "flax": "np"}[framework]
    image_inputs = feature_extractor(image, return_tensors=tensors)
    text_inputs = tokenizer(["a photo of a cat", "a photo of a dog"], padding=True, return_tensors=tensors)
    outputs = model(**text_inputs, **image_inputs)
    logits_per_image = outputs.logits_per_image
    return {"logits_per_image": logits_per_image, "text_embeds": outputs.text_embeds,
            "image_embeds": outputs.image_embeds}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_legacy_feature_extractor_example(framework, hub, offline, tmp_path):
    local = tmp_path / "hf_model_v2"  # the example's local directory
    shutil.copytree(hub["torch"], local)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers: CLIPFeatureExtractor is deprecated
        a = legacy_example(ours(framework), str(local), framework)
        b = legacy_example(reference(framework), str(hub[framework]), framework)
    check_same(a, b)
    record(HF_RST, "Usage example: `CLIPFeatureExtractor` + `CLIPTokenizer`, `model(**text_inputs, **image_inputs)`",
           framework, "works", "`clip_core.CLIPFeatureExtractor`, `clip_core.CLIPTokenizer`",
           "" if framework == "torch" else "return_tensors of the framework")


# ============================================================================ Flash Attention 2 / SDPA (PyTorch)
def flash_attention_example(T, name: str, device: str, attn_implementation: str, device_map,
                            torch_dtype=torch.float16, autocast: bool = True) -> dict:
    import contextlib
    import torch

    kwargs = {} if device_map is None else {"device_map": device_map}
    model = T.CLIPModel.from_pretrained(name, attn_implementation=attn_implementation, torch_dtype=torch_dtype,
                                        **kwargs)
    processor = T.CLIPProcessor.from_pretrained(name)
    url = COCO_URL
    image = Image.open(requests.get(url, stream=True).raw)
    inputs = processor(text=["a photo of a cat", "a photo of a dog"], images=image, return_tensors="pt", padding=True)
    inputs.to(device)
    with torch.no_grad():
        with torch.autocast(device) if autocast else contextlib.nullcontext():
            outputs = model(**inputs)
    logits_per_image = outputs.logits_per_image  # this is the image-text similarity score
    probs = logits_per_image.softmax(dim=1)  # we can take the softmax to get the label probabilities
    return {"probs": probs, "logits_per_image": logits_per_image}


def test_flash_attention_example(hub, offline):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the example's CPU-machine outcome is what is recorded")
    # As written (device "cuda", flash_attention_2): transformers 4.57 refuses too (its CLIPModel does not
    # support Flash Attention 2; its device_map needs accelerate); ours says why, in transformers' words.
    with pytest.raises((ImportError, ValueError)):
        flash_attention_example(transformers, str(hub["torch"]), "cuda", "flash_attention_2", "cuda")
    with pytest.raises((ImportError, ValueError), match="FlashAttention2 has been toggled on"):
        flash_attention_example(ours("torch"), HUB_ID, "cuda", "flash_attention_2", "cuda")
    # The rest of the example on this CPU machine: device "cpu" (device_map="cpu" for ours; transformers'
    # needs accelerate for any device_map), SDPA, fp16 weights under CPU autocast. transformers 4.57 cannot
    # run fp16 weights under CPU autocast (torch.cat of its class and patch embeddings fails), so the
    # reference runs float32 without autocast.
    a = flash_attention_example(ours("torch"), HUB_ID, "cpu", "sdpa", "cpu")
    with pytest.raises(RuntimeError, match="autocast"):
        flash_attention_example(transformers, str(hub["torch"]), "cpu", "sdpa", None)
    b = flash_attention_example(transformers, str(hub["torch"]), "cpu", "sdpa", None, torch.float32, False)
    close(a["probs"], b["probs"], 2e-2, "probs (fp16 / autocast)")
    note = ("needs a CUDA GPU and the flash-attn package; without them clip_torch raises transformers' error "
            "(ImportError: flash_attn not installed / ValueError: not available on CPU; transformers 4.57 itself "
            "refuses Flash Attention 2 for CLIPModel). With both it runs torch SDPA (flash kernels on CUDA). "
            "With device=\"cpu\" the rest of the example runs (fp16 under CPU autocast, which transformers 4.57 "
            "fails on) and matches transformers' float32 result")
    record(HF_EN, "Flash Attention 2: `from_pretrained(..., attn_implementation=\"flash_attention_2\", "
                  "device_map=device, torch_dtype=torch.float16)`", "torch", "impossible", "", note)
    record(HF_KO, "Flash Attention 2 example", "torch", "impossible", "", note)
    for fw in ("tf", "flax"):
        for doc in (HF_EN, HF_KO):
            record(doc, "Flash Attention 2 example" if doc == HF_KO else
                   "Flash Attention 2: `from_pretrained(..., attn_implementation=\"flash_attention_2\", "
                   "device_map=device, torch_dtype=torch.float16)`", fw, "n/a", "", "PyTorch-only in transformers")
    record(HF_EN, "`BatchFeature.to(device)` (`inputs.to(device)`)", "torch", "works", "`clip_core.BatchFeature.to`")
    for fw in ("tf", "flax"):
        record(HF_EN, "`BatchFeature.to(device)` (`inputs.to(device)`)", fw, "n/a", "",
               "moves torch tensors only, in transformers too")


def test_sdpa_example(hub, offline, batch):
    model = ours("torch").CLIPModel.from_pretrained(HUB_ID, torch_dtype=torch.float16, attn_implementation="sdpa")
    ref = transformers.CLIPModel.from_pretrained(hub["torch"], torch_dtype=torch.float16,
                                                 attn_implementation="sdpa").eval()
    assert model.dtype == ref.dtype == torch.float16
    inputs = as_framework(batch, "torch")
    with torch.no_grad():
        a, b = model(**inputs), ref(**inputs)
    close(a.text_embeds, b.text_embeds, 5e-3, "fp16 text_embeds")
    close(a.image_embeds, b.image_embeds, 5e-3, "fp16 image_embeds")
    for doc in (HF_EN, HF_KO):
        record(doc, "SDPA: `from_pretrained(..., torch_dtype=torch.float16, attn_implementation=\"sdpa\")`", "torch",
               "works", "`clip_torch.CLIPModel.from_pretrained`", "SDPA is the default here too; fp16 matches")
        for fw in ("tf", "flax"):
            record(doc, "SDPA: `from_pretrained(..., torch_dtype=torch.float16, attn_implementation=\"sdpa\")`", fw,
                   "n/a", "", "PyTorch-only in transformers")


# ============================================================================ configs (API reference examples)
def config_example(T, framework: str):
    prefix = {"torch": "", "tf": "TF", "flax": "Flax"}[framework]
    configuration = T.CLIPConfig()
    model = getattr(T, prefix + "CLIPModel")(configuration)
    configuration = model.config
    config_text = T.CLIPTextConfig()
    config_vision = T.CLIPVisionConfig()
    config = T.CLIPConfig.from_text_vision_configs(config_text, config_vision)
    text_model = getattr(T, prefix + "CLIPTextModel")(T.CLIPTextConfig())
    vision_model = getattr(T, prefix + "CLIPVisionModel")(T.CLIPVisionConfig())
    return configuration, config, (model, text_model, vision_model)


def _sizes(model) -> int:
    if isinstance(model, torch.nn.Module):
        return sum(p.numel() for p in model.parameters())
    if hasattr(model, "count_params"):
        return int(model.count_params())
    return model.num_parameters()


@pytest.fixture(scope="module")
def reference_sizes():
    """Parameter counts of transformers' (PyTorch) ViT-B/32-sized classes, built on the meta device."""
    with torch.device("meta"):
        return [_sizes(transformers.CLIPModel(transformers.CLIPConfig())),
                _sizes(transformers.CLIPTextModel(transformers.CLIPTextConfig())),
                _sizes(transformers.CLIPVisionModel(transformers.CLIPVisionConfig()))]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_config_examples(framework, reference_sizes):
    configuration, config, models = config_example(ours(framework), framework)
    ref = transformers.CLIPConfig.from_text_vision_configs(transformers.CLIPTextConfig(), transformers.CLIPVisionConfig())
    for ours_cfg in (configuration, config):
        for tower in ("text_config", "vision_config"):
            mine, theirs = getattr(ours_cfg, tower).to_dict(), getattr(ref, tower).to_dict()
            assert {k: mine[k] for k in mine if k in theirs and k not in ("transformers_version", "dtype")} == \
                   {k: theirs[k] for k in mine if k in theirs and k not in ("transformers_version", "dtype")}
        assert ours_cfg.projection_dim == ref.projection_dim
        assert abs(ours_cfg.logit_scale_init_value - ref.logit_scale_init_value) < 1e-9
    assert [_sizes(m) for m in models] == reference_sizes
    equivalent = f"`clip_core.CLIPConfig`, `{ours_prefix(framework)}CLIPModel(configuration)`"
    record(HF_API, "`CLIPConfig()`, `CLIPModel(configuration)`, `CLIPConfig.from_text_vision_configs`", framework,
           "works", equivalent, "random weights by transformers' init rules; same parameter count")
    record(HF_API, "`CLIPTextConfig()`, `CLIPTextModel(configuration)`", framework, "works",
           f"`{ours_prefix(framework)}CLIPTextModel`")
    record(HF_API, "`CLIPVisionConfig()`, `CLIPVisionModel(configuration)`", framework, "works",
           f"`{ours_prefix(framework)}CLIPVisionModel`")


# ============================================================================ API reference: model classes
TOWERS = ("CLIPModel", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModel",
          "CLIPVisionModelWithProjection", "CLIPForImageClassification")
HF_HAS = {"torch": set(TOWERS), "tf": {"CLIPModel", "CLIPTextModel", "CLIPVisionModel"},
          "flax": {"CLIPModel", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModel"}}
PREFIX = {"torch": "", "tf": "TF", "flax": "Flax"}
CALL = {"torch": "forward", "tf": "call", "flax": "__call__"}


@pytest.fixture(scope="module")
def classifier_dir(hub, tmp_path_factory):
    """A 3-label classification checkpoint written by transformers (fresh head on the bundled model)."""
    path = tmp_path_factory.mktemp("classifier")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.CLIPForImageClassification.from_pretrained(hub["torch"], num_labels=3).save_pretrained(path)
    return path


def _tower_inputs(name: str, batch: dict) -> dict:
    if name == "CLIPModel":
        return dict(batch)
    if "Text" in name:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    return {"pixel_values": batch["pixel_values"]}


def _ref_tower(framework: str, name: str, hub, classifier_dir):
    """transformers' class of that framework when it exists (Flax: its PyTorch class too — each of its Flax
    classes costs seconds of XLA compilation, and the usage examples already run them), else its PyTorch class."""
    ref_fw = framework if name in HF_HAS[framework] and framework != "flax" else "torch"
    path = classifier_dir if name == "CLIPForImageClassification" else hub[ref_fw]
    eager = {"attn_implementation": "eager"}  # transformers' SDPA returns no attention weights
    if ref_fw == "torch":
        return "torch", getattr(transformers, name).from_pretrained(path, **eager).eval()
    cls = getattr(reference(framework), PREFIX[framework] + name)
    model = cls.from_pretrained(str(path), **(eager if framework == "torch" else {}))
    return framework, (model.eval() if framework == "torch" else model)


@pytest.mark.parametrize("name", TOWERS)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_model_classes(framework, name, hub, classifier_dir, batch):
    """``from_pretrained`` and the call of every class, with ``output_attentions`` / ``output_hidden_states``,
    ``return_dict=False``."""
    cls = getattr(ours(framework), PREFIX[framework] + name)
    model = cls.from_pretrained(classifier_dir if name == "CLIPForImageClassification" else HUB_ID)
    ref_fw, ref = _ref_tower(framework, name, hub, classifier_dir)
    kw = _tower_inputs(name, batch)
    flags = dict(output_attentions=True, output_hidden_states=True)
    with torch.no_grad():
        a = model(**as_framework(kw, framework), **flags)
        b = ref(**as_framework(kw, ref_fw), **flags)
        names = assert_outputs_close(a, b, to_numpy=np_)
        assert any("attentions" in n for n in names) and any("hidden_states" in n for n in names)
        if name in ("CLIPModel", "CLIPTextModel"):  # return_dict=False: transformers' tuple
            a_tuple = model(**as_framework(kw, framework), **flags, return_dict=False)
            b_tuple = ref(**as_framework(kw, ref_fw), **flags, return_dict=False)
            assert isinstance(a_tuple, tuple)
            assert_outputs_close(a_tuple, b_tuple, to_numpy=np_, atol_all=LOGIT_ATOL)
            record(HF_API, "`return_dict=False` (a tuple in transformers' order)", framework, "works", "",
                   "the same tuple, nested outputs as tuples" + (
                       " (compared with transformers' PyTorch tuple)" if ref_fw != framework else ""))
    element = f"`{name}` / `TF{name}` / `Flax{name}`: `from_pretrained`, `forward` / `call` / `__call__`"
    if name not in HF_HAS[framework]:
        record(HF_API, element, framework, "works", f"`{ours_prefix(framework)}{name}`",
               "an addition (transformers has no such class for this framework); matches its PyTorch class")
    else:
        record(HF_API, element, framework, "works", f"`{ours_prefix(framework)}{name}`", "every output field" + (
            " (compared with transformers' PyTorch class)" if ref_fw != framework else ""))
    if name == "CLIPModel":
        record(HF_API, "`output_attentions` / `output_hidden_states`", framework, "works", "",
               "every layer's attentions and hidden states match" + (
                   "; attention weights are returned under SDPA too (transformers returns None there unless "
                   "attn_implementation=\"eager\")" if framework == "torch" else ""))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_features(framework, our_models, ref_model, batch):
    """``get_text_features`` / ``get_image_features`` with each framework's documented keyword arguments."""
    model, x = our_models[framework], as_framework(batch, framework)
    text = {"input_ids": x["input_ids"], "attention_mask": x["attention_mask"]}
    if framework == "torch":
        with torch.no_grad():
            a_t = model.get_text_features(**text, position_ids=None)
            a_i = model.get_image_features(pixel_values=x["pixel_values"], interpolate_pos_encoding=False)
        documented = "`input_ids`, `attention_mask`, `position_ids`; `pixel_values`, `interpolate_pos_encoding`"
    elif framework == "tf":
        kw = dict(output_attentions=False, output_hidden_states=False, return_dict=True, training=False)
        a_t = model.get_text_features(**text, **kw)
        a_i = model.get_image_features(pixel_values=x["pixel_values"], **kw)
        documented = "`output_attentions`, `output_hidden_states`, `return_dict`, `training`"
    else:
        a_t = model.get_text_features(**text, params=model.params, dropout_rng=None, train=False)
        a_i = model.get_image_features(x["pixel_values"], params=model.params, dropout_rng=None, train=False)
        documented = "`params`, `dropout_rng`, `train`"
    pt = as_framework(batch, "torch")
    with torch.no_grad():
        b_t = ref_model.get_text_features(input_ids=pt["input_ids"], attention_mask=pt["attention_mask"])
        b_i = ref_model.get_image_features(pixel_values=pt["pixel_values"])
    assert_embeds_close(np_(a_t), np_(b_t))
    assert_embeds_close(np_(a_i), np_(b_i))
    record(HF_API, "`get_text_features` / `get_image_features` (documented keyword arguments)", framework, "works",
           f"`{ours_prefix(framework)}CLIPModel.get_text_features`", documented)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_classifier_num_labels(framework, hub, tmp_path, batch):
    """``CLIPForImageClassification.from_pretrained(clip_checkpoint, num_labels=5)``: a new 5-label head (as
    transformers, with its warning), saved and loaded back unchanged."""
    cls = getattr(ours(framework), PREFIX[framework] + "CLIPForImageClassification")
    with pytest.warns(UserWarning, match="newly initialized"):
        model = cls.from_pretrained(HUB_ID, num_labels=5)
    pix = as_framework({"pixel_values": batch["pixel_values"]}, framework)
    with torch.no_grad():
        logits = np_(model(**pix).logits)
    assert logits.shape == (1, 5) and model.config.num_labels == 5
    model.save_pretrained(tmp_path / "cls5")
    again = cls.from_pretrained(tmp_path / "cls5")
    with torch.no_grad():
        close(again(**pix).logits, logits, 1e-6, "reloaded classifier")
    with pytest.raises(ValueError, match="ignore_mismatched_sizes"):
        cls.from_pretrained(tmp_path / "cls5", num_labels=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = transformers.CLIPForImageClassification.from_pretrained(hub["torch"], num_labels=5)
        assert tuple(ref.classifier.weight.shape) == (5, model.config.vision_config.hidden_size)
        transformers.CLIPForImageClassification.from_pretrained(hub["torch"])  # a 2-label head, initialised
    with pytest.raises(ValueError, match="classifier.weight"):
        cls.from_pretrained(HUB_ID)  # no head in the checkpoint and none asked for
    addition = "" if framework == "torch" else " (transformers has this class in PyTorch only)"
    record(HF_API, "`CLIPForImageClassification.from_pretrained(checkpoint, num_labels=...)`", framework, "works",
           f"`{ours_prefix(framework)}CLIPForImageClassification`",
           "a new head, initialised as transformers does, with its warning; saved and reloaded unchanged" + addition)
    record(HF_API, "`CLIPForImageClassification.from_pretrained(checkpoint)` of a checkpoint without a head",
           framework, "differs", "", "raises `WeightMismatchError` naming `classifier.weight`: pass `num_labels` for a "
           "new head (transformers initialises a 2-label head with a warning)")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_processor_return_tensors(framework, hub):
    kind = {"torch": "pt", "tf": "tf", "flax": "jax"}[framework]
    expected = {"torch": torch.Tensor, "tf": tf.Tensor, "flax": jax.Array}[framework]
    processor = clip_core.CLIPProcessor.from_pretrained(HUB_ID)
    ref = transformers.CLIPProcessor.from_pretrained(hub["torch"])
    texts, image = ["a photo of a cat", "a photo of a dog"], coco_standin()
    a = processor(text=texts, images=image, return_tensors=kind, padding=True)
    b = ref(text=texts, images=image, return_tensors=kind, padding=True)
    assert sorted(a) == sorted(b)
    for key in a:
        assert isinstance(a[key], expected), (key, type(a[key]))
        close(a[key], b[key], 1e-5, key)
    record(HF_EN, "`processor(text=..., images=..., return_tensors=...)`", framework, "works",
           "`clip_core.CLIPProcessor`", f"return_tensors=\"{kind}\"")


def test_tokenizer_and_processor_api(hub, tmp_path):
    """The framework-free classes and methods the API reference lists (the same objects in every framework)."""
    ours_tok, ref_tok = clip_core.CLIPTokenizer.from_pretrained(HUB_ID), transformers.CLIPTokenizer.from_pretrained(
        hub["torch"])
    ids0, ids1 = ours_tok.encode("a photo", add_special_tokens=False), ours_tok.encode("of a cat", add_special_tokens=False)
    for method in ("build_inputs_with_special_tokens", "get_special_tokens_mask", "create_token_type_ids_from_sequences"):
        assert getattr(ours_tok, method)(ids0) == getattr(ref_tok, method)(ids0), method
        assert getattr(ours_tok, method)(ids0, ids1) == getattr(ref_tok, method)(ids0, ids1), method
    (tmp_path / "ours").mkdir(), (tmp_path / "ref").mkdir()
    saved = ours_tok.save_vocabulary(str(tmp_path / "ours"))
    assert sorted(Path(p).name for p in saved) == sorted(Path(p).name for p in ref_tok.save_vocabulary(
        str(tmp_path / "ref")))
    fast = clip_core.CLIPTokenizerFast.from_pretrained(HUB_ID)
    texts = ["a photo of a cat", "A DOG!!  on the   beach"]
    assert dict(fast(texts, padding=True)) == dict(transformers.CLIPTokenizerFast.from_pretrained(hub["torch"])(
        texts, padding=True))
    image = coco_standin()
    slow = transformers.CLIPImageProcessor.from_pretrained(hub["torch"]).preprocess(image, return_tensors="np")
    fast = transformers.CLIPImageProcessorFast.from_pretrained(hub["torch"]).preprocess(image, return_tensors="pt")
    for name in ("CLIPImageProcessor", "CLIPImageProcessorFast", "CLIPFeatureExtractor"):
        mine = getattr(clip_core, name).from_pretrained(hub["torch"]).preprocess(image, return_tensors="np")
        close(mine["pixel_values"], slow["pixel_values"], 1e-5, name)
    close(mine["pixel_values"], fast["pixel_values"], 0.02, "transformers' torchvision-based fast processor")
    try:  # a hub id (or "default") instead of a directory
        clip_core.CLIPImageProcessor.from_pretrained(HUB_ID)
        record(HF_API, "`CLIPImageProcessor.from_pretrained(hub id)`", "core", "works", "`clip_core.CLIPImageProcessor`")
    except FileNotFoundError:
        record(HF_API, "`CLIPImageProcessor.from_pretrained(hub id)`", "core", "differs",
               "`clip_core.CLIPImageProcessor`", "takes a directory: a Hugging Face id or \"default\" is not resolved "
               "there (`CLIPProcessor.from_pretrained` and `CLIPTokenizer.from_pretrained` resolve them)")
    for fw in ("core",):
        record(HF_API, "`CLIPTokenizer`: `build_inputs_with_special_tokens`, `get_special_tokens_mask`, "
               "`create_token_type_ids_from_sequences`, `save_vocabulary`", fw, "works", "`clip_core.CLIPTokenizer`")
        record(HF_API, "`CLIPTokenizerFast`", fw, "works", "`clip_core.CLIPTokenizerFast`")
        record(HF_API, "`CLIPImageProcessor.preprocess`, `CLIPFeatureExtractor`", fw, "works",
               "`clip_core.CLIPImageProcessor`")
        record(HF_API, "`CLIPImageProcessorFast.preprocess`", fw, "differs", "`clip_core.CLIPImageProcessorFast`",
               "the same pixels as transformers' (slow) CLIPImageProcessor; transformers' torchvision-based fast "
               "processor differs from its own slow one by up to 0.015 (resize rounding)")
        record(HF_API, "`CLIPProcessor.from_pretrained`", fw, "works", "`clip_core.CLIPProcessor`",
               "directory, `\"default\"` or a Hugging Face id in the local cache")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_loader_arguments(framework, hub, batch, our_models):
    """transformers' loader arguments users pass: ``from_pt`` (TF / Flax), Flax's constructor and
    ``_do_init=False``, ``device_map`` (PyTorch)."""
    x = as_framework(batch, framework)
    want = np_(our_models[framework](**x).logits_per_image) if framework != "torch" else None
    if framework == "torch":
        for device_map in ("cpu", "auto"):
            model = clip_torch.CLIPModel.from_pretrained(HUB_ID, device_map=device_map)
            assert model.device.type == "cpu"
        record(HF_EN, "`from_pretrained(..., device_map=...)`", framework, "works", "",
               "one device (\"cpu\", \"cuda\", \"auto\"); transformers needs the accelerate package for any device_map")
        record(HF_API, "`from_pretrained(..., from_tf=... / from_flax=... / from_pt=...)`", framework, "works", "",
               "accepted: every format is read")
        return
    record(HF_EN, "`from_pretrained(..., device_map=...)`", framework, "n/a", "", "PyTorch-only in transformers")
    cls = getattr(ours(framework), PREFIX[framework] + "CLIPModel")
    model = cls.from_pretrained(HUB_ID, from_pt=True)
    close(model(**x).logits_per_image, want, LOGIT_ATOL)
    record(HF_API, "`from_pretrained(..., from_tf=... / from_flax=... / from_pt=...)`", framework, "works", "",
           "accepted: every format is read")
    if framework == "flax":
        model, params = cls.from_pretrained(HUB_ID, _do_init=False)
        close(model(**x, params=params).logits_per_image, want, LOGIT_ATOL)
        fresh = cls(model.config, input_shape=None, seed=0, dtype=jnp.float32, _do_init=True)
        assert jax.tree_util.tree_structure(fresh.params) == jax.tree_util.tree_structure(params)
        record(HF_API, "`FlaxCLIPModel(config, input_shape=..., seed=..., dtype=..., _do_init=...)`, "
               "`from_pretrained(..., _do_init=False)` -> `(model, params)`", framework, "works")
    else:
        record(HF_API, "`FlaxCLIPModel(config, input_shape=..., seed=..., dtype=..., _do_init=...)`, "
               "`from_pretrained(..., _do_init=False)` -> `(model, params)`", framework, "n/a", "", "Flax-only")
    if framework == "tf":
        record(HF_API, "`FlaxCLIPModel(config, input_shape=..., seed=..., dtype=..., _do_init=...)`, "
               "`from_pretrained(..., _do_init=False)` -> `(model, params)`", "torch", "n/a", "", "Flax-only")


# ============================================================================ OpenAI's README
def openai_usage(clip, framework: str) -> dict:
    """README "Usage": ``clip.load``, ``preprocess``, ``clip.tokenize``, ``encode_image`` / ``encode_text``,
    ``model(image, text)``."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, preprocess = clip.load("ViT-B/32", device=device)
    if framework == "torch":
        image = preprocess(Image.open("CLIP.png")).unsqueeze(0).to(device)
        text = clip.tokenize(["a diagram", "a dog", "a cat"]).to(device)
        with torch.no_grad():
            image_features = model.encode_image(image)
            text_features = model.encode_text(text)
            logits_per_image, logits_per_text = model(image, text)
            probs = logits_per_image.softmax(dim=-1).cpu().numpy()
    elif framework == "tf":
        image = preprocess(Image.open("CLIP.png"))[None]
        text = clip.tokenize(["a diagram", "a dog", "a cat"])
        image_features = model.encode_image(image)
        text_features = model.encode_text(text)
        logits_per_image, logits_per_text = model(image, text)
        probs = tf.nn.softmax(logits_per_image, axis=-1).numpy()
    else:
        image = preprocess(Image.open("CLIP.png"))[None]
        text = clip.tokenize(["a diagram", "a dog", "a cat"])
        image_features = model.encode_image(image)
        text_features = model.encode_text(text)
        logits_per_image, logits_per_text = model(image, text)
        probs = np.asarray(jax.nn.softmax(logits_per_image, axis=-1))
    return {"image_features": image_features, "text_features": text_features, "logits_per_image": logits_per_image,
            "logits_per_text": logits_per_text, "probs": probs, "text": text}


BACKENDS = {"torch": clip_torch, "tf": clip_tf, "flax": clip_flax}
TENSOR_OPS = {"tf": "TensorFlow's tensor operations (`preprocess(img)[None]`, `tf.nn.softmax`; no `.to(device)`, "
                    "no `torch.no_grad`)",
              "flax": "JAX's array operations (`preprocess(img)[None]`, `jax.nn.softmax`; no `.to(device)`, "
                      "no `torch.no_grad`)"}


@pytest.fixture(scope="module")
def openai_reference_usage(openai_ref, openai_home, tmp_path_factory):
    model, preprocess = openai_ref
    where = tmp_path_factory.mktemp("openai_ref")
    shapes.render("red", "triangle", np.random.default_rng(3), size=96).save(where / "CLIP.png")
    ns = _openai_namespace(openai_ref)
    cwd = os.getcwd()
    os.chdir(where)
    try:
        return openai_usage(ns, "torch")
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_openai_usage(framework, offline, openai_reference_usage):
    clip = BACKENDS[framework]  # import clip_<framework> as clip
    a, b = openai_usage(clip, framework), openai_reference_usage
    assert_embeds_close(np_(a["image_features"]), np_(b["image_features"]))
    assert_embeds_close(np_(a["text_features"]), np_(b["text_features"]))
    for key in ("logits_per_image", "logits_per_text"):
        close(a[key], b[key], LOGIT_ATOL, key)
    close(a["probs"], b["probs"], 1e-5, "probs")
    np.testing.assert_array_equal(np_(a["text"]), np_(b["text"]))
    status, note = ("works", "") if framework == "torch" else ("differs", TENSOR_OPS[framework])
    record(OPENAI, "Usage example (`clip.load`, `preprocess`, `clip.tokenize`, `encode_image`, `encode_text`, "
           "`model(image, text)`)", framework, status, f"`import {BACKENDS[framework].__name__} as clip`", note)
    record(OPENAI, "`model.encode_image(image)` / `model.encode_text(text)`", framework, "works",
           f"`{BACKENDS[framework].__name__}.CLIPModel.encode_image`", "same features")
    record(OPENAI, "`model(image, text)` -> `(logits_per_image, logits_per_text)`", framework, "works",
           f"`{BACKENDS[framework].__name__}.CLIPModel.__call__`")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_openai_api(framework, offline, openai_home, openai_ref):
    clip = BACKENDS[framework]
    assert clip.available_models() == openai_clip.available_models()
    record(OPENAI, "`clip.available_models()`", framework, "works", f"`{clip.__name__}.available_models`")
    texts = ["a diagram", "a dog", "a cat " * 80]
    with pytest.raises(RuntimeError):
        openai_clip.tokenize(texts, context_length=77)
    ours_ids = clip.tokenize(texts[:2], context_length=77)
    ref_ids = openai_clip.tokenize(texts[:2], context_length=77)
    np.testing.assert_array_equal(np_(ours_ids), np_(ref_ids))
    np.testing.assert_array_equal(np_(clip.tokenize(texts, truncate=True)), np_(openai_clip.tokenize(texts, truncate=True)))
    with pytest.raises(RuntimeError):
        clip.tokenize(texts)
    if framework == "torch":
        assert ours_ids.dtype == ref_ids.dtype
        record(OPENAI, "`clip.tokenize(text, context_length=77)`", framework, "works", "`clip_torch.tokenize`",
               "same ids and dtype (int64)")
    else:
        record(OPENAI, "`clip.tokenize(text, context_length=77)`", framework, "differs", f"`{clip.__name__}.tokenize`",
               "same ids, as an int32 " + ("`tf.Tensor`" if framework == "tf" else "jax array") + " (not a torch "
               "LongTensor)")
    file = openai_home / ".cache" / "clip" / "ViT-B-32.pt"
    loaded = [clip.load("ViT-B/32", device="cpu", jit=False), clip.load(str(file), "cpu")]
    with pytest.warns(UserWarning, match="jit"):
        loaded.append(clip.load("ViT-B/32", device="cpu", jit=True, download_root=str(file.parent)))
    ref_model, _ = openai_ref
    pix = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = ref_model.encode_image(torch.from_numpy(pix)).numpy()
        for model, preprocess in loaded:
            x = {"torch": torch.from_numpy, "tf": tf.constant, "flax": jnp.asarray}[framework](pix)
            assert_embeds_close(np_(model.encode_image(x)), want)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        clip.load("ViT-L/14", device="cpu")
    record(OPENAI, "`clip.load(name, device=..., jit=False)` (name or local path; `download_root`)", framework,
           "works" if framework == "torch" else "differs", f"`{clip.__name__}.load`",
           "an OpenAI name needs its file in `~/.cache/clip` (or `download_root`): nothing is downloaded; `jit=True` "
           "warns and returns the eager model" + ("" if framework == "torch" else
                                                  "; `device` is accepted, the framework places the computation"))


def zero_shot(clip, framework: str, CIFAR100) -> tuple:
    """README "Zero-Shot Prediction"."""
    import os
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, preprocess = clip.load('ViT-B/32', device)
    cifar100 = CIFAR100(root=os.path.expanduser("~/.cache"), download=True, train=False)
    image, class_id = cifar100[3637]
    if framework == "torch":
        image_input = preprocess(image).unsqueeze(0).to(device)
        text_inputs = torch.cat([clip.tokenize(f"a photo of a {c}") for c in cifar100.classes]).to(device)
        with torch.no_grad():
            image_features = model.encode_image(image_input)
            text_features = model.encode_text(text_inputs)
        image_features /= image_features.norm(dim=-1, keepdim=True)
        text_features /= text_features.norm(dim=-1, keepdim=True)
        similarity = (100.0 * image_features @ text_features.T).softmax(dim=-1)
        values, indices = similarity[0].topk(5)
    elif framework == "tf":
        image_input = preprocess(image)[None]
        text_inputs = tf.concat([clip.tokenize(f"a photo of a {c}") for c in cifar100.classes], 0)
        image_features = model.encode_image(image_input)
        text_features = model.encode_text(text_inputs)
        image_features /= tf.norm(image_features, axis=-1, keepdims=True)
        text_features /= tf.norm(text_features, axis=-1, keepdims=True)
        similarity = tf.nn.softmax(100.0 * image_features @ tf.transpose(text_features), axis=-1)
        values, indices = tf.math.top_k(similarity[0], 5)
    else:
        image_input = preprocess(image)[None]
        text_inputs = jnp.concatenate([clip.tokenize(f"a photo of a {c}") for c in cifar100.classes])
        image_features = model.encode_image(image_input)
        text_features = model.encode_text(text_inputs)
        image_features /= jnp.linalg.norm(image_features, axis=-1, keepdims=True)
        text_features /= jnp.linalg.norm(text_features, axis=-1, keepdims=True)
        similarity = jax.nn.softmax(100.0 * image_features @ text_features.T, axis=-1)
        values, indices = jax.lax.top_k(similarity[0], 5)
    lines = [f"{cifar100.classes[int(index)]:>16s}: {100 * float(value):.2f}%" for value, index in zip(values, indices)]
    return np_(similarity), lines


ZERO_SHOT_DATA = cifar100_standin(test_size=4000, train_size=0)
PROBE_DATA = cifar100_standin(test_size=100, train_size=100)  # one batch of 100 each


def _openai_namespace(openai_ref) -> SimpleNamespace:
    """OpenAI's ``clip`` whose ``load`` returns the reference model (loaded by path)."""
    model, preprocess = openai_ref
    return SimpleNamespace(load=lambda name, device="cpu", jit=False: (model, preprocess),
                           tokenize=openai_clip.tokenize)


@pytest.fixture(scope="module")
def zero_shot_ref(openai_ref):
    return zero_shot(_openai_namespace(openai_ref), "torch", ZERO_SHOT_DATA)


@pytest.fixture(scope="module")
def linear_probe_ref(openai_ref):
    return linear_probe_features(_openai_namespace(openai_ref), "torch", PROBE_DATA)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_openai_zero_shot(framework, offline, zero_shot_ref):
    similarity, lines = zero_shot(BACKENDS[framework], framework, ZERO_SHOT_DATA)
    ref_similarity, ref_lines = zero_shot_ref
    close(similarity, ref_similarity, 1e-4, "similarity")
    assert len(lines) == 5
    status, note = ("works", "") if framework == "torch" else ("differs", TENSOR_OPS[framework].replace(
        "`preprocess(img)[None]`", "`preprocess(img)[None]`, `top_k`"))
    record(OPENAI, "Zero-shot prediction example", framework, status, f"`import {BACKENDS[framework].__name__} as clip`",
           note)


def linear_probe_features(clip, framework: str, CIFAR100):
    """README "Linear-probe evaluation": the feature extraction and the classifier fit."""
    import os
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, preprocess = clip.load('ViT-B/32', device)
    root = os.path.expanduser("~/.cache")
    train = CIFAR100(root, download=True, train=True, transform=preprocess)
    test = CIFAR100(root, download=True, train=False, transform=preprocess)

    def get_features(dataset):
        all_features = []
        all_labels = []
        if framework == "torch":
            with torch.no_grad():
                for images, labels in tqdm(DataLoader(dataset, batch_size=100), disable=True):
                    features = model.encode_image(images.to(device))
                    all_features.append(features)
                    all_labels.append(labels)
            return torch.cat(all_features).cpu().numpy(), torch.cat(all_labels).cpu().numpy()
        for start in range(0, len(dataset), 100):  # DataLoader cannot collate tf / jax tensors
            items = [dataset[i] for i in range(start, min(start + 100, len(dataset)))]
            images = np.stack([np.asarray(image) for image, _ in items])
            all_features.append(np.asarray(model.encode_image(images)))
            all_labels.append(np.asarray([label for _, label in items]))
        return np.concatenate(all_features), np.concatenate(all_labels)

    train_features, train_labels = get_features(train)
    test_features, test_labels = get_features(test)
    classifier = LogisticRegression(random_state=0, C=0.316, max_iter=1000, verbose=1)
    classifier.fit(train_features, train_labels)
    predictions = classifier.predict(test_features)
    accuracy = np.mean((test_labels == predictions).astype(float)) * 100.
    return train_features, test_features, accuracy


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_openai_linear_probe(framework, offline, linear_probe_ref):
    train_f, test_f, accuracy = linear_probe_features(BACKENDS[framework], framework, PROBE_DATA)
    ref_train, ref_test, ref_accuracy = linear_probe_ref
    assert_embeds_close(train_f, ref_train)
    assert_embeds_close(test_f, ref_test)
    assert abs(accuracy - ref_accuracy) <= 100.0 / len(ref_test) + 1e-9  # at most one test image apart
    notes = [] if framework == "torch" else ["batches built with numpy: torch's DataLoader cannot collate "
                                             + ("`tf.Tensor`s" if framework == "tf" else "jax arrays")]
    if LogisticRegression is LeastSquaresClassifier:
        notes.append("scikit-learn is absent from the test environment: a least-squares classifier stood in for "
                     "LogisticRegression")
    record(OPENAI, "Linear-probe evaluation example (feature extraction)", framework,
           "works" if framework == "torch" else "differs", f"`import {BACKENDS[framework].__name__} as clip`",
           "; ".join(notes))


# ============================================================================ the outcome table
def _expected_runs() -> int:
    """How many test runs of this module record outcomes (every parametrization of every test above)."""
    total = 0
    for name, fn in list(globals().items()):
        if name.startswith("test_") and callable(fn) and name != "test_write_outcomes_and_migration_doc":
            n = 1
            for mark in getattr(fn, "pytestmark", []):
                if mark.name == "parametrize":
                    n *= len(mark.args[1])
            total += n
    return total


def test_write_outcomes_and_migration_doc():
    """docs/migration.md renders from the committed outcomes (docs/migration.json), which every example run
    above checks its own rows against (so this holds under pytest-xdist too). With ``$CLIP_ZOO_SEED_RESULTS``
    set and every run in this process, the outcomes are written there to regenerate both files."""
    target = os.environ.get(RESULTS_ENV)
    if target and len(RAN) >= _expected_runs():
        Path(target).write_text(json.dumps(OUTCOMES, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return
    committed = _committed_outcomes()
    assert len(committed) >= _expected_runs() and all(row["status"] in migration_table.STATUSES for row in committed)
    doc = (ROOT / "docs" / "migration.md").read_text(encoding="utf-8")
    assert doc == migration_table.render(committed), ("docs/migration.md is stale: regenerate it with "
                                                      f"python scripts/migration_table.py docs/migration.json")
