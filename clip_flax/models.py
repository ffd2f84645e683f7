"""The six public classes: HF-Flax-style objects holding ``params`` (+ ResNet ``batch_stats``).

``model.params`` is a plain nested dict whose paths are Hugging Face's Flax names
(``text_model/encoder/layers/0/self_attn/q_proj/kernel``); every call runs a jitted
``module.apply``, compiled once per input shape and cached per static-argument combination.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import jax
import jax.numpy as jnp
from flax import traverse_util

from conversion.pretrained import finish, init_weights, load_pretrained, output_flags, select_part
from clip_core.config import num_labels_of, with_labels
from clip_core.families import as_model_config
from clip_core.schema import from_backend, to_backend
from clip_core.precision import check_precision, verify_precision, warn_if_emulated

from . import modules as M
from .text_speed import trim_text_inputs

PathLike = Union[str, os.PathLike]


def flatten(tree: dict) -> dict[str, Any]:
    """Nested dict -> ``{'a/b/c': leaf}``."""
    return traverse_util.flatten_dict(dict(tree), sep="/") if tree else {}


def unflatten(flat: dict[str, Any]) -> dict:
    """``{'a/b/c': leaf}`` -> nested dict."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


_JIT_CACHE: dict = {}  # (module, method, static flags) -> jitted apply, shared by equal models


def bf16_matrices(params: dict) -> dict:
    """``params`` with every Dense / conv ``kernel`` and ``embedding`` table stored in bfloat16. A bfloat16
    model casts them to bfloat16 on each call anyway, so its outputs do not change; stored that way, the
    cast (a pass over all the weights that XLA cannot hoist out of the jitted call: a third of a short-prompt
    text batch) is gone. LayerNorm parameters and biases stay float32."""
    def cast(path, leaf):
        return leaf.astype(jnp.bfloat16) if getattr(path[-1], "key", None) in ("kernel", "embedding") else leaf

    return jax.tree_util.tree_map_with_path(cast, params)


