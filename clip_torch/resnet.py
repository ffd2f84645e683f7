"""OpenAI's ModifiedResNet vision tower (RN50 ... RN50x64) with OpenAI's attribute names.

3-conv stem with a stride-2 first conv (symmetric padding 1) and an average pool; anti-aliased
Bottlenecks (AvgPool2d(stride) before conv3 and in the downsample branch); attention pooling with
the mean token as the only query. BatchNorm runs with the checkpoint's running statistics in eval mode.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clip_core.config import CLIPResNetVisionConfig
from clip_core.outputs import BaseModelOutputWithPooling

from .layers import Linear, _version, normal_parameter, onednn_ok

__all__ = ["BatchNorm2d", "Bottleneck", "AttentionPool2d", "ModifiedResNet", "fold_batch_norm"]

CHANNELS_LAST = torch.channels_last


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of one convolution equal to eval-mode ``bn(conv(x))``, weight channels-last."""
    alpha = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,): BatchNorm's own scale
    weight = (conv.weight * alpha[:, None, None, None]).contiguous(memory_format=CHANNELS_LAST)
    return weight, bn.bias - bn.running_mean * alpha


class FoldedConvs:
    """The (conv, bn) pairs of one module folded for inference, rebuilt when any of their tensors
    changes (storage or in-place version), and run as oneDNN convolutions with fused epilogues."""

    def __init__(self, pairs: dict[str, tuple[nn.Conv2d, nn.BatchNorm2d]]) -> None:
        self.pairs = pairs
        self._key: Optional[tuple] = None
        self._folded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def refresh(self) -> "FoldedConvs":
        """Re-fold if any conv / BatchNorm tensor changed since the last call; once per forward."""
        tensors = [t for c, b in self.pairs.values() for t in (c.weight, b.weight, b.bias, b.running_mean, b.running_var)]
        key = tuple((t.data_ptr(), _version(t)) for t in tensors)
        if key != self._key:
            self._folded = {n: fold_batch_norm(c, b) for n, (c, b) in self.pairs.items()}
            self._key = key
        return self

    def conv(self, name: str, x: torch.Tensor, relu: bool = True, add: Optional[torch.Tensor] = None
             ) -> torch.Tensor:
        """``relu(bn(conv(x)) [+ add])`` (no relu if ``relu`` is False and ``add`` is None), with the
        weights folded by the last :meth:`refresh`."""
        weight, bias = self._folded[name]
        conv = self.pairs[name][0]
        geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        if add is not None:
            return torch.ops.mkldnn._convolution_pointwise.binary(x, add, weight, bias, *geometry,
                                                                  "add", None, "relu", [], "")
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geometry, "relu" if relu else "none",
                                                       [], "")


