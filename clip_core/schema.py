"""The canonical weight schema and the one mapping table every backend loads and saves through.

Canonical names and layouts are Hugging Face PyTorch's (Linear ``[out, in]``, Conv ``OIHW``),
e.g. ``text_model.encoder.layers.0.self_attn.q_proj.weight``. OpenAI's ModifiedResNet has no
Hugging Face form; its canonical names are OpenAI's under ``vision_model.`` (``vision_model.conv1.weight``,
``vision_model.layer1.0.bn2.running_mean``, ``vision_model.attnpool.c_proj.weight`` ...), without
``num_batches_tracked``.

:data:`RULES` is the table: for each kind of leaf (linear, conv, layer norm, batch norm, embedding,
plain parameter) the leaf name and layout transform in each backend. Paths:

- ``torch``: the canonical name itself;
- ``flax``: ``"<collection>/<path>"`` with Hugging Face Flax names, e.g.
  ``params/text_model/encoder/layers/0/self_attn/q_proj/kernel`` or
  ``batch_stats/vision_model/bn1/mean``;
- ``tf``: Hugging Face TF weight names without the model prefix and ``:0``, e.g.
  ``text_model/encoder/layers_._0/self_attn/q_proj/kernel``.

Backends turn canonical numpy dicts into their own with :func:`to_backend` and back with
:func:`from_backend`; :func:`check_weights` is the strict check with a named +/- diff.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional

import numpy as np

from .config import CLIPConfig, CLIPResNetVisionConfig, CLIPTextConfig, CLIPVisionConfig
from .siglip_config import SiglipConfig

__all__ = [
    "BACKENDS", "PARTS", "SIGLIP_PARTS", "parts_of", "Entry", "RULES", "WeightMismatchError", "schema", "parameter_shapes",
    "to_backend", "from_backend", "check_weights", "canonical_name",
]

BACKENDS = ("torch", "flax", "tf")
# part -> which top-level groups it holds
PARTS = {
    "model": ("text", "vision", "text_projection", "visual_projection", "logit_scale"),
    "text": ("text",),
    "text_with_projection": ("text", "text_projection"),
    "vision": ("vision",),
    "vision_with_projection": ("vision", "visual_projection"),
    "classification": ("vision", "classifier"),
}
# SigLIP: the text head and the vision attention-pooling head belong to their towers; no projections.
SIGLIP_PARTS = {
    "model": ("text", "vision", "logit_scale", "logit_bias"),
    "text": ("text",),
    "vision": ("vision",),
    "classification": ("vision", "classifier"),
}


def parts_of(config) -> dict:
    """The parts a config's family has (:data:`PARTS` for CLIP, :data:`SIGLIP_PARTS` for SigLIP)."""
    return SIGLIP_PARTS if isinstance(config, SiglipConfig) else PARTS

_TRANSFORMS = ("identity", "transpose", "conv", "scalar_to_1")


@dataclass(frozen=True)
class Rule:
    """How one kind of leaf is named and laid out in each backend."""

    module: str  # regex on the module part of the canonical name ('' = a bare parameter)
    leaf: str  # the canonical leaf ('weight', 'bias', 'running_mean', ...)
    flax: str  # '<collection>:<leaf>'
    tf: str
    transform: str


_LN = r"(layer_norm1|layer_norm2|final_layer_norm|pre_layrnorm|post_layernorm|layernorm)"
_BN = r"(bn\d|downsample\.1)"
_CONV = r"(patch_embedding|conv\d|downsample\.0)"
_LINEAR = r"(\w+_proj|fc1|fc2|visual_projection|text_projection|classifier|head)"

#: The one mapping table. First match wins.
RULES: tuple[Rule, ...] = (
    Rule(r"token_embedding", "weight", "params:embedding", "weight", "identity"),
    Rule(r"position_embedding", "weight", "params:embedding", "embeddings", "identity"),
    Rule(_LN, "weight", "params:scale", "gamma", "identity"),
    Rule(_LN, "bias", "params:bias", "beta", "identity"),
    Rule(_BN, "weight", "params:scale", "gamma", "identity"),
    Rule(_BN, "bias", "params:bias", "beta", "identity"),
    Rule(_BN, "running_mean", "batch_stats:mean", "moving_mean", "identity"),
    Rule(_BN, "running_var", "batch_stats:var", "moving_variance", "identity"),
    Rule(_CONV, "weight", "params:kernel", "kernel", "conv"),
    Rule(_CONV, "bias", "params:bias", "bias", "identity"),  # SigLIP's patch embedding
    # SigLIP's attention-pooling head: a learned query and torch's packed q/k/v projection
    Rule("head", "probe", "params:probe", "probe", "identity"),
    Rule("attention", "in_proj_weight", "params:in_proj/kernel", "in_proj/kernel", "transpose"),
    Rule("attention", "in_proj_bias", "params:in_proj/bias", "in_proj/bias", "identity"),
    Rule(_LINEAR, "weight", "params:kernel", "kernel", "transpose"),
    Rule(_LINEAR, "bias", "params:bias", "bias", "identity"),
    Rule("", "logit_scale", "params:logit_scale", "logit_scale", "scalar_to_1"),
    Rule("", "logit_bias", "params:logit_bias", "logit_bias", "scalar_to_1"),  # SigLIP
    Rule("", r"(class_embedding|positional_embedding)", "params:{leaf}", "{leaf}", "identity"),
)


