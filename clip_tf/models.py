"""The six public CLIP classes as Keras 3 models, with loading, saving and compiled feature paths."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import keras
import numpy as np
import tensorflow as tf

from conversion.pretrained import (finish, load_pretrained, output_flags, select_part, text_bucket,  # noqa: F401
                                      text_prefix_length)
from clip_core.config import CLIPConfig, num_labels_of, with_labels
from clip_core.families import as_model_config, family_of
from clip_core.outputs import (CLIPOutput, CLIPTextModelOutput, CLIPVisionModelOutput, ImageClassifierOutput)
from clip_core.schema import from_backend, to_backend
from clip_core.precision import check_precision, verify_precision, warn_if_emulated

from .primitives import Dense, float32_products, named_variables, param, policy_dtype, weights_to_come
from .resnet import ModifiedResNet
from .text import CLIPTextTransformer, pool_positions
from .vision import CLIPVisionTransformer

__all__ = ["CLIPPreTrainedModel", "CLIPModel", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModel",
           "CLIPVisionModelWithProjection", "CLIPForImageClassification", "clip_loss", "contrastive_loss", "text_bucket"]

_serializable = keras.saving.register_keras_serializable(package="clip_tf")


def clip_loss(logits_per_text: tf.Tensor) -> tf.Tensor:
    """Symmetric CLIP loss: mean of the cross-entropies over texts and images, labels arange(B)."""
    logits = tf.cast(logits_per_text, tf.float32)
    labels = tf.range(tf.shape(logits)[0])
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits
    return (tf.reduce_mean(ce(labels, logits)) + tf.reduce_mean(ce(labels, tf.transpose(logits)))) / 2.0


contrastive_loss = clip_loss  # the earlier name, kept as an alias
_CONSTRUCTOR_KWARGS = {"data_format", "jit_compile", "name", "trainable"}


def _vision_tower(config: CLIPConfig, dtype) -> keras.layers.Layer:
    cls = ModifiedResNet if config.is_resnet else CLIPVisionTransformer
    return cls(config.vision_config, dtype=dtype)


def _traced_with_float32_products(fn):
    """``fn`` tracing its bfloat16 products as float32-accumulating XLA dots (:func:`primitives.float32_products`)."""
    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with float32_products():
            return fn(*args, **kwargs)

    return traced


class CLIPPreTrainedModel(keras.Model):
    """Shared machinery: config handling, the ``{tf path: variable}`` index, loading and saving."""

    part: ClassVar[str] = "model"
    family: ClassVar[str] = "clip"  # the config family the class builds (clip_core.families)
    _top: ClassVar[tuple] = ()

    def __init__(self, config: Any, dtype=None, data_format: str = "channels_first",
                 jit_compile: Union[bool, str] = "auto", name: Optional[str] = None, **kwargs):
        if data_format not in ("channels_first", "channels_last"):
            raise ValueError(f"data_format must be 'channels_first' (NCHW) or 'channels_last', got {data_format!r}")
        super().__init__(name=name, dtype=policy_dtype(dtype), **kwargs)
        self.config = as_model_config(config)
        if family_of(self.config) != self.family:
            raise ValueError(f"{type(self).__name__} needs a {self.family} config, got a {family_of(self.config)} one")
        self.data_format = data_format
        if jit_compile not in (True, False, "auto"):
            raise ValueError(f"jit_compile must be True, False or 'auto', got {jit_compile!r}")
        self.jit_compile = jit_compile
        object.__setattr__(self, "_fns", {})  # compiled functions; not tracked by Keras / SavedModel

    # ------------------------------------------------------------------ config round trip
    def get_config(self) -> dict:
        return {"config": self.config.to_dict(), "dtype": keras.dtype_policies.serialize(self.dtype_policy),
                "data_format": self.data_format, "jit_compile": self.jit_compile, "name": self.name,
                "trainable": self.trainable}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    # ------------------------------------------------------------------ weights
    @property
    def num_labels(self) -> Optional[int]:
        return None

    def variable_index(self) -> dict[str, keras.Variable]:
        """``{Hugging Face TF path: variable}`` as :mod:`clip_core.schema` names them."""
        index: dict[str, keras.Variable] = {}
        for attr in self._top:
            value = getattr(self, attr, None)
            if isinstance(value, keras.Variable):
                index[attr] = value
            elif value is not None:
                index.update(named_variables(value, attr + "/"))
        return index

    def load_canonical(self, weights: dict, source: str = "weights") -> None:
        """Assign canonical ``{name: array}`` weights (strict: a named diff on any mismatch)."""
        self._assign(self._backend_arrays(weights, source))

    def _backend_arrays(self, weights: dict, source: str) -> dict[str, np.ndarray]:
        """Canonical weights -> ``{tf path: array}`` of this model's part (strict, named diff on mismatch)."""
        weights = select_part(weights, self.config, self.part, self.num_labels)
        return to_backend(weights, self.config, "tf", self.part, self.num_labels, source=source)

    def _assign(self, arrays: dict[str, np.ndarray]) -> None:
        """Assign ``{tf path: array}`` (:func:`conversion.to_backend`'s output) to every variable."""
        index = self.variable_index()
        if set(arrays) != set(index):  # a bug in this package, not in the checkpoint
            raise RuntimeError(f"clip_tf variable paths differ from the schema: "
                               f"{sorted(set(arrays) ^ set(index))}")
        for path, array in arrays.items():
            index[path].assign(array.astype(index[path].dtype, copy=False))

    def canonical_weights(self) -> dict[str, np.ndarray]:
        """The weights as canonical ``{name: float32 array}`` (Hugging Face PyTorch names and layouts)."""
        params = {p: np.asarray(v.numpy()) for p, v in self.variable_index().items()}
        return from_backend(params, self.config, "tf", self.part, self.num_labels)

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike], *, config: Any = None, dtype=None,
                        num_labels: Optional[int] = None, **kwargs):
        """Load any checkpoint ``conversion`` reads (canonical, HF safetensors/bin/h5/msgpack, OpenAI, open_clip)
        by path, ``"default"``, an OpenAI name or a Hugging Face id in the local cache; tensors of other parts
        are dropped, anything else missing or extra is an error. ``dtype`` is the Keras dtype policy; the
        constructor's ``data_format`` / ``jit_compile`` / ``name`` pass through; transformers' loader arguments
        (``num_labels``, ``from_pt``, ``revision`` ...) as in :func:`conversion.pretrained.load_pretrained`.
        ``precision="bf16"`` is the ``bfloat16`` policy (weights in bfloat16, products accumulated in float32,
        layer norms in float32), after checking the embeddings' bound; under ``jit_compile="auto"`` its text
        and ViT image paths compile with XLA (see :meth:`_compiled`)."""
        loaded = load_pretrained(path, cls.part, kwargs, config=config, num_labels=num_labels, cls_name=cls.__name__)
        precision = check_precision(kwargs.pop("precision", None), ("fp32", "bf16"), "clip_tf")
        warn_if_emulated(precision, "clip_tf")
        unknown = set(kwargs) - _CONSTRUCTOR_KWARGS
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pretrained() got unexpected keyword arguments {sorted(unknown)}")
        reference_kwargs = dict(kwargs)
        if precision == "bf16":
            dtype = "bfloat16"
        with weights_to_come():
            model = cls(loaded.config, dtype=dtype, **kwargs)
        arrays = model._backend_arrays(loaded.weights, loaded.source)
        model._assign(arrays)
        model.precision = precision
        if precision == "bf16":  # checked against the same weights in float32
            with weights_to_come():
                reference = cls(loaded.config, **reference_kwargs)
            reference._assign(arrays)
            # Its one probe batch runs eagerly: ViT-B/32's took 1.5 s against 10 s for XLA-compiling it (fp32
            # eager and compiled features differ by < 1e-5, far inside the bound).
            reference._eager_features = True
            verify_precision(precision, reference, model)
        return loaded.result(model)

    def save_pretrained(self, directory: Union[str, os.PathLike], *, format: str = "canonical", dtype=None):
        """Write the canonical directory (or a ``conversion`` format: ``"tf"`` = ``tf_model.h5``, ``"openai"``,
        ``"open_clip"``, ``"flax"``; towers and the classifier as canonical, hf or flax). ``dtype``: None,
        "fp16" or "bf16"."""
        import conversion

        config = with_labels(self.config, self.num_labels) if self.num_labels else self.config
        return Path(conversion.save_checkpoint(directory, config, self.canonical_weights(), format=format,
                                               dtype=dtype, part=self.part))

    def save_tf_h5(self, directory: Union[str, os.PathLike]):
        """Write ``tf_model.h5`` in Hugging Face's TF layout (plus config) into ``directory``."""
        return self.save_pretrained(directory, format="tf")

    # ------------------------------------------------------------------ compiled paths
    def _compiled(self, key: str, fn, signature: list):
        """One ``tf.function`` per feature path. Under "auto": XLA for text; for images, XLA for a bfloat16
        ViT (its float32-accumulating dots beat oneDNN's graph at batch 1 and 16) and a plain graph otherwise
        (float32: XLA:CPU lost at batch 1 and 16 for the ViT-B/32 image tower; a bfloat16 ResNet: XLA's
        bfloat16 convolutions lost by 1.7x on RN50). Measured on CPU, see docs/design.md."""
        if getattr(self, "_eager_features", False):  # a precision check's float32 reference (from_pretrained)
            return fn
        if key not in self._fns:
            bf16 = self.compute_dtype == "bfloat16"
            auto = key == "text" or (bf16 and not getattr(self.config, "is_resnet", False))
            jit = self.jit_compile if isinstance(self.jit_compile, bool) else auto
            if jit and bf16:
                fn = _traced_with_float32_products(fn)
            self._fns[key] = tf.function(fn, input_signature=signature, jit_compile=jit, reduce_retracing=False)
        return self._fns[key]

    def _pixel_spec(self) -> tf.TensorSpec:
        v = self.config.vision_config
        s, c = v.image_size, v.num_channels
        shape = [None, c, s, s] if self.data_format == "channels_first" else [None, s, s, c]
        return tf.TensorSpec(shape, tf.float32, name="pixel_values")

    def _vision(self, pixel_values, output_attentions: bool, output_hidden_states: bool, interpolate_pos_encoding,
                training):
        return self.vision_model(pixel_values, output_attentions=output_attentions,
                                 output_hidden_states=output_hidden_states,
                                 interpolate_pos_encoding=bool(interpolate_pos_encoding), training=training,
                                 data_format=self.data_format)

    def _text(self, input_ids, attention_mask, position_ids, output_attentions: bool, output_hidden_states: bool):
        return self.text_model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               output_attentions=output_attentions, output_hidden_states=output_hidden_states)

    def _train_kwargs(self, data) -> dict:
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        if not isinstance(x, dict):
            raise TypeError("fit() needs a dict of model inputs (input_ids, pixel_values, attention_mask ...)")
        kwargs = dict(x)
        if y is not None:
            kwargs["labels"] = y
        return kwargs

    def train_step(self, data):
        """One optimiser step on the model's own loss (contrastive, or the classifier's)."""
        kwargs = self._train_kwargs(data)
        with tf.GradientTape() as tape:
            loss = self(**kwargs, **self._loss_kwargs(), training=True).loss
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = loss / replicas  # gradients are summed over replicas
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return self._report_loss(loss)

    def test_step(self, data):
        return self._report_loss(self(**self._train_kwargs(data), **self._loss_kwargs(), training=False).loss)

    def _report_loss(self, loss) -> dict:
        """``{"loss": loss}``, also fed to Keras' loss tracker: fit / evaluate report the tracker's mean when
        the names match (without this the history's loss stayed 0)."""
        if getattr(self, "_loss_tracker", None) is not None:
            self._loss_tracker.update_state(loss)
        return {"loss": loss}

    def _loss_kwargs(self) -> dict:
        return {"return_loss": True} if self.part == "model" else {}


