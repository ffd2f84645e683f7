"""The TensorFlow fine-tuning trainer of ``clip-zoo finetune`` (AdamW, schedule, freezing, MirroredStrategy).

    trainer = Trainer(clip_tf.CLIPModel.from_pretrained(path), FinetuneOptions(total_steps=100))
    metrics = trainer.step({"input_ids": ids, "attention_mask": mask, "pixel_values": pix})  # numpy

Rules by canonical name from :mod:`clip_core.finetune_plan` (TF paths mapped through the schema table);
frozen variables are left out of the trained list. The optimizer is a small hand-written AdamW with
torch's / optax's arithmetic (``lr * m_hat / (sqrt(v_hat) + eps)`` plus decoupled decay): Keras'
``AdamW`` adds ``epsilon`` to the *uncorrected* ``sqrt(v)``, which is a different update in the first
steps, so the cross-framework step-by-step agreement would not hold with it.

``replicas > 1`` runs a ``tf.distribute.MirroredStrategy`` over the first ``replicas`` logical CPU
devices. They exist only if ``tf.config.set_logical_device_configuration`` split the CPU *before*
TensorFlow initialised (see :func:`split_cpu`); each replica runs its slice of the global batch,
``all_gather``s the normalized features for the global contrastive loss, and the gradients are
all-reduced before one update of the (host) variables.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf

from clip_core.finetune_plan import (LOGIT_SCALE_MAX, LOGIT_SCALE_MIN, FinetuneOptions, decays, lr_at,
                                     read_trainer_state, split_batch, trainable, write_trainer_state)
from clip_core.schema import schema

from .models import clip_loss
from .primitives import weights_to_come
from .siglip import siglip_loss

__all__ = ["Trainer", "split_cpu"]

OPTIMIZER_FILE = "optimizer.npz"


def split_cpu(replicas: int) -> None:
    """Make ``replicas`` logical CPU devices; must run before anything initialises TensorFlow."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)


def _tensors(batch: dict) -> dict:
    out = {"input_ids": tf.constant(np.asarray(batch["input_ids"], np.int32)),
           "pixel_values": tf.constant(np.asarray(batch["pixel_values"], np.float32))}
    if batch.get("attention_mask") is not None:
        out["attention_mask"] = tf.constant(np.asarray(batch["attention_mask"], np.int32))
    return out


class _AdamW:
    """AdamW over a fixed list of variables (slots ``m``, ``v``; a step counter ``t``)."""

    def __init__(self, variables: list, decay: list, options: FinetuneOptions) -> None:
        self.variables, self.decay, self.options = variables, decay, options
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.t = tf.Variable(0.0, trainable=False, dtype=tf.float32)

    def apply(self, grads: list, lr: tf.Tensor) -> None:
        (b1, b2), eps, wd = self.options.betas, self.options.eps, self.options.weight_decay
        self.t.assign_add(1.0)
        c1, c2 = 1.0 - tf.pow(b1, self.t), 1.0 - tf.pow(b2, self.t)
        for var, g, m, v, decay in zip(self.variables, grads, self.m, self.v, self.decay):
            m.assign(b1 * m + (1.0 - b1) * g)
            v.assign(b2 * v + (1.0 - b2) * tf.square(g))
            update = (m / c1) / (tf.sqrt(v / c2) + eps)
            if decay and wd:
                update = update + wd * var
            var.assign_sub(lr * update)

    def state(self, names: list) -> dict:
        out = {"t": self.t.numpy()}
        for n, m, v in zip(names, self.m, self.v):
            out[f"m/{n}"], out[f"v/{n}"] = m.numpy(), v.numpy()
        return out

    def load(self, names: list, state: Any) -> None:
        self.t.assign(state["t"])
        for n, m, v in zip(names, self.m, self.v):
            m.assign(state[f"m/{n}"])
            v.assign(state[f"v/{n}"])


