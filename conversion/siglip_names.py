"""SigLIP's foreign names: big_vision's ``.npz`` tree and open_clip's timm-based SigLIP, as rows of
:mod:`conversion.names`, plus open_clip's SigLIP ``open_clip_config.json``.

big_vision (``models/proj/image_text/two_towers.py``: towers ``img`` = ``models/vit.py``, ``txt`` =
``text_transformer.py``; ``t`` = log temperature, ``b`` = logit bias) uses Flax layouts: Dense
``[in, out]``, conv ``HWIO``, head-split attention ``(D, H, Dh)``, ``(1, N, D)`` position embeddings,
and separate ``query``/``key``/``value`` in the MAP head that transformers packs into ``in_proj``
(the facts transformers' ``convert_siglip_to_hf.py`` maps from). Keys carry a ``params/`` prefix.

open_clip's SigLIP is a timm ViT (``visual.trunk.*``: fused ``qkv``, ``attn_pool`` with ``latent``,
``q`` and packed ``kv``) and open_clip's text transformer (``text.*``, OpenAI-style names, a biased
``text_projection`` Linear); ``logit_scale``/``logit_bias`` are scalars.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional

from clip_core.siglip_config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

from .errors import ConversionError
from .names import Row
from .openai import _BLOCK

__all__ = ["BIG_VISION_NAMES", "OPEN_CLIP_SIGLIP_NAMES", "OPEN_CLIP_IGNORED", "is_open_clip_siglip", "head_dims",
           "siglip_from_open_clip", "siglip_to_open_clip", "is_siglip_open_clip_config", "CONFIG_KEY"]

_MHA = "MultiHeadDotProductAttention_0"


def _bv_block(foreign: str, canonical: str, dim: str) -> tuple[Row, ...]:
    """One big_vision ``encoderblock_{i}`` <-> one canonical encoder layer."""
    rows = [Row(f"{foreign}/LayerNorm_0/scale", f"{canonical}.layer_norm1.weight"),
            Row(f"{foreign}/LayerNorm_0/bias", f"{canonical}.layer_norm1.bias"),
            Row(f"{foreign}/LayerNorm_1/scale", f"{canonical}.layer_norm2.weight"),
            Row(f"{foreign}/LayerNorm_1/bias", f"{canonical}.layer_norm2.bias")]
    for n, fc in (("0", "fc1"), ("1", "fc2")):
        rows += [Row(f"{foreign}/MlpBlock_0/Dense_{n}/kernel", f"{canonical}.mlp.{fc}.weight", "transpose"),
                 Row(f"{foreign}/MlpBlock_0/Dense_{n}/bias", f"{canonical}.mlp.{fc}.bias")]
    for bv, hf in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        rows += [Row(f"{foreign}/{_MHA}/{bv}/kernel", f"{canonical}.self_attn.{hf}.weight", "heads_in", dim=dim),
                 Row(f"{foreign}/{_MHA}/{bv}/bias", f"{canonical}.self_attn.{hf}.bias", "heads_bias", dim=dim)]
    rows += [Row(f"{foreign}/{_MHA}/out/kernel", f"{canonical}.self_attn.out_proj.weight", "heads_out", dim=dim),
             Row(f"{foreign}/{_MHA}/out/bias", f"{canonical}.self_attn.out_proj.bias")]
    return tuple(rows)


_QKV = (("query", 1), ("key", 1), ("value", 1))
_MAP, _HEAD = "params/img/MAPHead_0", "vision_model.head"

#: big_vision ``.npz`` <-> canonical (``dims``: ``vision`` / ``text`` head counts for the inverse).
BIG_VISION_NAMES: tuple[Row, ...] = (
    Row("params/img/embedding/kernel", "vision_model.embeddings.patch_embedding.weight", "conv_hwio"),
    Row("params/img/embedding/bias", "vision_model.embeddings.patch_embedding.bias"),
    Row("params/img/pos_embedding", "vision_model.embeddings.position_embedding.weight", "squeeze0"),
    *_bv_block("params/img/Transformer/encoderblock_{i}", "vision_model.encoder.layers.{i}", "vision"),
    Row("params/img/Transformer/encoder_norm/scale", "vision_model.post_layernorm.weight"),
    Row("params/img/Transformer/encoder_norm/bias", "vision_model.post_layernorm.bias"),
    Row(f"{_MAP}/probe", f"{_HEAD}.probe"),
    Row(f"{_MAP}/{_MHA}/{{s}}/kernel", f"{_HEAD}.attention.in_proj_weight", "heads_in", dim="vision", stack=_QKV),
    Row(f"{_MAP}/{_MHA}/{{s}}/bias", f"{_HEAD}.attention.in_proj_bias", "heads_bias", dim="vision", stack=_QKV),
    Row(f"{_MAP}/{_MHA}/out/kernel", f"{_HEAD}.attention.out_proj.weight", "heads_out", dim="vision"),
    Row(f"{_MAP}/{_MHA}/out/bias", f"{_HEAD}.attention.out_proj.bias"),
    Row(f"{_MAP}/LayerNorm_0/scale", f"{_HEAD}.layernorm.weight"),
    Row(f"{_MAP}/LayerNorm_0/bias", f"{_HEAD}.layernorm.bias"),
    Row(f"{_MAP}/MlpBlock_0/Dense_0/kernel", f"{_HEAD}.mlp.fc1.weight", "transpose"),
    Row(f"{_MAP}/MlpBlock_0/Dense_0/bias", f"{_HEAD}.mlp.fc1.bias"),
    Row(f"{_MAP}/MlpBlock_0/Dense_1/kernel", f"{_HEAD}.mlp.fc2.weight", "transpose"),
    Row(f"{_MAP}/MlpBlock_0/Dense_1/bias", f"{_HEAD}.mlp.fc2.bias"),
    Row("params/txt/Embed_0/embedding", "text_model.embeddings.token_embedding.weight"),
    Row("params/txt/pos_embedding", "text_model.embeddings.position_embedding.weight", "squeeze0"),
    *_bv_block("params/txt/Encoder_0/encoderblock_{i}", "text_model.encoder.layers.{i}", "text"),
    Row("params/txt/Encoder_0/encoder_norm/scale", "text_model.final_layer_norm.weight"),
    Row("params/txt/Encoder_0/encoder_norm/bias", "text_model.final_layer_norm.bias"),
    Row("params/txt/head/kernel", "text_model.head.weight", "transpose"),
    Row("params/txt/head/bias", "text_model.head.bias"),
    Row("params/t", "logit_scale"),
    Row("params/b", "logit_bias"),
)

_TIMM_BLOCK = [  # inside one timm ViT block: (timm tail, canonical tail, op)
    ("norm1.{p}", "layer_norm1.{p}", "copy"),
    ("attn.qkv.{p}", "self_attn.{qkv}_proj.{p}", "split3"),
    ("attn.proj.{p}", "self_attn.out_proj.{p}", "copy"),
    ("norm2.{p}", "layer_norm2.{p}", "copy"),
    ("mlp.fc1.{p}", "mlp.fc1.{p}", "copy"),
    ("mlp.fc2.{p}", "mlp.fc2.{p}", "copy"),
]
_POOL = "visual.trunk.attn_pool"

#: open_clip (timm ViT + open_clip text transformer) SigLIP <-> canonical.
OPEN_CLIP_SIGLIP_NAMES: tuple[Row, ...] = (
    Row("visual.trunk.patch_embed.proj.{p}", "vision_model.embeddings.patch_embedding.{p}"),
    Row("visual.trunk.pos_embed", "vision_model.embeddings.position_embedding.weight", "squeeze0"),
    *(Row(f"visual.trunk.blocks.{{i}}.{a}", f"vision_model.encoder.layers.{{i}}.{c}", op) for a, c, op in _TIMM_BLOCK),
    Row("visual.trunk.norm.{p}", "vision_model.post_layernorm.{p}"),
    Row(f"{_POOL}.latent", f"{_HEAD}.probe"),
    Row(f"{_POOL}.{{s}}.{{p}}", f"{_HEAD}.attention.in_proj_{{p}}", stack=(("q", 1), ("kv", 2))),
    Row(f"{_POOL}.proj.{{p}}", f"{_HEAD}.attention.out_proj.{{p}}"),
    Row(f"{_POOL}.norm.{{p}}", f"{_HEAD}.layernorm.{{p}}"),
    Row(f"{_POOL}.mlp.{{x}}", f"{_HEAD}.mlp.{{x}}"),
    Row("text.token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    Row("text.positional_embedding", "text_model.embeddings.position_embedding.weight"),
    *(Row(f"text.transformer.resblocks.{{i}}.{a}", f"text_model.encoder.layers.{{i}}.{c}", op) for a, c, op in _BLOCK),
    Row("text.ln_final.{p}", "text_model.final_layer_norm.{p}"),
    Row("text.text_projection.{p}", "text_model.head.{p}"),
    Row("logit_scale", "logit_scale", "scalar"),
    Row("logit_bias", "logit_bias", "scalar"),
)
#: open_clip buffers with no canonical counterpart.
OPEN_CLIP_IGNORED = re.compile(r"(.*\.)?attn_mask")


def is_open_clip_siglip(names) -> bool:
    """True for open_clip's timm-based SigLIP naming (``visual.trunk.*`` with an ``attn_pool`` and ``text.*``)."""
    names = set(names)
    return "text.token_embedding.weight" in names and any(n.startswith("visual.trunk.") for n in names)


