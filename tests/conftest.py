"""Shared test harness.

- torchvision (pulled in by the OpenAI ``clip`` and ``open_clip`` references) is imported before
  anything imports TensorFlow: the other order segfaults with TF 2.21 + torchvision 0.29.
- ``backend`` parametrizes a test over torch / tf / flax and skips a framework that is not installed.
- Tiny configs and random canonical weights come from :mod:`clip_core.testing`.
- After each test module, cycles are collected and glibc hands the freed heap back to the OS: a worker
  loads hundreds of models, and its RSS otherwise only grew (12-15 GB per worker on a 24 GB machine).
- Under pytest-xdist each worker's torch (OpenMP) and TensorFlow get their share of the cores, not all of
  them (``_share_cores``), unless the caller set those variables.
- The session shares one on-disk JAX compilation cache between its processes (``_share_jax_compilations``).
"""
from __future__ import annotations

import ctypes
import gc
import importlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _share_cores() -> int | None:
    """Give each pytest-xdist worker ``cores // workers`` threads in torch (OpenMP, MKL) and TensorFlow
    (intra-op), before either is imported. Workers that each take every core oversubscribe them, and
    OpenMP threads spin while they wait: two torch fine-tuning runs side by side took 265 s each with
    2 threads on 2 cores and 75 s each with 1 (TensorFlow's: 122 s and 104 s). Test subprocesses inherit
    the setting. Variables already set are kept; a run without xdist keeps every core. Returns torch's
    share, or None when it was left alone."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if workers < 2:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = str(max(1, cores // workers))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ.setdefault(name, share)
    return int(share) if os.environ["OMP_NUM_THREADS"] == share else None


#: torch threads of this xdist worker (None: not under xdist, or the caller chose OMP_NUM_THREADS).
TORCH_THREADS = _share_cores()


def _share_jax_compilations() -> str | None:
    """One on-disk JAX compilation cache for the session, so an XLA program compiled by one process is
    loaded, not compiled again, by the others: xdist workers and the CLI subprocesses of the tests compile
    the same tiny models and batteries many times (the Flax model tests: 134 -> 115 s on 2 cores;
    TensorFlow's ``--tf_xla_persistent_cache_directory`` measured no gain, so it is not set). Results are
    unchanged: the cache only skips the compiler. Set in the controlling process, which removes the folder at exit
    (``pytest_unconfigure``); workers and subprocesses inherit the variable. A caller's own setting is kept.
    Returns the folder this process created, else None."""
    if os.environ.get("PYTEST_XDIST_WORKER") or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return None
    folder = tempfile.mkdtemp(prefix="clip-zoo-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # tiny models compile in < 1 s
    return folder


_JAX_CACHE = _share_jax_compilations()

if importlib.util.find_spec("torchvision") is not None:  # must precede any tensorflow import
    import torchvision  # noqa: F401

import pytest

from clip_core.testing import random_weights, tiny_resnet_config, tiny_vit_config
from clip_zoo.memory import _glibc

_GLIBC = ctypes.CDLL(None) if _glibc() else None


@pytest.fixture(scope="module", autouse=True)
def _return_freed_memory():
    """After the module (and its own module fixtures, torn down first): ``gc.collect()`` for the models'
    reference cycles, then glibc's ``malloc_trim(0)``, which returns free heap pages of every arena to the
    OS (freed weights below the mmap threshold otherwise stay in the worker's RSS). Not glibc: only gc."""
    yield
    gc.collect()
    if _GLIBC is not None:
        _GLIBC.malloc_trim(0)


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """After the module: torch back to this worker's share of the cores (``TORCH_THREADS``), as commands
    run in-process with ``--threads N`` set torch's thread count for the rest of the process."""
    yield
    if TORCH_THREADS is not None and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(TORCH_THREADS)


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


# ----------------------------------------------------------------------------- test tiers
# `make test-fast` runs `-m "not fullsize and not slow"`. Full-size checks are recognised by name
# (ViT-B/32, RN50, "fullsize" / "full_size"), so a new one joins the tier without a marker; the slow
# list holds the remaining tests measured above ~10 s on 2 cores (training loops, compile, kill loops).
_FULLSIZE_NAME = re.compile(r"fullsize|full_size|vit_b32|rn50|RN50|ViT-B/32|ViT-B-32")
_SLOW = {"test_mirrored_strategy_on_logical_cpus", "test_fit_reduces_loss", "test_torch_compile",
         "test_backends_agree_on_random_architectures", "test_kill_9_during_convert_into_an_existing_folder",
         "test_data_parallel_mesh_matches_single_device", "test_train_step_reduces_contrastive_loss",
         "test_dropout_uses_the_rng", "test_classify_prints_no_framework_noise", "test_command_passes_and_json_validates",
         "test_killed_run_resumes_to_the_same_output",
         "test_64_clients_x_20_requests_batch_together", "test_onnx_runtime_serves_the_same_vectors",  # serve
         "test_zeroshot_on_2000_images_same_top1_in_every_framework_and_equal_to_classify",
         "test_linear_probe_same_accuracy_in_every_framework"}
_SLOW |= {"test_export_bundled_model_cell_reloads_within_the_fp32_bound"}  # export of the bundled model
_SLOW |= {"test_two_replicas_match_one_device",  # finetune trainers: 3 fresh interpreters, 20-60 s each
          "test_two_replicas_match_one_device_siglip"}
_SLOW |= {"test_finetune_teaches_new_colours_and_keeps_the_old",  # clip-zoo finetune: 150 steps of the bundled model
          "test_killed_finetune_resumes_bit_identical", "test_two_replicas_follow_the_one_device_curve",
          "test_same_data_gives_the_same_losses_in_every_framework"}  # fresh interpreters / TF and XLA compiles
_SLOW |= {"test_ray_engine_on_2000_images_identical_to_local",  # embed --engine ray: 2,000 images, ~1 min
          "test_ray_actor_killed_mid_run_every_input_exactly_once",  # an actor restart costs ~15 s
          "test_ray_driver_killed_and_restarted_resumes"}  # a subprocess driver, killed
_SLOW |= {"test_siglip_export_cell_reloads_within_the_fp32_bound"}  # SigLIP export cells but torch->ONNX: 25-80 s


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _FULLSIZE_NAME.search(item.nodeid) and item.get_closest_marker("fullsize") is None:
            item.add_marker(pytest.mark.fullsize)
        if item.originalname in _SLOW or item.module.__name__.endswith("test_training_script"):
            item.add_marker(pytest.mark.slow)


def pytest_unconfigure(config):
    if _JAX_CACHE is not None:
        shutil.rmtree(_JAX_CACHE, ignore_errors=True)
