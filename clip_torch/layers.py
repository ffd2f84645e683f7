"""Transformer building blocks shared by the text tower and the ViT: attention, MLP, encoder.

Numerics follow Hugging Face transformers 4.57 / OpenAI CLIP exactly: pre-LayerNorm blocks,
LayerNorm eps from the config, additive attention masks with the dtype's minimum, softmax in fp32.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["LayerNorm", "Linear", "linear", "CLIPAttention", "CLIPMLP", "CLIPEncoderLayer", "CLIPEncoder", "activation",
           "ATTN_IMPLEMENTATIONS"]

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
# Inference on CPU goes through oneDNN kernels: its fp32 gemm runs 10-30% faster than the MKL sgemm
# behind F.linear on the CPUs we measured (AMD EPYC, AVX2), and the ResNet's convolutions run with
# BatchNorm folded in and ReLU / residual add fused. The sums differ only in rounding (normalized
# embeddings move by < 1e-6). bf16 linears take the same gemm where the CPU has bf16 instructions.
# CLIP_TORCH_ONEDNN=0 (or setting this to False) turns all of them off.
ONEDNN = os.environ.get("CLIP_TORCH_ONEDNN", "1") != "0"


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input / parameter dtype (fp16 / bf16 safe)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        if self._mixed(x):  # torch's CPU kernel reads bf16 and computes in fp32: no float32 copies
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)

    def _mixed(self, x: torch.Tensor) -> bool:
        """bf16 input and float32 affine parameters on CPU, without autograd, not traced (exports keep the
        float32 round trip)."""
        return (_bf16_cpu_inference(x) and self.weight is not None and self.bias is not None
                and self.weight.dtype == self.bias.dtype == torch.float32)

    def scaled(self, x: torch.Tensor, k: float) -> Optional[torch.Tensor]:
        """``k * self(x)`` for a bf16 ``x`` on CPU (the affine parameters scaled, a pass saved), else None."""
        if not self._mixed(x):
            return None
        return F.layer_norm(x, self.normalized_shape, self.weight * k, self.bias * k, self.eps)


@functools.lru_cache(maxsize=1)
def _onednn_built() -> bool:
    """This torch has oneDNN and the fused ops the inference kernels call (torch >= 2.0 on x86 / arm64)."""
    ops = ("_linear_pointwise", "_convolution_pointwise")
    return torch.backends.mkldnn.is_available() and all(hasattr(torch.ops.mkldnn, op) for op in ops)


@functools.lru_cache(maxsize=1)
def onednn_bf16() -> bool:
    """oneDNN has bfloat16 instructions to run bf16 products on this CPU (AVX512-BF16, AMX, Arm BF16);
    torch's own check, False where this torch lacks it. Not ``clip_core.cpu.native_bf16``: that reads the
    CPU flags (for the load-time warning, in every backend), this asks the library that runs the kernel."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check is not None and check())
    except RuntimeError:
        return False


def _onednn_inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """oneDNN's inference kernels are enabled and apply: no autograd, CPU, contiguous weight, eager mode."""
    return (ONEDNN and not torch.is_grad_enabled() and x.device.type == "cpu" and weight.is_contiguous()
            and torch.backends.mkldnn.enabled and _onednn_built() and not _is_compiling() and not _autocasting(x))


def onednn_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the oneDNN inference kernels apply: enabled, no autograd, fp32 input and weight on CPU."""
    return x.dtype == torch.float32 and weight.dtype == torch.float32 and _onednn_inference(x, weight)


def _onednn_bf16_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """bf16 input, weight and bias where oneDNN runs bf16 natively: its linear skips the bias copy that
    ``F.linear`` (addmm) makes first (~3% of a bf16 ViT-B/32 image b16; see docs/design.md)."""
    return (x.dtype == weight.dtype == torch.bfloat16 and (bias is None or bias.dtype == torch.bfloat16)
            and _onednn_inference(x, weight) and onednn_bf16())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear``; without autograd on CPU, for fp32 (and bf16 where the CPU has bf16 instructions),
    through oneDNN's gemm (see ``ONEDNN``)."""
    if onednn_ok(x, weight) or _onednn_bf16_linear(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose inference path is :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def normal_parameter(*shape: int, std: float) -> nn.Parameter:
    """A parameter drawn from N(0, std²) — left uninitialised on the meta device, where torch's
    random ops cost seconds on first use (the loaders build on meta and assign weights after)."""
    p = nn.Parameter(torch.empty(*shape))
    if not p.is_meta:
        nn.init.normal_(p, std=std)
    return p


#: oneDNN post-ops for the activations it computes inside a linear's kernel: (name, algorithm, k) with
#: activation(h) = post_op(k·h) / k. quick_gelu(h) = h·σ(1.702 h) = swish(1.702 h) / 1.702.
FUSED_ACTIVATIONS = {"quick_gelu": ("swish", "", 1.702), "gelu": ("gelu", "none", 1.0),
                     "gelu_pytorch_tanh": ("gelu", "tanh", 1.0), "gelu_new": ("gelu", "tanh", 1.0),
                     "relu": ("relu", "", 1.0)}


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def activation(name: str):
    """The activation function ``name`` of a config (``quick_gelu``, exact-erf ``gelu``, ...)."""
    table = {"quick_gelu": _quick_gelu, "gelu": F.gelu, "gelu_new": _gelu_tanh,
             "gelu_pytorch_tanh": _gelu_tanh, "relu": F.relu}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(table)}")
    return table[name]