class _TextFeatures:
    """``get_text_features`` / ``encode_text``: XLA-compiled, padded positions skipped by bucketing."""

    def _text_embeds(self, pooled):
        """(B, width) pooled text -> (B, projection_dim) ``text_embeds``, float32 in any precision."""
        return tf.cast(self.text_projection(pooled), tf.float32)

    def _text_features(self, input_ids, attention_mask=None, position_ids=None):
        out = self.text_model(input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return self._text_embeds(out.pooler_output)

    def _text_features_prefix(self, input_ids, attention_mask):
        """Graph path: run only up to the last pooled position (dynamic shape; not for XLA)."""
        t = self.config.text_config
        needed = tf.reduce_max(pool_positions(input_ids, t.eos_token_id, t.legacy_eos_pooling)) + 1
        return self._text_features(input_ids[:, :needed], attention_mask[:, :needed])

    def get_text_features(self, input_ids, attention_mask=None, position_ids=None, output_attentions=None,
                          output_hidden_states=None, return_dict=None, training=False):
        """Projected (not normalised) text features (B, projection_dim), float32. The flags and ``training``
        are accepted for transformers' signature and change nothing (CLIP has no dropout at inference)."""
        if position_ids is not None or not tf.executing_eagerly():
            return self._text_features(input_ids, attention_mask, position_ids)
        ids = np.asarray(input_ids).astype(np.int32)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {ids.shape}")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask).astype(np.int32)
        n = text_prefix_length(ids, self.config.text_config)
        spec = [tf.TensorSpec([None, None], tf.int32, name="input_ids"),
                tf.TensorSpec([None, None], tf.int32, name="attention_mask")]
        fn = self._compiled("text", self._text_features, spec)
        return fn(tf.constant(ids[:, :n]), tf.constant(mask[:, :n]))

    def encode_text(self, text):
        """OpenAI's ``model.encode_text(tokens)``."""
        return self.get_text_features(text)


class _ImageFeatures:
    """``get_image_features`` / ``encode_image``: XLA-compiled for the configured image size."""

    def _image_embeds(self, pooled):
        """(B, width) pooled image -> (B, projection_dim) ``image_embeds``, float32 in any precision (a ResNet's
        attention pool already projects)."""
        return tf.cast(pooled if self.config.is_resnet else self.visual_projection(pooled), tf.float32)

    def _image_features(self, pixel_values, interpolate_pos_encoding: bool = False):
        if self.config.is_resnet or interpolate_pos_encoding:
            pooled = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding,
                                       data_format=self.data_format).pooler_output
        else:
            pooled = self.vision_model.pooled(pixel_values, data_format=self.data_format)
        return self._image_embeds(pooled)

    def get_image_features(self, pixel_values, output_attentions=None, output_hidden_states=None,
                           interpolate_pos_encoding: bool = False, return_dict=None, training=False):
        """Projected (not normalised) image features (B, projection_dim), float32. The flags and ``training``
        are accepted for transformers' signature and change nothing."""
        spec = self._pixel_spec()
        x = tf.convert_to_tensor(pixel_values, tf.float32) if tf.executing_eagerly() else pixel_values
        if not tf.executing_eagerly() or not spec.shape.is_compatible_with(x.shape):
            return self._image_features(x, interpolate_pos_encoding)
        return self._compiled("image", self._image_features, [spec])(x)

    def encode_image(self, image):
        """OpenAI's ``model.encode_image(pixels)``."""
        return self.get_image_features(image)


