"""What clip_torch, clip_tf and clip_flax share behind their public API (no framework imported).

It lives in ``conversion`` because it is the part contract between a checkpoint and a model class
(which tensors a part owns, how a classifier head is derived); backends import it, never the reverse.

- :func:`load_pretrained`: transformers' ``from_pretrained`` arguments -> a local checkpoint read by
  ``conversion``, config overrides, the part's tensors and the classification-head rules;
- :func:`init_weights`: transformers' random initialisation rules drawn with numpy, so every backend
  builds the same weights for the same seed (and a fresh classifier head needs no framework code);
- :func:`output_flags` / :func:`finish`: ``output_attentions`` / ``output_hidden_states`` /
  ``return_dict`` defaults from the config, and the tuple transformers returns for ``return_dict=False``;
- :func:`text_prefix_length`: the bucketed prefix of padded token ids that holds every pooled position.

OpenAI's ``clip`` API is built once for the three backends in :mod:`conversion.openai_api`.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

import numpy as np

from clip_core.config import CLIPConfig, num_labels_of, with_labels
from clip_core.families import as_model_config
from clip_core.schema import WeightMismatchError, schema

__all__ = ["HUB_ONLY_KWARGS", "CONFIG_KWARGS", "Pretrained", "load_pretrained", "select_part", "init_weights",
           "output_flags", "finish", "text_bucket", "pooled_positions", "text_prefix_length"]

PathLike = Union[str, os.PathLike]

#: transformers' loader arguments that change nothing here: nothing is downloaded, every format is read
#: (``from_pt`` ...), weights are always loaded without a random init first (``low_cpu_mem_usage``).
HUB_ONLY_KWARGS = frozenset({
    "force_download", "local_files_only", "token", "use_auth_token", "proxies", "resume_download",
    "trust_remote_code", "use_safetensors", "weights_only", "low_cpu_mem_usage", "from_pt", "from_tf",
    "from_flax", "mirror", "_from_auto", "_from_pipeline", "_commit_hash",
})
#: Keyword arguments transformers sets on the loaded config.
CONFIG_KWARGS = frozenset({"id2label", "label2id", "output_hidden_states", "output_attentions", "return_dict",
                           "problem_type", "torchscript"})

_FRESH_HEAD = ("Some weights of {cls} were not initialized from the model checkpoint at {path} and are newly "
               "initialized: {names}\nYou should probably TRAIN this model on a down-stream task to be able to use "
               "it for predictions and inference.")


@dataclass
class Pretrained:
    """A checkpoint read for one model class: config, canonical weights of its part, labels, loading info."""

    config: CLIPConfig
    weights: dict
    num_labels: Optional[int]
    source: str
    output_loading_info: bool = False
    info: dict = field(default_factory=lambda: {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [],
                                                "error_msgs": []})

    def result(self, model: Any) -> Any:
        """``model``, or ``(model, loading_info)`` when ``output_loading_info=True`` was asked for."""
        return (model, self.info) if self.output_loading_info else model


def _config_arg(config: Any, revision: Optional[str], cache_dir: Any) -> Optional[CLIPConfig]:
    """``config=`` as transformers takes it: a config object (ours or transformers'), a dict, or the path /
    name of a checkpoint whose ``config.json`` to use."""
    if config is None:
        return None
    if isinstance(config, (str, os.PathLike)):
        from clip_core.default_model import resolve_checkpoint

        path = resolve_checkpoint(config, revision=revision, cache_dir=cache_dir)
        return as_model_config(json.loads((path / "config.json" if path.is_dir() else path).read_text("utf-8")))
    if not hasattr(config, "family") and hasattr(config, "to_dict"):  # a transformers config
        config = config.to_dict()
    return as_model_config(config)


def load_pretrained(name_or_path: PathLike, part: str, kwargs: dict, *, config: Any = None,
                    num_labels: Optional[int] = None, cls_name: str = "model") -> Pretrained:
    """Read what ``<Class>.from_pretrained(name_or_path, ...)`` of schema part ``part`` needs.

    Pops from ``kwargs`` the arguments every backend treats alike — ``revision``, ``cache_dir``,
    ``subfolder`` (name resolution, :func:`clip_core.resolve_checkpoint`), ``ignore_mismatched_sizes``,
    ``output_loading_info``, the config overrides of :data:`CONFIG_KWARGS` and the no-ops of
    :data:`HUB_ONLY_KWARGS` — and leaves the backend's own (``dtype`` aliases, devices ...).

    Classification (``part="classification"``): the head has ``num_labels`` rows (default: the
    checkpoint's, else the config's). A checkpoint without a head (a whole CLIP) gets a new one,
    initialised as transformers does, when ``num_labels`` is given (as transformers, with its warning);
    without ``num_labels`` that is a ``WeightMismatchError``. A head of another width is an error unless
    ``ignore_mismatched_sizes=True`` (then it is replaced by a new one).
    """
    from . import api as conversion
    from clip_core.default_model import resolve_checkpoint

    revision, cache_dir = kwargs.pop("revision", None), kwargs.pop("cache_dir", None)
    subfolder = kwargs.pop("subfolder", None) or ""
    ignore_mismatched = bool(kwargs.pop("ignore_mismatched_sizes", False))
    loading_info = bool(kwargs.pop("output_loading_info", False))
    for key in HUB_ONLY_KWARGS & set(kwargs):
        kwargs.pop(key)
    overrides = {key: kwargs.pop(key) for key in sorted(CONFIG_KWARGS & set(kwargs))}
    path = resolve_checkpoint(name_or_path, revision=revision, cache_dir=cache_dir)
    path = path / subfolder if subfolder else path
    cfg, weights = conversion.load_for_part(path, part, _config_arg(config, revision, cache_dir))
    cfg = copy.deepcopy(cfg)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    out = Pretrained(cfg, dict(weights), None, str(path), loading_info)
    if part == "classification":
        _classifier_head(out, num_labels, ignore_mismatched, cls_name)
    elif num_labels is not None:  # transformers keeps it in the config of any class
        out.config.num_labels = int(num_labels)
    out.weights = select_part(out.weights, out.config, part, out.num_labels)
    return out


def _classifier_head(out: Pretrained, num_labels: Optional[int], ignore_mismatched: bool, cls_name: str) -> None:
    head = out.weights.get("classifier.weight")
    have = None if head is None else int(np.shape(head)[0])
    want = int(num_labels) if num_labels is not None else (have if have is not None else num_labels_of(out.config))
    width = out.config.vision_config.hidden_size
    if have is not None and have != want:
        if not ignore_mismatched:
            raise WeightMismatchError(mismatched=[("classifier.weight", (want, width), (have, width))],
                                      source=f"{out.source} (pass ignore_mismatched_sizes=True to replace the "
                                             f"{have}-label head by a new {want}-label one)")
        out.info["mismatched_keys"] = [("classifier.weight", (have, width), (want, width)),
                                       ("classifier.bias", (have,), (want,))]
    out.config = with_labels(out.config, want)
    out.num_labels = want
    if (have is None and num_labels is not None) or (have is not None and have != want):
        out.weights = {k: v for k, v in out.weights.items() if not k.startswith("classifier.")}
        fresh = init_weights(out.config, "classification", want, names=("classifier.weight", "classifier.bias"))
        out.weights.update(fresh)
        if have is None:
            out.info["missing_keys"] = sorted(fresh)
        warnings.warn(_FRESH_HEAD.format(cls=cls_name, path=out.source, names=sorted(fresh)), stacklevel=4)


def select_part(weights: Mapping[str, np.ndarray], config: CLIPConfig, part: str,
                num_labels: Optional[int] = None) -> dict[str, np.ndarray]:
    """Drop the tensors of other parts (the other tower, projections, a classifier); keep unknown names
    so the strict check still names them."""
    mine = set(schema(config, part, num_labels))
    others = set(schema(config, "model")) | {"classifier.weight", "classifier.bias"}
    return {k: v for k, v in weights.items() if k in mine or k not in others}


# ------------------------------------------------------------------------------------------ random init
def _std(name: str, shape: tuple, config: CLIPConfig) -> Optional[float]:
    """transformers' ``CLIPPreTrainedModel._init_weights`` std for a canonical name (None: not normal)."""
    t, v, f = config.text_config, config.vision_config, config.initializer_factor
    tower = t if name.startswith("text_model.") else v
    tf = getattr(tower, "initializer_factor", f)
    layers = getattr(tower, "num_hidden_layers", 1)
    d = tower.hidden_size
    if name in ("text_projection.weight", "visual_projection.weight", "classifier.weight"):
        return (t.hidden_size if name.startswith("text") else v.hidden_size) ** -0.5 * f
    if name.startswith("text_model.embeddings."):
        return 0.02 * tf
    if name == "vision_model.embeddings.class_embedding":
        return d ** -0.5 * tf
    if name.startswith("vision_model.embeddings."):
        return getattr(v, "initializer_range", 0.02) * tf
    if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")) and ".attnpool." not in name:
        return d ** -0.5 * (2 * layers) ** -0.5 * tf
    if name.endswith("out_proj.weight"):
        return d ** -0.5 * tf
    if name.endswith("fc1.weight"):
        return (2 * d) ** -0.5 * tf
    if name.endswith("fc2.weight"):
        return d ** -0.5 * (2 * layers) ** -0.5 * tf
    if ".attnpool." in name and name.endswith("weight"):  # OpenAI's ResNet attention pool
        return shape[-1] ** -0.5
    if name.endswith("positional_embedding"):
        return shape[-1] ** -0.5
    if len(shape) == 4:  # ResNet convolutions: fan-in scaled
        return float(np.prod(shape[1:])) ** -0.5
    return None


def init_weights(config: CLIPConfig, part: str = "model", num_labels: Optional[int] = None, seed: int = 0,
                 names: Optional[tuple] = None) -> dict[str, np.ndarray]:
    """Random canonical float32 weights by transformers' initialisation rules (numpy, seeded):
    normal(std) for the linears and embeddings, ones / zeros for norm scales / biases, zero biases,
    ``logit_scale_init_value``; ResNet (OpenAI) convolutions fan-in scaled, ``bn3`` scales zero."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, entry in schema(config, part, num_labels).items():
        if names is not None and name not in names:
            continue
        shape, leaf = tuple(entry.shape), name.rsplit(".", 1)[-1]
        std = _std(name, shape, config)
        if name == "logit_scale":  # SigLIP: log(1) and a zero bias, as transformers initialises them
            a = np.full(shape, getattr(config, "logit_scale_init_value", 0.0), np.float32)
        elif name == "logit_bias":
            a = np.zeros(shape, np.float32)
        elif std is not None:
            a = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        elif leaf in ("bias", "running_mean") or (leaf == "weight" and name.endswith("bn3.weight")):
            a = np.zeros(shape, np.float32)
        elif leaf in ("weight", "running_var") and len(shape) == 1:  # layer / batch norm scales
            a = np.ones(shape, np.float32)
        else:  # any other matrix: fan-in scaled
            a = rng.standard_normal(shape, dtype=np.float32) * np.float32(shape[-1] ** -0.5)
        out[name] = a
    return out


# ------------------------------------------------------------------------------------------ calls
def output_flags(config: CLIPConfig, output_attentions: Optional[bool], output_hidden_states: Optional[bool],
                 return_dict: Optional[bool] = None) -> tuple[bool, bool, bool]:
    """transformers' defaults: an argument left ``None`` takes the config's value."""
    oa = config.output_attentions if output_attentions is None else output_attentions
    oh = config.output_hidden_states if output_hidden_states is None else output_hidden_states
    rd = config.use_return_dict if return_dict is None else return_dict
    return bool(oa), bool(oh), bool(rd)


def finish(out: Any, return_dict: bool) -> Any:
    """The output object, or transformers' tuple (fields that are not None, nested outputs as tuples)."""
    return out if return_dict else out.to_tuple()


# ------------------------------------------------------------------------------------------ text prefix
def text_bucket(length: int, max_length: int, smallest: int = 8) -> int:
    """The compiled sequence length for ``length`` needed tokens: 8, 16, 32, 64 ... capped at ``max_length``."""
    bucket = smallest
    while bucket < length:
        bucket *= 2
    return min(bucket, max_length)


def pooled_positions(input_ids: np.ndarray, eos_token_id: int, legacy: bool) -> np.ndarray:
    """(B,) index of the pooled token: the first ``eos_token_id`` (0 if none), or ``argmax(input_ids)`` (legacy)."""
    ids = np.asarray(input_ids)
    return ids.argmax(axis=-1) if legacy else (ids == eos_token_id).argmax(axis=-1)


def text_prefix_length(input_ids: np.ndarray, text_config: Any, bucket: bool = True) -> int:
    """How many leading positions of ``input_ids`` (B, T) the pooled text state depends on: the last pooled
    position + 1 (the causal mask hides later ones), rounded up by :func:`text_bucket` unless ``bucket=False``."""
    ids = np.asarray(input_ids)
    t = ids.shape[-1]
    if ids.size == 0:
        return t
    needed = int(pooled_positions(ids, text_config.eos_token_id, text_config.legacy_eos_pooling).max()) + 1
    return text_bucket(needed, t) if bucket else min(needed, t)

