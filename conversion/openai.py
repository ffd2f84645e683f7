"""OpenAI CLIP checkpoints (``clip.model.CLIP`` state dicts and TorchScript archives).

:data:`OPENAI_NAMES` is the one OpenAI <-> canonical name table (open_clip uses the same names).
:func:`infer_config` reads every hyperparameter from tensor names and shapes, as OpenAI's
``clip.model.build_model`` does: attention heads are ``width // 64`` (text and ViT) and
``width * 32 // 64`` for the ResNet attention pool; the activation is always QuickGELU.
"""
from __future__ import annotations

import re
from typing import Mapping, Optional

import numpy as np

from clip_core.config import CLIPConfig, CLIPResNetVisionConfig, CLIPTextConfig, CLIPVisionConfig

from .errors import ConversionError
from .names import Row, from_canonical, to_canonical

__all__ = ["OPENAI_NAMES", "IGNORED", "infer_config", "openai_to_canonical", "canonical_to_openai", "is_openai_names"]

_BLOCK = [  # inside one residual attention block: (OpenAI tail, canonical tail, op)
    ("attn.in_proj_{p}", "self_attn.{qkv}_proj.{p}", "split3"),
    ("attn.out_proj.{p}", "self_attn.out_proj.{p}", "copy"),
    ("ln_1.{p}", "layer_norm1.{p}", "copy"),
    ("mlp.c_fc.{p}", "mlp.fc1.{p}", "copy"),
    ("mlp.c_proj.{p}", "mlp.fc2.{p}", "copy"),
    ("ln_2.{p}", "layer_norm2.{p}", "copy"),
]