def _normalize(x):
    return x / tf.norm(x, axis=-1, keepdims=True)


@_serializable
class CLIPModel(_TextFeatures, _ImageFeatures, CLIPPreTrainedModel):
    """Text and vision towers, projections and ``logit_scale`` (shape (1,), as Hugging Face TF)."""

    part = "model"
    _top = ("text_model", "vision_model", "text_projection", "visual_projection", "logit_scale")

    def __init__(self, config: Any, **kwargs):
        super().__init__(config, **kwargs)
        c, dt = self.config, self.dtype_policy
        self.text_model = CLIPTextTransformer(c.text_config, dtype=dt)
        self.vision_model = _vision_tower(c, dt)
        self.text_projection = Dense(c.text_config.hidden_size, c.projection_dim, use_bias=False,
                                     name="text_projection", dtype=dt)
        if not c.is_resnet:
            self.visual_projection = Dense(c.vision_config.hidden_size, c.projection_dim, use_bias=False,
                                           name="visual_projection", dtype=dt)
        param(self, "logit_scale", (1,), keras.initializers.Constant(c.logit_scale_init_value), autocast=False,
              dtype="float32")  # float32 in any precision: a bf16 log(100) = 4.594 moves the logits by 1%
        self.built = True

    def call(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, return_loss=None,
             output_attentions=None, output_hidden_states=None, interpolate_pos_encoding=False, return_dict=None,
             training=None):
        if _is_openai_call(input_ids, pixel_values):  # model(image, text) -> (logits_per_image, logits_per_text)
            out = self.call(pixel_values, input_ids, training=training)
            return out.logits_per_image, out.logits_per_text
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        vision = self._vision(pixel_values, oa, oh, interpolate_pos_encoding, training)
        text = self._text(input_ids, attention_mask, position_ids, oa, oh)
        image_embeds = _normalize(self._image_embeds(vision.pooler_output))  # (B_i, D) float32
        text_embeds = _normalize(self._text_embeds(text.pooler_output))  # (B_t, D) float32
        logits_per_text = tf.matmul(text_embeds, image_embeds, transpose_b=True) * tf.exp(tf.cast(self.logit_scale, tf.float32))
        loss = clip_loss(logits_per_text) if return_loss else None
        return finish(CLIPOutput(loss, tf.transpose(logits_per_text), logits_per_text, text_embeds, image_embeds, text,
                                 vision), rd)