@dataclass(frozen=True)
class Entry:
    """One canonical tensor: its shape and its path and transform in every backend."""

    name: str
    shape: tuple
    torch: str
    flax: str
    tf: str
    transform: str

    def path(self, backend: str) -> str:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        return getattr(self, backend)

    def backend_shape(self, backend: str) -> tuple:
        return tuple(_forward(np.empty(self.shape, np.float32), self.transform if backend != "torch" else "identity",
                              backend).shape)


class WeightMismatchError(ValueError):
    """Missing, unexpected or mis-shaped tensors; the message is a +/- diff naming each one."""

    def __init__(self, missing=(), unexpected=(), mismatched=(), source: str = "weights"):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        lines = [f"{source} do not match the model:"]
        lines += [f"  - {n}  (missing)" for n in self.missing]
        lines += [f"  + {n}  (unexpected)" for n in self.unexpected]
        lines += [f"  ~ {n}: expected shape {want}, got {got}" for n, want, got in self.mismatched]
        super().__init__("\n".join(lines))


def _split_name(name: str) -> tuple[str, str]:
    module, _, leaf = name.rpartition(".")
    return module, leaf


def _match(name: str) -> Rule:
    module, leaf = _split_name(name)
    last = module.rsplit(".", 1)[-1] if module else ""
    tail2 = ".".join(module.split(".")[-2:]) if module else ""
    for rule in RULES:
        if not re.fullmatch(rule.leaf, leaf):
            continue
        if rule.module == "" or re.fullmatch(rule.module, last) or re.fullmatch(rule.module, tail2):
            return rule
    raise KeyError(f"no mapping rule for canonical name {name!r}")


def _flax_path(module: str) -> str:
    return module.replace(".", "/")


def _tf_path(module: str) -> str:
    # 'encoder.layers.0.mlp' -> 'encoder/layers_._0/mlp' (Hugging Face TF's list naming)
    parts: list[str] = []
    for part in module.split(".") if module else []:
        if part.isdigit() and parts:
            parts[-1] += f"_._{part}"
        else:
            parts.append(part)
    return "/".join(parts)


def _entry(name: str, shape: tuple) -> Entry:
    rule = _match(name)
    module, leaf = _split_name(name)
    collection, fleaf = rule.flax.split(":")
    fleaf, tleaf = fleaf.format(leaf=leaf), rule.tf.format(leaf=leaf)
    flax = "/".join(p for p in (collection, _flax_path(module), fleaf) if p)
    tf = "/".join(p for p in (_tf_path(module), tleaf) if p)
    return Entry(name, tuple(int(s) for s in shape), name, flax, tf, rule.transform)


# ----------------------------------------------------------------------------- canonical shapes
def _text_shapes(c: CLIPTextConfig) -> Iterator[tuple[str, tuple]]:
    d, p = c.hidden_size, "text_model"
    yield f"{p}.embeddings.token_embedding.weight", (c.vocab_size, d)
    yield f"{p}.embeddings.position_embedding.weight", (c.max_position_embeddings, d)
    yield from _encoder_shapes(f"{p}.encoder", c.num_hidden_layers, d, c.intermediate_size)
    yield from _ln(f"{p}.final_layer_norm", d)


def _encoder_shapes(prefix: str, layers: int, d: int, ff: int) -> Iterator[tuple[str, tuple]]:
    for i in range(layers):
        lp = f"{prefix}.layers.{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            yield from _linear(f"{lp}.self_attn.{proj}", d, d)
        yield from _ln(f"{lp}.layer_norm1", d)
        yield from _linear(f"{lp}.mlp.fc1", d, ff)
        yield from _linear(f"{lp}.mlp.fc2", ff, d)
        yield from _ln(f"{lp}.layer_norm2", d)


def _linear(prefix: str, n_in: int, n_out: int, bias: bool = True) -> Iterator[tuple[str, tuple]]:
    yield f"{prefix}.weight", (n_out, n_in)
    if bias:
        yield f"{prefix}.bias", (n_out,)


def _ln(prefix: str, d: int) -> Iterator[tuple[str, tuple]]:
    yield f"{prefix}.weight", (d,)
    yield f"{prefix}.bias", (d,)