#: The OpenAI <-> canonical name table (first match wins).
OPENAI_NAMES: tuple[Row, ...] = (
    Row("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    Row("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    *(Row(f"transformer.resblocks.{{i}}.{a}", f"text_model.encoder.layers.{{i}}.{c}", op) for a, c, op in _BLOCK),
    Row("ln_final.{p}", "text_model.final_layer_norm.{p}"),
    Row("text_projection", "text_projection.weight", "transpose"),
    Row("logit_scale", "logit_scale"),
    Row("visual.class_embedding", "vision_model.embeddings.class_embedding", arch="vit"),
    Row("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", arch="vit"),
    Row("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight", arch="vit"),
    Row("visual.ln_pre.{p}", "vision_model.pre_layrnorm.{p}", arch="vit"),
    *(Row(f"visual.transformer.resblocks.{{i}}.{a}", f"vision_model.encoder.layers.{{i}}.{c}", op, "vit")
      for a, c, op in _BLOCK),
    Row("visual.ln_post.{p}", "vision_model.post_layernorm.{p}", arch="vit"),
    Row("visual.proj", "visual_projection.weight", "transpose", arch="vit"),
    Row("visual.{x}", "vision_model.{x}", arch="resnet"),  # ModifiedResNet keeps OpenAI's names
)

#: OpenAI tensors with no canonical counterpart (TorchScript attributes, BN step counters, masks).
IGNORED = re.compile(r"input_resolution|context_length|vocab_size|.*\.num_batches_tracked|(.*\.)?attn_mask")


def is_openai_names(names) -> bool:
    """True for OpenAI / open_clip naming (``visual.*``, ``transformer.resblocks.*``)."""
    names = set(names)
    return "token_embedding.weight" in names or any(n.startswith("visual.") for n in names)


def _count(names, pattern: str) -> int:
    return len({m.group(1) for n in names for m in [re.match(pattern, n)] if m})


def _shape(sd: Mapping[str, np.ndarray], name: str, source: str) -> tuple:
    if name not in sd:
        raise ConversionError(f"{source}: missing tensor {name!r} (needed to infer the architecture)")
    return tuple(np.shape(sd[name]))


def infer_config(sd: Mapping[str, np.ndarray], source: str = "checkpoint",
                 hidden_act: str = "quick_gelu") -> CLIPConfig:
    """The :class:`CLIPConfig` an OpenAI-named state dict describes (``build_model``'s rules); shapes that
    describe no valid architecture are a :class:`ConversionError` naming ``source``."""
    try:
        return _infer_config(sd, source, hidden_act)
    except ConversionError:
        raise
    except (IndexError, ValueError, TypeError, ZeroDivisionError, OverflowError) as err:
        raise ConversionError(f"{source}: the tensor shapes describe no valid CLIP architecture "
                              f"({type(err).__name__}: {str(err)[:200]})") from None


def _infer_config(sd: Mapping[str, np.ndarray], source: str, hidden_act: str) -> CLIPConfig:
    names = list(sd)
    embed = _shape(sd, "text_projection", source)[1]
    ctx, width = _shape(sd, "positional_embedding", source)
    vocab = _shape(sd, "token_embedding.weight", source)[0]
    text = CLIPTextConfig(
        vocab_size=vocab, hidden_size=width,
        intermediate_size=_shape(sd, "transformer.resblocks.0.mlp.c_fc.weight", source)[0],
        projection_dim=embed, num_hidden_layers=_count(names, r"transformer\.resblocks\.(\d+)\."),
        num_attention_heads=max(1, width // 64), max_position_embeddings=ctx, hidden_act=hidden_act,
        **_special_tokens(vocab))
    if "visual.proj" in sd:
        vw = _shape(sd, "visual.conv1.weight", source)
        grid = round((_shape(sd, "visual.positional_embedding", source)[0] - 1) ** 0.5)
        vision = CLIPVisionConfig(
            hidden_size=vw[0],
            intermediate_size=_shape(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight", source)[0],
            projection_dim=embed, num_hidden_layers=_count(names, r"visual\.transformer\.resblocks\.(\d+)\."),
            num_attention_heads=max(1, vw[0] // 64), num_channels=vw[1], image_size=vw[-1] * grid,
            patch_size=vw[-1], hidden_act=hidden_act)
    else:
        layers = tuple(_count(names, rf"visual\.layer{b}\.(\d+)\.") for b in (1, 2, 3, 4))
        vwidth = _shape(sd, "visual.layer1.0.conv1.weight", source)[0]
        grid = round((_shape(sd, "visual.attnpool.positional_embedding", source)[0] - 1) ** 0.5)
        vision = CLIPResNetVisionConfig(layers=layers, width=vwidth, num_attention_heads=vwidth * 32 // 64,
                                        projection_dim=embed, image_size=grid * 32,
                                        num_channels=_shape(sd, "visual.conv1.weight", source)[1])
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed)


def _special_tokens(vocab: int) -> dict:
    """OpenAI pools at argmax(token ids): the end-of-text token is the largest id."""
    if vocab >= 49408:
        return {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1}
    return {"bos_token_id": max(0, vocab - 2), "eos_token_id": vocab - 1, "pad_token_id": min(1, vocab - 1)}


def openai_to_canonical(sd: Mapping[str, np.ndarray], config: CLIPConfig, source: str) -> dict[str, np.ndarray]:
    """OpenAI / open_clip names -> canonical (views; strict about unknown names)."""
    for name, a in sd.items():
        if name.endswith("in_proj_weight") or name.endswith("in_proj_bias"):
            if np.ndim(a) == 0 or np.shape(a)[0] % 3:
                raise ConversionError(f"{source}: tensor {name!r} of shape {np.shape(a)} is not a fused q/k/v "
                                      f"projection (its first dimension must be a multiple of 3)")
    return to_canonical(sd, OPENAI_NAMES, "resnet" if config.is_resnet else "vit", source, IGNORED)


def canonical_to_openai(weights: Mapping[str, np.ndarray], config: CLIPConfig) -> dict[str, np.ndarray]:
    """Canonical -> OpenAI names, with the int64 ``num_batches_tracked`` BN counters OpenAI's strict load needs."""
    out = from_canonical(weights, OPENAI_NAMES, "resnet" if config.is_resnet else "vit")
    if config.is_resnet:
        for name in [n for n in out if n.endswith(".running_var")]:
            out[name[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return out


def openai_config(config: Optional[CLIPConfig], sd: Mapping[str, np.ndarray], source: str) -> CLIPConfig:
    return config if config is not None else infer_config(sd, source)
