"""Output containers shared by every backend: dataclasses of framework arrays.

They behave like Hugging Face ``ModelOutput``: attribute access (``out.pooler_output``), key
access (``out["pooler_output"]``), integer access and ``to_tuple()`` over the fields that are
not ``None``, in declaration order.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterator, Optional, Tuple

__all__ = [
    "ModelOutput", "BaseModelOutputWithPooling", "CLIPTextModelOutput", "CLIPVisionModelOutput",
    "CLIPOutput", "ImageClassifierOutput",
]


@dataclass
class ModelOutput:
    """Base class: a dataclass with mapping-style and tuple-style access."""

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self) -> Tuple[Any, ...]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        if key not in {f.name for f in fields(self)}:
            raise KeyError(f"{type(self).__name__} has no field {key!r}; fields: {[f.name for f in fields(self)]}")
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default) if key in self.keys() else default


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    """A tower's output: ``last_hidden_state`` (B, T, D) — for a ResNet (B, C, H, W) — and
    ``pooler_output`` (B, D): EOT token (text), class token after ``post_layernorm`` (ViT) or the
    attention pool (ResNet)."""

    last_hidden_state: Any = None
    pooler_output: Any = None
    hidden_states: Optional[Tuple[Any, ...]] = None
    attentions: Optional[Tuple[Any, ...]] = None


@dataclass
class CLIPTextModelOutput(ModelOutput):
    text_embeds: Any = None
    last_hidden_state: Any = None
    hidden_states: Optional[Tuple[Any, ...]] = None
    attentions: Optional[Tuple[Any, ...]] = None


@dataclass
class CLIPVisionModelOutput(ModelOutput):
    image_embeds: Any = None
    last_hidden_state: Any = None
    hidden_states: Optional[Tuple[Any, ...]] = None
    attentions: Optional[Tuple[Any, ...]] = None


@dataclass
class CLIPOutput(ModelOutput):
    """``logits_per_image`` (B_img, B_txt) = exp(logit_scale) * cosine similarity; embeddings are
    L2-normalised; ``loss`` is the symmetric contrastive loss when ``return_loss=True``."""

    loss: Any = None
    logits_per_image: Any = None
    logits_per_text: Any = None
    text_embeds: Any = None
    image_embeds: Any = None
    text_model_output: Optional[BaseModelOutputWithPooling] = None
    vision_model_output: Optional[BaseModelOutputWithPooling] = None


@dataclass
class ImageClassifierOutput(ModelOutput):
    loss: Any = None
    logits: Any = None
    hidden_states: Optional[Tuple[Any, ...]] = None
    attentions: Optional[Tuple[Any, ...]] = None