def _is_openai_call(first, second) -> bool:
    """True for OpenAI's positional ``model(image, text)``: a float 4-D batch first, token ids second."""
    if first is None or second is None:
        return False
    first, second = tf.convert_to_tensor(first), tf.convert_to_tensor(second)
    return first.shape.rank == 4 and first.dtype.is_floating and second.dtype.is_integer


@_serializable
class CLIPTextModel(CLIPPreTrainedModel):
    """The text tower alone: last_hidden_state, EOT-pooled pooler_output."""

    part = "text"
    _top = ("text_model",)

    def __init__(self, config: Any, **kwargs):
        super().__init__(config, **kwargs)
        self.text_model = CLIPTextTransformer(self.config.text_config, dtype=self.dtype_policy)
        self.built = True

    def call(self, input_ids=None, attention_mask=None, position_ids=None, output_attentions=None,
             output_hidden_states=None, return_dict=None, training=None):
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        return finish(self._text(input_ids, attention_mask, position_ids, oa, oh), rd)


@_serializable
class CLIPTextModelWithProjection(_TextFeatures, CLIPPreTrainedModel):
    """The text tower plus ``text_projection``: text_embeds (not normalised)."""

    part = "text_with_projection"
    _top = ("text_model", "text_projection")

    def __init__(self, config: Any, **kwargs):
        super().__init__(config, **kwargs)
        c, dt = self.config, self.dtype_policy
        self.text_model = CLIPTextTransformer(c.text_config, dtype=dt)
        self.text_projection = Dense(c.text_config.hidden_size, c.projection_dim, use_bias=False,
                                     name="text_projection", dtype=dt)
        self.built = True

    def call(self, input_ids=None, attention_mask=None, position_ids=None, output_attentions=None,
             output_hidden_states=None, return_dict=None, training=None):
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        out = self._text(input_ids, attention_mask, position_ids, oa, oh)
        return finish(CLIPTextModelOutput(self._text_embeds(out.pooler_output), out.last_hidden_state,
                                          out.hidden_states, out.attentions), rd)


