"""Framework-neutral encoders: one thin adapter per backend, imported lazily (only the one in use).

``load_encoder(model, framework)`` returns an :class:`Encoder` with
``encode_images(pixel_values (N, 3, H, W) float32) -> (N, D)`` and ``encode_texts(list[str]) -> (N, D)``,
both L2-normalized numpy float32, plus the checkpoint's tokenizer and image processor.
Framework choice: ``--framework``, else ``$CLIP_ZOO_FRAMEWORK``, else the first installed of
torch, flax, tf. Model choice: a path (any checkpoint format ``conversion`` reads), or ``default``
(the bundled model).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from .console import import_framework
from .errors import CLIZooError

__all__ = ["FRAMEWORKS", "installed_frameworks", "resolve_framework", "resolve_model", "load_encoder", "Encoder",
           "early_processor", "max_threads", "check_threads", "threads_arg", "lane_split"]

FRAMEWORKS = ("torch", "flax", "tf")  # default preference order
_MODULES = {"torch": ("torch", "clip_torch"), "flax": ("flax", "clip_flax"), "tf": ("tensorflow", "clip_tf")}
_ALIASES = {"pytorch": "torch", "jax": "flax", "tensorflow": "tf", "keras": "tf"}
ENV_FRAMEWORK = "CLIP_ZOO_FRAMEWORK"
#: Most concurrent forward calls :meth:`Encoder.lanes` splits a framework's threads into.
MAX_LANES = 4


def max_threads() -> int:
    """The most ``--threads`` accepted: 4 per CPU (far more only makes OpenMP fail or crash)."""
    return 4 * (os.cpu_count() or 1)


def _threads_problem(threads: int) -> Optional[str]:
    if 1 <= threads <= max_threads():
        return None
    return (f"must be between 1 and {max_threads()} (4 x {os.cpu_count() or 1} CPUs), got {threads}")


def threads_arg(text: str) -> int:
    """argparse type of ``--threads``: a whole number in 1 ... :func:`max_threads`."""
    import argparse

    try:
        threads = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    problem = _threads_problem(threads)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return threads


def check_threads(threads: Optional[int]) -> Optional[int]:
    """``threads`` (``None`` = the default), or a :class:`CLIZooError` when out of 1 ... :func:`max_threads`."""
    if threads is not None:
        problem = _threads_problem(int(threads))
        if problem:
            raise CLIZooError(f"--threads {problem}, pass a number in that range")
    return threads


def lane_split(threads: int) -> tuple[int, int]:
    """``(lanes, threads per lane)``: the most lanes, up to :data:`MAX_LANES`, that share ``threads`` evenly
    (2 → 2 x 1, 6 → 3 x 2, 8 → 4 x 2, 7 → 1 x 7)."""
    lanes = max(n for n in range(1, min(max(1, threads), MAX_LANES) + 1) if threads % n == 0)
    return lanes, max(1, threads) // lanes


def _installed(name: str) -> bool:
    framework, package = _MODULES[name]
    return importlib.util.find_spec(framework) is not None and importlib.util.find_spec(package) is not None


def installed_frameworks() -> list[str]:
    """The frameworks (of torch, flax, tf, in preference order) whose backend can be imported."""
    return [f for f in FRAMEWORKS if _installed(f)]


def resolve_framework(name: Optional[str] = None) -> str:
    """``name``, else ``$CLIP_ZOO_FRAMEWORK``, else the first installed framework."""
    name = name or os.environ.get(ENV_FRAMEWORK) or None
    if name is None:
        found = installed_frameworks()
        if not found:
            raise CLIZooError("no deep-learning framework is installed, install one with: "
                              "pip install 'clip-zoo[torch]' (or [tf], [flax])")
        return found[0]
    key = _ALIASES.get(name.lower(), name.lower())
    if key == "onnx":  # the framework-free engine (``--runtime onnx``)
        return key
    if key not in _MODULES:
        raise CLIZooError(f"unknown framework {name!r}, choose one of {', '.join(FRAMEWORKS)}")
    if not _installed(key):
        raise CLIZooError(f"the {key} framework is not installed, install it with: pip install 'clip-zoo[{key}]'")
    return key


def resolve_model(spec: Optional[str]) -> Path:
    """The checkpoint path for ``spec``: ``None``/``default`` → the bundled model, else an existing path."""
    if spec is None or spec == "default":
        from clip_core.default_model import default_model_path

        try:
            return default_model_path()
        except FileNotFoundError as err:
            raise CLIZooError(str(err)) from None
    path = Path(spec).expanduser()
    if path.exists():
        return path
    from clip_core.presets import resolve_name

    try:
        resolve_name(spec)
    except (ValueError, TypeError):
        raise CLIZooError(f"unknown model {spec!r} (not a file or folder, nor a known model name), "
                          "pass --model PATH or see `clip-zoo models`") from None
    raise CLIZooError(f"model {spec!r} has no local weights and clip-zoo never downloads, pass --model PATH to "
                      "a checkpoint (OpenAI .pt, Hugging Face directory, open_clip file)")


def checkpoint_family(path: Path) -> str:
    """``"siglip"`` or ``"clip"`` from a checkpoint's side files (``config.json``'s ``model_type``, an open_clip
    config naming SigLIP, a big_vision ``.npz``, an export's ``model.json``), without reading its weights."""
    path = Path(path)
    if path.suffix == ".npz":
        return "siglip"
    directory = path if path.is_dir() else path.parent
    try:
        if (directory / "model.json").is_file() and not (directory / "config.json").is_file():  # an export
            return str(json.loads((directory / "model.json").read_text("utf-8")).get("family", "clip"))
        if (directory / "config.json").is_file():
            data = json.loads((directory / "config.json").read_text("utf-8"))
            return "siglip" if str(data.get("model_type", "")).startswith("siglip") else "clip"
        if (directory / "open_clip_config.json").is_file():
            text = (directory / "open_clip_config.json").read_text("utf-8").lower()
            return "siglip" if "siglip" in text else "clip"
    except (OSError, ValueError, AttributeError):
        pass  # unreadable side files: the loader names the problem
    return "clip"