class FlaxCLIPPreTrainedModel:
    """Shared machinery: params / batch_stats, jit cache, from_pretrained / save_pretrained."""

    module_class: type = None  # type: ignore[assignment]
    part: str = "model"

    def __init__(self, config: Any, input_shape: Any = None, seed: int = 0, dtype: Any = jnp.float32,
                 _do_init: bool = True, *, param_dtype: Any = jnp.float32, num_labels: Optional[int] = None):
        """transformers' ``FlaxCLIPModel(config, input_shape, seed, dtype, _do_init)``: ``dtype`` is the compute
        dtype, ``param_dtype`` the parameters'; ``input_shape`` is accepted and unused (shapes come from the
        config). With ``_do_init`` the parameters are drawn by transformers' rules from ``seed``
        (:func:`conversion.pretrained.init_weights`)."""
        self.config = as_model_config(config)
        self.dtype, self.param_dtype = dtype or jnp.float32, param_dtype
        self.num_labels = (num_labels or num_labels_of(self.config)) if self.part == "classification" else None
        kwargs = {"num_labels": self.num_labels} if self.part == "classification" else {}
        self.module = self.module_class(self.config, dtype=self.dtype, param_dtype=param_dtype, **kwargs)
        self._jit_cache: dict = {}
        self.params: dict = {}
        self.batch_stats: dict = {}
        if _do_init:
            self.load_canonical(init_weights(self.config, self.part, self.num_labels, seed=seed))

    # ------------------------------------------------------------------ variables
    def init_weights(self, rng: jax.Array, input_shape: Any = None, params: Optional[dict] = None) -> dict:
        """Fresh random variables ``{'params': ..., 'batch_stats': ...}`` drawn from ``rng`` (transformers' rules)."""
        typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
        seed = int(np.asarray(jax.random.key_data(rng) if typed else rng).ravel()[-1])
        flat = to_backend(init_weights(self.config, self.part, self.num_labels, seed=seed), self.config, "flax",
                          self.part, self.num_labels)
        return unflatten({k: jnp.asarray(v, self.param_dtype) for k, v in flat.items()})

    def variables(self, params: Optional[dict] = None, batch_stats: Optional[dict] = None) -> dict:
        out = {"params": self.params if params is None else params}
        bs = self.batch_stats if batch_stats is None else batch_stats
        if bs:
            out["batch_stats"] = bs
        return out

    def flat_variables(self) -> dict[str, np.ndarray]:
        """``{'params/…': array, 'batch_stats/…': array}`` as numpy (the schema's flax paths)."""
        return {k: np.asarray(v) for k, v in flatten(self.variables()).items()}

    def load_flat(self, flat: dict[str, np.ndarray]) -> None:
        """Install ``{'params/…': array, 'batch_stats/…': array}`` (cast to ``param_dtype``)."""
        tree = unflatten({k: jnp.asarray(v, self.param_dtype) for k, v in flat.items()})
        self.params = tree.get("params", {})
        self.batch_stats = tree.get("batch_stats", {})

    def load_canonical(self, weights: dict, source: str = "weights") -> None:
        """Install canonical ``{name: array}`` weights (tensors of other parts dropped; strict otherwise)."""
        self.load_flat(self._backend_arrays(weights, source))

    def _backend_arrays(self, weights: dict, source: str) -> dict[str, np.ndarray]:
        """Canonical weights -> ``{flax path: array}`` of this model's part (strict, named diff on mismatch)."""
        weights = select_part(weights, self.config, self.part, self.num_labels)
        return to_backend(weights, self.config, "flax", self.part, self.num_labels, source=source)

    # ------------------------------------------------------------------ jitted apply
    def _jitted(self, method: Optional[str], **static: Any):
        """``fn(variables, rngs, *args)`` for ``module.<method>`` with ``static`` fixed; cached per equal
        module (same config and dtypes), so a model loaded again reuses the compiled functions."""
        key = (self.module, method, tuple(sorted(static.items())))
        fn = _JIT_CACHE.get(key)
        if fn is None:
            module = self.module

            def run(variables, rngs, *args):
                return module.apply(variables, *args, rngs=rngs, method=method, **static)

            fn = _JIT_CACHE[key] = jax.jit(run)
        return fn

    def _apply(self, method: Optional[str], args: tuple, params=None, batch_stats=None, train: bool = False,
               dropout_rng=None, **static: Any):
        rngs = {}
        if train:
            rngs = {"dropout": dropout_rng if dropout_rng is not None else jax.random.PRNGKey(0)}
        static["deterministic"] = not train
        return self._jitted(method, **static)(self.variables(params, batch_stats), rngs, *args)

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(cls, path: PathLike, *, config: Any = None, dtype: Any = None,
                        num_labels: Optional[int] = None, **kwargs: Any):
        """Load any checkpoint ``conversion`` reads (strict, named diff on mismatch) by path, ``"default"``, an
        OpenAI name or a Hugging Face id in the local cache.

        ``dtype`` is the compute dtype (default float32), ``param_dtype`` the parameters' (float32);
        ``precision="bf16"`` computes in bfloat16 after checking the embeddings' bound (clip_core.precision);
        ``_do_init=False`` returns ``(model, params)`` as transformers does; ``seed`` / ``input_shape`` are
        accepted; transformers' loader arguments (``num_labels``, ``from_pt``, ``revision`` ...) as in
        :func:`conversion.pretrained.load_pretrained`.
        """
        loaded = load_pretrained(path, cls.part, kwargs, config=config, num_labels=num_labels, cls_name=cls.__name__)
        return_params = not kwargs.pop("_do_init", True)
        kwargs.pop("input_shape", None), kwargs.pop("seed", None)
        param_dtype = kwargs.pop("param_dtype", jnp.float32)
        precision = check_precision(kwargs.pop("precision", None), ("fp32", "bf16"), "clip_flax")
        warn_if_emulated(precision, "clip_flax")
        if kwargs:
            raise TypeError(f"{cls.__name__}.from_pretrained() got unexpected keyword arguments {sorted(kwargs)}")
        dtype = jnp.bfloat16 if precision == "bf16" else dtype
        model = cls(loaded.config, dtype=dtype, _do_init=False, param_dtype=param_dtype, num_labels=loaded.num_labels)
        flat = model._backend_arrays(loaded.weights, loaded.source)
        model.load_flat(flat)
        model.precision = precision
        if precision == "bf16":  # checked against the same weights in float32
            model.params = bf16_matrices(model.params)
            reference = cls(loaded.config, _do_init=False, num_labels=loaded.num_labels)
            reference.load_flat(flat)
            verify_precision(precision, reference, model)
        return loaded.result((model, model.params) if return_params else model)

    def canonical_weights(self) -> dict[str, np.ndarray]:
        """The canonical ``{HF PyTorch name: array}`` dict of this model (float32 numpy)."""
        flat = {k: np.asarray(v, np.float32) for k, v in self.flat_variables().items()}
        return from_backend(flat, self.config, "flax", self.part, self.num_labels)

    def save_pretrained(self, directory: PathLike, *, format: str = "canonical", dtype: Optional[str] = None) -> Path:
        """Write the canonical directory, or another ``conversion`` format: ``"flax"`` (``config.json`` +
        ``flax_model.msgpack``, as transformers' Flax classes read it), ``"tf"``, ``"openai"``, ``"open_clip"``
        (towers: canonical / hf / flax). ``dtype``: None, "fp16" or "bf16"."""
        import conversion

        config = with_labels(self.config, self.num_labels) if self.num_labels else self.config
        return Path(conversion.save_checkpoint(directory, config, self.canonical_weights(), format=format,
                                               dtype=dtype, part=self.part))

    def save_msgpack(self, directory: PathLike) -> Path:
        """``save_pretrained(directory, format="flax")``."""
        return self.save_pretrained(directory, format="flax")

    def num_parameters(self) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(self.params)))


