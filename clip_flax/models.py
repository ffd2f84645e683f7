"""The six public classes: HF-Flax-style objects holding ``params`` (+ ResNet ``batch_stats``).

``model.params`` is a plain nested dict whose paths are Hugging Face's Flax names
(``text_model/encoder/layers/0/self_attn/q_proj/kernel``); every call runs a jitted
``module.apply``, compiled once per input shape and cached per static-argument combination.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import jax
import jax.numpy as jnp
from flax import traverse_util

from clip_core.config import CLIPConfig, as_clip_config, num_labels_of
from clip_core.schema import from_backend, schema, to_backend

from . import modules as M
from .text_speed import trim_text_inputs

PathLike = Union[str, os.PathLike]


def flatten(tree: dict) -> dict[str, Any]:
    """Nested dict -> ``{'a/b/c': leaf}``."""
    return traverse_util.flatten_dict(dict(tree), sep="/") if tree else {}


def unflatten(flat: dict[str, Any]) -> dict:
    """``{'a/b/c': leaf}`` -> nested dict."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


class FlaxCLIPPreTrainedModel:
    """Shared machinery: init, params / batch_stats, jit cache, from_pretrained / save_pretrained."""

    module_class: type = None  # type: ignore[assignment]
    part: str = "model"
    uses_text = True
    uses_vision = True

    def __init__(self, config: Any, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, seed: int = 0,
                 _do_init: bool = True, num_labels: Optional[int] = None):
        self.config = as_clip_config(config)
        self.dtype, self.param_dtype = dtype, param_dtype
        self.num_labels = num_labels or num_labels_of(self.config) if self.part == "classification" else None
        kwargs = {"num_labels": self.num_labels} if self.part == "classification" else {}
        self.module = self.module_class(self.config, dtype=dtype, param_dtype=param_dtype, **kwargs)
        self._jit_cache: dict = {}
        self.params: dict = {}
        self.batch_stats: dict = {}
        if _do_init:
            variables = self.init_weights(jax.random.PRNGKey(seed))
            self.params = variables["params"]
            self.batch_stats = variables.get("batch_stats", {})

    # ------------------------------------------------------------------ variables
    def dummy_inputs(self) -> tuple:
        """Inputs for ``module.init`` in this module's positional order."""
        c = self.config
        ids = jnp.ones((1, c.text_config.max_position_embeddings), jnp.int32)
        v = c.vision_config
        pix = jnp.zeros((1, v.num_channels, v.image_size, v.image_size), jnp.float32)
        if self.uses_text and self.uses_vision:
            return ids, pix
        return (ids,) if self.uses_text else (pix,)

    def init_weights(self, rng: jax.Array) -> dict:
        """Fresh random variables ``{'params': ..., 'batch_stats': ...}`` (jitted init)."""
        init = jax.jit(lambda r, *a: self.module.init({"params": r, "dropout": r}, *a))
        return jax.tree_util.tree_map(lambda x: x, dict(init(rng, *self.dummy_inputs())))

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

    def _schema_kwargs(self) -> dict:
        return {"num_labels": self.num_labels} if self.part == "classification" else {}

    # ------------------------------------------------------------------ jitted apply
    def _jitted(self, method: Optional[str], **static: Any):
        """``fn(variables, rngs, *args)`` for ``module.<method>`` with ``static`` fixed; cached."""
        key = (method, tuple(sorted(static.items())))
        fn = self._jit_cache.get(key)
        if fn is None:
            module = self.module

            def run(variables, rngs, *args):
                return module.apply(variables, *args, rngs=rngs, method=method, **static)

            fn = self._jit_cache[key] = jax.jit(run)
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
    def from_pretrained(cls, path: PathLike, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                        config: Optional[CLIPConfig] = None, num_labels: Optional[int] = None,
                        init_missing_classifier: bool = False, seed: int = 0):
        """Load any checkpoint ``conversion.load_checkpoint`` reads (strict, named diff on mismatch).

        Tensors of the other tower in a full checkpoint are dropped; anything else unexpected,
        missing or mis-shaped raises ``clip_core.WeightMismatchError``. For
        ``CLIPForImageClassification`` a checkpoint without ``classifier.*`` is an error unless
        ``init_missing_classifier=True`` (then the classifier is randomly initialised, with a warning).
        """
        import conversion

        cfg, weights = conversion.load_for_part(path, cls.part, config)
        model = cls(cfg, dtype=dtype, param_dtype=param_dtype, _do_init=False, num_labels=num_labels)
        kwargs = model._schema_kwargs()
        wanted = schema(cfg, cls.part, **kwargs)
        known = set(schema(cfg, "model")) | set(wanted)
        weights = {k: v for k, v in weights.items() if k in wanted or k not in known}
        fresh = {}
        if cls.part == "classification" and init_missing_classifier and "classifier.weight" not in weights:
            warnings.warn(f"{path} has no classifier weights; initialising the classifier randomly")
            init = model.init_weights(jax.random.PRNGKey(seed))
            fresh = {k: v for k, v in flatten(init).items() if k.startswith("params/classifier/")}
            weights = {k: v for k, v in weights.items() if not k.startswith("classifier.")}
            part_flat = to_backend(weights, cfg, "flax", "vision", source=str(path))
        else:
            part_flat = to_backend(weights, cfg, "flax", cls.part, source=str(path), **kwargs)
        model.load_flat({**part_flat, **{k: np.asarray(v) for k, v in fresh.items()}})
        return model

    def canonical_weights(self) -> dict[str, np.ndarray]:
        """The canonical ``{HF PyTorch name: array}`` dict of this model (float32 numpy)."""
        flat = {k: np.asarray(v, np.float32) for k, v in self.flat_variables().items()}
        return from_backend(flat, self.config, "flax", self.part, **self._schema_kwargs())

    def save_pretrained(self, directory: PathLike, format: str = "canonical") -> Path:
        """Write the canonical directory (``format='canonical'``) or an HF Flax one (``'flax'``:
        ``config.json`` + ``flax_model.msgpack``)."""
        import conversion

        directory = Path(directory)
        if format == "flax":
            return self.save_msgpack(directory)
        if format != "canonical":
            raise ValueError(f"unknown format {format!r}; expected 'canonical' or 'flax'")
        conversion.save_checkpoint(directory, self.config, self.canonical_weights(), part=self.part)
        return directory

    def save_msgpack(self, directory: PathLike) -> Path:
        """``config.json`` + ``flax_model.msgpack`` loadable by transformers' ``FlaxCLIPModel`` (or the
        tower / classification class of this model's part), written by ``conversion``."""
        import conversion

        conversion.save_checkpoint(directory, self.config, self.canonical_weights(), format="flax", part=self.part)
        return Path(directory)

    def num_parameters(self) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(self.params)))


