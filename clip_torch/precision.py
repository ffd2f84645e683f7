"""bf16 and int8 inference for clip_torch models (see :mod:`clip_core.precision` for the names and accuracy bounds).

- ``bf16``: every weight in bfloat16 (oneDNN's AVX512-BF16 / AMX kernels on CPUs that have them) except
  LayerNorm (which computes in float32 anyway) and the final projection, which runs in float32 on a
  float32 copy of its input; normalization and logits follow in float32.
- ``int8``: the transformer layers' linears (attention q/k/v/out, MLP fc1/fc2) become
  :class:`Int8Linear`: weights quantized symmetrically per output channel, activations per call by
  fbgemm's dynamic quantized linear. Embeddings, convolutions (ResNet), LayerNorm, softmax and the
  projections stay float32.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from clip_core.precision import PRECISIONS, PrecisionError, check_embeddings, check_precision, probe_inputs

from .layers import CLIPAttention, LayerNorm, Linear

__all__ = ["PRECISIONS", "apply_precision", "Int8Linear"]

_FLOAT32_MODULES = ("text_projection", "visual_projection", "classifier")


class Int8Linear(nn.Module):
    """A :class:`~clip_torch.layers.Linear` with int8 weights (per output channel) and dynamically
    quantized int8 activations; float32 in, float32 out. Inference only."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # (O, I)
        scale = (w.abs().amax(dim=1).clamp_min(1e-12) / 127.0).double()  # (O,)
        zero = torch.zeros_like(scale, dtype=torch.long)
        bias = None if linear.bias is None else linear.bias.detach().float()
        with warnings.catch_warnings():  # torch >= 2.14 marks quantized tensors deprecated (torchao replaces them)
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            q = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(q, bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, self.in_features).float().contiguous(),
                                               self._packed, True)  # (N, O)
        return y.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _float32_input(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _to_bf16(model: nn.Module) -> None:
    model.to(torch.bfloat16)
    for name, module in model.named_modules():
        if isinstance(module, LayerNorm) or name.rsplit(".", 1)[-1] in _FLOAT32_MODULES:
            module.float()
        if name.rsplit(".", 1)[-1] in _FLOAT32_MODULES:
            module.register_forward_pre_hook(_float32_input)


def _int8_available() -> bool:
    """This torch has the quantized CPU kernels (fbgemm) the int8 path calls."""
    try:
        return ("fbgemm" in torch.backends.quantized.supported_engines
                and hasattr(torch.ops.quantized, "linear_dynamic") and hasattr(torch, "quantize_per_channel"))
    except (AttributeError, RuntimeError):
        return False


def _to_int8(model: nn.Module) -> None:
    if not _int8_available():
        raise PrecisionError(f"precision='int8' needs torch's fbgemm quantized kernels, which torch {torch.__version__} "
                             "on this machine lacks; use precision='bf16' or an int8 ONNX export (clip-zoo export --int8)")
    torch.backends.quantized.engine = "fbgemm"
    for name, module in list(model.named_modules()):
        if ".encoder." not in f".{name}.":
            continue
        if isinstance(module, CLIPAttention):
            module.fuse_qkv = False  # q/k/v through their own (int8) modules
        for child_name, child in list(module.named_children()):
            if isinstance(child, Linear):
                setattr(module, child_name, Int8Linear(child))


def _probe(model: nn.Module, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{"text"|"image": (B, D) float32}`` from whichever feature methods the model has."""
    out = {}
    with torch.inference_mode():
        if hasattr(model, "get_text_features"):
            ids = torch.from_numpy(inputs["input_ids"])
            out["text"] = model.get_text_features(input_ids=ids).float().numpy()
        if hasattr(model, "get_image_features"):
            px = torch.from_numpy(inputs["pixel_values"])
            out["image"] = model.get_image_features(pixel_values=px).float().numpy()
        if not out:  # a tower without a feature method: its pooled output
            key = "input_ids" if "Text" in type(model).__name__ else "pixel_values"
            res = model(**{key: torch.from_numpy(inputs[key])})
            out[key] = res.pooler_output.float().numpy()
    return out


def apply_precision(model: Any, precision: Optional[str], check: bool = True) -> Any:
    """Convert a float32 clip_torch ``model`` in place to ``precision`` (``fp32`` / ``bf16`` / ``int8``).

    With ``check`` (default), the converted model's embeddings of a fixed probe batch must stay within
    :data:`clip_core.precision.MIN_COSINE` of the float32 ones, else :class:`PrecisionError`."""
    precision = check_precision(precision)
    if precision == "fp32":
        return model
    if next(model.parameters()).dtype != torch.float32:
        raise ValueError(f"precision={precision!r} converts a float32 model; this one is "
                         f"{next(model.parameters()).dtype} (load it with dtype=None)")
    inputs = probe_inputs(model.config) if check else None
    reference = _probe(model, inputs) if check else None
    (_to_bf16 if precision == "bf16" else _to_int8)(model)
    model.precision = precision
    if check:
        check_embeddings(precision, reference, _probe(model, inputs), type(model).__name__)
    return model.eval()