def _features(model: Any, x):
    """Features as float32 under ``precision="bf16"`` (as in clip_torch and clip_tf); a model built with
    ``dtype=jnp.bfloat16`` keeps transformers' bfloat16 features."""
    return x.astype(jnp.float32) if getattr(model, "precision", "fp32") == "bf16" else x


def _float32_embeds(model: Any, out):
    """A tower class's output with its ``text_embeds`` / ``image_embeds`` (if any) as :func:`_features`."""
    names = [f for f in ("text_embeds", "image_embeds") if getattr(out, f, None) is not None]
    return dataclasses.replace(out, **{f: _features(model, getattr(out, f)) for f in names}) if names else out


def _ids(x):
    return None if x is None else jnp.asarray(x, jnp.int32)


def _pix(x):
    return None if x is None else jnp.asarray(x, jnp.float32)


def _train_flag(train: bool, training: Optional[bool]) -> bool:
    return bool(training) if training is not None else bool(train)


def _is_image_batch(x: Any) -> bool:
    a = x if hasattr(x, "ndim") and hasattr(x, "dtype") else np.asarray(x)
    return a.ndim == 4 and jnp.issubdtype(a.dtype, jnp.floating)


class _TextFeatures:
    """``get_text_features`` / OpenAI's ``encode_text`` (classes with a text projection)."""

    _trim_text = True  # the causal mask allows computing only a prefix (not SigLIP's bidirectional text)

    def get_text_features(self, input_ids, attention_mask=None, position_ids=None, params=None, dropout_rng=None,
                          train: bool = False, output_attentions=None, output_hidden_states=None, return_dict=None,
                          trim: bool = True):
        """Projected (not normalised) pooled text features, (B, projection_dim). The flags are accepted for
        transformers' signature and change nothing.

        With ``trim`` (default) and concrete ``input_ids``, only the shortest bucketed prefix that
        holds every row's EOT token is computed (exact: the causal mask makes later positions
        irrelevant to the pooled state); one compilation per bucket.
        """
        ids, mask, pos = _ids(input_ids), _ids(attention_mask), _ids(position_ids)
        if trim and self._trim_text:
            ids, mask, pos = trim_text_inputs(ids, mask, pos, self.config.text_config)
        return _features(self, self._apply("get_text_features", (ids, mask, pos), params, None, train, dropout_rng))

    def encode_text(self, text, params=None):
        """OpenAI's name for :meth:`get_text_features`."""
        return self.get_text_features(text, params=params)


class _ImageFeatures:
    """``get_image_features`` / OpenAI's ``encode_image`` (classes with an image embedding)."""

    def get_image_features(self, pixel_values, params=None, dropout_rng=None, train: bool = False,
                           output_attentions=None, output_hidden_states=None, interpolate_pos_encoding: bool = False,
                           return_dict=None, batch_stats=None):
        """Projected (not normalised) image features, (B, projection_dim). The flags are accepted for
        transformers' signature and change nothing."""
        return _features(self, self._apply("get_image_features", (_pix(pixel_values),), params, batch_stats, train,
                                           dropout_rng, interpolate_pos_encoding=bool(interpolate_pos_encoding)))

    def encode_image(self, image, params=None):
        """OpenAI's name for :meth:`get_image_features`."""
        return self.get_image_features(image, params=params)


class _DualCall:
    """``model(input_ids, pixel_values, ...)`` of the whole two-tower models (and OpenAI's ``model(image, text)``)."""

    def __call__(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, params=None,
                 dropout_rng=None, train: bool = False, return_loss=None, output_attentions=None,
                 output_hidden_states=None, interpolate_pos_encoding: bool = False, return_dict=None,
                 batch_stats=None, training: Optional[bool] = None):
        if input_ids is not None and pixel_values is not None and _is_image_batch(input_ids) \
                and not _is_image_batch(pixel_values):  # OpenAI: model(image, text)
            out = self(input_ids=pixel_values, pixel_values=input_ids, params=params, batch_stats=batch_stats)
            return out.logits_per_image, out.logits_per_text
        if input_ids is None or pixel_values is None:
            raise ValueError(f"{type(self).__name__} needs both input_ids and pixel_values")
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        out = self._apply(None, (_ids(input_ids), _pix(pixel_values), _ids(attention_mask), _ids(position_ids)),
                          params, batch_stats, _train_flag(train, training), dropout_rng, output_attentions=oa,
                          output_hidden_states=oh, return_loss=bool(return_loss),
                          interpolate_pos_encoding=bool(interpolate_pos_encoding))
        return finish(out, rd)


