"""SigLIP configurations: the second model family, read and written as Hugging Face ``config.json``.

Field names and defaults follow ``transformers`` 4.57 (``SiglipTextConfig``, ``SiglipVisionConfig``,
``SiglipConfig``; ``model_type`` ``siglip``), so a directory written here loads in
``transformers.SiglipModel.from_pretrained``. Fixed-resolution SigLIP 2 checkpoints use the same
architecture (only the tokenizer differs), so they are ``SiglipConfig`` too.

What differs from CLIP, and what the backends read from here:

- text: bidirectional attention (no causal mask), pooled at the **last** position, then ``head``
  (a Linear with bias, ``hidden_size -> projection_size``);
- vision: patch embedding with bias, no class token, no pre-norm; ``post_layernorm`` then the
  multi-head attention-pooling head (``vision_use_head``);
- ``gelu_pytorch_tanh``, layer norm eps 1e-6; ``logit_scale`` and ``logit_bias``, sigmoid loss.

The configs share CLIP's dict / JSON / directory machinery and transformers-style keyword handling
(unknown keys kept in ``extra``), and hash by value like CLIP's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional

from .config import (_ConfigIO, _check_act, _hf_kwargs, _nonnegative_float, _positive, _real, _section)

__all__ = ["SiglipTextConfig", "SiglipVisionConfig", "SiglipConfig", "is_siglip"]


@_hf_kwargs
@dataclass(unsafe_hash=True)
class SiglipTextConfig(_ConfigIO):
    """The SigLIP text transformer: bidirectional, pooled at the last position, then a biased head."""

    model_type: ClassVar[str] = "siglip_text_model"

    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 64
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    # transformers' defaults; SigLIP never pools on them (it pools at the last position).
    pad_token_id: Optional[int] = 1
    bos_token_id: Optional[int] = 49406
    eos_token_id: Optional[int] = 49407
    projection_size: Optional[int] = None  # None -> hidden_size, as transformers
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.projection_size is None:
            object.__setattr__(self, "projection_size", self.hidden_size)
        _positive(self, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "max_position_embeddings", "projection_size")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"SiglipTextConfig.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        _check_act(self)
        _nonnegative_float(self, "layer_norm_eps", "attention_dropout")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SiglipTextConfig":
        data = dict(data)
        if data.get("model_type") == SiglipConfig.model_type:
            return SiglipConfig.from_dict(data).text_config
        kwargs, extra = cls._split(data)
        return cls(**kwargs, extra=extra)


@_hf_kwargs
@dataclass(unsafe_hash=True)
class SiglipVisionConfig(_ConfigIO):
    """The SigLIP Vision Transformer: biased patch embedding, no class token, attention-pooling head."""

    model_type: ClassVar[str] = "siglip_vision_model"
    architecture: ClassVar[str] = "vit"

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 16
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    vision_use_head: bool = True  # transformers: absent means True
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        _positive(self, "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_channels", "image_size", "patch_size")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"SiglipVisionConfig.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.image_size < self.patch_size:  # 384 px at patch 14 is valid: 27 x 27 patches, the rest cut off
            raise ValueError(f"SiglipVisionConfig.image_size ({self.image_size}) must be at least "
                             f"patch_size ({self.patch_size})")
        if not isinstance(self.vision_use_head, bool):
            raise ValueError(f"SiglipVisionConfig.vision_use_head must be true or false, got {self.vision_use_head!r}")
        _check_act(self)
        _nonnegative_float(self, "layer_norm_eps", "attention_dropout")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_positions(self) -> int:
        """No class token: one position per patch."""
        return self.num_patches

    @property
    def output_dim(self) -> int:
        """Width of ``pooler_output`` (the image embedding: SigLIP has no visual projection)."""
        return self.hidden_size

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SiglipVisionConfig":
        data = dict(data)
        if data.get("model_type") == SiglipConfig.model_type:
            return SiglipConfig.from_dict(data).vision_config
        kwargs, extra = cls._split(data)
        return cls(**kwargs, extra=extra)


@_hf_kwargs
@dataclass(unsafe_hash=True)
class SiglipConfig(_ConfigIO):
    """A whole SigLIP (or fixed-resolution SigLIP 2): text tower, vision tower, logit scale and bias."""

    model_type: ClassVar[str] = "siglip"
    family: ClassVar[str] = "siglip"

    text_config: SiglipTextConfig = field(default_factory=SiglipTextConfig)
    vision_config: SiglipVisionConfig = field(default_factory=SiglipVisionConfig)
    initializer_factor: float = 1.0
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name, cls in (("text_config", SiglipTextConfig), ("vision_config", SiglipVisionConfig)):
            value = getattr(self, name)
            if value is None:  # transformers: None means the default tower
                value = cls()
            if isinstance(value, Mapping):
                value = cls.from_dict(value)
            if not isinstance(value, cls):
                raise ValueError(f"SiglipConfig.{name} must be a {cls.__name__}, got {type(value).__name__}")
            object.__setattr__(self, name, value)
        _real(self, "initializer_factor")
        text, vision = self.text_config.projection_size, self.vision_config.hidden_size
        if text != vision:
            raise ValueError(f"SiglipConfig: text_config.projection_size ({text}) must equal "
                             f"vision_config.hidden_size ({vision}); the two embeddings are compared directly")

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in ("text_config", "vision_config") and self.__dict__.get("_ready"):
            self.__post_init__()

    @property
    def is_resnet(self) -> bool:
        return False

    @property
    def projection_dim(self) -> int:
        """The embedding width (what CLIP calls ``projection_dim``)."""
        return self.vision_config.hidden_size

    @classmethod
    def from_text_vision_configs(cls, text_config: SiglipTextConfig, vision_config: SiglipVisionConfig,
                                 **kwargs: Any) -> "SiglipConfig":
        return cls(text_config=text_config, vision_config=vision_config, **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SiglipConfig":
        """Build from a Hugging Face ``config.json`` dict (``model_type`` ``siglip``)."""
        data = dict(data)
        mt = data.get("model_type")
        if mt in (SiglipTextConfig.model_type, SiglipVisionConfig.model_type):
            raise ValueError(f"this is a {mt} config, not a whole SigLIP config; use the tower's config class")
        if mt not in (None, cls.model_type):
            raise ValueError(f"model_type {mt!r} is not a SigLIP config (expected 'siglip')")
        text = _section(data, "text_config", "SiglipConfig")
        vision = _section(data, "vision_config", "SiglipConfig")
        kwargs, extra = cls._split(data)
        kwargs.pop("text_config", None)
        kwargs.pop("vision_config", None)
        return cls(text_config=SiglipTextConfig.from_dict(text), vision_config=SiglipVisionConfig.from_dict(vision),
                   extra=extra, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.setdefault("architectures", ["SiglipModel"])
        return out

    def summary(self) -> str:
        """One line describing the architecture."""
        v, t = self.vision_config, self.text_config
        return (f"SigLIP ViT layers={v.num_hidden_layers} width={v.hidden_size} heads={v.num_attention_heads} "
                f"patch={v.patch_size} image={v.image_size}; text layers={t.num_hidden_layers} "
                f"width={t.hidden_size} heads={t.num_attention_heads} context={t.max_position_embeddings} "
                f"vocab={t.vocab_size}; embed={self.projection_dim}")


def is_siglip(config: Any) -> bool:
    """True for a SigLIP config (whole model or a tower)."""
    return isinstance(config, (SiglipConfig, SiglipTextConfig, SiglipVisionConfig))