def check_attn_implementation(name: Optional[str]) -> str:
    """``"sdpa"`` (also for None, transformers' default) or ``"eager"``.

    ``"flash_attention_2"`` / ``"flash_attention_3"`` fail as transformers 4.57 fails without the
    flash-attn package (ImportError) or without a CUDA device (ValueError), with its messages; with both,
    they run as ``"sdpa"``, whose CUDA kernels include FlashAttention-2 for fp16 / bf16 (a warning says so).
    """
    if name is None:
        return "sdpa"
    if name in ATTN_IMPLEMENTATIONS:
        return name
    if name in ("flash_attention_2", "flash_attention_3"):
        import importlib.util
        import warnings

        version = name[-1]
        preface = f"FlashAttention{version} has been toggled on, but it cannot be used due to the following error:"
        install = ("Please refer to the documentation of https://huggingface.co/docs/transformers/"
                   "perf_infer_gpu_one#flashattention-2 to install Flash Attention 2.")
        package = "flash_attn" if version == "2" else "flash_attn_3"
        if importlib.util.find_spec(package) is None:
            raise ImportError(f"{preface} the package {package} seems to be not installed. {install}")
        if not torch.cuda.is_available():
            raise ValueError(f"{preface} Flash Attention {version} is not available on CPU. Please make sure "
                             "torch can access a CUDA device.")
        warnings.warn(f"clip_torch runs attn_implementation={name!r} as 'sdpa' (torch's scaled_dot_product_attention "
                      "uses FlashAttention kernels on CUDA for fp16 / bf16)", stacklevel=3)
        return "sdpa"
    raise ValueError(f'Specified `attn_implementation="{name}"` is not supported. The only possible arguments are '
                     '`attn_implementation="eager"`, `"attn_implementation=flash_attention_2"`, '
                     '`"attn_implementation=sdpa"`.')


def _version(t: torch.Tensor) -> int:
    """The in-place version counter (inference tensors have none: they cannot change in place
    outside inference mode, and inside it their storage pointer is the key)."""
    try:
        return t._version
    except RuntimeError:
        return -1


def _is_compiling() -> bool:
    return bool(getattr(torch, "compiler", None) and torch.compiler.is_compiling())


def _bf16_cpu_inference(x: torch.Tensor) -> bool:
    """``x`` is bf16 on CPU, outside autograd and tracing: where the bf16 inference paths apply."""
    return (x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_grad_enabled()
            and not _is_compiling())


def _autocasting(x: torch.Tensor) -> bool:
    """Inside ``torch.autocast`` for ``x``'s device: the plain ops run, so autocast picks their dtypes."""
    return torch.is_autocast_enabled(x.device.type)


#: A bf16 attention over at most ``SHORT_KEYS`` keys, with q holding at most ``SHORT_ELEMENTS`` values, runs
#: SDPA on float32 copies of q / k / v: 64 prompts of 7 tokens ~0.4 against ~0.8 ms a layer, 16 ViT-B/32
#: images (50 tokens) ~2.0 against ~2.24. Past either bound the copies lose: at 64 prompts of 77 tokens, and
#: at 7,000 token rows of width 768 (~60 MB of float32 copies) they were 1.4-2.2x slower (docs/design.md,
#: inference precision).
SHORT_KEYS = 50
SHORT_ELEMENTS = 1 << 21


class CLIPAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections (the schema's names).

    ``attn_implementation="sdpa"`` uses ``F.scaled_dot_product_attention``; ``"eager"`` (or any call
    with ``output_attentions=True``) computes the weights explicitly and can return them. Without
    autograd, q/k/v run as one fused matmul whose concatenated weight is cached and rebuilt when any
    projection parameter changes (its version counter or storage moves).
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0,
                 attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.embed_dim, self.num_heads = hidden_size, num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim ** -0.5
        self.dropout = dropout
        self.attn_implementation = check_attn_implementation(attn_implementation)
        self.fuse_qkv = True
        self.k_proj = Linear(hidden_size, hidden_size)
        self.v_proj = Linear(hidden_size, hidden_size)
        self.q_proj = Linear(hidden_size, hidden_size)
        self.out_proj = Linear(hidden_size, hidden_size)
        self.qkv_proj: Optional[nn.Module] = None  # one module computing q|k|v (B, T, 3C), set by the int8 path
        self._fused: Optional[tuple] = None  # (key, weight, bias)

    def _fused_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        params = (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight,
                  self.q_proj.bias, self.k_proj.bias, self.v_proj.bias)
        key = tuple((p.data_ptr(), _version(p), p.dtype, p.device) for p in params)
        if self._fused is None or self._fused[0] != key:
            w = torch.cat(params[:3], 0)  # (3C, C)
            b = torch.cat(params[3:], 0)  # (3C,)
            self._fused = (key, w, b)
        return self._fused[1], self._fused[2]

    def _fast(self, x: torch.Tensor) -> bool:
        return self.fuse_qkv and not torch.is_grad_enabled() and not _is_compiling() and not _autocasting(x)

    def _heads(self, y: torch.Tensor, n: int) -> torch.Tensor:
        """(B, T, n*C) -> (n, B, H, T, hd) view."""
        B, T, _ = y.shape
        return y.view(B, T, n, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def _qkv(self, x: torch.Tensor, first_query_only: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, H, Tq, hd), k, v (B, H, T, hd); ``first_query_only`` projects q for token 0 only."""
        if self.qkv_proj is not None:  # q for every token, then token 0's kept
            q, k, v = self._heads(self.qkv_proj(x), 3)
            return (q[:, :, :1] if first_query_only else q), k, v
        if self._fast(x):
            w, b = self._fused_weights()
            if not first_query_only:
                return tuple(self._heads(linear(x, w, b), 3))  # type: ignore[return-value]
            C = self.embed_dim  # rows [0, C) of the fused weight are q, [C, 3C) are k and v
            q = self._heads(linear(x[:, :1], w[:C], b[:C]), 1)[0]  # (B, H, 1, hd)
            k, v = self._heads(linear(x, w[C:], b[C:]), 2)
            return q, k, v
        q = self._heads(self.q_proj(x[:, :1] if first_query_only else x), 1)[0]  # (B, H, Tq, hd)
        return q, self._heads(self.k_proj(x), 1)[0], self._heads(self.v_proj(x), 1)[0]

    def forward(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                output_attentions: bool = False, first_query_only: bool = False
                ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``x`` (B, T, C); ``attention_mask`` additive (B|1, 1, T, T) or None; ``is_causal`` only
        when no mask is given. Returns ``(out (B, Tq, C), weights (B, H, Tq, T) or None)``;
        ``Tq`` = 1 with ``first_query_only`` (token 0 attending to all tokens, no mask), else T."""
        B, T, C = x.shape
        if first_query_only and (attention_mask is not None or is_causal):
            raise ValueError("first_query_only takes no attention mask")
        q, k, v = self._qkv(x, first_query_only)
        Tq, dtype = q.shape[2], q.dtype
        p = self.dropout if self.training else 0.0
        weights = None
        if output_attentions or self.attn_implementation == "eager":
            if is_causal:
                attention_mask = causal_mask(T, x.dtype, x.device)
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # (B, H, T, T)
            if attention_mask is not None:
                scores = scores + attention_mask
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            out = torch.matmul(F.dropout(weights, p, self.training), v)  # (B, H, T, hd)
        else:
            if self._short_bf16(q, k):  # torch's bf16 SDPA is slower than its fp32 one on small attentions
                q, k, v = q.float(), k.float(), v.float()
                if attention_mask is not None and attention_mask.is_floating_point():
                    attention_mask = attention_mask.float()  # SDPA takes an additive mask in q's dtype
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=p,
                                                 is_causal=is_causal and attention_mask is None, scale=self.scale)
        out = out.transpose(1, 2).to(dtype, memory_format=torch.contiguous_format).reshape(B, Tq, C)  # one pass
        return self.out_proj(out), (weights if output_attentions else None)

    def _short_bf16(self, q: torch.Tensor, k: torch.Tensor) -> bool:
        """bf16 attention over at most ``SHORT_KEYS`` keys and ``SHORT_ELEMENTS`` query values on CPU, without
        autograd: run in float32."""
        return (_bf16_cpu_inference(q)  # before the shapes: a traced length stays symbolic
                and k.shape[2] <= SHORT_KEYS and q.numel() <= SHORT_ELEMENTS)


def causal_mask(T: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Additive causal mask (1, 1, T, T): 0 on and below the diagonal, the dtype's minimum above."""
    m = torch.full((T, T), torch.finfo(dtype).min, dtype=dtype, device=device)
    return torch.triu(m, diagonal=1)[None, None]


class CLIPMLP(nn.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str) -> None:
        super().__init__()
        self.act_name = hidden_act
        self.act = activation(hidden_act)
        self.fc1 = Linear(hidden_size, intermediate_size)
        self.fc2 = Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)  # (B, T, I)
        if self.act_name == "quick_gelu" and not torch.is_grad_enabled() and not _is_compiling():
            h = h.mul_(torch.sigmoid_(h * 1.702))  # same arithmetic as _quick_gelu, fewer temporaries
        else:
            h = self.act(h)
        return self.fc2(h)

    def of_norm(self, norm: LayerNorm, x: torch.Tensor) -> torch.Tensor:
        """``self(norm(x))``. bf16 on oneDNN: the activation runs inside fc1's kernel as
        ``post_op(k·h) / k`` (``FUSED_ACTIVATIONS``), ``k·h`` coming from the norm's affine parameters
        and fc1's bias scaled by ``k``: vectors, no weight copy. Saves quick_gelu's two extra passes."""
        fused = FUSED_ACTIVATIONS.get(self.act_name)
        if fused is None or not _onednn_bf16_linear(x, self.fc1.weight, self.fc1.bias) or self.fc1.bias is None:
            return self(norm(x))
        post, algorithm, k = fused
        y = norm(x) if k == 1.0 else norm.scaled(x, k)  # (B, T, C) bf16
        if y is None:
            return self(norm(x))
        h = torch.ops.mkldnn._linear_pointwise(y, self.fc1.weight, self.fc1.bias * k, post, [], algorithm)
        return self.fc2(h if k == 1.0 else h.mul_(1.0 / k))  # (B, T, I) -> (B, T, C)


class CLIPEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        d = config.hidden_size
        self.self_attn = CLIPAttention(d, config.num_attention_heads, config.attention_dropout, attn_implementation)
        self.layer_norm1 = LayerNorm(d, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(d, config.intermediate_size, config.hidden_act)
        self.layer_norm2 = LayerNorm(d, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                output_attentions: bool = False, first_token_only: bool = False
                ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``x`` (B, T, C) -> (B, T, C), or (B, 1, C) with ``first_token_only``: the output at
        token 0 alone (all tokens still serve as keys / values; no mask) — the same arithmetic per
        token, for callers that only read token 0 of the last layer."""
        h, weights = self.self_attn(self.layer_norm1(x), attention_mask, is_causal, output_attentions,
                                    first_query_only=first_token_only)
        if first_token_only:
            x = x[:, :1]  # (B, 1, C)
        if torch.is_grad_enabled() or _is_compiling():
            x = x + h
            return x + self.mlp(self.layer_norm2(x)), weights
        x = h.add_(x)  # in place into the fresh branch output (x itself may be kept in hidden_states)
        mlp = self.mlp.of_norm(self.layer_norm2, x) if isinstance(self.mlp, CLIPMLP) else self.mlp(self.layer_norm2(x))
        return mlp.add_(x), weights


class CLIPEncoder(nn.Module):
    """A stack of :class:`CLIPEncoderLayer`; optional gradient checkpointing in training."""

    def __init__(self, config, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(config, attn_implementation)
                                    for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                output_attentions: bool = False, output_hidden_states: bool = False,
                first_token_only: bool = False):
        """Returns ``(last (B, T, C), hidden_states tuple or None, attentions tuple or None)``;
        ``hidden_states`` = (input, output of every layer), as Hugging Face.

        ``first_token_only=True`` (no mask, no hidden states / attentions requested) runs the last
        layer for token 0 alone and returns ``last`` (B, 1, C): the ViT's pooled path needs only
        the class token of the last layer, whose value this does not change."""
        if first_token_only and (output_attentions or output_hidden_states or attention_mask is not None
                                 or is_causal or not self.layers):
            first_token_only = False
        hidden = [x] if output_hidden_states else None
        attns = [] if output_attentions else None
        last_index = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            first_only = first_token_only and i == last_index
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, w = checkpoint(layer, x, attention_mask, is_causal, output_attentions, first_only,
                                  use_reentrant=False)
            else:
                x, w = layer(x, attention_mask, is_causal, output_attentions, first_only)
            if hidden is not None:
                hidden.append(x)
            if attns is not None:
                attns.append(w)
        return x, (tuple(hidden) if hidden is not None else None), (tuple(attns) if attns is not None else None)
