"""bf16 and int8 inference for clip_torch models (see :mod:`clip_core.precision` for the names and accuracy bounds).

- ``bf16``: every weight in bfloat16 (oneDNN's AVX512-BF16 / AMX kernels on CPUs that have them) except
  LayerNorm (which computes in float32 anyway) and the final projection, which runs in float32 on a
  float32 copy of its input; normalization and logits follow in float32.
- ``int8``: the transformer layers' linears become :class:`Int8Linear` (q/k/v as one, out, and the MLP
  as :class:`Int8MLP`): weights quantized symmetrically per output channel, activations per call and
  per tensor. oneDNN's int8 linear (AMX / AVX512-VNNI) runs them where torch has it, with the
  dequantization, bias and MLP activation in the same kernel; fbgemm's dynamic quantized linear is
  the fallback. Embeddings, convolutions (ResNet), LayerNorm, softmax and the projections stay float32.
  On x86 without VNNI the activations use 7 bits (:func:`clip_core.cpu.int8_saturates`).
- bf16 on a CPU without bfloat16 instructions warns (:func:`clip_core.precision.warn_if_emulated`).
"""
from __future__ import annotations

import math
import warnings
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from clip_core.cpu import int8_saturates
from clip_core.precision import (PRECISIONS, PrecisionError, check_embeddings, check_precision, probe_flags,
                                 probe_inputs, probe_rows, warn_if_emulated)

from .layers import FUSED_ACTIVATIONS, CLIPMLP, CLIPAttention, LayerNorm
from .vision import CLIPVisionEmbeddings

__all__ = ["PRECISIONS", "apply_precision", "Int8Linear", "Int8MLP"]

#: Modules that stay float32 in bf16 (on a float32 copy of their input): the final projections (ResNet's is
#: its attention pool's ``c_proj``; SigLIP's are its towers' ``head``s) and classification heads, so that
#: features, embeddings and logits are float32 as in clip_tf and clip_flax.
_FLOAT32_MODULES = ("text_projection", "visual_projection", "c_proj", "head", "classifier")
#: Parameters of the model itself that stay float32: a bf16 logit scale (log 100 -> 4.594) moves logits by 1%.
_FLOAT32_PARAMETERS = ("logit_scale", "logit_bias")


def _onednn_available() -> bool:
    """This torch has oneDNN's int8 linear (AMX / AVX512-VNNI kernels on CPUs that have them)."""
    try:
        ops = torch.ops.onednn
        return (torch.backends.mkldnn.is_available() and hasattr(ops, "qlinear_pointwise")
                and hasattr(ops, "qlinear_prepack"))
    except (AttributeError, RuntimeError):
        return False


def _fbgemm_available() -> bool:
    """This torch has fbgemm's dynamic quantized linear."""
    try:
        return ("fbgemm" in torch.backends.quantized.supported_engines
                and hasattr(torch.ops.quantized, "linear_dynamic") and hasattr(torch, "quantize_per_channel"))
    except (AttributeError, RuntimeError):
        return False


def _int8_kernel() -> Optional[str]:
    """``"onednn"`` (preferred: fused dequantization and activation), ``"fbgemm"``, or None."""
    return "onednn" if _onednn_available() else "fbgemm" if _fbgemm_available() else None


def _no_kernel() -> PrecisionError:
    return PrecisionError(f"precision='int8' needs torch's oneDNN or fbgemm quantized kernels, which torch "
                          f"{torch.__version__} on this machine lacks; use precision='bf16' or an int8 ONNX "
                          "export (clip-zoo export --int8)")


def _quantize_u8(x: torch.Tensor, lo: float, hi: float, top: int = 255) -> tuple[torch.Tensor, float, int]:
    """``x`` (N, I) float32 with values in [lo, hi] -> (uint8 (N, I) codes in [0, top], scale, zero point):
    per-tensor asymmetric, range including 0. ``top`` = 127 gives 7-bit codes (see ``int8_saturates``)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / top, 1e-12)
    zero = min(top, max(0, round(-lo / scale)))
    quantize = _fused_u8 if _QUANTIZE_FUSED else _plain_u8
    return quantize(x, scale, zero), scale, zero


def _fused_u8(x: torch.Tensor, scale: float, zero: int) -> torch.Tensor:
    """One fused pass (``torch.quantize_per_tensor``, deprecated in torch >= 2.14); its bytes read as uint8, not copied."""
    q = torch.quantize_per_tensor(x, scale, zero, torch.quint8)
    return torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage(), 0, q.shape, q.stride())


def _plain_u8(x: torch.Tensor, scale: float, zero: int) -> torch.Tensor:
    """The same codes from plain ops (round half up: +0.5, then truncation of the clamped value)."""
    return torch.add(torch.full((), zero + 0.5), x, alpha=1.0 / scale).clamp_(0, 255).to(torch.uint8)


def _check_fused_quantize() -> bool:
    """The fused quantization exists and agrees with the plain ops (±1 at ties); warns (once) while muted."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            x = torch.linspace(-1.0, 3.0, 64).view(4, 16)
            fused = _fused_u8(x, 4 / 255, 64)
        return int((fused.int() - _plain_u8(x, 4 / 255, 64).int()).abs().max()) <= 1
    except (AttributeError, RuntimeError, TypeError):
        return False


