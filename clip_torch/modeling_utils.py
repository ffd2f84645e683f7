"""Loading, saving and switches shared by the six public classes (no porting code: the
``clip_core.schema`` table maps canonical names to this backend's parameter names)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from clip_core.config import CLIPConfig, as_clip_config
from clip_core.schema import from_backend, schema, to_backend

from .layers import CLIPAttention, CLIPEncoder, check_attn_implementation

__all__ = ["CLIPPreTrainedModel"]

PathLike = Union[str, os.PathLike]


_GROUP_PREFIXES = {"text_model.": "text", "vision_model.": "vision", "text_projection.": "text_projection",
                   "visual_projection.": "visual_projection", "classifier.": "classifier"}


def _group_of(name: str) -> Optional[str]:
    """The schema group a canonical name belongs to (None for names of no CLIP part)."""
    if name == "logit_scale":
        return "logit_scale"
    for prefix, group in _GROUP_PREFIXES.items():
        if name.startswith(prefix):
            return group
    return None


def _groups(part: str) -> tuple:
    from clip_core.schema import PARTS

    return PARTS[part]


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """Skip the random initialisation of torch layers (the weights are assigned right after)."""
    from torch.nn.modules.batchnorm import _NormBase
    from torch.nn.modules.conv import _ConvNd

    classes = (nn.Linear, _ConvNd, nn.Embedding, nn.LayerNorm, _NormBase)
    saved = [(c, c.__dict__.get("reset_parameters")) for c in classes]
    try:
        for c in classes:
            c.reset_parameters = lambda self: None
        yield
    finally:
        for c, fn in saved:
            if fn is None:
                del c.reset_parameters
            else:
                c.reset_parameters = fn


def _to_tensor(a: np.ndarray, dtype: Optional[torch.dtype], device) -> torch.Tensor:
    """numpy -> torch sharing memory when the array is writable (copy otherwise: torch must not
    write into a read-only buffer); then the requested dtype / device."""
    a = np.asarray(a)
    if a.dtype.name == "bfloat16":  # ml_dtypes
        t = torch.from_numpy(np.array(a.view(np.uint16))).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a if a.flags.writeable else a.copy())
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t if device is None else t.to(device)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


class CLIPPreTrainedModel(nn.Module):
    """Base of the six classes: ``from_pretrained``, ``save_pretrained``, canonical state dicts,
    ``gradient_checkpointing_enable``, ``set_attn_implementation``."""

    part = "model"

    def __init__(self, config: Any, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.config = as_clip_config(config)
        self.attn_implementation = check_attn_implementation(attn_implementation)

    # -------------------------------------------------------------------------------- schema
    @property
    def num_labels(self) -> Optional[int]:
        return None

    def schema(self) -> dict:
        return schema(self.config, self.part, self.num_labels)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: PathLike, *, config: Optional[CLIPConfig] = None,
                        attn_implementation: str = "sdpa", dtype: Optional[torch.dtype] = torch.float32,
                        device: Any = None, **kwargs: Any) -> "CLIPPreTrainedModel":
        """Load any checkpoint format ``conversion.load_checkpoint`` reads (strict).

        ``dtype=None`` keeps the checkpoint's dtype. ``torch_dtype`` is accepted as an alias.
        """
        import conversion

        if "torch_dtype" in kwargs:
            dtype = kwargs.pop("torch_dtype")
        if kwargs:
            raise TypeError(f"unexpected arguments to from_pretrained: {sorted(kwargs)}")
        cfg, weights = conversion.load_for_part(path, cls.part, config)
        return cls.from_canonical(cfg, weights, attn_implementation=attn_implementation, dtype=dtype,
                                  device=device, source=str(path))

    @classmethod
    def from_canonical(cls, config: CLIPConfig, weights: Mapping[str, np.ndarray], *,
                       attn_implementation: str = "sdpa", dtype: Optional[torch.dtype] = torch.float32,
                       device: Any = None, source: str = "weights") -> "CLIPPreTrainedModel":
        """Build on the meta device (no random init) and assign the canonical weights."""
        with torch.device("meta"), _no_init():
            model = cls(config, attn_implementation=attn_implementation)
        model.load_canonical(weights, dtype=dtype, device=device, source=source)
        return model.eval()

    def load_canonical(self, weights: Mapping[str, np.ndarray], dtype: Optional[torch.dtype] = None,
                       device: Any = None, source: str = "weights") -> None:
        """Assign canonical weights. Tensors of other parts of a CLIP checkpoint (the other tower,
        projections, a classifier) are ignored; anything missing, unknown or mis-shaped raises
        ``WeightMismatchError`` naming it."""
        groups = _groups(self.part)
        kept = {k: v for k, v in weights.items() if _group_of(k) in groups or _group_of(k) is None}
        if "logit_scale" in kept and np.size(kept["logit_scale"]) == 1:  # (1,) as HF-TF / some writers
            kept["logit_scale"] = np.asarray(kept["logit_scale"]).reshape(())
        params = to_backend(kept, self.config, "torch", self.part, self.num_labels, source=source)
        if device is None:
            device = "cpu"
        state = {k: _to_tensor(v, dtype, device) for k, v in params.items()}
        self.load_state_dict(state, strict=True, assign=True)
        for module in self.modules():  # buffers outside the schema (BatchNorm counters)
            for name, buf in list(module.named_buffers(recurse=False)):
                if buf is not None and buf.is_meta:
                    setattr(module, name, torch.zeros(buf.shape, dtype=buf.dtype, device=device))

    # -------------------------------------------------------------------------------- saving
    def canonical_weights(self) -> dict[str, np.ndarray]:
        """``{canonical name: numpy array}`` of this model (strict)."""
        params = {k: _to_numpy(v) for k, v in self.state_dict().items()}
        return from_backend(params, self.config, "torch", self.part, self.num_labels)

    def _config_to_save(self) -> CLIPConfig:
        return self.config

    def save_pretrained(self, directory: PathLike) -> Path:
        """Write the canonical directory (``config.json`` + ``model.safetensors`` [+ tokenizer files])."""
        import conversion

        conversion.save_checkpoint(directory, self._config_to_save(), self.canonical_weights(), part=self.part)
        return Path(directory)

    # -------------------------------------------------------------------------------- switches
    def set_attn_implementation(self, name: str) -> None:
        """Switch every attention layer to ``"sdpa"`` or ``"eager"``."""
        self.attn_implementation = check_attn_implementation(name)
        for m in self.modules():
            if isinstance(m, CLIPAttention):
                m.attn_implementation = name

    def gradient_checkpointing_enable(self) -> None:
        """Recompute transformer layers in backward instead of storing activations (training)."""
        for m in self.modules():
            if isinstance(m, CLIPEncoder):
                m.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for m in self.modules():
            if isinstance(m, CLIPEncoder):
                m.gradient_checkpointing = False
