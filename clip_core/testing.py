"""Helpers for tests and benchmarks: tiny configs and random weights at realistic scale.

No framework needed; every backend's tests build their checkpoints from these.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .config import CLIPConfig, CLIPResNetVisionConfig, CLIPTextConfig, CLIPVisionConfig
from .schema import schema
from .siglip_config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

__all__ = ["tiny_vit_config", "tiny_resnet_config", "tiny_siglip_config", "random_weights"]


def tiny_vit_config(hidden_act: str = "quick_gelu", eos_token_id: int = 49407, vocab_size: int = 49408,
                    image_size: int = 32, patch_size: int = 8) -> CLIPConfig:
    """A 2-layer ViT CLIP small enough for unit tests (the real 49,408-token vocabulary)."""
    text = CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, projection_dim=16,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                          hidden_act=hidden_act, eos_token_id=eos_token_id)
    vision = CLIPVisionConfig(hidden_size=48, intermediate_size=96, projection_dim=16, num_hidden_layers=2,
                              num_attention_heads=4, image_size=image_size, patch_size=patch_size,
                              hidden_act=hidden_act)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def tiny_resnet_config(hidden_act: str = "quick_gelu", image_size: int = 64) -> CLIPConfig:
    """A ResNet CLIP with one Bottleneck per stage (width 8, so 256 channels at the end)."""
    text = CLIPTextConfig(hidden_size=32, intermediate_size=64, projection_dim=24, num_hidden_layers=2,
                          num_attention_heads=4, hidden_act=hidden_act)
    vision = CLIPResNetVisionConfig(layers=(1, 2, 1, 1), width=8, num_attention_heads=4, projection_dim=24,
                                    image_size=image_size)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)


def tiny_siglip_config(vocab_size: int = 256, image_size: int = 32, patch_size: int = 8,
                       max_position_embeddings: int = 16) -> SiglipConfig:
    """A 2-layer SigLIP for unit tests (odd widths: text 40 -> head 48, vision 48, MLP 72)."""
    text = SiglipTextConfig(vocab_size=vocab_size, hidden_size=40, intermediate_size=72, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=max_position_embeddings,
                            projection_size=48, pad_token_id=1, bos_token_id=None, eos_token_id=1)
    vision = SiglipVisionConfig(hidden_size=48, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
                                image_size=image_size, patch_size=patch_size)
    return SiglipConfig(text_config=text, vision_config=vision)


def random_weights(config: CLIPConfig, part: str = "model", seed: int = 0, num_labels: Optional[int] = None,
                   dtype=np.float32) -> dict[str, np.ndarray]:
    """Canonical random weights with realistic scale (fan-in scaled linears and convs, layer /
    batch norms near identity, positive running variances, logit scale log(1/0.07))."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, entry in schema(config, part, num_labels).items():
        shape, leaf = entry.shape, name.rsplit(".", 1)[-1]
        if name == "logit_scale":  # CLIP's log(1/0.07); SigLIP's (1,)-shaped log(10), as it starts training
            a = np.full(shape, np.log(1 / 0.07) if shape == () else np.log(10.0))
        elif name == "logit_bias":
            a = np.full(shape, -10.0)
        elif leaf == "running_var":
            a = rng.uniform(0.5, 1.5, shape)
        elif leaf == "running_mean":
            a = rng.normal(0.0, 0.1, shape)
        elif entry.transform == "identity" and leaf == "weight" and len(shape) == 1:  # norm scales
            a = 1.0 + rng.normal(0.0, 0.1, shape)
        elif leaf == "bias":
            a = rng.normal(0.0, 0.02, shape)
        elif "embedding" in name:
            a = rng.normal(0.0, 0.02 if "token" in name else 0.01, shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
            a = rng.normal(0.0, fan_in ** -0.5, shape)
        out[name] = np.asarray(a, dtype=dtype)
    return out