@_serializable
class CLIPVisionModel(CLIPPreTrainedModel):
    """The vision tower alone (ViT or ModifiedResNet)."""

    part = "vision"
    _top = ("vision_model",)

    def __init__(self, config: Any, **kwargs):
        super().__init__(config, **kwargs)
        self.vision_model = _vision_tower(self.config, self.dtype_policy)
        self.built = True

    def call(self, pixel_values=None, output_attentions=None, output_hidden_states=None,
             interpolate_pos_encoding=False, return_dict=None, training=None):
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        return finish(self._vision(pixel_values, oa, oh, interpolate_pos_encoding, training), rd)


@_serializable
class CLIPVisionModelWithProjection(_ImageFeatures, CLIPPreTrainedModel):
    """The vision tower plus ``visual_projection`` (a ResNet's attention pool already projects)."""

    part = "vision_with_projection"
    _top = ("vision_model", "visual_projection")

    def __init__(self, config: Any, **kwargs):
        super().__init__(config, **kwargs)
        c, dt = self.config, self.dtype_policy
        self.vision_model = _vision_tower(c, dt)
        if not c.is_resnet:
            self.visual_projection = Dense(c.vision_config.hidden_size, c.projection_dim, use_bias=False,
                                           name="visual_projection", dtype=dt)
        self.built = True

    def call(self, pixel_values=None, output_attentions=None, output_hidden_states=None,
             interpolate_pos_encoding=False, return_dict=None, training=None):
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        out = self._vision(pixel_values, oa, oh, interpolate_pos_encoding, training)
        return finish(CLIPVisionModelOutput(self._image_embeds(out.pooler_output), out.last_hidden_state,
                                            out.hidden_states, out.attentions), rd)


