"""The framework-free plan of a fine-tuning run: options, learning-rate schedule, decay and freeze rules.

Every backend's ``Trainer`` (``clip_torch.finetune``, ``clip_tf.finetune``, ``clip_flax.finetune``)
reads the same :class:`FinetuneOptions` and asks this module, by *canonical* parameter name (the
names of :mod:`clip_core.schema`), which parameters train and which get weight decay. Backends map
their own parameter paths to canonical names through the one table (``schema(config)`` entries'
``path(backend)``), so no backend writes its own name rules.

- :func:`lr_at`: linear warmup ``lr * (step + 1) / warmup`` for ``step < warmup``, then cosine from
  ``lr`` to 0 at ``total_steps`` (open_clip's ``cosine_lr``) or constant ``lr``.
- :func:`decays`: only matrix / conv weights decay (the table's ``transpose`` and ``conv`` leaves);
  biases, layer / batch norms, embeddings and ``logit_scale`` do not.
- :func:`trainable`: ``freeze`` (``none`` | ``text`` | ``vision`` | ``layers<k>``) and ``lock_image``.
- :data:`LOGIT_SCALE_MAX`: ``logit_scale`` is clamped to ``[0, ln 100]`` after each step (open_clip).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

from .config import CLIPConfig
from .schema import _match, schema

__all__ = ["FinetuneOptions", "lr_at", "decays", "trainable", "trainable_names", "LOGIT_SCALE_MAX",
           "LOGIT_SCALE_MIN", "SCHEDULES", "PRECISIONS", "describe", "TRAINER_STATE",
           "write_trainer_state", "read_trainer_state", "split_batch"]

LOGIT_SCALE_MAX = math.log(100)
LOGIT_SCALE_MIN = 0.0
SCHEDULES = ("cosine", "constant")
PRECISIONS = ("fp32", "bf16")
_FREEZE = re.compile(r"none|text|vision|layers(\d+)")


@dataclass(frozen=True)
class FinetuneOptions:
    """Everything a trainer needs besides the model and the data (validated on construction)."""

    total_steps: int
    lr: float = 1e-5
    warmup: int = 0
    schedule: str = "cosine"  # "cosine" | "constant" (after a linear warmup)
    weight_decay: float = 0.2
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-6
    freeze: str = "none"  # "none" | "text" | "vision" | "layers<k>"
    lock_image: bool = False  # LiT: the whole image tower incl. visual_projection frozen
    precision: str = "fp32"  # "fp32" | "bf16" (autocast-style; master weights fp32)
    grad_checkpointing: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.total_steps) < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if int(self.warmup) < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected one of {SCHEDULES}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of {PRECISIONS}")
        if len(tuple(self.betas)) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        m = _FREEZE.fullmatch(str(self.freeze))
        if m is None or (m.group(1) is not None and int(m.group(1)) < 0):
            raise ValueError(f"unknown freeze {self.freeze!r}; expected none, text, vision or layers<k> "
                             "(e.g. layers2: train only the last 2 layers of each tower)")

    @property
    def last_layers(self) -> Optional[int]:
        """``k`` of ``freeze="layers<k>"``, else None."""
        m = _FREEZE.fullmatch(self.freeze)
        return int(m.group(1)) if m and m.group(1) is not None else None


def lr_at(options: FinetuneOptions, step: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based)."""
    base, warm, total = float(options.lr), int(options.warmup), int(options.total_steps)
    if step < warm:
        return base * (step + 1) / warm
    if options.schedule == "constant":
        return base
    span = total - warm
    if span <= 0:
        return base
    progress = min(max(step - warm, 0), span) / span
    return 0.5 * (1.0 + math.cos(math.pi * progress)) * base


def decays(canonical_name: str) -> bool:
    """True for matrix and conv weights; False for biases, norms, embeddings and ``logit_scale``.

    Decided by the schema table's rule for the name: only ``transpose`` (linear) and ``conv``
    leaves decay, so a new family's rows need no new rule here.
    """
    return _match(canonical_name).transform in ("transpose", "conv")


def _tower(name: str) -> str:
    if name.startswith("text_model.") or name.startswith("text_projection."):
        return "text"
    if name.startswith("vision_model.") or name.startswith("visual_projection."):
        return "vision"
    return "shared"  # logit_scale (and a classifier head)


