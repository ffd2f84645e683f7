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

from clip_core.config import CLIPConfig
from clip_core.families import as_model_config, family_of
from conversion.pretrained import load_pretrained, select_part
from clip_core.schema import from_backend, schema, to_backend

from .layers import CLIPAttention, CLIPEncoder, check_attn_implementation

__all__ = ["CLIPPreTrainedModel"]

PathLike = Union[str, os.PathLike]


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


def _torch_dtype(dtype: Any) -> Optional[torch.dtype]:
    """transformers' ``dtype``: None -> float32 (torch's default), ``"auto"`` -> the checkpoint's (None here),
    a name (``"float16"``, ``"torch.bfloat16"``) or a ``torch.dtype``."""
    if dtype is None:
        return torch.get_default_dtype()
    if isinstance(dtype, str):
        if dtype == "auto":
            return None
        resolved = getattr(torch, dtype.replace("torch.", ""), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}")
        return resolved
    return dtype


def _device(device_map: Any, device: Any) -> Any:
    """The one device ``device_map`` names: ``"auto"`` / ``"balanced"`` / ``"sequential"`` = CUDA when available,
    else the CPU; a device, an index or a dict mapping every module to one device. Splitting a model over
    several devices is not supported (CLIP fits on one)."""
    if device_map is None:
        return device
    if isinstance(device_map, dict):
        targets = set(device_map.values())
        if len(targets) != 1:
            raise NotImplementedError(f"clip_torch places a model on one device; device_map={device_map!r} "
                                      "spreads it over several")
        device_map = targets.pop()
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device("cuda", device_map) if isinstance(device_map, int) else torch.device(device_map)


class CLIPPreTrainedModel(nn.Module):
    """Base of the six classes: ``from_pretrained``, ``save_pretrained``, canonical state dicts,
    ``gradient_checkpointing_enable``, ``set_attn_implementation``."""

    part = "model"
    family = "clip"  # the config family a class takes (clip_core.families)

    def __init__(self, config: Any, attn_implementation: Optional[str] = "sdpa") -> None:
        super().__init__()
        self.config = as_model_config(config)
        if family_of(self.config) != self.family:
            raise TypeError(f"{type(self).__name__} takes a {self.family} config, got a {type(self.config).__name__}")
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
    def from_pretrained(cls, path: PathLike, *, config: Optional[CLIPConfig] = None, dtype: Any = None,
                        num_labels: Optional[int] = None, **kwargs: Any) -> "CLIPPreTrainedModel":
        """Load any checkpoint format ``conversion.load_checkpoint`` reads (strict), by path, ``"default"``, an
        OpenAI name or a Hugging Face id in the local cache (:func:`clip_core.resolve_checkpoint`).

        transformers' arguments: ``dtype`` / ``torch_dtype`` (None: float32, ``"auto"``: the checkpoint's),
        ``attn_implementation``, ``device_map`` (one device: ``"cpu"``, ``"cuda"``, ``"auto"``), ``num_labels``,
        ``ignore_mismatched_sizes``, ``output_loading_info``, ``revision``, ``cache_dir``, ``subfolder``, config
        overrides, and the download / format switches, which change nothing (``from_tf`` ...). ``device=``
        places the weights directly. ``precision="bf16"|"int8"`` converts the loaded float32 model for
        inference (:func:`clip_torch.precision.apply_precision`, checked against its accuracy bound).
        """
        attn = check_attn_implementation(kwargs.pop("attn_implementation", None))
        precision = kwargs.pop("precision", None)
        loaded = load_pretrained(path, cls.part, kwargs, config=config, num_labels=num_labels, cls_name=cls.__name__)
        dtype = _torch_dtype(kwargs.pop("torch_dtype", dtype))
        device = _device(kwargs.pop("device_map", None), kwargs.pop("device", None))
        if kwargs:
            raise TypeError(f"{cls.__name__}.from_pretrained() got unexpected keyword arguments {sorted(kwargs)}")
        model = cls.from_canonical(loaded.config, loaded.weights, attn_implementation=attn, dtype=dtype,
                                   device=device, source=loaded.source)
        if precision is not None:
            from .precision import apply_precision

            model = apply_precision(model, precision)
        else:
            model.precision = "fp32"  # as clip_tf and clip_flax say it
        return loaded.result(model)

    @classmethod
    def from_canonical(cls, config: CLIPConfig, weights: Mapping[str, np.ndarray], *,
                       attn_implementation: str = "sdpa", dtype: Optional[torch.dtype] = torch.float32,
                       device: Any = None, source: str = "weights") -> "CLIPPreTrainedModel":
        """Build on the meta device (no random init) and assign the canonical weights (``dtype=None``:
        the arrays' dtype)."""
        with torch.device("meta"), _no_init():
            model = cls(config, attn_implementation=attn_implementation)
        model.load_canonical(weights, dtype=dtype, device=device, source=source)
        return model.eval()

    def load_canonical(self, weights: Mapping[str, np.ndarray], dtype: Optional[torch.dtype] = None,
                       device: Any = None, source: str = "weights") -> None:
        """Assign canonical weights. Tensors of other parts of a CLIP checkpoint (the other tower,
        projections, a classifier) are ignored; anything missing, unknown or mis-shaped raises
        ``WeightMismatchError`` naming it."""
        kept = select_part(weights, self.config, self.part, self.num_labels)
        for name in ("logit_scale", "logit_bias"):  # CLIP's () vs (1,) as HF-TF / some writers; SigLIP's (1,)
            if name in kept and np.size(kept[name]) == 1:
                kept[name] = np.asarray(kept[name]).reshape(self.schema()[name].shape)
        params = to_backend(kept, self.config, "torch", self.part, self.num_labels, source=source)
        device = "cpu" if device is None else device
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

    def save_pretrained(self, directory: PathLike, *, format: str = "canonical", dtype: Optional[str] = None) -> Path:
        """Write the canonical directory (``config.json`` + ``model.safetensors`` [+ tokenizer files]), or another
        ``conversion`` format (``"tf"``, ``"flax"``, ``"openai"``, ``"open_clip"``; towers: canonical / hf / flax);
        ``dtype``: None (as stored), ``"fp16"``, ``"bf16"``."""
        import conversion

        if getattr(self, "precision", "fp32") == "int8":
            raise ValueError(f"this {type(self).__name__} runs with precision='int8' (quantized, inference only) and "
                             "has no float weights to save; save the model loaded without precision=")

        return Path(conversion.save_checkpoint(directory, self._config_to_save(), self.canonical_weights(),
                                               format=format, dtype=dtype, part=self.part))

    # -------------------------------------------------------------------------------- switches
    def set_attn_implementation(self, name: str) -> None:
        """Switch every attention layer to ``"sdpa"`` or ``"eager"`` (see :func:`check_attn_implementation`)."""
        self.attn_implementation = check_attn_implementation(name)
        for m in self.modules():
            if isinstance(m, CLIPAttention):
                m.attn_implementation = self.attn_implementation

    def gradient_checkpointing_enable(self) -> None:
        """Recompute transformer layers in backward instead of storing activations (training)."""
        for m in self.modules():
            if isinstance(m, CLIPEncoder):
                m.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for m in self.modules():
            if isinstance(m, CLIPEncoder):
                m.gradient_checkpointing = False
