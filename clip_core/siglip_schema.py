"""SigLIP's canonical tensors (Hugging Face ``SiglipModel`` names and shapes), for :mod:`clip_core.schema`.

The rows reuse CLIP's encoder, linear and layer-norm shapes; only the embeddings and the two heads
are SigLIP's own. ``logit_scale`` and ``logit_bias`` are shape ``(1,)`` as transformers stores them.
"""
from __future__ import annotations

from typing import Iterator, Optional

from .schema import _encoder_shapes, _linear, _ln
from .siglip_config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

__all__ = ["siglip_group_shapes"]


def _text_shapes(c: SiglipTextConfig) -> Iterator[tuple[str, tuple]]:
    d, p = c.hidden_size, "text_model"
    yield f"{p}.embeddings.token_embedding.weight", (c.vocab_size, d)
    yield f"{p}.embeddings.position_embedding.weight", (c.max_position_embeddings, d)
    yield from _encoder_shapes(f"{p}.encoder", c.num_hidden_layers, d, c.intermediate_size)
    yield from _ln(f"{p}.final_layer_norm", d)
    yield from _linear(f"{p}.head", d, c.projection_size)


def _attention_pool_shapes(prefix: str, c: SiglipVisionConfig) -> Iterator[tuple[str, tuple]]:
    d = c.hidden_size
    yield f"{prefix}.probe", (1, 1, d)
    yield f"{prefix}.attention.in_proj_weight", (3 * d, d)  # q, k, v stacked (torch MultiheadAttention)
    yield f"{prefix}.attention.in_proj_bias", (3 * d,)
    yield from _linear(f"{prefix}.attention.out_proj", d, d)
    yield from _ln(f"{prefix}.layernorm", d)
    yield from _linear(f"{prefix}.mlp.fc1", d, c.intermediate_size)
    yield from _linear(f"{prefix}.mlp.fc2", c.intermediate_size, d)


def _vision_shapes(c: SiglipVisionConfig) -> Iterator[tuple[str, tuple]]:
    d, p = c.hidden_size, "vision_model"
    yield f"{p}.embeddings.patch_embedding.weight", (d, c.num_channels, c.patch_size, c.patch_size)
    yield f"{p}.embeddings.patch_embedding.bias", (d,)
    yield f"{p}.embeddings.position_embedding.weight", (c.num_positions, d)
    yield from _encoder_shapes(f"{p}.encoder", c.num_hidden_layers, d, c.intermediate_size)
    yield from _ln(f"{p}.post_layernorm", d)
    if c.vision_use_head:
        yield from _attention_pool_shapes(f"{p}.head", c)


def siglip_group_shapes(config: SiglipConfig, group: str, num_labels: Optional[int]) -> Iterator[tuple[str, tuple]]:
    """``(canonical name, shape)`` of one group of :data:`clip_core.schema.SIGLIP_PARTS`."""
    if group == "text":
        yield from _text_shapes(config.text_config)
    elif group == "vision":
        yield from _vision_shapes(config.vision_config)
    elif group in ("logit_scale", "logit_bias"):
        yield group, (1,)
    elif group == "classifier":
        if not num_labels:
            raise ValueError("the classification part needs num_labels > 0")
        yield from _linear("classifier", config.vision_config.hidden_size, num_labels)
    else:
        raise ValueError(f"unknown SigLIP weight group {group!r}")