def _bn(prefix: str, d: int) -> Iterator[tuple[str, tuple]]:
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        yield f"{prefix}.{leaf}", (d,)


def _vit_shapes(c: CLIPVisionConfig) -> Iterator[tuple[str, tuple]]:
    d, p = c.hidden_size, "vision_model"
    yield f"{p}.embeddings.class_embedding", (d,)
    yield f"{p}.embeddings.patch_embedding.weight", (d, c.num_channels, c.patch_size, c.patch_size)
    yield f"{p}.embeddings.position_embedding.weight", (c.num_positions, d)
    yield from _ln(f"{p}.pre_layrnorm", d)
    yield from _encoder_shapes(f"{p}.encoder", c.num_hidden_layers, d, c.intermediate_size)
    yield from _ln(f"{p}.post_layernorm", d)


def resnet_blocks(c: CLIPResNetVisionConfig) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield ``(stage, block, inplanes, planes, stride)`` for every Bottleneck, as OpenAI builds them."""
    inplanes = c.width
    for stage, depth in enumerate(c.layers):
        planes = c.width * 2 ** stage
        for block in range(depth):
            stride = (1 if stage == 0 else 2) if block == 0 else 1
            yield stage + 1, block, inplanes, planes, stride
            inplanes = planes * 4


def _resnet_shapes(c: CLIPResNetVisionConfig) -> Iterator[tuple[str, tuple]]:
    p, w, ch = "vision_model", c.width, c.num_channels
    yield f"{p}.conv1.weight", (w // 2, ch, 3, 3)
    yield from _bn(f"{p}.bn1", w // 2)
    yield f"{p}.conv2.weight", (w // 2, w // 2, 3, 3)
    yield from _bn(f"{p}.bn2", w // 2)
    yield f"{p}.conv3.weight", (w, w // 2, 3, 3)
    yield from _bn(f"{p}.bn3", w)
    for stage, block, inplanes, planes, stride in resnet_blocks(c):
        bp = f"{p}.layer{stage}.{block}"
        yield f"{bp}.conv1.weight", (planes, inplanes, 1, 1)
        yield from _bn(f"{bp}.bn1", planes)
        yield f"{bp}.conv2.weight", (planes, planes, 3, 3)
        yield from _bn(f"{bp}.bn2", planes)
        yield f"{bp}.conv3.weight", (planes * 4, planes, 1, 1)
        yield from _bn(f"{bp}.bn3", planes * 4)
        if stride > 1 or inplanes != planes * 4:
            yield f"{bp}.downsample.0.weight", (planes * 4, inplanes, 1, 1)
            yield from _bn(f"{bp}.downsample.1", planes * 4)
    e = c.embed_dim
    yield f"{p}.attnpool.positional_embedding", (c.grid_size ** 2 + 1, e)
    for proj in ("k_proj", "q_proj", "v_proj"):
        yield from _linear(f"{p}.attnpool.{proj}", e, e)
    yield from _linear(f"{p}.attnpool.c_proj", e, c.projection_dim)


def _group_shapes(config: CLIPConfig, group: str, num_labels: Optional[int]) -> Iterator[tuple[str, tuple]]:
    if isinstance(config, SiglipConfig):
        from .siglip_schema import siglip_group_shapes

        yield from siglip_group_shapes(config, group, num_labels)
        return
    v = config.vision_config
    if group == "text":
        yield from _text_shapes(config.text_config)
    elif group == "vision":
        yield from (_resnet_shapes(v) if config.is_resnet else _vit_shapes(v))
    elif group == "text_projection":
        yield from _linear("text_projection", config.text_config.hidden_size, config.projection_dim, bias=False)
    elif group == "visual_projection":
        if not config.is_resnet:  # the ResNet attention pool already projects
            yield from _linear("visual_projection", v.hidden_size, config.projection_dim, bias=False)
    elif group == "logit_scale":
        yield "logit_scale", ()
    elif group == "classifier":
        if not num_labels:
            raise ValueError("the classification part needs num_labels > 0")
        yield from _linear("classifier", v.hidden_size, num_labels)


def schema(config: CLIPConfig, part: str = "model", num_labels: Optional[int] = None) -> dict[str, Entry]:
    """Every canonical tensor of ``part`` for ``config``, in a fixed order, with its backend paths.

    ``part`` is one of :data:`PARTS`: ``model`` (CLIPModel), ``text``, ``text_with_projection``,
    ``vision``, ``vision_with_projection``, ``classification`` (needs ``num_labels``); a SigLIP config has
    the parts of :data:`SIGLIP_PARTS`.
    """
    if not isinstance(config, (CLIPConfig, SiglipConfig)):
        raise TypeError(f"schema() needs a CLIPConfig or SiglipConfig, got {type(config).__name__}")
    parts = parts_of(config)
    if part not in parts:
        raise ValueError(f"unknown part {part!r} for {type(config).__name__}; expected one of {sorted(parts)}")
    return dict(_schema(config, part, num_labels))  # a copy: the cached one stays intact


@functools.lru_cache(maxsize=64)
def _schema(config: CLIPConfig, part: str, num_labels: Optional[int]) -> dict[str, Entry]:
    # Configs are frozen and hashable, so a load / save pair builds the table once.
    out: dict[str, Entry] = {}
    for group in parts_of(config)[part]:
        for name, shape in _group_shapes(config, group, num_labels):
            out[name] = _entry(name, shape)
    return out


def parameter_shapes(config: CLIPConfig, part: str = "model", num_labels: Optional[int] = None) -> dict[str, tuple]:
    """``{canonical name: shape}`` for ``part`` of ``config``."""
    return {n: e.shape for n, e in schema(config, part, num_labels).items()}


def canonical_name(path: str, backend: str, config: CLIPConfig, part: str = "model",
                   num_labels: Optional[int] = None) -> str:
    """The canonical name of a backend path (the table inverted)."""
    for entry in schema(config, part, num_labels).values():
        if entry.path(backend) == path:
            return entry.name
    raise KeyError(f"{path!r} is no {backend} parameter of this {part}")


# ----------------------------------------------------------------------------- layout transforms
def _forward(a: np.ndarray, transform: str, backend: str) -> np.ndarray:
    if backend == "torch" or transform == "identity":
        return a
    if transform == "transpose":
        return np.ascontiguousarray(a.T)
    if transform == "conv":  # OIHW -> HWIO
        return np.ascontiguousarray(a.transpose(2, 3, 1, 0))
    if transform == "scalar_to_1":  # HF TF keeps logit_scale as shape (1,)
        return a.reshape(1) if backend == "tf" else a.reshape(())
    raise ValueError(f"unknown transform {transform!r}")


def _inverse(a: np.ndarray, transform: str, backend: str) -> np.ndarray:
    if backend == "torch" or transform == "identity":
        return a
    if transform == "transpose":
        return np.ascontiguousarray(a.T)
    if transform == "conv":  # HWIO -> OIHW
        return np.ascontiguousarray(a.transpose(3, 2, 0, 1))
    if transform == "scalar_to_1":
        return a.reshape(())
    raise ValueError(f"unknown transform {transform!r}")


def check_weights(weights: Mapping[str, np.ndarray], config: CLIPConfig, part: str = "model",
                  num_labels: Optional[int] = None, source: str = "weights") -> None:
    """Raise :class:`WeightMismatchError` unless ``weights`` has exactly the canonical tensors."""
    expected = parameter_shapes(config, part, num_labels)
    missing = [n for n in expected if n not in weights]
    unexpected = sorted(n for n in weights if n not in expected)
    mismatched = [(n, expected[n], tuple(np.shape(weights[n]))) for n in expected
                  if n in weights and tuple(np.shape(weights[n])) != expected[n]]
    if missing or unexpected or mismatched:
        raise WeightMismatchError(missing, unexpected, mismatched, source)


def to_backend(weights: Mapping[str, np.ndarray], config: CLIPConfig, backend: str, part: str = "model",
               num_labels: Optional[int] = None, source: str = "weights") -> dict[str, np.ndarray]:
    """Canonical ``{name: array}`` -> ``{backend path: array}`` in the backend's layout (strict)."""
    check_weights(weights, config, part, num_labels, source)
    return {e.path(backend): _forward(np.asarray(weights[n]), e.transform, backend)
            for n, e in schema(config, part, num_labels).items()}


def from_backend(params: Mapping[str, np.ndarray], config: CLIPConfig, backend: str, part: str = "model",
                 num_labels: Optional[int] = None, source: str = "backend parameters") -> dict[str, np.ndarray]:
    """``{backend path: array}`` -> canonical ``{name: array}`` (strict, with a named diff)."""
    entries = schema(config, part, num_labels)
    by_path = {e.path(backend): e for e in entries.values()}
    missing = [p for p in by_path if p not in params]
    unexpected = sorted(p for p in params if p not in by_path)
    mismatched = [(p, e.backend_shape(backend), tuple(np.shape(params[p]))) for p, e in by_path.items()
                  if p in params and tuple(np.shape(params[p])) != e.backend_shape(backend)]
    if missing or unexpected or mismatched:
        raise WeightMismatchError(missing, unexpected, mismatched, source)
    # reshape: a (1,) logit scale / bias (SigLIP's canonical shape) comes back from a backend's scalar
    return {e.name: _inverse(np.asarray(params[p]), e.transform, backend).reshape(e.shape)
            for p, e in by_path.items()}