def fast_path(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``module`` runs on folded oneDNN convolutions: eval mode, no autograd, fp32 CPU."""
    return not module.training and onednn_ok(x, weight)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose ``num_batches_tracked`` counter is not part of the state dict
    (the canonical schema has no such tensor; it only matters with ``momentum=None``)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps)
        self._non_persistent_buffers_set.add("num_batches_tracked")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: D401
        # skip _NormBase's hook, which inserts a num_batches_tracked entry into the state dict
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args, **kwargs)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> (avgpool) -> 1x1 residual block, expansion 4."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = BatchNorm2d(planes, eps)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(planes, eps)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = BatchNorm2d(out, eps)
        self.downsample = None
        if stride > 1 or inplanes != out:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, out, 1, stride=1, bias=False)),
                ("1", BatchNorm2d(out, eps)),
            ]))
        pairs = {"1": (self.conv1, self.bn1), "2": (self.conv2, self.bn2), "3": (self.conv3, self.bn3)}
        if self.downsample is not None:
            pairs["down"] = (self.downsample[1], self.downsample[2])
        self._folded = FoldedConvs(pairs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast_path(self, x, self.conv1.weight):
            return self._forward_folded(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.avgpool(y)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(y + identity)

    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        """The same block as three (four) fused oneDNN convolutions, channels-last."""
        f = self._folded.refresh()
        y = self.avgpool(f.conv("2", f.conv("1", x)))
        identity = x if self.downsample is None else f.conv("down", self.downsample[0](x), relu=False)
        return f.conv("3", y, add=identity)


class AttentionPool2d(nn.Module):
    """Attention pooling: mean token prepended, positions added, the mean token attends to all."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = normal_parameter(spacial_dim ** 2 + 1, embed_dim, std=embed_dim ** -0.5)
        self.k_proj = Linear(embed_dim, embed_dim)
        self.q_proj = Linear(embed_dim, embed_dim)
        self.v_proj = Linear(embed_dim, embed_dim)
        self.c_proj = Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, output_dim)."""
        B, C, H, W = x.shape
        if H * W + 1 != self.positional_embedding.shape[0]:
            raise ValueError(f"the attention pool was built for {self.positional_embedding.shape[0] - 1} "
                             f"positions, the feature map has {H}x{W}; use the model's image size")
        x = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (B, HW+1, C)
        x = x + self.positional_embedding.to(x.dtype)
        nh, hd = self.num_heads, C // self.num_heads
        q = self.q_proj(x[:, :1]).view(B, 1, nh, hd).transpose(1, 2)  # (B, nh, 1, hd)
        k = self.k_proj(x).view(B, -1, nh, hd).transpose(1, 2)  # (B, nh, HW+1, hd)
        v = self.v_proj(x).view(B, -1, nh, hd).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, 1, hd)
        return self.c_proj(out.transpose(1, 2).reshape(B, C))


class ModifiedResNet(nn.Module):
    """The ResNet tower; ``forward`` returns the last stage's map and the attention-pooled feature."""

    def __init__(self, config: CLIPResNetVisionConfig) -> None:
        super().__init__()
        self.config = config
        w, eps = config.width, config.batch_norm_eps
        self.conv1 = nn.Conv2d(config.num_channels, w // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = BatchNorm2d(w // 2, eps)
        self.conv2 = nn.Conv2d(w // 2, w // 2, 3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(w // 2, eps)
        self.conv3 = nn.Conv2d(w // 2, w, 3, padding=1, bias=False)
        self.bn3 = BatchNorm2d(w, eps)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = w
        for stage, depth in enumerate(config.layers):
            planes = w * 2 ** stage
            blocks = []
            for i in range(depth):
                stride = (1 if stage == 0 else 2) if i == 0 else 1
                blocks.append(Bottleneck(inplanes, planes, stride, eps))
                inplanes = planes * Bottleneck.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self._folded = FoldedConvs({"1": (self.conv1, self.bn1), "2": (self.conv2, self.bn2),
                                    "3": (self.conv3, self.bn3)})
        self.attnpool = AttentionPool2d(config.grid_size, config.embed_dim, config.num_attention_heads,
                                        config.projection_dim)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        if fast_path(self, x, self.conv1.weight):
            f = self._folded.refresh()
            x = x.contiguous(memory_format=CHANNELS_LAST)
            return self.avgpool(f.conv("3", f.conv("2", f.conv("1", x))))
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def forward(self, pixel_values: torch.Tensor, output_attentions: bool = False,
                output_hidden_states: bool = False, interpolate_pos_encoding: bool = False
                ) -> BaseModelOutputWithPooling:
        """``pixel_values`` (B, 3, H, W) -> ``last_hidden_state`` (B, C, H/32, W/32) NCHW,
        ``pooler_output`` (B, projection_dim); ``hidden_states`` = (stem, stage1..stage4)."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(f"pixel_values must be (B, {self.config.num_channels}, H, W), "
                             f"got shape {tuple(pixel_values.shape)}")
        if interpolate_pos_encoding:
            raise ValueError("interpolate_pos_encoding is not supported by the ResNet tower")
        x = self.stem(pixel_values.to(self.conv1.weight.dtype))
        hidden = [x]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            hidden.append(x)
        if x.is_contiguous(memory_format=CHANNELS_LAST) and not x.is_contiguous():  # the folded path
            x = x.contiguous()
            hidden = [h.contiguous() for h in hidden] if output_hidden_states else hidden
        pooled = self.attnpool(x)
        return BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=pooled,
                                          hidden_states=tuple(hidden) if output_hidden_states else None,
                                          attentions=() if output_attentions else None)
