"""Minimal Keras 3 building blocks with Hugging Face TF weight names and exact CLIP numerics.

Every variable is created in ``__init__`` (shapes come from the config), stored under the attribute
whose name is its leaf in Hugging Face TF (``kernel``, ``bias``, ``gamma``, ``beta``, ``weight``,
``embeddings``, ``moving_mean`` ...), so :func:`named_variables` can build the ``{tf path: variable}``
index that :mod:`clip_core.schema` expects by walking attributes. Layer norms and softmax compute in
float32 whatever the dtype policy.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional

import keras
import tensorflow as tf

__all__ = ["Dense", "linear", "matmul", "float32_products", "LayerNorm", "Embedding", "Conv2D", "BatchNorm",
           "activation", "named_variables", "param", "policy_dtype", "reshape", "shape_list", "weights_to_come"]


def shape_list(x) -> list:
    """The shape of ``x`` with static dimensions as ints and unknown ones as scalar tensors."""
    dynamic = tf.shape(x)
    return [dynamic[i] if d is None else d for i, d in enumerate(x.shape.as_list())]


def reshape(x, dims: list):
    """``tf.reshape(x, dims)`` with a constant target shape where one suffices: a single unknown dimension
    (a tensor from :func:`shape_list`) becomes -1. LiteRT's XNNPACK delegate runs only reshapes of constant
    shape; computed ones split an exported graph into many delegated pieces with interpreter ops between."""
    unknown = [i for i, d in enumerate(dims) if not isinstance(d, int)]
    if len(unknown) == 1:
        dims = [-1 if i == unknown[0] else d for i, d in enumerate(dims)]
    return tf.reshape(x, dims)


def split_heads(x, b, t, heads: int, head_dim: int):  # (B, T, H*hd) -> (B, H, T, hd)
    """Attention heads of ``x`` as their own axis; ``b`` / ``t`` may be tensors (see :func:`reshape`)."""
    return tf.transpose(reshape(x, [b, t, heads, head_dim]), [0, 2, 1, 3])


def policy_dtype(dtype) -> Optional[keras.DTypePolicy]:
    """A Keras dtype policy (or None for the global one) from a name, a policy or a config dict."""
    if dtype is None or isinstance(dtype, keras.DTypePolicy):
        return dtype
    if isinstance(dtype, dict):
        return keras.dtype_policies.deserialize(dtype)
    return keras.DTypePolicy(str(dtype))


_WEIGHTS_TO_COME = contextvars.ContextVar("clip_tf_weights_to_come", default=False)


@contextlib.contextmanager
def weights_to_come() -> Iterator[None]:
    """Models built inside start every variable at zero instead of drawing its initializer: for a caller that
    assigns every variable next (``from_pretrained``'s strict ``load_canonical``). ViT-B/32's 398 random
    draws cost ~1.7 s of a ~2.7 s construction on the 2-core EPYC."""
    token = _WEIGHTS_TO_COME.set(True)
    try:
        yield
    finally:
        _WEIGHTS_TO_COME.reset(token)


def param(layer: keras.layers.Layer, name: str, shape: tuple, init: str = "zeros", trainable: bool = True,
          autocast: bool = True, aggregation: str = "none", dtype=None) -> keras.Variable:
    """Create a variable on ``layer`` and store it under attribute ``name`` (``dtype``: the layer policy's
    variable dtype unless given; zeros under :func:`weights_to_come`)."""
    init = "zeros" if _WEIGHTS_TO_COME.get() else init
    var = layer.add_weight(shape=tuple(shape), initializer=init, name=name, trainable=trainable,
                           autocast=autocast, aggregation=aggregation, dtype=dtype)
    setattr(layer, name, var)
    return var


class _Leaf(keras.layers.Layer):
    """A layer whose variables exist from construction on."""

    def __init__(self, name: str, dtype=None):
        super().__init__(name=name, dtype=policy_dtype(dtype))

    def _done(self) -> None:
        self.built = True


class Dense(_Leaf):
    """``x @ kernel (+ bias)``; kernel is ``(in, out)`` (HF TF layout)."""

    def __init__(self, n_in: int, n_out: int, use_bias: bool = True, name: str = "dense", dtype=None):
        super().__init__(name, dtype)
        param(self, "kernel", (n_in, n_out), "glorot_uniform")
        self.use_bias = use_bias
        if use_bias:
            param(self, "bias", (n_out,))
        self._done()

    def call(self, x):
        return linear(x, self.kernel, self.bias if self.use_bias else None)


_F32_PRODUCTS = contextvars.ContextVar("clip_tf_float32_products", default=False)


@contextlib.contextmanager
def float32_products() -> Iterator[None]:
    """While a function is traced for XLA: bfloat16 products accumulate in and return float32 (then cast
    back), as oneDNN's bfloat16 kernels of a plain graph do. XLA:CPU's bfloat16-out dot runs ~3x slower
    than the same dot asked for a float32 result (``BatchMatMulV3``'s ``Tout``, which only XLA implements
    for bfloat16 inputs, so only XLA-compiled traces may use it)."""
    token = _F32_PRODUCTS.set(True)
    try:
        yield
    finally:
        _F32_PRODUCTS.reset(token)


def matmul(a, b, transpose_b: bool = False):
    """``a @ b`` (batched over leading axes) in ``a``'s dtype; see :func:`float32_products`."""
    if a.dtype == tf.bfloat16 and _F32_PRODUCTS.get():
        return tf.cast(tf.raw_ops.BatchMatMulV3(x=a, y=b, Tout=tf.float32, adj_y=transpose_b), a.dtype)
    return tf.matmul(a, b, transpose_b=transpose_b)


def linear(x, kernel, bias=None):
    """``x @ kernel (+ bias)`` in ``x``'s dtype; kernel ``(in, out)`` (a Dense's, or a slice of a packed one)."""
    kernel = tf.cast(kernel, x.dtype)
    if x.shape.rank == 2:
        y = matmul(x, kernel)
    else:  # (..., I) -> (N, I) @ (I, O) -> (..., O): one plain GEMM
        y = reshape(matmul(tf.reshape(x, [-1, kernel.shape[0]]), kernel), shape_list(x)[:-1] + [kernel.shape[1]])
    return y if bias is None else y + tf.cast(bias, y.dtype)


class LayerNorm(_Leaf):
    """Layer norm over the last axis with an explicit ``eps``, always computed in float32."""

    def __init__(self, dim: int, eps: float, name: str = "layer_norm", dtype=None):
        super().__init__(name, dtype)
        self.eps = float(eps)
        param(self, "gamma", (dim,), "ones", autocast=False)
        param(self, "beta", (dim,), "zeros", autocast=False)
        self._done()

    def call(self, x):
        in_dtype = x.dtype
        x = tf.cast(x, tf.float32)
        mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
        gamma, beta = (tf.cast(v, tf.float32) for v in (self.gamma, self.beta))  # bf16/fp16 policies
        y = (x - mean) * tf.math.rsqrt(var + self.eps) * gamma + beta
        return tf.cast(y, in_dtype)


class Embedding(_Leaf):
    """A lookup table stored under attribute ``leaf`` (HF TF: ``weight`` or ``embeddings``)."""

    def __init__(self, num: int, dim: int, leaf: str = "embeddings", name: str = "embedding", dtype=None):
        super().__init__(name, dtype)
        self.leaf = leaf
        param(self, leaf, (num, dim), keras.initializers.RandomNormal(stddev=0.02))
        self._done()

    @property
    def table(self) -> keras.Variable:
        return getattr(self, self.leaf)

    def call(self, ids):
        return tf.gather(tf.cast(self.table, self.compute_dtype), ids)


class Conv2D(_Leaf):
    """NHWC convolution without bias, kernel ``HWIO``, explicit symmetric zero padding."""

    def __init__(self, n_in: int, n_out: int, size: int, stride: int = 1, padding: int = 0,
                 name: str = "conv", dtype=None):
        super().__init__(name, dtype)
        self.stride, self.padding = stride, padding
        param(self, "kernel", (size, size, n_in, n_out), "he_normal")
        self._done()

    def call(self, x, kernel=None):  # (B, H, W, C); ``kernel`` replaces the layer's own (BN folding)
        if self.padding:
            p = self.padding
            x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        return tf.nn.conv2d(x, tf.cast(self.kernel if kernel is None else kernel, x.dtype), self.stride, "VALID")


class BatchNorm(_Leaf):
    """Batch norm over the channel axis (NHWC): running statistics unless ``training=True``."""

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1, name: str = "bn", dtype=None):
        super().__init__(name, dtype)
        self.eps, self.momentum = float(eps), float(momentum)
        param(self, "gamma", (dim,), "ones", autocast=False)
        param(self, "beta", (dim,), "zeros", autocast=False)
        param(self, "moving_mean", (dim,), "zeros", trainable=False, autocast=False, aggregation="mean")
        param(self, "moving_variance", (dim,), "ones", trainable=False, autocast=False, aggregation="mean")
        self._done()

    def call(self, x, training=False):
        in_dtype = x.dtype
        x = tf.cast(x, tf.float32)
        if training:
            mean, var = tf.nn.moments(x, axes=[0, 1, 2])
            n = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
            unbiased = var * n / tf.maximum(n - 1.0, 1.0)  # PyTorch keeps the unbiased running var
            self.moving_mean.assign(self.moving_mean * (1 - self.momentum) + mean * self.momentum)
            self.moving_variance.assign(self.moving_variance * (1 - self.momentum) + unbiased * self.momentum)
        else:
            mean, var = (tf.cast(v, tf.float32) for v in (self.moving_mean, self.moving_variance))
        scale, shift = self.scale_shift(mean, var)
        return tf.cast(x * scale + shift, in_dtype)

    def scale_shift(self, mean=None, var=None):
        """``(scale, shift)`` (C,) fp32 with ``bn(x) = x * scale + shift`` (running statistics by default)."""
        if mean is None:
            mean, var = (tf.cast(v, tf.float32) for v in (self.moving_mean, self.moving_variance))
        gamma, beta = (tf.cast(v, tf.float32) for v in (self.gamma, self.beta))  # bf16/fp16 policies
        scale = gamma * tf.math.rsqrt(var + self.eps)
        return scale, beta - mean * scale