def _tokenizer_for(directory: Optional[Path], family: str = "clip"):
    from clip_core import CLIPTokenizer

    if directory is not None and family == "siglip":
        from clip_core.siglip_tokenizer import load_tokenizer

        try:
            return load_tokenizer(directory)
        except (OSError, ValueError) as err:
            raise CLIZooError(f"{directory}: no usable SigLIP tokenizer ({err}), add the checkpoint's spiece.model "
                              "or tokenizer.json to the folder") from None
    if directory is None:
        return CLIPTokenizer()
    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file() or (directory / "tokenizer.json").is_file():
        return CLIPTokenizer.from_pretrained(str(directory))
    return CLIPTokenizer()


def _processor_for(directory: Optional[Path], config, num_threads: Optional[int]):
    from clip_core import CLIPImageProcessor

    if getattr(config, "family", "clip") == "siglip":
        from clip_core.siglip_processing import SiglipImageProcessor

        if directory is not None and (directory / "preprocessor_config.json").is_file():
            return SiglipImageProcessor.from_pretrained(directory, num_threads=num_threads)
        n = config.vision_config.image_size
        return SiglipImageProcessor(size={"height": n, "width": n}, num_threads=num_threads)
    if directory is not None and (directory / "preprocessor_config.json").is_file():
        return CLIPImageProcessor.from_pretrained(directory, num_threads=num_threads)
    n = config.vision_config.image_size
    return CLIPImageProcessor(mode="openai", size=n, crop_size=n, num_threads=num_threads)


def early_processor(path: Path, num_threads: Optional[int] = None):
    """The image processor of checkpoint ``path`` without loading the model (no framework import),
    so images can be decoded while the model loads; ``None`` when it needs the model's config."""
    path = Path(path)
    if path.is_dir() and (path / "preprocessor_config.json").is_file():
        if checkpoint_family(path) == "siglip":
            from clip_core.siglip_processing import SiglipImageProcessor as Processor
        else:
            from clip_core import CLIPImageProcessor as Processor

        return Processor.from_pretrained(path, num_threads=num_threads)
    return None


