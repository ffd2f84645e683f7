"""One public surface: clip_torch, clip_tf and clip_flax expose the same classes and functions with the same
signatures (``inspect.signature``: argument names, order, kinds and defaults), except for the arguments
listed in ``FRAMEWORK_ONLY``, each with the reason it exists in one framework only."""
from __future__ import annotations

import importlib
import inspect

import pytest

from tests.conftest import backend_module

BACKENDS = ("torch", "tf", "flax")
CLASSES = ("CLIPModel", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModel",
           "CLIPVisionModelWithProjection", "CLIPForImageClassification")
CALL = {"torch": "forward", "tf": "call", "flax": "__call__"}  # where each framework puts the model call
ALIAS_PREFIX = {"torch": None, "tf": "TF", "flax": "Flax"}  # transformers' class names (TFCLIPModel ...)

# Arguments one framework has and the others do not, and why. Everything else must agree.
FRAMEWORK_ONLY = {
    "torch": {},
    "tf": {
        "training": "Keras' training flag, which transformers' TF classes take too",
    },
    "flax": {
        "params": "the parameter pytree passed per call (transformers' Flax API; jax models are stateless)",
        "dropout_rng": "the PRNG key for dropout (transformers' Flax API)",
        "train": "transformers' Flax name of the training flag",
        "training": "alias of train with the Keras name",
        "batch_stats": "ResNet BatchNorm statistics, a pytree kept apart from params (none in torch / TF modules)",
        "trim": "jax traces: trimming padded text needs concrete ids, trim=False keeps the shapes static",
    },
}


@pytest.fixture(scope="module")
def backends():
    return {name: backend_module(name) for name in BACKENDS}


def _params(fn, framework: str) -> list[tuple]:
    """``(name, kind, default)`` of ``fn``'s parameters without ``self`` / ``cls`` and the allow-listed ones."""
    sig = inspect.signature(fn)
    out = []
    for p in sig.parameters.values():
        if p.name in ("self", "cls") or p.name in FRAMEWORK_ONLY[framework]:
            continue
        default = p.default if p.default is inspect.Parameter.empty else repr(p.default)
        out.append((p.name, p.kind, default))
    return out


def assert_same_signatures(getter, backends, what: str) -> None:
    sigs = {fw: _params(getter(mod, fw), fw) for fw, mod in backends.items()}
    reference = sigs["torch"]
    for fw, sig in sigs.items():
        assert sig == reference, (f"{what}: {fw} differs from torch\n  torch: {reference}\n  {fw}: {sig}\n"
                                  f"(an argument only one framework needs goes into FRAMEWORK_ONLY with its reason)")


def test_same_public_names(backends):
    for fw, mod in backends.items():
        for name in (*CLASSES, "CLIPPreTrainedModel" if fw != "flax" else "FlaxCLIPPreTrainedModel", "clip_loss",
                     "load", "tokenize", "available_models"):
            assert hasattr(mod, name), f"{mod.__name__} has no {name}"
        if ALIAS_PREFIX[fw]:
            for name in CLASSES:
                assert getattr(mod, ALIAS_PREFIX[fw] + name) is getattr(mod, name)
        assert mod.contrastive_loss is mod.clip_loss  # the earlier name is an alias of the one loss function


@pytest.mark.parametrize("function", ["load", "tokenize", "available_models"])
def test_openai_functions(backends, function):
    assert_same_signatures(lambda mod, fw: getattr(mod, function), backends, f"{function}()")


def test_loss_and_pooling_helpers(backends):
    assert_same_signatures(lambda mod, fw: mod.clip_loss, backends, "clip_loss()")
    assert_same_signatures(lambda mod, fw: importlib.import_module(f"{mod.__name__}.text").pool_positions, backends,
          "text.pool_positions()")


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("method", ["from_pretrained", "save_pretrained"])
def test_loading_and_saving(backends, cls, method):
    assert_same_signatures(lambda mod, fw: getattr(getattr(mod, cls), method), backends, f"{cls}.{method}")


@pytest.mark.parametrize("cls", CLASSES)
def test_model_call(backends, cls):
    assert_same_signatures(lambda mod, fw: getattr(getattr(mod, cls), CALL[fw]), backends, f"{cls} call")


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("method", ["get_text_features", "get_image_features", "encode_text", "encode_image"])
def test_feature_methods(backends, cls, method):
    has = {fw: hasattr(getattr(mod, cls), method) for fw, mod in backends.items()}
    assert len(set(has.values())) == 1, f"{cls}.{method} exists in {[fw for fw, h in has.items() if h]} only"
    if has["torch"]:
        assert_same_signatures(lambda mod, fw: getattr(getattr(mod, cls), method), backends, f"{cls}.{method}")


def test_documented_signatures(backends):
    """The shapes the migration guide promises, spelled out once."""
    params = [p[0] for p in _params(backends["torch"].CLIPModel.from_pretrained, "torch")]
    assert params == ["path", "config", "dtype", "num_labels", "kwargs"]
    params = [p[0] for p in _params(backends["torch"].CLIPModel.save_pretrained, "torch")]
    assert params == ["directory", "format", "dtype"]
    params = [p[0] for p in _params(backends["torch"].load, "torch")]
    assert params == ["name", "device", "jit", "download_root", "kwargs"]


def test_allow_list_is_used(backends):
    """Every allow-listed argument still exists somewhere in its framework (no stale exemptions)."""
    for fw, names in FRAMEWORK_ONLY.items():
        mod = backends[fw]
        seen = set()
        for cls in CLASSES:
            for method in (CALL[fw], "get_text_features", "get_image_features", "from_pretrained"):
                fn = getattr(getattr(mod, cls), method, None)
                if fn is not None:
                    seen |= set(inspect.signature(fn).parameters)
        assert set(names) <= seen, f"{fw}: allow-listed but unused: {sorted(set(names) - seen)}"


def test_signature_check_can_fail():
    """The comparison behind every test above fails on drift (a renamed or reordered argument)."""
    fake = {"torch": lambda a, b=1: None, "tf": lambda a, c=1: None, "flax": lambda a, b=1: None}
    with pytest.raises(AssertionError, match="tf differs from torch"):
        assert_same_signatures(lambda mod, fw: mod, {fw: fn for fw, fn in fake.items()}, "fake()")
