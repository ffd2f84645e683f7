"""Backend-neutral test helpers: a fixed battery of inputs and field-by-field output comparison.

Every backend's tests (torch, tf, flax) can import these; nothing here imports a framework.
fp32 bounds (docs/parity.md): <=1e-5 max abs on L2-normalized embeddings, <=1e-3 on logits (x100 scale).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np

from clip_core.config import CLIPConfig

EMBED_ATOL = 1e-5  # L2-normalized embeddings
LOGIT_ATOL = 1e-3  # logits (x exp(logit_scale) ~ 100)
HIDDEN_ATOL = 1e-4  # raw hidden states / pooled states (unnormalized, O(1)-O(10) values)

BOS, EOT = 49406, 49407


def text_inputs(config: CLIPConfig, batch: int = 3, length: Optional[int] = None, seed: int = 0,
                padding: bool = True, pad_id: int = 0) -> dict[str, np.ndarray]:
    """``input_ids`` (B, T) int64 and ``attention_mask`` (B, T) int64: BOS, random tokens, EOT, then
    padding with ``pad_id``; real lengths differ per row (the first row is shortest) when
    ``padding`` is set, else every row fills the whole length."""
    t = config.text_config
    T = length or t.max_position_embeddings
    rng = np.random.default_rng(seed)
    ids = np.full((batch, T), pad_id, dtype=np.int64)
    mask = np.zeros((batch, T), dtype=np.int64)
    eos = t.eos_token_id if not t.legacy_eos_pooling else EOT
    for b in range(batch):
        n = int(rng.integers(3, T // 2 + 3)) if padding else T
        n = min(n + 2 * b, T)
        ids[b, 0] = BOS if t.vocab_size > BOS else 1
        ids[b, 1:n - 1] = rng.integers(1, min(t.vocab_size, BOS) - 1, n - 2)
        ids[b, n - 1] = eos if eos < t.vocab_size else t.vocab_size - 1
        mask[b, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def pixel_inputs(config: CLIPConfig, batch: int = 2, seed: int = 0, size: Optional[int] = None) -> np.ndarray:
    """(B, C, S, S) float32 pixels with the spread of normalized images."""
    v = config.vision_config
    s = size or v.image_size
    rng = np.random.default_rng(seed + 1000)
    return rng.normal(0.0, 1.0, (batch, v.num_channels, s, s)).astype(np.float32)


# ------------------------------------------------------------------ one adapter per backend
#: ``return_tensors`` kind and token-id dtype of each backend (torch takes int64 ids like transformers).
TENSOR_KIND = {"clip_torch": ("pt", np.int64), "clip_tf": ("tf", np.int32), "clip_flax": ("jax", np.int32)}


def framework_name(backend: Any) -> str:
    """``torch`` / ``tf`` / ``flax`` of a backend module."""
    return backend.__name__.split("_", 1)[1]


def as_tensors(backend: Any, model: Any = None, **arrays: np.ndarray) -> dict[str, Any]:
    """numpy inputs -> the backend's tensors: integer arrays become ids of the backend's id dtype; float
    pixels take a torch ``model``'s dtype (torch needs half pixels for a half model, as transformers does)."""
    from clip_core.tensors import convert_to_tensors

    kind, ids_dtype = TENSOR_KIND[backend.__name__]
    out = {}
    for name, a in arrays.items():
        a = np.ascontiguousarray(a.astype(ids_dtype) if a.dtype.kind in "iu" else a)
        t = convert_to_tensors(a, kind)
        if kind == "pt" and a.dtype.kind == "f" and model is not None:
            t = t.to(next(model.parameters()).dtype)
        out[name] = t
    return out


