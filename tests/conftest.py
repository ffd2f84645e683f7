"""Shared test harness.

- torchvision (pulled in by the OpenAI ``clip`` and ``open_clip`` references) is imported before
  anything imports TensorFlow: the other order segfaults with TF 2.21 + torchvision 0.29.
- ``backend`` parametrizes a test over torch / tf / flax and skips a framework that is not installed.
- Tiny configs and random canonical weights come from :mod:`clip_core.testing`.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

if importlib.util.find_spec("torchvision") is not None:  # must precede any tensorflow import
    import torchvision  # noqa: F401

import pytest

from clip_core.testing import random_weights, tiny_resnet_config, tiny_vit_config

BACKEND_MODULES = {"torch": ("torch", "clip_torch"), "tf": ("tensorflow", "clip_tf"), "flax": ("flax", "clip_flax")}


def backend_module(name: str):
    """Import the clip-zoo backend ``name`` or skip the test if its framework is missing."""
    framework, package = BACKEND_MODULES[name]
    pytest.importorskip(framework)
    return importlib.import_module(package)


@pytest.fixture(params=sorted(BACKEND_MODULES))
def backend(request):
    """The clip-zoo backend module (clip_torch, clip_tf or clip_flax) for each installed framework."""
    return backend_module(request.param)


@pytest.fixture
def tiny_vit():
    return tiny_vit_config()


@pytest.fixture
def tiny_resnet():
    return tiny_resnet_config()


@pytest.fixture(params=["vit", "resnet"])
def tiny_config(request):
    return tiny_vit_config() if request.param == "vit" else tiny_resnet_config()


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_config):
    """A canonical directory with random weights for the tiny ViT / ResNet config."""
    import conversion

    conversion.save_canonical(tmp_path / "ckpt", tiny_config, random_weights(tiny_config))
    return tmp_path / "ckpt"
