"""The JAX fine-tuning trainer of ``clip-zoo finetune`` (optax AdamW, schedule, freezing, Mesh data parallel).

    trainer = Trainer(clip_flax.CLIPModel.from_pretrained(path), FinetuneOptions(total_steps=100))
    metrics = trainer.step({"input_ids": ids, "attention_mask": mask, "pixel_values": pix})  # numpy

Rules by canonical name from :mod:`clip_core.finetune_plan` (Flax paths mapped through the schema
table). ``optax.adamw`` with the decay mask runs on the trainable parameters;
``optax.multi_transform`` gives the frozen ones ``set_to_zero``. The learning rate of each step is
:func:`~clip_core.finetune_plan.lr_at` fed to the jitted step as an argument (like torch's param
groups), not a float32 re-implementation of the schedule. The loss is the model's own
(:func:`clip_flax.training.loss_fn`). With ``replicas > 1`` the params are replicated and the global
batch is sharded over a ``Mesh`` of that many local devices (:mod:`clip_flax.sharding`): jit sees the
global batch, so XLA gathers the features for the contrastive loss and all-reduces the gradients.
On CPU the devices exist only if ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` was set
before jax was imported.
"""
from __future__ import annotations

import functools
import os
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from clip_core.finetune_plan import (LOGIT_SCALE_MAX, LOGIT_SCALE_MIN, FinetuneOptions, decays, lr_at,
                                     read_trainer_state, trainable, write_trainer_state)
from clip_core.schema import schema

from . import sharding
from .models import flatten, unflatten
from .training import loss_fn

__all__ = ["Trainer"]

OPTIMIZER_FILE = "optimizer.msgpack"


def _labels(model: Any, options: FinetuneOptions) -> tuple[dict, dict]:
    """``(decay mask, train/frozen labels)`` as trees shaped like ``model.params``."""
    names = {e.flax: e.name for e in schema(model.config, model.part).values()}
    flat = flatten(model.params)
    canonical = {k: names[f"params/{k}"] for k in flat}
    mask = unflatten({k: decays(n) for k, n in canonical.items()})
    labels = unflatten({k: "train" if trainable(n, options, model.config) else "frozen" for k, n in canonical.items()})
    return mask, labels


def _optimizer(mask: dict, labels: dict, hyper: dict):
    """``optax.adamw`` (decay ``mask``) on the ``"train"`` leaves, ``set_to_zero`` on the frozen ones.

    ``hyper`` (lr, b1, b2, eps, weight_decay) may be traced scalars: the state's structure does not
    depend on them, so one compiled step serves every step's lr (exactly :func:`lr_at`) and any run
    with the same freezing."""
    import optax

    adamw = optax.adamw(hyper["lr"], b1=hyper["b1"], b2=hyper["b2"], eps=hyper["eps"],
                        weight_decay=hyper["weight_decay"], mask=mask)
    return optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, labels)


def _hyper(options: FinetuneOptions, lr: float) -> dict:
    values = {"lr": lr, "b1": options.betas[0], "b2": options.betas[1], "eps": options.eps,
              "weight_decay": options.weight_decay}
    return {k: np.float32(v) for k, v in values.items()}


def _clamp(params: dict) -> dict:
    return {**params, "logit_scale": jnp.clip(params["logit_scale"], LOGIT_SCALE_MIN, LOGIT_SCALE_MAX)}


def _eval_loss(loss_model: Any, params: dict, batch: dict, batch_stats: Any) -> jax.Array:
    """The model's own contrastive loss (no dropout; BatchNorm on its running statistics)."""
    return loss_fn(loss_model, params, batch, jax.random.PRNGKey(0), batch_stats, train=False)


def _update(loss_model: Any, mask: dict, labels: dict, hyper: dict, params: dict, opt_state: Any, batch: dict,
            batch_stats: Any):
    """One optimizer step: ``(params, opt_state, loss before the update)``, ``logit_scale`` clamped."""
    import optax

    loss, grads = jax.value_and_grad(lambda p: _eval_loss(loss_model, p, batch, batch_stats))(params)
    updates, opt_state = _optimizer(mask, labels, hyper).update(grads, opt_state, params)
    return _clamp(optax.apply_updates(params, updates)), opt_state, loss


_COMPILED: dict = {}  # (loss module, freezing, part) -> (jitted step, jitted eval loss)


