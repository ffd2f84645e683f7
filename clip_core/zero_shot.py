"""Zero-shot classification helpers on numpy embeddings (no framework).

Prompt ensembling as in OpenAI's ImageNet notebook: every label is put into every template, the
L2-normalized text embeddings of one label are averaged and normalized again, giving one classifier
column per label. An image's class probabilities are ``softmax(scale * image_embed @ weights)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence, Union, Optional

import numpy as np

__all__ = [
    "OPENAI_IMAGENET_TEMPLATES", "OPENAI_SELECTED_TEMPLATES", "SIMPLE_TEMPLATES", "TEMPLATE_SETS",
    "get_templates", "parse_labels", "build_prompts", "l2_normalize", "zero_shot_weights_from_embeddings",
    "build_zero_shot_weights", "zero_shot_logits", "zero_shot_probs", "softmax", "top_k",
]

# The 80 prompt templates of OpenAI's "Prompt Engineering for ImageNet" notebook, in its order.
OPENAI_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)

# The 7-template subset the same notebook selected.
OPENAI_SELECTED_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
)

# A short, neutral set (the default for `clip-zoo classify`).
SIMPLE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "a photo of the {}.", "a picture of a {}.", "an image of a {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "openai": OPENAI_IMAGENET_TEMPLATES,
    "openai7": OPENAI_SELECTED_TEMPLATES,
    "simple": SIMPLE_TEMPLATES,
    "none": ("{}",),
}


def _check_template(template: str, where: str) -> str:
    if template.count("{}") != 1:
        raise ValueError(f"template {template!r} ({where}) must contain exactly one '{{}}' placeholder")
    return template


def get_templates(name_or_file: Union[str, os.PathLike]) -> tuple[str, ...]:
    """A named template set (``openai``, ``openai7``, ``simple``, ``none``) or a file, one template a line."""
    key = str(name_or_file)
    if key in TEMPLATE_SETS:
        return TEMPLATE_SETS[key]
    path = Path(key)
    if not path.is_file():
        names = ", ".join(TEMPLATE_SETS)
        raise ValueError(f"unknown template set {key!r}: use one of {names} or a file with one template per line")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    templates = tuple(_check_template(ln, f"{path}:{i + 1}") for i, ln in enumerate(lines) if ln and not ln.startswith("#"))
    if not templates:
        raise ValueError(f"template file {path} holds no templates")
    return templates


def parse_labels(spec: Union[str, Sequence[str]]) -> list[str]:
    """Labels from a comma-separated string, a file with one label a line, or a list; never empty."""
    if isinstance(spec, str):
        path = Path(spec)
        if "," not in spec and path.is_file():
            items = path.read_text(encoding="utf-8").splitlines()
        else:
            items = spec.split(",")
    else:
        items = list(spec)
    labels = [s.strip() for s in items if s.strip()]
    if not labels:
        raise ValueError("the label list is empty: pass --labels 'cat,dog,...' (or a file with one label a line)")
    dupes = sorted({s for s in labels if labels.count(s) > 1})
    if dupes:
        raise ValueError(f"duplicate labels: {', '.join(dupes)}")
    return labels


def build_prompts(labels: Sequence[str], templates: Sequence[str]) -> list[str]:
    """All prompts, label-major: ``[t.format(labels[0]) for t in templates] + ...``."""
    return [t.format(label) for label in labels for t in templates]


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """``x / ||x||`` along ``axis`` (zero vectors stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def zero_shot_weights_from_embeddings(text_embeds: np.ndarray) -> np.ndarray:
    """``(L, T, D)`` prompt embeddings → ``(D, L)`` classifier: mean of normalized, normalized."""
    text_embeds = np.asarray(text_embeds, dtype=np.float32)
    if text_embeds.ndim != 3:
        raise ValueError(f"text_embeds must be (labels, templates, dim), got shape {text_embeds.shape}")
    mean = l2_normalize(text_embeds).mean(axis=1)  # (L, D)
    return np.ascontiguousarray(l2_normalize(mean).T)  # (D, L)


def build_zero_shot_weights(encode_texts: Callable[[list[str]], np.ndarray], labels: Sequence[str],
                            templates: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Encode every prompt with ``encode_texts`` (list of str → (N, D)) and build the ``(D, L)`` classifier."""
    prompts = build_prompts(labels, templates)
    chunks = [np.asarray(encode_texts(prompts[i:i + batch_size]), dtype=np.float32)
              for i in range(0, len(prompts), batch_size)]
    embeds = np.concatenate(chunks, axis=0)  # (L*T, D)
    return zero_shot_weights_from_embeddings(embeds.reshape(len(labels), len(templates), -1))


def zero_shot_logits(image_embeds: np.ndarray, weights: np.ndarray, scale: float = 100.0) -> np.ndarray:
    """``scale * normalize(image_embeds) @ weights`` → ``(N, L)``."""
    return scale * l2_normalize(image_embeds) @ np.asarray(weights, dtype=np.float32)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """A numerically stable softmax."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return (z / z.sum(axis=axis, keepdims=True)).astype(np.float32)


def zero_shot_probs(image_embeds: np.ndarray, weights: np.ndarray, scale: float = 100.0,
                    bias: Optional[float] = None) -> np.ndarray:
    """Label probabilities ``(N, L)``: CLIP's softmax over ``scale * cos`` (``bias`` None), or SigLIP's
    independent sigmoid of ``scale * cos + bias`` per label (each in 0..1; rows need not sum to 1)."""
    logits = zero_shot_logits(image_embeds, weights, scale)
    if bias is None:
        return softmax(logits)
    z = np.asarray(logits, np.float64) + float(bias)
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # the sigmoid, without overflow


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` largest entries per row, best first (ties: lower index first)."""
    probs = np.asarray(probs)
    k = max(1, min(int(k), probs.shape[-1]))
    idx = np.argsort(-probs, axis=-1, kind="stable")[..., :k]
    return idx, np.take_along_axis(probs, idx, axis=-1)