_QUANTIZE_FUSED = _check_fused_quantize()


class Int8Linear(nn.Module):
    """One or more :class:`~clip_torch.layers.Linear` (their outputs concatenated, e.g. fused q/k/v) with
    int8 weights (symmetric, per output channel) and int8 activations quantized per call; float32 in,
    float32 out. Inference only.

    With oneDNN (``kernel="onednn"``, the default where torch has it) activations are quantized per
    tensor to uint8 and the kernel dequantizes, adds the bias and can apply ``activation`` (a key of
    ``clip_torch.layers.FUSED_ACTIVATIONS``) in the same pass. ``input_scale`` multiplies the input and ``output_scale``
    the pre-activation output, both folded into the weights (and the bias, for ``output_scale``): how
    :class:`Int8MLP` moves quick_gelu's 1.702 into fc1 and its inverse into fc2. fbgemm's dynamic
    quantized linear is the fallback (no fused activation)."""

    def __init__(self, linear, activation: Optional[str] = None, input_scale: float = 1.0,
                 output_scale: float = 1.0, kernel: Optional[str] = None) -> None:
        super().__init__()
        linears = list(linear) if isinstance(linear, (list, tuple)) else [linear]
        w = torch.cat([m.weight.detach().float() for m in linears]) * (input_scale * output_scale)  # (O, I)
        biases = [m.bias for m in linears]
        bias = None if any(b is None for b in biases) else torch.cat([b.detach().float() for b in biases]) * output_scale
        self.kernel = kernel or _int8_kernel()
        if self.kernel is None:
            raise _no_kernel()
        if activation is not None and self.kernel != "onednn":
            raise ValueError(f"a fused {activation} needs the onednn kernel, not {self.kernel}")
        self.activation = activation
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0  # (O,)
        if self.kernel == "onednn":
            self._post = FUSED_ACTIVATIONS[activation][:2] if activation else ("none", "")
            self._top = 127 if int8_saturates() else 255  # 7-bit activations where u8 x s8 pairs saturate int16
            q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)  # (O, I)
            self._packed = torch.ops.onednn.qlinear_prepack(q, None)
            self._scale, self._zero, self._bias = scale.float(), torch.zeros_like(scale, dtype=torch.long), bias
            return
        zero = torch.zeros_like(scale, dtype=torch.long)
        torch.backends.quantized.engine = "fbgemm"
        with warnings.catch_warnings():  # torch >= 2.14 marks quantized tensors deprecated (torchao replaces them)
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            q = torch.quantize_per_channel(w, scale.double(), zero, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(q, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x = x.detach().reshape(-1, self.in_features).float().contiguous()  # (N, I)
        return self._rows(x).view(*lead, self.out_features)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """(N, I) float32 -> (N, O) float32. Rows holding NaN or inf come out NaN, as a float32 linear's
        would, and leave the others' quantization range alone; no rows, no kernel call."""
        if x.shape[0] == 0:
            return x.new_empty(0, self.out_features)
        lo, hi = (float(v) for v in torch.aminmax(x))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = ~torch.isfinite(x).all(dim=1)  # (N,)
            y = x.new_full((x.shape[0], self.out_features), float("nan"))
            y[~bad] = self._rows(x[~bad])
            return y
        if self.kernel == "onednn":
            xq, scale, zero = _quantize_u8(x, lo, hi, self._top)
            return torch.ops.onednn.qlinear_pointwise(xq, scale, zero, self._packed, self._scale, self._zero,
                                                      self._bias, 1.0, 0, torch.float32, self._post[0], [],
                                                      self._post[1])
        return torch.ops.quantized.linear_dynamic(x, self._packed, True)

    def extra_repr(self) -> str:
        act = f", activation={self.activation}" if self.activation else ""
        act += ", 7-bit activations" if getattr(self, "_top", 255) == 127 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 ({self.kernel}){act}"


class Int8MLP(nn.Module):
    """A :class:`~clip_torch.layers.CLIPMLP` with int8 fc1 and fc2. With oneDNN the activation runs inside
    fc1's kernel where oneDNN has it (quick_gelu as swish of 1.702·h, the 1/1.702 folded into fc2)."""

    def __init__(self, mlp: CLIPMLP, kernel: Optional[str] = None) -> None:
        super().__init__()
        kernel = kernel or _int8_kernel()
        fused = FUSED_ACTIVATIONS.get(mlp.act_name) if kernel == "onednn" else None
        self.act_name = mlp.act_name
        self.act = None if fused else mlp.act
        k = fused[2] if fused else 1.0
        self.fc1 = Int8Linear(mlp.fc1, mlp.act_name if fused else None, output_scale=k, kernel=kernel)
        self.fc2 = Int8Linear(mlp.fc2, input_scale=1.0 / k, kernel=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)  # (B, T, I), activated when fused
        return self.fc2(h if self.act is None else self.act(h))


def _float32_input(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _to_bf16(model: nn.Module) -> None:
    """Cast every floating-point parameter and buffer to bfloat16 except those of LayerNorms, of
    ``_FLOAT32_MODULES`` (which also get a float32 copy of their input) and ``_FLOAT32_PARAMETERS``: those
    keep their float32 values, not a bf16 rounding of them."""
    keep = {id(p) for n, p in model.named_parameters(recurse=False) if n in _FLOAT32_PARAMETERS}
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if isinstance(module, LayerNorm) or last in _FLOAT32_MODULES:
            keep.update(id(t) for t in (*module.parameters(), *module.buffers()))
        if last in _FLOAT32_MODULES:
            module.register_forward_pre_hook(_float32_input)
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point() and id(t) not in keep:
            t.data = t.data.to(torch.bfloat16)
    for module in model.modules():  # ResNet: bf16 convolutions channels-last (see docs/design.md)
        if isinstance(module, nn.Conv2d) and module.weight.dtype == torch.bfloat16:
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)


def _patch_int8(embeddings: CLIPVisionEmbeddings, kernel: str) -> Int8Linear:
    """A ViT's patch embedding (a stride = kernel conv, run as a matmul over flattened patches) as an int8
    linear: (D, C, p, p) weights -> (D, C*p*p). The conv is ~3% of ViT-B/32's products and, left in float32,
    ~8% of its int8 image forward."""
    conv = embeddings.patch_embedding
    linear = SimpleNamespace(weight=conv.weight.reshape(conv.weight.shape[0], -1), bias=conv.bias)
    return Int8Linear(linear, kernel=kernel)


def _to_int8(model: nn.Module) -> None:
    kernel = _int8_kernel()
    if kernel is None:
        raise _no_kernel()
    for name, module in list(model.named_modules()):
        if isinstance(module, CLIPVisionEmbeddings):
            module.patch_proj = _patch_int8(module, kernel)
            continue
        if ".encoder." not in f".{name}.":
            continue
        if isinstance(module, CLIPAttention):  # q|k|v as one int8 linear: the input is quantized once
            module.qkv_proj = Int8Linear([module.q_proj, module.k_proj, module.v_proj], kernel=kernel)
            module.fuse_qkv, module._fused = False, None
            del module.q_proj, module.k_proj, module.v_proj
            module.out_proj = Int8Linear(module.out_proj, kernel=kernel)
        elif isinstance(module, CLIPMLP):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, Int8MLP(module, kernel))


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
        if not out:  # a tower without a feature method: its pooled output (a classifier: its last hidden state)
            key = "input_ids" if "Text" in type(model).__name__ else "pixel_values"
            res = model(**{key: torch.from_numpy(inputs[key])}, **probe_flags(model))
            rows = probe_rows(res).float()
            out[key] = rows.reshape(len(rows), -1).numpy()
    return out


def apply_precision(model: Any, precision: Optional[str], check: bool = True) -> Any:
    """Convert a float32 clip_torch ``model`` in place to ``precision`` (``fp32`` / ``bf16`` / ``int8``).

    With ``check`` (default), the converted model's embeddings of a fixed probe batch must stay within
    :data:`clip_core.precision.MIN_COSINE` of the float32 ones, else :class:`PrecisionError`."""
    precision = check_precision(precision)
    if precision == "fp32":
        model.precision = precision
        return model
    if next(model.parameters()).dtype != torch.float32:
        raise ValueError(f"precision={precision!r} converts a float32 model; this one is "
                         f"{next(model.parameters()).dtype} (load it with dtype=None)")
    warn_if_emulated(precision, "clip_torch")
    inputs = probe_inputs(model.config) if check else None
    reference = _probe(model, inputs) if check else None
    (_to_bf16 if precision == "bf16" else _to_int8)(model)
    model.precision = precision
    if check:
        check_embeddings(precision, reference, _probe(model, inputs), type(model).__name__)
    return model.eval()