class Encoder:
    """Base adapter: tokenizer + image processor + a backend model; subclasses run the model."""

    framework = ""

    def __init__(self, path: Path, threads: Optional[int] = None, processor=None, precision: str = "fp32") -> None:
        self.path = Path(path)
        self.threads = threads
        self.precision = precision
        self.backend = import_framework(_MODULES[self.framework][1])
        self.family = checkpoint_family(self.path)
        self._setup_threads(threads)
        self.model = self._load(self.path)
        self.config = self.model.config
        directory = self.path if self.path.is_dir() else None  # a single file (OpenAI .pt) has no side files
        self.processor = processor if processor is not None else _processor_for(directory, self.config, threads)
        self.context_length = self.config.text_config.max_position_embeddings

    @functools.cached_property
    def tokenizer(self):
        """The checkpoint's tokenizer, built on first use (an image-only run never pays for it)."""
        return _tokenizer_for(self.path if self.path.is_dir() else None, self.family)

    def _setup_threads(self, threads: Optional[int]) -> None:
        """Limit the framework's intra-op threads (no-op by default)."""

    def _load(self, path: Path):
        from clip_core.precision import PrecisionError

        cls = self.backend.SiglipModel if self.family == "siglip" else self.backend.CLIPModel
        try:
            return cls.from_pretrained(path, precision=self.precision)
        except PrecisionError as err:
            raise CLIZooError(f"{err}") from None

    def _image_features(self, pixel_values: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _text_features(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def dim(self) -> int:
        return self.config.projection_dim

    @functools.cached_property
    def probability_params(self) -> tuple[float, Optional[float]]:
        """``(scale, bias)`` for :func:`clip_core.zero_shot.zero_shot_probs`: CLIP's softmax at scale 100 (bias
        None, as OpenAI's zero-shot recipe), or SigLIP's sigmoid at the model's ``exp(logit_scale)`` and
        ``logit_bias``."""
        if self.family != "siglip":
            return 100.0, None
        scale, bias = (float(np.asarray(self._parameter(n), np.float64).reshape(-1)[0])
                       for n in ("logit_scale", "logit_bias"))
        return float(np.exp(scale)), bias

    def _parameter(self, name: str) -> np.ndarray:
        """A top-level model parameter (``logit_scale`` ...) as numpy."""
        return np.asarray(getattr(self.model, name))

    @contextlib.contextmanager
    def lanes(self) -> Iterator[tuple[int, Optional[Callable[[], None]]]]:
        """For throughput: split the framework's intra-op threads into concurrent forward calls.

        Yields ``(lanes, setup)``: up to ``lanes`` threads may call the encode methods at once, each
        running ``setup()`` (when not ``None``) first. The threads are restored on exit. The base class
        keeps one call at a time on all of the framework's threads (``(1, None)``)."""
        yield 1, None

    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """``(N, 3, H, W)`` float32 → ``(N, D)`` L2-normalized float32."""
        from clip_core.zero_shot import l2_normalize

        return l2_normalize(np.asarray(self._image_features(np.ascontiguousarray(pixel_values, np.float32)), np.float32))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts → ``(N, D)`` L2-normalized float32 (truncated to the model's context length)."""
        from clip_core.zero_shot import l2_normalize

        enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.context_length,
                             return_tensors="np")
        ids = np.asarray(enc["input_ids"], np.int32)
        # the mask exactly when the tokenizer gives one, as transformers' processors feed the model
        mask = np.asarray(enc["attention_mask"], np.int32) if "attention_mask" in enc else None
        return l2_normalize(np.asarray(self._text_features(ids, mask), np.float32))


class TorchEncoder(Encoder):
    framework = "torch"

    def _setup_threads(self, threads: Optional[int]) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)

    @contextlib.contextmanager
    def lanes(self) -> Iterator[tuple[int, Optional[Callable[[], None]]]]:
        """The most lanes (up to ``MAX_LANES``) that share torch's threads evenly: 2 threads give 2 lanes of
        1, 8 give 4 of 2, a prime number above ``MAX_LANES`` gives 1 lane. An op's threads then wait only
        for their own lane, not for a core another lane or a decoding thread holds (docs/design.md,
        end-to-end embed). ``setup`` sets the calling thread's own OpenMP thread count, which a new
        thread otherwise takes from the environment, not from torch."""
        import torch

        threads = torch.get_num_threads()
        lanes, per_lane = lane_split(threads)
        if lanes == 1:
            yield 1, None
            return
        torch.set_num_threads(per_lane)
        try:
            yield lanes, functools.partial(torch.set_num_threads, per_lane)
        finally:
            torch.set_num_threads(threads)

    def _image_features(self, pixel_values):
        import torch

        with torch.inference_mode():
            return self.model.get_image_features(pixel_values=torch.from_numpy(pixel_values)).float().numpy()

    def _text_features(self, input_ids, attention_mask):
        import torch

        with torch.inference_mode():
            mask = None if attention_mask is None else torch.from_numpy(attention_mask).long()
            out = self.model.get_text_features(input_ids=torch.from_numpy(input_ids).long(), attention_mask=mask)
            return out.float().numpy()

    def _parameter(self, name: str) -> np.ndarray:
        return getattr(self.model, name).detach().float().numpy()


class TFEncoder(Encoder):
    framework = "tf"

    def _setup_threads(self, threads: Optional[int]) -> None:
        if threads:
            import tensorflow as tf

            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
            except RuntimeError:  # already initialized in this process
                pass

    def _image_features(self, pixel_values):
        import tensorflow as tf

        return np.asarray(self.model.get_image_features(pixel_values=tf.constant(pixel_values)))

    def _text_features(self, input_ids, attention_mask):
        import tensorflow as tf

        mask = None if attention_mask is None else tf.constant(attention_mask)
        return np.asarray(self.model.get_text_features(input_ids=tf.constant(input_ids), attention_mask=mask))


class FlaxEncoder(Encoder):
    """The model's methods are already jit-compiled (cached per shape) and trim text to the shortest
    bucket holding every EOT, which needs concrete ids: another ``jax.jit`` around them would trace
    them and silently turn the trimming off."""

    framework = "flax"

    def _image_features(self, pixel_values):
        return np.asarray(self.model.get_image_features(pixel_values))

    def _text_features(self, input_ids, attention_mask):
        return np.asarray(self.model.get_text_features(input_ids, attention_mask))

    def _parameter(self, name: str) -> np.ndarray:
        return np.asarray(self.model.params[name], np.float32)


_ENCODERS = {"torch": TorchEncoder, "tf": TFEncoder, "flax": FlaxEncoder}


def load_encoder(model: Optional[str] = None, framework: Optional[str] = None,
                 threads: Optional[int] = None, processor=None, runtime: str = "framework",
                 precision: Optional[str] = None) -> Encoder:
    """Resolve ``model`` and ``framework`` and load the encoder (errors are :class:`CLIZooError`).

    ``processor``: an image processor already built for this checkpoint (see :func:`early_processor`).
    ``runtime="onnx"`` (or ``framework="onnx"``): ``model`` is a ``clip-zoo export --to onnx`` directory run by
    onnxruntime, with no framework imported. ``precision``: ``fp32`` (default), ``bf16`` or ``int8`` (see
    :mod:`clip_core.precision`; an ONNX export has its precision fixed at export time). Loading raises this
    process's malloc thresholds once (:func:`clip_zoo.memory.tune_allocator`)."""
    from .memory import tune_allocator

    threads = check_threads(threads)
    precision = check_precision_arg(precision)
    name = "onnx" if runtime == "onnx" else resolve_framework(framework)
    tune_allocator()  # the forward's large buffers are reused, not page-faulted in again (clip_zoo/memory.py)
    path = resolve_model(model)
    if name == "onnx":
        from .onnx_engine import OnnxEncoder

        if precision != "fp32":
            raise CLIZooError(f"--precision {precision} applies to the frameworks; an ONNX export's precision is set "
                              "when exporting (clip-zoo export --int8 / --dtype)")
        return OnnxEncoder(path, threads, processor)
    return _ENCODERS[name](path, threads, processor, precision)


def check_precision_arg(precision: Optional[str]) -> str:
    """``--precision`` as ``fp32`` / ``bf16`` / ``int8`` (None: ``fp32``), else a :class:`CLIZooError`."""
    from clip_core.precision import PrecisionError, check_precision

    try:
        return check_precision(precision)
    except PrecisionError as err:
        raise CLIZooError(str(err)) from None
