"""Shared by the fine-tuning tests (trainers: tests/test_finetune_trainers.py; the command's tests may
import it too — add, don't change, names here): a tiny CLIP run built entirely in numpy, and a runner
for the data-parallel checks in a fresh interpreter (device counts must be set before a framework starts):

    python -m tests.finetune_helpers <torch|tf|flax> <replicas> <steps> [clip|siglip]   # prints "LOSSES [...]"
"""
from __future__ import annotations

import json
import os
import socket
import sys
from typing import Optional

import numpy as np

from clip_core.finetune_plan import FinetuneOptions
from clip_core.testing import random_weights, tiny_siglip_config, tiny_vit_config

BATCH, LENGTH, STEPS = 8, 12, 20


def tiny_run(lr: float = 1e-4, family: str = "clip", **options) -> tuple:
    """``(config, initial canonical weights, FinetuneOptions, 20 global batches)``, all deterministic;
    ``family="siglip"``: a tiny SigLIP with full-context batches (its tokenizer always pads to the context)."""
    if family == "siglip":
        cfg = tiny_siglip_config()
        t = cfg.text_config
        batches = make_batches(cfg, STEPS, length=t.max_position_embeddings, vocab=t.vocab_size)
    else:
        cfg = tiny_vit_config()
        batches = make_batches(cfg, STEPS)
    return cfg, random_weights(cfg, seed=1), FinetuneOptions(total_steps=STEPS, lr=lr, warmup=3, **options), batches


def make_batches(cfg, n: int, batch: int = BATCH, length: int = LENGTH, seed: int = 0,
                 vocab: Optional[int] = None) -> list[dict]:
    """``n`` batches: SOT + random tokens + EOT, zero padded with a mask, and N(0, 1) pixels (NCHW);
    with ``vocab`` (SigLIP) random ids below it, the last one standing in for the end token."""
    rng = np.random.default_rng(seed)
    size = cfg.vision_config.image_size
    out = []
    for _ in range(n):
        ids = rng.integers(1, vocab or 1000, (batch, length))
        last = rng.integers(3, length, batch)
        mask = (np.arange(length)[None] <= last[:, None]).astype(np.int64)
        if vocab is None:
            ids[:, 0] = 49406
            ids[np.arange(batch), last] = 49407
        out.append({"input_ids": (ids * mask).astype(np.int64), "attention_mask": mask,
                    "pixel_values": rng.normal(size=(batch, 3, size, size)).astype(np.float32)})
    return out


def new_model(framework: str, cfg, weights: dict):
    """A backend CLIPModel holding a copy of ``weights`` (torch's loader shares writable arrays' memory)."""
    weights = {k: np.array(v, copy=True) for k, v in weights.items()}
    name = "SiglipModel" if cfg.family == "siglip" else "CLIPModel"
    if framework == "torch":
        import clip_torch

        return getattr(clip_torch, name).from_canonical(cfg, weights)
    if framework == "flax":
        import clip_flax

        model = getattr(clip_flax, name)(cfg, _do_init=False)
    else:
        import clip_tf

        model = getattr(clip_tf, name)(cfg)
    model.load_canonical(weights)
    return model


def trainer_class(framework: str):
    import importlib

    return importlib.import_module(f"clip_{framework}.finetune").Trainer


def _losses(framework: str, replicas: int, steps: int, family: str = "clip") -> list[float]:
    cfg, weights, options, batches = tiny_run(family=family)
    trainer = trainer_class(framework)(new_model(framework, cfg, weights), options, replicas=replicas)
    return [trainer.step(b)["loss"] for b in batches[:steps]]


def _torch_rank(rank: int, replicas: int, steps: int, port: int, queue, family: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=replicas)
    try:
        losses = _losses("torch", replicas, steps, family)
        if rank == 0:
            queue.put(losses)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_replicas(framework: str, replicas: int, steps: int, family: str = "clip") -> list[float]:
    """The first ``steps`` losses with ``replicas`` data-parallel replicas (call in a fresh interpreter)."""
    if framework == "flax":
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={replicas}"
    if framework == "tf":
        from clip_tf.finetune import split_cpu

        split_cpu(replicas)
    if framework != "torch" or replicas == 1:
        return _losses(framework, replicas, steps, family)
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_torch_rank, args=(replicas, steps, _free_port(), queue, family), nprocs=replicas,
                       start_method="spawn")
    return queue.get()


if __name__ == "__main__":
    fw, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print("LOSSES", json.dumps(run_replicas(fw, n, k, sys.argv[4] if len(sys.argv) > 4 else "clip")), flush=True)