class CLIPModel(_DualCall, _TextFeatures, _ImageFeatures, FlaxCLIPPreTrainedModel):
    """Text and vision towers, projections and ``logit_scale`` (HF ``FlaxCLIPModel`` semantics).

    Also the OpenAI-style object: ``encode_image``, ``encode_text`` and ``model(image, text)``.
    """

    module_class = M.CLIPModule
    part = "model"


class _TextCall:
    """``model(input_ids, attention_mask, position_ids, ...)`` of the text-tower classes."""

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, params=None, dropout_rng=None,
                 train: bool = False, output_attentions=None, output_hidden_states=None, return_dict=None,
                 training: Optional[bool] = None):
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        out = self._apply(None, (_ids(input_ids), _ids(attention_mask), _ids(position_ids)), params, None,
                          _train_flag(train, training), dropout_rng, output_attentions=oa, output_hidden_states=oh)
        return finish(_float32_embeds(self, out), rd)


class CLIPTextModel(_TextCall, FlaxCLIPPreTrainedModel):
    """The text tower: ``last_hidden_state``, ``pooler_output`` (EOT), ``hidden_states``, ``attentions``."""

    module_class = M.CLIPTextModule
    part = "text"


class CLIPTextModelWithProjection(_TextFeatures, CLIPTextModel):
    """The text tower + ``text_projection``: ``text_embeds`` (not normalised), states, attentions."""

    module_class = M.CLIPTextModelWithProjectionModule
    part = "text_with_projection"


class _VisionCall:
    """``model(pixel_values, ...)`` of the vision-tower classes."""

    def __call__(self, pixel_values=None, params=None, dropout_rng=None, train: bool = False,
                 output_attentions=None, output_hidden_states=None, interpolate_pos_encoding: bool = False,
                 return_dict=None, batch_stats=None, training: Optional[bool] = None):
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        out = self._apply(None, (_pix(pixel_values),), params, batch_stats, _train_flag(train, training),
                          dropout_rng, output_attentions=oa, output_hidden_states=oh,
                          interpolate_pos_encoding=bool(interpolate_pos_encoding))
        return finish(_float32_embeds(self, out), rd)


class CLIPVisionModel(_VisionCall, FlaxCLIPPreTrainedModel):
    """The vision tower (ViT or ModifiedResNet): ``last_hidden_state``, ``pooler_output``, …"""

    module_class = M.CLIPVisionModule
    part = "vision"


class CLIPVisionModelWithProjection(_ImageFeatures, CLIPVisionModel):
    """The vision tower + ``visual_projection`` (ViT; a ResNet's attention pool already projects)."""

    module_class = M.CLIPVisionModelWithProjectionModule
    part = "vision_with_projection"


class _ClassifyCall:
    """``model(pixel_values, labels, ...)`` of the image-classification classes."""

    def __call__(self, pixel_values=None, labels=None, params=None, dropout_rng=None, train: bool = False,
                 output_attentions=None, output_hidden_states=None, interpolate_pos_encoding: bool = False,
                 return_dict=None, batch_stats=None, training: Optional[bool] = None):
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        lab = None if labels is None else jnp.asarray(labels)
        out = self._apply(None, (_pix(pixel_values), lab), params, batch_stats, _train_flag(train, training),
                          dropout_rng, output_attentions=oa, output_hidden_states=oh,
                          interpolate_pos_encoding=bool(interpolate_pos_encoding))
        return finish(out, rd)


class CLIPForImageClassification(_ClassifyCall, FlaxCLIPPreTrainedModel):
    """Mean of the patch tokens -> linear ``classifier``; ``loss`` when ``labels`` are given."""

    module_class = M.CLIPForImageClassificationModule
    part = "classification"


FlaxCLIPModel = CLIPModel
FlaxCLIPTextModel = CLIPTextModel
FlaxCLIPTextModelWithProjection = CLIPTextModelWithProjection
FlaxCLIPVisionModel = CLIPVisionModel
FlaxCLIPVisionModelWithProjection = CLIPVisionModelWithProjection
FlaxCLIPForImageClassification = CLIPForImageClassification
