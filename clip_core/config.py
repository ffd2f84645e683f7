"""CLIP configurations: validated dataclasses that read and write Hugging Face ``config.json``.

Like transformers' configs they are mutable (``config.projection_dim = 256``; assignments are not
validated, except that a CLIPConfig keeps ``projection_dim`` equal in its towers) and take
PretrainedConfig's keyword arguments (``num_labels``, ``id2label``, ``output_hidden_states``,
``torch_dtype`` or any other key, kept in ``extra``); they hash by value, so caches keyed on a config
see a changed config as a new key.

Field names and defaults follow ``transformers`` 4.x (``CLIPTextConfig``, ``CLIPVisionConfig``,
``CLIPConfig``) so a directory written here loads in ``transformers.CLIPModel.from_pretrained``.
OpenAI's ModifiedResNet tower has no Hugging Face config; :class:`CLIPResNetVisionConfig` adds its
own keys under ``vision_config`` with ``model_type = "clip_resnet_vision_model"``.

Keys this module does not know are never dropped: they are kept in ``extra`` and written back.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Mapping, Union

__all__ = [
    "CLIPTextConfig",
    "CLIPVisionConfig",
    "CLIPResNetVisionConfig",
    "CLIPConfig",
    "VisionConfig",
    "CONFIG_NAME",
]

CONFIG_NAME = "config.json"
# The activations every backend implements. A config accepts any name (as transformers does: its
# ACT2FN has "silu", "gelu_fast", "relu6", ... and the docs name "selu"); a backend lacking one raises
# a clear error naming it when the model is built.
_ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
# Keys transformers writes on every config that carry no architecture information.
_HF_BOOKKEEPING = ("transformers_version", "_name_or_path", "architectures", "torch_dtype", "dtype")


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{type(cfg).__name__}.{name} must be a positive integer, got {value!r}")


def _real(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            raise ValueError(f"{type(cfg).__name__}.{name} must be a number, got {value!r}")


def _section(data: dict, key: str, owner: str) -> dict:
    """``data.pop(key)`` as a dict: absent / null gives ``{}``; anything but a JSON object is an error."""
    value = data.pop(key, None)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{owner}: '{key}' must be a JSON object, got {type(value).__name__}")
    return dict(value)


def _check_act(cfg: Any) -> None:
    """``hidden_act`` must name an activation (any name: backends check the ones they implement)."""
    if not isinstance(cfg.hidden_act, str) or not cfg.hidden_act:
        raise ValueError(f"{type(cfg).__name__}.hidden_act must be an activation name such as {_ACTIVATIONS}, "
                         f"got {cfg.hidden_act!r}")


def _nonnegative_float(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{type(cfg).__name__}.{name} must be a non-negative number, got {value!r}")


class _ConfigIO:
    """Dict / JSON / directory round trip shared by every config class."""

    model_type: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the Hugging Face ``config.json`` form (unknown keys from ``extra`` included)."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if isinstance(value, _ConfigIO):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        out["model_type"] = self.model_type
        out.update(self.extra)  # type: ignore[attr-defined]
        return out

    @classmethod
    def _split(cls, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        known = {f.name for f in fields(cls)} - {"extra"}  # type: ignore[arg-type]
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k != "model_type"}
        return kwargs, extra

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: Union[str, os.PathLike]) -> None:
        from .io import atomic_write_bytes

        atomic_write_bytes(path, self.to_json_string().encode("utf-8"))

    @classmethod
    def from_json_file(cls, path: Union[str, os.PathLike]):
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no config file at {path}") from None
        except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, huge integers
            raise ValueError(f"{path} is not valid JSON: {str(err)[:200]}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError, AttributeError, RecursionError) as err:  # wrong JSON types: name file + key
            raise ValueError(f"{path}: {str(err)[:300]}") from None

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike]):
        """Read ``config.json`` from a directory (or the file itself)."""
        path = Path(path)
        return cls.from_json_file(path / CONFIG_NAME if path.is_dir() else path)

    def save_pretrained(self, directory: Union[str, os.PathLike]) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.to_json_file(directory / CONFIG_NAME)
        return directory / CONFIG_NAME

    def replace(self, **changes: Any):
        """A copy with some fields changed (validated again); nothing mutable is shared with ``self``."""
        new = dataclasses.replace(self, **changes)  # type: ignore[type-var]
        for f in fields(new):  # type: ignore[arg-type]
            value = getattr(new, f.name)
            if f.name not in changes and isinstance(value, _ConfigIO) and value is getattr(self, f.name):
                object.__setattr__(new, f.name, copy.deepcopy(value))
        return new

    # -- transformers' PretrainedConfig behaviour: mutable, extra attributes kept in ``extra`` -----------
    # Configs are mutable like transformers' (``config.projection_dim = 256``). They hash by value (the
    # fields, not ``extra``) so that caches keyed on a config (schema's lru_cache) see a changed config
    # as a new key; assignments are not validated, as in transformers (the model build checks them).
    def __setattr__(self, name: str, value: Any) -> None:
        cls = type(self)
        if name in cls.__dataclass_fields__ or name.startswith("_") or hasattr(cls, name):  # type: ignore[attr-defined]
            object.__setattr__(self, name, value)
            return
        extra = self.__dict__.setdefault("extra", {})
        if name == "id2label" and isinstance(value, Mapping):
            value = {int(k) if _int_like(k) else k: v for k, v in value.items()}
        elif name in ("torch_dtype", "dtype") and value is not None and not isinstance(value, str):
            value = str(value).replace("torch.", "")  # torch.float16 -> "float16", as transformers writes it
        extra[name] = value

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: transformers-style attributes live in ``extra``.
        if name.startswith("__") or name == "extra":
            raise AttributeError(name)
        extra = self.__dict__.get("extra") or {}
        if name in extra:
            value = extra[name]
            if name == "id2label" and isinstance(value, Mapping) and any(isinstance(k, str) for k in value):
                return {int(k) if _int_like(k) else k: v for k, v in value.items()}
            if name in ("torch_dtype", "dtype") and isinstance(value, str) and "torch" in sys.modules:
                return getattr(sys.modules["torch"], value, value)
            return value
        if name == "label2id" and "id2label" in extra:
            return None  # transformers leaves label2id unset when only id2label is given
        if name in ("id2label", "label2id"):
            n = self.num_labels
            return ({i: f"LABEL_{i}" for i in range(n)} if name == "id2label"
                    else {f"LABEL_{i}": i for i in range(n)})
        if name in _PRETRAINED_DEFAULTS:
            return copy.copy(_PRETRAINED_DEFAULTS[name])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def num_labels(self) -> int:
        """Classifier width, as transformers: ``len(id2label)`` (2 when no labels are set)."""
        return num_labels_of(self)  # type: ignore[arg-type]

    @num_labels.setter
    def num_labels(self, num_labels: int) -> None:
        extra = self.__dict__.setdefault("extra", {})
        extra.pop("num_labels", None)
        if len(extra.get("id2label") or {}) != num_labels:
            extra["id2label"] = {i: f"LABEL_{i}" for i in range(num_labels)}
            extra["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}

    @property
    def use_return_dict(self) -> bool:
        return bool(self.return_dict) and not self.torchscript


def _int_like(key: Any) -> bool:
    return isinstance(key, int) or (isinstance(key, str) and key.lstrip("-").isdigit())


# transformers' PretrainedConfig attributes (and their defaults) that CLIP configs answer without storing.
_PRETRAINED_DEFAULTS: dict = {
    "return_dict": True, "output_hidden_states": False, "output_attentions": False, "torchscript": False,
    "torch_dtype": None, "dtype": None, "pruned_heads": {}, "tie_word_embeddings": True,
    "chunk_size_feed_forward": 0, "is_encoder_decoder": False, "is_decoder": False, "add_cross_attention": False,
    "tie_encoder_decoder": False, "architectures": None, "finetuning_task": None, "tokenizer_class": None,
    "prefix": None, "task_specific_params": None, "problem_type": None, "bos_token_id": None,
    "eos_token_id": None, "pad_token_id": None, "sep_token_id": None, "decoder_start_token_id": None,
    "cross_attention_hidden_size": None, "name_or_path": "",
}


def _hf_kwargs(cls):
    """Let a config dataclass take transformers' extra keyword arguments (``num_labels``, ``id2label``,
    ``output_hidden_states``, ``torch_dtype``, any unknown key ...): they are kept in ``extra``."""
    init = cls.__init__
    names = {f.name for f in fields(cls)}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        hf = {k: kwargs.pop(k) for k in list(kwargs) if k not in names}
        if hf.get("model_type") in (None, cls.model_type):
            hf.pop("model_type", None)
        init(self, *args, **kwargs)
        object.__setattr__(self, "extra", copy.deepcopy(dict(self.extra)))  # never shared with the caller
        if "id2label" in hf:  # transformers: id2label wins over num_labels
            hf.pop("num_labels", None)
        for key in sorted(hf, key=lambda k: k != "id2label"):
            setattr(self, key, hf[key])
        object.__setattr__(self, "_ready", True)

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__doc__ = init.__doc__
    cls.__init__ = __init__
    return cls


@_hf_kwargs
@dataclass(unsafe_hash=True)
class CLIPTextConfig(_ConfigIO):
    """The text transformer: causal self-attention over BPE tokens, pooled at the EOT token."""

    model_type: ClassVar[str] = "clip_text_model"

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    pad_token_id: int = 1
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        _positive(self, "vocab_size", "hidden_size", "intermediate_size", "projection_dim",
                  "num_hidden_layers", "num_attention_heads", "max_position_embeddings")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"CLIPTextConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})")
        _check_act(self)
        _nonnegative_float(self, "layer_norm_eps", "attention_dropout", "dropout")
        _real(self, "initializer_range", "initializer_factor")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool)
                                          and 0 <= value < self.vocab_size):
                raise ValueError(f"CLIPTextConfig.{name} must be a token id below vocab_size, got {value!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def legacy_eos_pooling(self) -> bool:
        """True for old HF configs with ``eos_token_id == 2``: pool at ``argmax(input_ids)``."""
        return self.eos_token_id == 2

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CLIPTextConfig":
        data = dict(data)
        if data.get("model_type") == "clip":  # a whole CLIPConfig: take its text part
            return CLIPConfig.from_dict(data).text_config
        kwargs, extra = cls._split(data)
        return cls(**kwargs, extra=extra)


@_hf_kwargs
@dataclass(unsafe_hash=True)
class CLIPVisionConfig(_ConfigIO):
    """The Vision Transformer tower (patch embedding, class token, pre/post layer norm)."""

    model_type: ClassVar[str] = "clip_vision_model"
    architecture: ClassVar[str] = "vit"

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        _positive(self, "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
                  "num_attention_heads", "num_channels", "image_size", "patch_size")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"CLIPVisionConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"CLIPVisionConfig.image_size ({self.image_size}) must be divisible by "
                f"patch_size ({self.patch_size})")
        _check_act(self)
        _nonnegative_float(self, "layer_norm_eps", "attention_dropout", "dropout")
        _real(self, "initializer_range", "initializer_factor")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_positions(self) -> int:
        return self.num_patches + 1

    @property
    def output_dim(self) -> int:
        """Width of ``pooler_output`` (before ``visual_projection``)."""
        return self.hidden_size

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CLIPVisionConfig":
        data = dict(data)
        if data.get("model_type") == "clip":
            return CLIPConfig.from_dict(data).vision_config  # type: ignore[return-value]
        kwargs, extra = cls._split(data)
        return cls(**kwargs, extra=extra)


@_hf_kwargs
@dataclass(unsafe_hash=True)
class CLIPResNetVisionConfig(_ConfigIO):
    """OpenAI's ModifiedResNet: 3-conv stem, anti-aliased Bottlenecks, attention pooling.

    ``layers`` are the four stage depths, ``width`` the stem width (the last stage has
    ``width * 32`` channels), ``num_attention_heads`` the attention-pool heads
    (OpenAI: ``width * 32 // 64``) and ``projection_dim`` the attention-pool output, which *is*
    the image embedding (a ResNet CLIP has no separate ``visual_projection``).
    """

    model_type: ClassVar[str] = "clip_resnet_vision_model"
    architecture: ClassVar[str] = "resnet"

    layers: tuple = (3, 4, 6, 3)
    width: int = 64
    num_attention_heads: int = 32
    projection_dim: int = 1024
    image_size: int = 224
    num_channels: int = 3
    batch_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        layers = self.layers
        if isinstance(layers, list):
            object.__setattr__(self, "layers", tuple(layers))
        if (not isinstance(self.layers, tuple) or len(self.layers) != 4
                or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in self.layers)):
            raise ValueError(f"CLIPResNetVisionConfig.layers must be four positive integers, got {layers!r}")
        _positive(self, "width", "num_attention_heads", "projection_dim", "image_size", "num_channels")
        if self.image_size % 32:
            raise ValueError(f"CLIPResNetVisionConfig.image_size ({self.image_size}) must be divisible by 32")
        if self.embed_dim % self.num_attention_heads:
            raise ValueError(
                f"CLIPResNetVisionConfig: the attention-pool width ({self.embed_dim} = width*32) must be "
                f"divisible by num_attention_heads ({self.num_attention_heads})")
        _nonnegative_float(self, "batch_norm_eps")
        _real(self, "initializer_range", "initializer_factor")

    @property
    def embed_dim(self) -> int:
        """Channels of the last stage, the attention-pool width."""
        return self.width * 32

    @property
    def hidden_size(self) -> int:
        """The width of ``last_hidden_state`` (the last stage's channels)."""
        return self.embed_dim

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_attention_heads

    @property
    def grid_size(self) -> int:
        return self.image_size // 32

    @property
    def output_dim(self) -> int:
        """Width of ``pooler_output`` (the attention-pool output)."""
        return self.projection_dim

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CLIPResNetVisionConfig":
        kwargs, extra = cls._split(dict(data))
        return cls(**kwargs, extra=extra)


VisionConfig = Union[CLIPVisionConfig, CLIPResNetVisionConfig]


def vision_config_from_dict(data: Mapping[str, Any]) -> VisionConfig:
    """Build the ViT or ResNet vision config a ``vision_config`` dict describes."""
    if data.get("model_type") == CLIPResNetVisionConfig.model_type or "layers" in data:
        return CLIPResNetVisionConfig.from_dict(data)
    return CLIPVisionConfig.from_dict(data)


@_hf_kwargs
@dataclass(unsafe_hash=True)
class CLIPConfig(_ConfigIO):
    """A whole CLIP: text tower, vision tower (ViT or ResNet), projections and logit scale."""

    model_type: ClassVar[str] = "clip"
    family: ClassVar[str] = "clip"

    text_config: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    vision_config: Any = field(default_factory=CLIPVisionConfig)
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592
    initializer_factor: float = 1.0
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.text_config is None:  # transformers: None means the default tower
            object.__setattr__(self, "text_config", CLIPTextConfig())
        if self.vision_config is None:
            object.__setattr__(self, "vision_config", CLIPVisionConfig())
        if isinstance(self.text_config, Mapping):
            object.__setattr__(self, "text_config", CLIPTextConfig.from_dict(self.text_config))
        if isinstance(self.vision_config, Mapping):
            object.__setattr__(self, "vision_config", vision_config_from_dict(self.vision_config))
        if not isinstance(self.text_config, CLIPTextConfig):
            raise ValueError(f"CLIPConfig.text_config must be a CLIPTextConfig, got {type(self.text_config).__name__}")
        if not isinstance(self.vision_config, (CLIPVisionConfig, CLIPResNetVisionConfig)):
            raise ValueError(
                f"CLIPConfig.vision_config must be a CLIPVisionConfig or CLIPResNetVisionConfig, "
                f"got {type(self.vision_config).__name__}")
        _positive(self, "projection_dim")
        _real(self, "logit_scale_init_value", "initializer_factor")
        if self.text_config.projection_dim != self.projection_dim:
            object.__setattr__(self, "text_config", dataclasses.replace(self.text_config, projection_dim=self.projection_dim))
        if self.vision_config.projection_dim != self.projection_dim:
            object.__setattr__(self, "vision_config",
                               dataclasses.replace(self.vision_config, projection_dim=self.projection_dim))

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in ("text_config", "vision_config", "projection_dim") and self.__dict__.get("_ready"):
            self.__post_init__()  # towers from dicts, projection_dim kept equal in all three configs

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.vision_config, CLIPResNetVisionConfig)

    @classmethod
    def from_text_vision_configs(cls, text_config: CLIPTextConfig, vision_config: VisionConfig,
                                 **kwargs: Any) -> "CLIPConfig":
        kwargs.setdefault("projection_dim", vision_config.projection_dim)
        return cls(text_config=text_config, vision_config=vision_config, **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CLIPConfig":
        """Build from a Hugging Face ``config.json`` dict, legacy ``*_config_dict`` keys included.

        Hugging Face gives ``text_config_dict`` / ``vision_config_dict`` precedence over
        ``text_config`` / ``vision_config``; so do we.
        """
        data = dict(data)
        mt = data.get("model_type")
        if isinstance(mt, str) and mt in (CLIPTextConfig.model_type, CLIPVisionConfig.model_type,
                                          CLIPResNetVisionConfig.model_type):
            raise ValueError(f"this is a {mt} config, not a whole CLIP config; use the tower's config class")
        text = _section(data, "text_config", "CLIPConfig")
        text.update(_section(data, "text_config_dict", "CLIPConfig"))
        vision = _section(data, "vision_config", "CLIPConfig")
        vision.update(_section(data, "vision_config_dict", "CLIPConfig"))
        kwargs, extra = cls._split(data)
        kwargs.pop("text_config", None)
        kwargs.pop("vision_config", None)
        proj = kwargs.get("projection_dim", text.get("projection_dim", vision.get("projection_dim", 512)))
        kwargs["projection_dim"] = proj
        text.setdefault("projection_dim", proj)
        vision.setdefault("projection_dim", proj)
        return cls(text_config=CLIPTextConfig.from_dict(text), vision_config=vision_config_from_dict(vision),
                   extra=extra, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.setdefault("architectures", ["CLIPModel"])
        return out

    def summary(self) -> str:
        """One line describing the architecture."""
        v, t = self.vision_config, self.text_config
        if self.is_resnet:
            vis = f"ResNet layers={list(v.layers)} width={v.width} image={v.image_size}"
        else:
            vis = (f"ViT layers={v.num_hidden_layers} width={v.hidden_size} heads={v.num_attention_heads} "
                   f"patch={v.patch_size} image={v.image_size}")
        return (f"{vis}; text layers={t.num_hidden_layers} width={t.hidden_size} heads={t.num_attention_heads} "
                f"context={t.max_position_embeddings} act={t.hidden_act}; embed={self.projection_dim}")


def as_clip_config(config: Any) -> CLIPConfig:
    """A :class:`CLIPConfig` from a CLIPConfig, a lone tower config (the other tower gets defaults)
    or a ``config.json`` dict — what every backend's model constructor accepts."""
    if isinstance(config, CLIPConfig):
        return config
    if isinstance(config, Mapping):
        return CLIPConfig.from_dict(config)
    if isinstance(config, CLIPTextConfig):
        return CLIPConfig(text_config=config, projection_dim=config.projection_dim)
    if isinstance(config, (CLIPVisionConfig, CLIPResNetVisionConfig)):
        return CLIPConfig(vision_config=config, projection_dim=config.projection_dim)
    raise TypeError(f"expected a CLIPConfig (or a tower config / dict), got {type(config).__name__}")


def num_labels_of(config: CLIPConfig) -> int:
    """Classifier width: ``extra['num_labels']``, else ``len(extra['id2label'])``, else 2 (as HF)."""
    extra = config.extra or {}
    if extra.get("num_labels"):
        return int(extra["num_labels"])
    if extra.get("id2label"):
        return len(extra["id2label"])
    return 2


def with_labels(config: CLIPConfig, num_labels: int) -> CLIPConfig:
    """``config`` with ``id2label`` / ``label2id`` for ``num_labels`` classes (kept when they fit)."""
    extra = dict(config.extra)
    if len(extra.get("id2label") or {}) != num_labels:
        extra["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        extra["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
    extra.pop("num_labels", None)
    return dataclasses.replace(config, extra=extra)