def head_dims(config: SiglipConfig) -> dict[str, int]:
    """The ``dims`` the head-split ops need to write big_vision names."""
    return {"vision": config.vision_config.num_attention_heads, "text": config.text_config.num_attention_heads}


# ----------------------------------------------------------------------------- open_clip config
#: Key beside ``model_cfg`` in the ``open_clip_config.json`` clip-zoo writes: the exact SigLIP config
#: (open_clip reads ``model_cfg`` only; a timm model name cannot spell an arbitrary shape).
CONFIG_KEY = "clip_zoo_siglip_config"
# timm ViT size names of the released SigLIP towers: width -> (timm size, mlp, layers, heads)
_TIMM_SIZES = {768: ("base", 3072, 12, 12), 1024: ("large", 4096, 24, 16), 1152: ("so400m", 4304, 27, 16),
               1536: ("giantopt", 6144, 40, 16)}
_TIMM_NAME = re.compile(r"vit_(base|large|so400m|giantopt)_patch(\d+)_siglip_(?:gap_)?(\d+)")


def _timm_vision(vc: Mapping[str, Any], source: str) -> SiglipVisionConfig:
    name = str(vc.get("timm_model_name") or "")
    m = _TIMM_NAME.fullmatch(name)
    if not m or vc.get("timm_pool", "map") != "map":
        raise ConversionError(f"{source}: open_clip vision tower {name!r} (pool {vc.get('timm_pool')!r}) is no "
                              f"SigLIP timm ViT with attention pooling clip-zoo knows")
    width = next(w for w, s in _TIMM_SIZES.items() if s[0] == m.group(1))
    _, mlp, layers, heads = _TIMM_SIZES[width]
    image = vc.get("image_size", int(m.group(3)))
    image = int(image[0] if isinstance(image, (list, tuple)) else image)
    return SiglipVisionConfig(hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers,
                              num_attention_heads=heads, image_size=image, patch_size=int(m.group(2)))


