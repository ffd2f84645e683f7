"""Fine-tuning with optax: a jit-compiled train step (contrastive / SigLIP sigmoid loss or classification loss).

    step = clip_flax.make_train_step(model, optax.adamw(1e-5))
    params, opt_state = model.params, optimizer.init(model.params)
    params, opt_state, loss = step(params, opt_state, batch, jax.random.PRNGKey(0))

``batch`` is a dict: ``input_ids``, ``pixel_values`` (NCHW), optional ``attention_mask`` for
``CLIPModel`` / ``SiglipModel`` (its loss is the model's ``return_loss`` one); ``pixel_values`` and
``labels`` for ``CLIPForImageClassification`` / ``SiglipForImageClassification``. Dropout is
active (``train=True``) with the given RNG; ResNet BatchNorm uses its running statistics.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

__all__ = ["make_train_step", "train_step", "loss_fn"]


def loss_fn(model: Any, params: dict, batch: dict, dropout_rng: jax.Array, batch_stats: Optional[dict] = None,
            train: bool = True) -> jnp.ndarray:
    """The training loss of ``model`` (a clip_flax model) on ``batch`` (traceable)."""
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    rngs = {"dropout": dropout_rng}
    if model.part == "model":
        out = model.module.apply(variables, batch["input_ids"], batch["pixel_values"], batch.get("attention_mask"),
                                 None, deterministic=not train, return_loss=True, rngs=rngs)
    elif model.part == "classification":
        out = model.module.apply(variables, batch["pixel_values"], batch["labels"], deterministic=not train,
                                 rngs=rngs)
    else:
        raise TypeError(f"{type(model).__name__} has no training loss; use a whole model (CLIPModel, SiglipModel) "
                        "or an image classifier")
    return out.loss


def make_train_step(model: Any, optimizer: Any) -> Callable:
    """A jitted ``step(params, opt_state, batch, dropout_rng, batch_stats=None) -> (params, opt_state, loss)``.

    Works unchanged on a ``jax.sharding.Mesh``: pass replicated params / opt_state and a batch
    sharded over the data axis (:mod:`clip_flax.sharding`); jit propagates the shardings and
    the gradient all-reduce is inserted by XLA.
    """
    import optax

    def step(params, opt_state, batch, dropout_rng, batch_stats=None):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, batch, dropout_rng, batch_stats))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step)


def train_step(model: Any, params: dict, opt_state: Any, batch: dict, optimizer: Any,
               dropout_rng: Optional[jax.Array] = None, batch_stats: Optional[dict] = None):
    """One optimizer step; the jitted step is cached on ``model`` per optimizer."""
    key = ("train_step", id(optimizer))
    cached = model._jit_cache.get(key)
    if cached is None or cached[0] is not optimizer:
        cached = model._jit_cache[key] = (optimizer, make_train_step(model, optimizer))
    rng = dropout_rng if dropout_rng is not None else jax.random.PRNGKey(0)
    return cached[1](params, opt_state, batch, rng, batch_stats if batch_stats is not None else model.batch_stats)
