"""The PyTorch fine-tuning trainer of ``clip-zoo finetune`` (AdamW, schedule, freezing, DDP on gloo).

    trainer = Trainer(clip_torch.CLIPModel.from_pretrained(path), FinetuneOptions(total_steps=100))
    metrics = trainer.step({"input_ids": ids, "attention_mask": mask, "pixel_values": pix})  # numpy

Which parameters train and decay, the learning rate of each step and the ``logit_scale`` clamp come
from :mod:`clip_core.finetune_plan` (by canonical name; torch's names are the canonical ones).
With ``replicas > 1`` this process is one rank of an initialised ``torch.distributed`` process group:
it runs its slice of the global batch, all-gathers the normalized features *with gradients* and
computes the global-batch loss, and ``DistributedDataParallel`` averages the gradients, so the update
equals one device on the global batch. BatchNorm (ResNet towers) keeps its running statistics.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np
import torch

from clip_core.finetune_plan import (LOGIT_SCALE_MAX, LOGIT_SCALE_MIN, FinetuneOptions, decays, lr_at,
                                     read_trainer_state, split_batch, trainable, write_trainer_state)

from .models import clip_loss
from .siglip import siglip_loss

__all__ = ["Trainer", "gather_features"]

OPTIMIZER_FILE = "optimizer.pt"


def gather_features(x: torch.Tensor, replicas: int) -> torch.Tensor:
    """(b, D) on each rank -> (replicas * b, D) in rank order, differentiable (backward sums the
    gradients of every rank's loss into the local slice)."""
    if replicas == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def _batch_tensors(batch: dict) -> dict:
    out = {"input_ids": torch.as_tensor(np.asarray(batch["input_ids"], np.int64)),
           "pixel_values": torch.as_tensor(np.asarray(batch["pixel_values"], np.float32))}
    if batch.get("attention_mask") is not None:
        out["attention_mask"] = torch.as_tensor(np.asarray(batch["attention_mask"], np.int64))
    return out


def _fusable(groups: list[dict]) -> bool:
    """Whether torch's fused AdamW kernel takes these parameters: float tensors on CPU or CUDA. It does the same
    arithmetic as the per-tensor loop in one pass per step (ViT-sized CPU steps ~15% faster)."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


class Trainer:
    """AdamW fine-tuning of a ``clip_torch.CLIPModel`` (see the module docstring)."""

    framework = "torch"

    def __init__(self, model: Any, options: FinetuneOptions, replicas: int = 1) -> None:
        self.model, self.options, self.replicas = model, options, int(replicas)
        self.rank = torch.distributed.get_rank() if self.replicas > 1 else 0
        self.step_count = 0
        torch.manual_seed(options.seed)
        self._train_mode()
        if options.grad_checkpointing:
            if model.config.is_resnet:
                raise NotImplementedError("--grad-checkpointing covers the transformer encoders only; the ResNet "
                                          "vision tower of this model has none to checkpoint")
            model.gradient_checkpointing_enable()
        groups = self._param_groups()
        self.optimizer = torch.optim.AdamW(groups, lr=options.lr, betas=options.betas, eps=options.eps,
                                           weight_decay=options.weight_decay, fused=_fusable(groups))
        self.module = model
        if self.replicas > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.module = DistributedDataParallel(model, broadcast_buffers=False)

    def _param_groups(self) -> list[dict]:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            p.requires_grad_(trainable(name, self.options, self.model.config))
            if p.requires_grad:
                (decay if decays(name) else no_decay).append(p)
        return [{"params": decay, "weight_decay": self.options.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def _train_mode(self) -> None:
        self.model.train()
        for m in self.model.modules():  # BatchNorm keeps the checkpoint's running statistics
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()

    def _autocast(self):
        if self.options.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _loss(self, batch: dict, module: Any) -> torch.Tensor:
        """The global-batch contrastive loss of this rank's slice (the model's own loss on one replica)."""
        local = _batch_tensors(split_batch(batch, self.replicas, self.rank))
        with self._autocast():
            out = module(**local, return_loss=self.replicas == 1)
            if self.replicas == 1:
                return out.loss.float()
            text = gather_features(out.text_embeds.float(), self.replicas)  # (B, D)
            image = gather_features(out.image_embeds.float(), self.replicas)  # (B, D)
            logits = text @ image.t() * self.model.logit_scale.exp()  # (B, B) per text
            if getattr(self.model, "family", "clip") == "siglip":
                return siglip_loss(logits + self.model.logit_bias)
            return clip_loss(logits)

    def step(self, batch: dict) -> dict:
        """One optimizer step on the global ``batch``; returns the loss before the update, lr, logit_scale."""
        lr = lr_at(self.options, self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._train_mode()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(batch, self.module)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(LOGIT_SCALE_MIN, LOGIT_SCALE_MAX)
        self.step_count += 1
        return {"loss": float(loss.detach()), "lr": lr, "logit_scale": float(self.model.logit_scale.detach())}

    def eval_loss(self, batch: dict) -> float:
        """The global-batch loss without an update."""
        self.model.eval()
        with torch.no_grad():
            loss = self._loss(batch, self.model)
        self._train_mode()
        return float(loss)

    def save(self, directory: str) -> None:
        """Canonical model files + ``optimizer.pt`` + ``trainer_state.json`` into ``directory``."""
        self.model.save_pretrained(directory)
        torch.save(self.optimizer.state_dict(), os.path.join(directory, OPTIMIZER_FILE))
        write_trainer_state(directory, self.step_count, self.framework)

    def restore(self, directory: str) -> None:
        """Weights, optimizer state and step count from :meth:`save` (in place: the optimizer keeps its params)."""
        import conversion
        from clip_core.schema import to_backend

        state = read_trainer_state(directory, self.framework)
        config, weights = conversion.load_checkpoint(directory)
        weights["logit_scale"] = np.asarray(weights["logit_scale"]).reshape(())
        params = to_backend(weights, self.model.config, "torch", self.model.part, source=directory)
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in params.items()}, strict=False)
        self.optimizer.load_state_dict(torch.load(os.path.join(directory, OPTIMIZER_FILE), weights_only=True))
        self.step_count = int(state["step"])
