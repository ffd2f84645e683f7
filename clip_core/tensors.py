"""Numpy arrays to the framework a ``return_tensors`` argument names (framework imported lazily)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

__all__ = ["convert_to_tensors"]


def convert_to_tensors(array: Any, return_tensors: Optional[str]) -> Any:
    """Turn a numpy array into ``"np"`` / ``"pt"`` / ``"tf"`` / ``"jax"`` arrays (``None``: unchanged)."""
    kind = getattr(return_tensors, "value", return_tensors)
    if kind is None or kind == "np":
        return array
    if kind == "pt":
        import torch

        return torch.from_numpy(np.ascontiguousarray(array))
    if kind == "tf":
        import tensorflow as tf

        return tf.constant(array)
    if kind == "jax":
        import jax.numpy as jnp

        return jnp.asarray(array)
    raise ValueError(f"return_tensors must be one of None, 'np', 'pt', 'tf', 'jax'; got {return_tensors!r}")
