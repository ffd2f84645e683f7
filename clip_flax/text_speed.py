"""Skip padded text positions: run only a bucketed prefix that holds every row's EOT token.

The causal mask makes positions after the EOT token irrelevant to the pooled state, so the
pooled output of the prefix equals the full-length one exactly. Lengths are rounded up to a
bucket (8, 16, 32, 64, then the context length) so at most five shapes are ever compiled
(:func:`conversion.pretrained.text_prefix_length`, shared with clip_tf).
"""
from __future__ import annotations

import jax

from conversion.pretrained import text_bucket as bucket_length, text_prefix_length
from clip_core.config import CLIPTextConfig

__all__ = ["bucket_length", "trim_text_inputs"]


def trim_text_inputs(input_ids, attention_mask, position_ids, config: CLIPTextConfig):
    """Cut ``(input_ids, attention_mask, position_ids)`` to the bucketed prefix; no-op when traced."""
    if isinstance(input_ids, jax.core.Tracer) or input_ids.ndim != 2:
        return input_ids, attention_mask, position_ids
    length = text_prefix_length(input_ids, config)
    if length >= input_ids.shape[1]:
        return input_ids, attention_mask, position_ids
    cut = lambda a: None if a is None else (a[:, :length] if a.ndim == 2 else a)  # noqa: E731
    return input_ids[:, :length], cut(attention_mask), cut(position_ids)