def to_numpy(x: Any) -> np.ndarray:
    """A torch / TF / jax tensor (any float dtype) -> float64 numpy."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    elif hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    return np.asarray(x, dtype=np.float64)


def assert_close(ours: Any, ref: Any, atol: float, what: str) -> None:
    """Two tensors of any backend (or numpy) agree to ``atol`` max abs."""
    np.testing.assert_allclose(to_numpy(ours), to_numpy(ref), rtol=0, atol=atol, err_msg=what)


def _flatten(value: Any, prefix: str, to_numpy: Callable[[Any], np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if value is None:
        return out
    if hasattr(value, "keys") and callable(value.keys) and not isinstance(value, np.ndarray):
        for k in value.keys():
            out.update(_flatten(value[k], f"{prefix}.{k}" if prefix else k, to_numpy))
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]", to_numpy))
    else:
        out[prefix] = np.asarray(to_numpy(value), dtype=np.float64)
    return out


def default_atol(field: str) -> float:
    """Tolerance for one (flattened) output field by its name."""
    if "logits" in field:
        return LOGIT_ATOL
    if field.endswith(("text_embeds", "image_embeds")) and "model_output" not in field:
        return EMBED_ATOL
    return HIDDEN_ATOL


def assert_outputs_close(ours: Any, ref: Any, to_numpy: Callable[[Any], np.ndarray] = np.asarray,
                         ref_to_numpy: Optional[Callable[[Any], np.ndarray]] = None,
                         fields: Optional[Iterable[str]] = None, atol: Optional[Mapping[str, float]] = None,
                         skip: Iterable[str] = (), atol_all: Optional[float] = None) -> list[str]:
    """Compare two output containers field by field (nested outputs and tuples flattened to
    ``text_model_output.hidden_states[3]``-style names). ``atol_all`` sets one bound for every
    field (``atol`` still wins per name). ``fields`` restricts the comparison to
    names starting with one of them; ``skip`` drops names starting with one of them. The set of
    non-None fields must agree. Returns the compared names (so a test can assert coverage)."""
    a = _flatten(ours, "", to_numpy)
    b = _flatten(ref, "", ref_to_numpy or to_numpy)
    skip = tuple(skip)
    if fields is not None:
        keep = tuple(fields)
        a = {k: v for k, v in a.items() if k.startswith(keep)}
        b = {k: v for k, v in b.items() if k.startswith(keep)}
    a = {k: v for k, v in a.items() if not (skip and k.startswith(skip))}
    b = {k: v for k, v in b.items() if not (skip and k.startswith(skip))}
    assert sorted(a) == sorted(b), f"output fields differ: ours-only {sorted(set(a) - set(b))}, " \
                                   f"reference-only {sorted(set(b) - set(a))}"
    for name in sorted(a):
        tol = (atol or {}).get(name, default_atol(name) if atol_all is None else atol_all)
        assert a[name].shape == b[name].shape, f"{name}: shape {a[name].shape} != {b[name].shape}"
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=tol, err_msg=name)
    return sorted(a)


def normalized(x: np.ndarray) -> np.ndarray:
    """Rows L2-normalized (float64)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def assert_embeds_close(ours: np.ndarray, ref: np.ndarray, atol: float = EMBED_ATOL) -> None:
    """L2-normalized embeddings agree to ``atol`` max abs."""
    np.testing.assert_allclose(normalized(ours), normalized(ref), rtol=0, atol=atol)


# ------------------------------------------------------------------ OpenAI / open_clip names
def openai_to_canonical(state: Mapping[str, np.ndarray], resnet: bool) -> dict[str, np.ndarray]:
    """OpenAI / open_clip state dict (numpy) -> canonical names (a small test-side map, used
    until ``conversion.load_checkpoint`` reads these formats; also a cross-check of it)."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        v = np.asarray(value)
        if key in ("input_resolution", "context_length", "vocab_size") or key.endswith("num_batches_tracked"):
            continue
        if key == "attn_mask" or key.endswith(".attn_mask"):
            continue
        name = _openai_name(key, v, resnet, out)
        if name is not None:
            out[name] = v
    return out


def _split_in_proj(prefix: str, v: np.ndarray, leaf: str, out: dict) -> None:
    q, k, vv = np.split(v, 3, axis=0)
    for proj, a in (("q_proj", q), ("k_proj", k), ("v_proj", vv)):
        out[f"{prefix}.self_attn.{proj}.{leaf}"] = np.ascontiguousarray(a)


def _block_name(prefix: str, rest: str, v: np.ndarray, out: dict) -> Optional[str]:
    table = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        _split_in_proj(prefix, v, rest.rsplit("_", 1)[-1], out)
        return None
    mod, leaf = rest.rsplit(".", 1)
    return f"{prefix}.{table[mod]}.{leaf}"


def _openai_name(key: str, v: np.ndarray, resnet: bool, out: dict) -> Optional[str]:
    simple = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
              "positional_embedding": "text_model.embeddings.position_embedding.weight",
              "ln_final.weight": "text_model.final_layer_norm.weight",
              "ln_final.bias": "text_model.final_layer_norm.bias", "logit_scale": "logit_scale",
              "visual.class_embedding": "vision_model.embeddings.class_embedding",
              "visual.conv1.weight": None if resnet else "vision_model.embeddings.patch_embedding.weight",
              "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
              "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
              "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
              "visual.ln_post.weight": "vision_model.post_layernorm.weight",
              "visual.ln_post.bias": "vision_model.post_layernorm.bias"}
    if key == "text_projection":
        out["text_projection.weight"] = np.ascontiguousarray(v.T)
        return None
    if key == "visual.proj":
        out["visual_projection.weight"] = np.ascontiguousarray(v.T)
        return None
    if key.startswith("transformer.resblocks."):
        i, rest = key[len("transformer.resblocks."):].split(".", 1)
        return _block_name(f"text_model.encoder.layers.{i}", rest, v, out)
    if key.startswith("visual.transformer.resblocks."):
        i, rest = key[len("visual.transformer.resblocks."):].split(".", 1)
        return _block_name(f"vision_model.encoder.layers.{i}", rest, v, out)
    if resnet and key.startswith("visual."):
        return "vision_model." + key[len("visual."):]
    if key in simple and simple[key] is not None:
        return simple[key]
    raise KeyError(f"unmapped OpenAI key {key!r}")
