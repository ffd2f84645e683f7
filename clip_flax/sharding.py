"""Data parallelism on a ``jax.sharding.Mesh``: batch sharded over ``'data'``, params replicated.

The jitted inference functions and :func:`clip_flax.make_train_step` need no change: jit
follows the input shardings. Example (4 devices)::

    mesh = clip_flax.sharding.data_parallel_mesh()
    params = clip_flax.sharding.replicate(model.params, mesh)
    batch = clip_flax.sharding.shard_batch({"input_ids": ids, "pixel_values": pix}, mesh)
    feats = model.get_image_features(batch["pixel_values"], params=params)  # sharded over 'data'
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["data_parallel_mesh", "replicate", "shard_batch"]


def data_parallel_mesh(devices: Optional[Sequence[Any]] = None, axis: str = "data") -> Mesh:
    """A 1-D mesh over ``devices`` (default: all) with axis name ``axis``."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (axis,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put every leaf of ``tree`` on all devices of ``mesh`` (fully replicated)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: Any, mesh: Mesh, axis: str = "data") -> Any:
    """Split every leaf's leading (batch) dimension over ``axis``; it must divide evenly."""
    n = mesh.shape[axis]

    def put(x):
        x = np.asarray(x)
        if x.shape[0] % n:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by the {n} devices of mesh axis {axis!r}")
        return jax.device_put(x, NamedSharding(mesh, P(axis)))

    return jax.tree_util.tree_map(put, batch)