def _ids(x):
    return None if x is None else jnp.asarray(x, jnp.int32)


def _pix(x):
    return None if x is None else jnp.asarray(x, jnp.float32)


def _train_flag(train: bool, training: Optional[bool]) -> bool:
    return bool(training) if training is not None else bool(train)


def _is_image_batch(x: Any) -> bool:
    a = x if hasattr(x, "ndim") and hasattr(x, "dtype") else np.asarray(x)
    return a.ndim == 4 and jnp.issubdtype(a.dtype, jnp.floating)


class CLIPModel(FlaxCLIPPreTrainedModel):
    """Text and vision towers, projections and ``logit_scale`` (HF ``FlaxCLIPModel`` semantics).

    Also the OpenAI-style object: ``encode_image``, ``encode_text`` and ``model(image, text)``.
    """

    module_class = M.CLIPModule
    part = "model"

    def __call__(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, params=None,
                 dropout_rng=None, train: bool = False, output_attentions: bool = False,
                 output_hidden_states: bool = False, return_loss: bool = False,
                 interpolate_pos_encoding: bool = False, batch_stats=None, training: Optional[bool] = None,
                 return_dict: bool = True):
        if input_ids is not None and pixel_values is not None and _is_image_batch(input_ids) \
                and not _is_image_batch(pixel_values):  # OpenAI: model(image, text)
            out = self(input_ids=pixel_values, pixel_values=input_ids, params=params, batch_stats=batch_stats)
            return out.logits_per_image, out.logits_per_text
        if input_ids is None or pixel_values is None:
            raise ValueError("CLIPModel needs both input_ids and pixel_values")
        out = self._apply(None, (_ids(input_ids), _pix(pixel_values), _ids(attention_mask), _ids(position_ids)),
                          params, batch_stats, _train_flag(train, training), dropout_rng,
                          output_attentions=bool(output_attentions), output_hidden_states=bool(output_hidden_states),
                          return_loss=bool(return_loss), interpolate_pos_encoding=bool(interpolate_pos_encoding))
        return out if return_dict else out.to_tuple()

    def get_text_features(self, input_ids, attention_mask=None, position_ids=None, params=None, dropout_rng=None,
                          train: bool = False, trim: bool = True):
        """Projected (not normalised) pooled text features, (B, projection_dim).

        With ``trim`` (default) and concrete ``input_ids``, only the shortest bucketed prefix that
        holds every row's EOT token is computed (exact: the causal mask makes later positions
        irrelevant to the pooled state); one compilation per bucket.
        """
        ids, mask, pos = _ids(input_ids), _ids(attention_mask), _ids(position_ids)
        if trim:
            ids, mask, pos = trim_text_inputs(ids, mask, pos, self.config.text_config)
        return self._apply("get_text_features", (ids, mask, pos), params, None, train, dropout_rng)

    def get_image_features(self, pixel_values, params=None, dropout_rng=None, train: bool = False,
                           interpolate_pos_encoding: bool = False, batch_stats=None):
        """Projected (not normalised) image features, (B, projection_dim)."""
        return self._apply("get_image_features", (_pix(pixel_values),), params, batch_stats, train, dropout_rng,
                           interpolate_pos_encoding=bool(interpolate_pos_encoding))

    # OpenAI names
    def encode_image(self, image, params=None):
        return self.get_image_features(image, params=params)

    def encode_text(self, text, params=None):
        return self.get_text_features(text, params=params)


