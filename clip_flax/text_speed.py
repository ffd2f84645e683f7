"""Skip padded text positions: run only a bucketed prefix that holds every row's EOT token.

The causal mask makes positions after the EOT token irrelevant to the pooled state, so the
pooled output of the prefix equals the full-length one exactly. Lengths are rounded up to a
bucket (8, 16, 32, 64, then the context length) so at most five shapes are ever compiled.
"""
from __future__ import annotations


import numpy as np
import jax

from clip_core.config import CLIPTextConfig

__all__ = ["bucket_length", "trim_text_inputs"]


def bucket_length(needed: int, context_length: int, smallest: int = 8) -> int:
    """Smallest power of two >= ``needed`` (and >= ``smallest``), capped at ``context_length``."""
    n = smallest
    while n < needed:
        n *= 2
    return min(n, context_length)


def _pooled_positions(ids: np.ndarray, config: CLIPTextConfig) -> np.ndarray:
    if config.legacy_eos_pooling:
        return ids.argmax(axis=-1)
    return (ids == config.eos_token_id).argmax(axis=-1)


def trim_text_inputs(input_ids, attention_mask, position_ids, config: CLIPTextConfig):
    """Cut ``(input_ids, attention_mask, position_ids)`` to the bucketed prefix; no-op when traced."""
    if isinstance(input_ids, jax.core.Tracer) or input_ids.ndim != 2:
        return input_ids, attention_mask, position_ids
    ids = np.asarray(input_ids)
    t = ids.shape[1]
    length = bucket_length(int(_pooled_positions(ids, config).max()) + 1, t) if ids.size else t
    if length >= t:
        return input_ids, attention_mask, position_ids
    cut = lambda a: None if a is None else (a[:, :length] if a.ndim == 2 else a)
    return input_ids[:, :length], cut(attention_mask), cut(position_ids)
