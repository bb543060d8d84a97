"""Normalisation layers: GPT-2's LayerNorm or RMSNorm, picked by `GPTConfig.norm`.

RMSNorm (Zhang & Sennrich 2019) divides by the root mean square of the
features and multiplies by a learned scale: no mean subtraction and no bias,
one reduction instead of two. Statistics are computed in float32 whatever the
compute dtype.

Example:

>>> import numpy as np
>>> out = RMSNorm()(np.array([[3.0, 4.0]], "float32"))
>>> np.round(out.numpy().astype("float64"), 3).tolist()  # rms of (3, 4) is sqrt(12.5)
[[0.849, 1.131]]
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfchat.config import GPTConfig


@keras.saving.register_keras_serializable(package="tfchat")
class RMSNorm(keras.layers.Layer):
    """`x / rms(x) * scale` over the last axis."""

    def __init__(self, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return tf.cast(rms_normalize(x, self.epsilon), self.compute_dtype) * tf.cast(self.scale, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def rms_normalize(x, epsilon: float = 1e-5) -> tf.Tensor:
    """`x / rms(x)` over the last axis, computed in float32, returned in float32 (no learned scale)."""
    x = tf.cast(x, tf.float32)
    return x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), axis=-1, keepdims=True) + epsilon)


def make_norm(config: GPTConfig, name: str, dtype=None) -> keras.layers.Layer:
    """The norm `config` asks for; LayerNorm keeps GPT-2's weight names (gamma, beta)."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.layer_norm_epsilon, name=name, dtype=dtype)
    return keras.layers.LayerNormalization(epsilon=config.layer_norm_epsilon, center=config.bias, name=name, dtype=dtype)