class CLIPTextModel(FlaxCLIPPreTrainedModel):
    """The text tower: ``last_hidden_state``, ``pooler_output`` (EOT), ``hidden_states``, ``attentions``."""

    module_class = M.CLIPTextModule
    part = "text"
    uses_vision = False

    def __call__(self, input_ids, attention_mask=None, position_ids=None, params=None, dropout_rng=None,
                 train: bool = False, output_attentions: bool = False, output_hidden_states: bool = False,
                 training: Optional[bool] = None, return_dict: bool = True):
        out = self._apply(None, (_ids(input_ids), _ids(attention_mask), _ids(position_ids)), params, None,
                          _train_flag(train, training), dropout_rng, output_attentions=bool(output_attentions),
                          output_hidden_states=bool(output_hidden_states))
        return out if return_dict else out.to_tuple()


class CLIPTextModelWithProjection(CLIPTextModel):
    """The text tower + ``text_projection``: ``text_embeds`` (not normalised), states, attentions."""

    module_class = M.CLIPTextModelWithProjectionModule
    part = "text_with_projection"


class CLIPVisionModel(FlaxCLIPPreTrainedModel):
    """The vision tower (ViT or ModifiedResNet): ``last_hidden_state``, ``pooler_output``, …"""

    module_class = M.CLIPVisionModule
    part = "vision"
    uses_text = False

    def __call__(self, pixel_values, params=None, dropout_rng=None, train: bool = False,
                 output_attentions: bool = False, output_hidden_states: bool = False,
                 interpolate_pos_encoding: bool = False, batch_stats=None, training: Optional[bool] = None,
                 return_dict: bool = True):
        out = self._apply(None, (_pix(pixel_values),), params, batch_stats, _train_flag(train, training),
                          dropout_rng, output_attentions=bool(output_attentions),
                          output_hidden_states=bool(output_hidden_states),
                          interpolate_pos_encoding=bool(interpolate_pos_encoding))
        return out if return_dict else out.to_tuple()


class CLIPVisionModelWithProjection(CLIPVisionModel):
    """The vision tower + ``visual_projection`` (ViT; a ResNet's attention pool already projects)."""

    module_class = M.CLIPVisionModelWithProjectionModule
    part = "vision_with_projection"


class CLIPForImageClassification(FlaxCLIPPreTrainedModel):
    """Mean of the patch tokens -> linear ``classifier``; ``loss`` when ``labels`` are given."""

    module_class = M.CLIPForImageClassificationModule
    part = "classification"
    uses_text = False

    def __call__(self, pixel_values, labels=None, params=None, dropout_rng=None, train: bool = False,
                 output_attentions: bool = False, output_hidden_states: bool = False,
                 interpolate_pos_encoding: bool = False, batch_stats=None, training: Optional[bool] = None,
                 return_dict: bool = True):
        lab = None if labels is None else jnp.asarray(labels)
        out = self._apply(None, (_pix(pixel_values), lab), params, batch_stats, _train_flag(train, training),
                          dropout_rng, output_attentions=bool(output_attentions),
                          output_hidden_states=bool(output_hidden_states),
                          interpolate_pos_encoding=bool(interpolate_pos_encoding))
        return out if return_dict else out.to_tuple()


FlaxCLIPModel = CLIPModel
FlaxCLIPTextModel = CLIPTextModel
FlaxCLIPTextModelWithProjection = CLIPTextModelWithProjection
FlaxCLIPVisionModel = CLIPVisionModel
FlaxCLIPVisionModelWithProjection = CLIPVisionModelWithProjection
FlaxCLIPForImageClassification = CLIPForImageClassification