def siglip_from_open_clip(data: Mapping[str, Any], source: str) -> SiglipConfig:
    """The SigLIP config of an ``open_clip_config.json`` dict: clip-zoo's exact copy when present, else
    from the timm model name and ``text_cfg`` (open_clip's configs say exact GELU; SigLIP means tanh)."""
    if isinstance(data.get(CONFIG_KEY), dict):
        return SiglipConfig.from_dict(data[CONFIG_KEY])
    cfg = data.get("model_cfg", data)
    vc, tc, embed = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"]), int(cfg["embed_dim"])
    vision = _timm_vision(vc, source)
    tw = int(tc.get("width", 768))
    text = SiglipTextConfig(vocab_size=int(tc.get("vocab_size", 32000)), hidden_size=tw,
                            intermediate_size=round(tw * tc.get("mlp_ratio", 4.0)),
                            num_hidden_layers=int(tc.get("layers", 12)), num_attention_heads=int(tc.get("heads", 12)),
                            max_position_embeddings=int(tc.get("context_length", 64)), projection_size=embed)
    return SiglipConfig(text_config=text, vision_config=vision)


def is_siglip_open_clip_config(data: Mapping[str, Any]) -> bool:
    """An open_clip config of a SigLIP (timm ``map`` pooling, or clip-zoo's SigLIP key)."""
    cfg = data.get("model_cfg", data)
    vc = cfg.get("vision_cfg") if isinstance(cfg, Mapping) else None
    return CONFIG_KEY in data or (isinstance(vc, Mapping) and vc.get("timm_pool") == "map")


def _timm_name(v: SiglipVisionConfig) -> str:
    size = _TIMM_SIZES.get(v.hidden_size, ("base",))[0]
    return f"vit_{size}_patch{v.patch_size}_siglip_{v.image_size}"


def siglip_to_open_clip(config: SiglipConfig, logit_bias: Optional[float] = None) -> dict[str, Any]:
    """``open_clip_config.json`` content for ``config`` (open_clip's SigLIP keys + clip-zoo's exact config)."""
    t, v = config.text_config, config.vision_config
    vision = {"image_size": v.image_size, "timm_model_name": _timm_name(v), "timm_model_pretrained": False,
              "timm_pool": "map", "timm_proj": "none"}
    text = {"context_length": t.max_position_embeddings, "vocab_size": t.vocab_size, "width": t.hidden_size,
            "heads": t.num_attention_heads, "layers": t.num_hidden_layers,
            "mlp_ratio": t.intermediate_size / t.hidden_size, "no_causal_mask": True, "proj_bias": True,
            "pool_type": "last", "norm_kwargs": {"eps": t.layer_norm_eps},
            "act_kwargs": {"approximate": "tanh"}}
    model = {"embed_dim": v.hidden_size, "init_logit_bias": -10.0 if logit_bias is None else logit_bias,
             "custom_text": True, "vision_cfg": vision, "text_cfg": text}
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear",
                  "resize_mode": "squash"}
    return {"model_cfg": model, "preprocess_cfg": preprocess, CONFIG_KEY: config.to_dict()}
