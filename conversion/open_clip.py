"""open_clip checkpoints: ``open_clip_config.json`` + ``open_clip_model.safetensors`` /
``open_clip_pytorch_model.bin``, or a bare state dict plus an architecture name.

open_clip's CLIP keeps OpenAI's parameter names, so the name table is :data:`conversion.openai.OPENAI_NAMES`.
What differs is the activation: open_clip means GELU unless ``quick_gelu: true`` (or a
``-quickgelu`` architecture name).
"""
from __future__ import annotations

from typing import Any, Mapping

from clip_core.config import CLIPConfig, CLIPResNetVisionConfig, CLIPTextConfig, CLIPVisionConfig
from clip_core.presets import get_config

from .errors import ConversionError

__all__ = ["CONFIG_NAME", "WEIGHT_NAMES", "config_from_open_clip", "config_to_open_clip", "config_from_arch"]

CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# model_cfg keys clip-zoo can honour only at these values (anything else changes the architecture)
_DEFAULTS_ONLY = {
    "vision_cfg": {"ls_init_value": None, "patch_dropout": 0.0, "attentional_pool": False, "no_ln_pre": False,
                   "final_ln_after_pool": False, "pool_type": "tok", "output_tokens": False,
                   "timm_model_name": None, "input_patchnorm": False, "global_average_pool": False},
    "text_cfg": {"ls_init_value": None, "hf_model_name": None, "no_causal_mask": False, "final_ln_after_pool": False,
                 "pool_type": "argmax", "proj_bias": False, "output_tokens": False, "embed_cls": False,
                 "attn_pooler_heads": None},
}


def _check(cfg: Mapping[str, Any], tower: str, source: str) -> None:
    for key, default in _DEFAULTS_ONLY[tower].items():
        if key in cfg and cfg[key] != default and not (default is None and cfg[key] in ("", None)):
            raise ConversionError(f"{source}: open_clip {tower}.{key}={cfg[key]!r} is not supported "
                                  f"(clip-zoo implements the OpenAI CLIP architecture only)")


def config_from_open_clip(data: Mapping[str, Any], source: str = CONFIG_NAME) -> CLIPConfig:
    """Turn an ``open_clip_config.json`` dict (``{"model_cfg": ...}`` or the model config itself) into a config."""
    from .siglip_names import is_siglip_open_clip_config, siglip_from_open_clip

    if is_siglip_open_clip_config(data):  # timm ViT with attention pooling: the SigLIP family
        return siglip_from_open_clip(data, source)
    cfg = data.get("model_cfg", data)
    try:
        vc, tc, embed = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"]), int(cfg["embed_dim"])
    except (KeyError, TypeError, ValueError):
        raise ConversionError(f"{source}: not an open_clip model config "
                              f"(needs embed_dim, vision_cfg, text_cfg)") from None
    _check(vc, "vision_cfg", source)
    _check(tc, "text_cfg", source)
    act = "quick_gelu" if cfg.get("quick_gelu") else "gelu"
    tw = int(tc.get("width", 512))
    text = CLIPTextConfig(vocab_size=int(tc.get("vocab_size", 49408)), hidden_size=tw,
                          intermediate_size=int(tw * tc.get("mlp_ratio", 4.0)), projection_dim=embed,
                          num_hidden_layers=int(tc.get("layers", 12)), num_attention_heads=int(tc.get("heads", 8)),
                          max_position_embeddings=int(tc.get("context_length", 77)), hidden_act=act)
    vw, head_width = int(vc.get("width", 768)), int(vc.get("head_width", 64))
    image = vc.get("image_size", 224)
    image = int(image[0] if isinstance(image, (list, tuple)) else image)
    if isinstance(vc.get("layers"), (list, tuple)):
        vision = CLIPResNetVisionConfig(layers=tuple(vc["layers"]), width=vw, num_attention_heads=vw * 32 // head_width,
                                        projection_dim=embed, image_size=image)
    else:
        vision = CLIPVisionConfig(hidden_size=vw, intermediate_size=int(vw * vc.get("mlp_ratio", 4.0)),
                                  projection_dim=embed, num_hidden_layers=int(vc.get("layers", 12)),
                                  num_attention_heads=vw // head_width, image_size=image,
                                  patch_size=int(vc.get("patch_size", 16)), hidden_act=act)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed)


def config_to_open_clip(config: CLIPConfig) -> dict[str, Any]:
    """The ``open_clip_config.json`` content (model and preprocessing config) for ``config``."""
    t, v = config.text_config, config.vision_config
    if t.hidden_act not in ("gelu", "quick_gelu"):
        raise ConversionError(f"open_clip has no {t.hidden_act!r} activation")
    text = {"context_length": t.max_position_embeddings, "vocab_size": t.vocab_size, "width": t.hidden_size,
            "heads": t.num_attention_heads, "layers": t.num_hidden_layers,
            "mlp_ratio": t.intermediate_size / t.hidden_size}
    if config.is_resnet:
        vision = {"image_size": v.image_size, "layers": list(v.layers), "width": v.width, "patch_size": None,
                  "head_width": v.embed_dim // v.num_attention_heads}
    else:
        vision = {"image_size": v.image_size, "layers": v.num_hidden_layers, "width": v.hidden_size,
                  "patch_size": v.patch_size, "head_width": v.hidden_size // v.num_attention_heads,
                  "mlp_ratio": v.intermediate_size / v.hidden_size}
    model = {"embed_dim": config.projection_dim, "quick_gelu": t.hidden_act == "quick_gelu",
             "vision_cfg": vision, "text_cfg": text}
    preprocess = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    return {"model_cfg": model, "preprocess_cfg": preprocess}


def config_from_arch(arch: str) -> CLIPConfig:
    """The config of a named architecture (``ViT-B-32``, ``ViT-B-32-quickgelu``, ``RN50`` ...)."""
    try:
        return get_config(arch)
    except ValueError as err:
        raise ConversionError(f"unknown architecture: {err}") from None