def conv_bn(conv: Conv2D, bn: BatchNorm, x, training: bool = False, relu: bool = True, add=None):
    """``relu(bn(conv(x)) [+ add])``. In inference BatchNorm is folded into the kernel and a bias, so
    grappler fuses Conv2D + BiasAdd (+ Add) + Relu into one oneDNN convolution (~1e-7 rounding)."""
    if training or x.dtype != tf.float32:
        y = bn(conv(x), training=training)
    else:
        scale, shift = bn.scale_shift()
        y = tf.nn.bias_add(conv(x, kernel=tf.cast(conv.kernel, tf.float32) * scale), shift)  # HWIO * (O,)
    y = y if add is None else y + add
    return tf.nn.relu(y) if relu or add is not None else y


def activation(name: str):
    """The activation function a config names (``quick_gelu``, exact ``gelu``, tanh gelus, ``relu``)."""
    if name == "quick_gelu":
        return lambda x: x * tf.sigmoid(tf.constant(1.702, x.dtype) * x)
    if name == "gelu":
        return lambda x: tf.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: tf.nn.gelu(x, approximate=True)
    if name == "relu":
        return tf.nn.relu
    raise ValueError(f"unsupported activation {name!r}")


def named_variables(obj, prefix: str = "") -> Iterator[tuple[str, keras.Variable]]:
    """Yield ``(HF TF path, variable)`` by walking public attributes; lists get ``name_._i``."""
    for attr, value in sorted(vars(obj).items()):
        if attr.startswith("_"):
            continue
        path = f"{prefix}{attr}"
        if isinstance(value, keras.Variable):
            yield path, value
        elif isinstance(value, keras.layers.Layer):
            yield from named_variables(value, path + "/")
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, keras.layers.Layer) for v in value):
            for i, child in enumerate(value):
                yield from named_variables(child, f"{path}_._{i}/")