_ENCODER_LAYER = re.compile(r"(text_model|vision_model)\.encoder\.layers\.(\d+)\.")
_RESNET_BLOCK = re.compile(r"vision_model\.layer(\d+)\.(\d+)\.")


def _resnet_rank(config: CLIPConfig, stage: int, block: int) -> int:
    """How many Bottlenecks come after (stage, block) in the ResNet tower (0 = the last)."""
    depths = list(config.vision_config.layers)
    after = depths[stage - 1] - 1 - block + sum(depths[stage:])
    return after


def _in_last_layers(name: str, k: int, config: CLIPConfig) -> bool:
    m = _ENCODER_LAYER.match(name)
    if m:
        tower = config.text_config if m.group(1) == "text_model" else config.vision_config
        return int(m.group(2)) >= tower.num_hidden_layers - k
    m = _RESNET_BLOCK.match(name)
    if m:
        return _resnet_rank(config, int(m.group(1)), int(m.group(2))) < k
    # heads stay trainable: final norms, projections (incl. the ResNet attention pool and SigLIP's text head
    # and attention-pooling head), logit_scale / logit_bias
    head = ("final_layer_norm.", "post_layernorm.", "attnpool.", "head.")
    return _tower(name) == "shared" or name.startswith(("text_projection.", "visual_projection.")) or \
        any(f".{h}" in f".{name}" for h in head)


def trainable(canonical_name: str, options: FinetuneOptions, config: CLIPConfig) -> bool:
    """Whether the parameter ``canonical_name`` is updated under ``options``.

    ``freeze="text"`` / ``"vision"`` freezes that tower with its projection; ``"layers<k>"`` trains
    only the last ``k`` encoder layers (ResNet: Bottleneck blocks) of each tower plus the final norms,
    projections and ``logit_scale``; ``lock_image`` freezes the whole image tower and
    ``visual_projection`` on top of any of these.
    """
    tower = _tower(canonical_name)
    if options.lock_image and tower == "vision":
        return False
    if options.freeze == "text":
        return tower != "text"
    if options.freeze == "vision":
        return tower != "vision"
    k = options.last_layers
    if k is not None:
        return _in_last_layers(canonical_name, k, config)
    return True


def trainable_names(config: CLIPConfig, options: FinetuneOptions, part: str = "model") -> list[str]:
    """The canonical names of the parameters that train (schema order; buffers excluded)."""
    return [n for n in schema(config, part) if not n.endswith(("running_mean", "running_var"))
            and trainable(n, options, config)]


TRAINER_STATE = "trainer_state.json"


def write_trainer_state(directory: str, step: int, framework: str, **extra) -> None:
    """``trainer_state.json`` ``{"step", "framework", ...}`` in ``directory`` (the caller renames the dir)."""
    import json
    import os

    with open(os.path.join(directory, TRAINER_STATE), "w", encoding="utf-8") as f:
        json.dump({"step": int(step), "framework": framework, **extra}, f, indent=1)


def read_trainer_state(directory: str, framework: str) -> dict:
    """The saved trainer state; a clear error when it is missing or from another framework."""
    import json
    import os

    path = os.path.join(directory, TRAINER_STATE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: {directory} is no trainer checkpoint")
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    if state.get("framework") != framework:
        raise ValueError(f"{directory} holds {state.get('framework')} optimizer state; resume it with that "
                         f"framework (the weights alone load anywhere), not {framework}")
    return state


def split_batch(batch: dict, replicas: int, rank: int) -> dict:
    """This replica's contiguous slice of the global batch (the batch size must divide evenly)."""
    n = len(batch["input_ids"])
    if n % replicas:
        raise ValueError(f"global batch size {n} is not divisible by {replicas} replicas")
    k = n // replicas
    return {key: value[rank * k:(rank + 1) * k] for key, value in batch.items()}


def describe(config: CLIPConfig, options: FinetuneOptions) -> str:
    """One line: how many tensors train / decay (for logs)."""
    names = [n for n in schema(config) if not n.endswith(("running_mean", "running_var"))]
    train = [n for n in names if trainable(n, options, config)]
    return f"{len(train)}/{len(names)} tensors trainable, {sum(decays(n) for n in train)} with weight decay"