class Trainer:
    """optax AdamW fine-tuning of a ``clip_flax.CLIPModel`` (see the module docstring)."""

    framework = "flax"

    def __init__(self, model: Any, options: FinetuneOptions, replicas: int = 1) -> None:
        if options.grad_checkpointing:
            raise NotImplementedError("--grad-checkpointing is not implemented for the flax backend (the encoder "
                                      "layers are not wrapped in nn.remat); use --framework torch or drop it")
        self.model, self.options, self.replicas = model, options, int(replicas)
        self.step_count = 0
        dtype = jnp.bfloat16 if options.precision == "bf16" else jnp.float32
        module = model.module_class(model.config, dtype=dtype, param_dtype=jnp.float32)
        self._loss_model = types.SimpleNamespace(part=model.part, module=module)
        mask, labels = _labels(model, options)
        key = (module, options.freeze, options.lock_image, model.part)
        if key not in _COMPILED:  # a resumed or repeated run with the same freezing reuses the compiled step
            if len(_COMPILED) >= 8:
                _COMPILED.clear()
            _COMPILED[key] = (jax.jit(functools.partial(_update, self._loss_model, mask, labels)),
                              jax.jit(functools.partial(_eval_loss, self._loss_model)))
        self._step, self._eval = _COMPILED[key]
        self.tx = _optimizer(mask, labels, _hyper(options, options.lr))
        self.mesh = None
        if self.replicas > 1:
            if jax.local_device_count() < self.replicas:
                raise RuntimeError(f"{self.replicas} replicas need {self.replicas} JAX devices, found "
                                   f"{jax.local_device_count()}; on CPU set XLA_FLAGS="
                                   f"--xla_force_host_platform_device_count={self.replicas} before importing jax")
            self.mesh = sharding.data_parallel_mesh(jax.local_devices()[:self.replicas])
        master = jax.tree_util.tree_map(lambda v: v.astype(jnp.float32), model.params)  # a bf16 load's matrices too
        self.params = self._place(master)
        self.opt_state = self._place(self.tx.init(self.params))

    def _place(self, tree: Any) -> Any:
        return sharding.replicate(tree, self.mesh) if self.mesh is not None else tree

    def _batch(self, batch: dict) -> dict:
        out = {"input_ids": np.asarray(batch["input_ids"], np.int32),
               "pixel_values": np.asarray(batch["pixel_values"], np.float32)}
        if batch.get("attention_mask") is not None:
            out["attention_mask"] = np.asarray(batch["attention_mask"], np.int32)
        return sharding.shard_batch(out, self.mesh) if self.mesh is not None else out

    def step(self, batch: dict) -> dict:
        """One optimizer step on the global ``batch``; returns the loss before the update, lr, logit_scale."""
        lr = lr_at(self.options, self.step_count)
        self.params, self.opt_state, loss = self._step(_hyper(self.options, lr), self.params, self.opt_state,
                                                       self._batch(batch), self.model.batch_stats or None)
        self.model.params = self.params
        self.step_count += 1
        return {"loss": float(loss), "lr": lr, "logit_scale": float(self.params["logit_scale"])}

    def eval_loss(self, batch: dict) -> float:
        """The global-batch loss without an update."""
        return float(self._eval(self.params, self._batch(batch), self.model.batch_stats or None))

    def save(self, directory: str) -> None:
        """Canonical model files + ``optimizer.msgpack`` + ``trainer_state.json`` into ``directory``."""
        from flax import serialization

        self.model.params = self.params
        self.model.save_pretrained(directory)
        with open(os.path.join(directory, OPTIMIZER_FILE), "wb") as f:
            f.write(serialization.to_bytes(jax.device_get(self.opt_state)))
        write_trainer_state(directory, self.step_count, self.framework)

    def restore(self, directory: str) -> None:
        """Weights, optimizer state and step count from :meth:`save`."""
        import conversion
        from flax import serialization

        state = read_trainer_state(directory, self.framework)
        self.model.load_canonical(conversion.load_checkpoint(directory)[1], source=directory)
        self.params = self._place(self.model.params)
        with open(os.path.join(directory, OPTIMIZER_FILE), "rb") as f:
            restored = serialization.from_bytes(jax.device_get(self.opt_state), f.read())
        self.opt_state = self._place(restored)
        self.step_count = int(state["step"])