@_serializable
class CLIPForImageClassification(CLIPPreTrainedModel):
    """Mean of the patch tokens (ViT) or of the last feature map (ResNet) -> linear ``classifier``."""

    part = "classification"
    _top = ("vision_model", "classifier")

    def __init__(self, config: Any, num_labels: Optional[int] = None, **kwargs):
        super().__init__(config, **kwargs)
        self._num_labels = int(num_labels or num_labels_of(self.config))
        self.vision_model = self._build_vision()
        self.classifier = Dense(self.config.vision_config.hidden_size, self._num_labels, name="classifier",
                                dtype=self.dtype_policy)
        self.built = True

    def _build_vision(self) -> keras.layers.Layer:
        return _vision_tower(self.config, self.dtype_policy)

    @property
    def num_labels(self) -> int:
        return self._num_labels

    def get_config(self) -> dict:
        return {**super().get_config(), "num_labels": self._num_labels}

    def call(self, pixel_values=None, labels=None, output_attentions=None, output_hidden_states=None,
             interpolate_pos_encoding=False, return_dict=None, training=None):
        oa, oh, rd = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        out = self._vision(pixel_values, oa, oh, interpolate_pos_encoding, training)
        logits = tf.cast(self.classifier(self._features(out.last_hidden_state)), tf.float32)
        return finish(ImageClassifierOutput(_classification_loss(logits, labels), logits, out.hidden_states,
                                            out.attentions), rd)

    def _features(self, h):
        """(B, D) classifier input: mean of the patch tokens (ViT) or of the last feature map (ResNet)."""
        return tf.reduce_mean(h, axis=[2, 3]) if self.config.is_resnet else tf.reduce_mean(h[:, 1:], axis=1)


def _classification_loss(logits, labels):
    """Hugging Face's problem types: regression (1 label), single-label (int labels), multi-label."""
    if labels is None:
        return None
    labels = tf.convert_to_tensor(labels)
    if logits.shape[-1] == 1:
        return tf.reduce_mean(tf.square(tf.squeeze(logits, -1) - tf.cast(tf.reshape(labels, [-1]), tf.float32)))
    if labels.dtype.is_integer:
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.reshape(labels, [-1]), logits))
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(tf.cast(labels, tf.float32), logits))