class Trainer:
    """AdamW fine-tuning of a ``clip_tf.CLIPModel`` (see the module docstring)."""

    framework = "tf"

    def __init__(self, model: Any, options: FinetuneOptions, replicas: int = 1) -> None:
        if options.grad_checkpointing:
            raise NotImplementedError("--grad-checkpointing is not implemented for the tf backend; use "
                                      "--framework torch or drop it")
        if options.precision == "bf16" and model.dtype_policy.name != "mixed_bfloat16":
            with weights_to_come():
                bf16 = type(model)(model.config, dtype="mixed_bfloat16", data_format=model.data_format)
            bf16.load_canonical(model.canonical_weights())
            model = bf16
        self.model, self.options, self.replicas = model, options, int(replicas)
        self.step_count = 0
        tf.random.set_seed(options.seed)
        names = {e.tf: e.name for e in schema(model.config, model.part).values()}
        index = model.variable_index()
        self.names = [names[p] for p in index if trainable(names[p], options, model.config)
                      and not names[p].endswith(("running_mean", "running_var"))]
        by_name = {names[p]: var for p, var in index.items()}
        self.variables = [by_name[n] for n in self.names]
        self.optimizer = _AdamW(self.variables, [decays(n) for n in self.names], options)
        self.strategy = None
        if self.replicas > 1:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")][:self.replicas]
            if len(devices) < self.replicas:
                raise RuntimeError(f"{self.replicas} replicas need {self.replicas} logical CPU devices, found "
                                   f"{len(devices)}; call clip_tf.finetune.split_cpu({self.replicas}) before "
                                   "TensorFlow initialises")
            self.strategy = tf.distribute.MirroredStrategy(devices)
        self._step = tf.function(self._update)
        self._eval = tf.function(self._global_loss)

    def _global_loss(self, batch: dict) -> tf.Tensor:
        """The contrastive loss of the global batch (the model's own loss on one replica)."""
        if self.strategy is None:
            return self.model(**batch, return_loss=True, training=False).loss
        ctx = tf.distribute.get_replica_context()
        out = self.model(**batch, training=False)
        text = ctx.all_gather(out.text_embeds, axis=0)  # (B, D)
        image = ctx.all_gather(out.image_embeds, axis=0)  # (B, D)
        scale = tf.exp(tf.cast(self.model.logit_scale, tf.float32))
        logits = tf.matmul(text, image, transpose_b=True) * scale  # (B, B) per text
        if getattr(self.model, "family", "clip") == "siglip":
            return siglip_loss(logits + tf.cast(self.model.logit_bias, tf.float32))
        return clip_loss(logits)

    def _grads(self, batch: dict):
        with tf.GradientTape() as tape:
            loss = self._global_loss(batch)
        grads = tape.gradient(loss, self.variables)
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g) for g, v in zip(grads, self.variables)]
        if self.strategy is not None:  # every replica holds the global loss: average its gradients
            ctx = tf.distribute.get_replica_context()
            grads = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, grads)
        return loss, grads

    def _update(self, batch, lr):
        if self.strategy is None:
            loss, grads = self._grads(batch)
        else:
            loss, grads = self.strategy.run(self._grads, args=(batch,))
            loss = self.strategy.experimental_local_results(loss)[0]
            grads = [self.strategy.experimental_local_results(g)[0] for g in grads]
        self.optimizer.apply(grads, lr)
        self.model.logit_scale.assign(tf.clip_by_value(self.model.logit_scale, LOGIT_SCALE_MIN, LOGIT_SCALE_MAX))
        return loss

    def _distribute(self, batch: dict):
        if self.strategy is None:
            return _tensors(batch)
        parts = [_tensors(split_batch(batch, self.replicas, r)) for r in range(self.replicas)]
        return self.strategy.experimental_distribute_values_from_function(lambda ctx: parts[ctx.replica_id_in_sync_group])

    def step(self, batch: dict) -> dict:
        """One optimizer step on the global ``batch``; returns the loss before the update, lr, logit_scale."""
        lr = lr_at(self.options, self.step_count)
        loss = self._step(self._distribute(batch), tf.constant(lr, tf.float32))
        self.step_count += 1
        return {"loss": float(loss), "lr": lr, "logit_scale": float(self.model.logit_scale.numpy().reshape(()))}

    def eval_loss(self, batch: dict) -> float:
        """The global-batch loss without an update."""
        if self.strategy is None:
            return float(self._eval(_tensors(batch)))
        loss = self.strategy.run(self._eval, args=(self._distribute(batch),))
        return float(self.strategy.experimental_local_results(loss)[0])

    def save(self, directory: str) -> None:
        """Canonical model files + ``optimizer.npz`` (the AdamW slots by canonical name) + ``trainer_state.json``."""
        self.model.save_pretrained(directory)
        np.savez(os.path.join(directory, OPTIMIZER_FILE), **self.optimizer.state(self.names))
        write_trainer_state(directory, self.step_count, self.framework)

    def restore(self, directory: str) -> None:
        """Weights, optimizer state and step count from :meth:`save`."""
        import conversion

        state = read_trainer_state(directory, self.framework)
        self.model.load_canonical(conversion.load_checkpoint(directory)[1], source=directory)
        with np.load(os.path.join(directory, OPTIMIZER_FILE)) as saved:
            self.optimizer.load(self.names, saved)
        self.step_count = int(state["step"])
