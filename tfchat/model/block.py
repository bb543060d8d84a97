"""The pre-LayerNorm transformer block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.

Example:

>>> import numpy as np
>>> block = TransformerBlock(num_heads=2)
>>> block(np.zeros((1, 5, 8), "float32")).shape
TensorShape([1, 5, 8])
"""

from __future__ import annotations

import keras

from tfchat.model.attention import CausalSelfAttention


@keras.saving.register_keras_serializable(package="tfchat")
class MLP(keras.layers.Layer):
    """GPT-2 feed-forward: `c_fc` (4x width), tanh-approximated GELU, `c_proj`."""

    def __init__(self, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dropout = dropout
        self.drop = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        width = input_shape[-1]
        self.c_fc = keras.layers.Dense(4 * width, name="c_fc", dtype=self.dtype_policy)
        self.c_fc.build(input_shape)
        self.c_proj = keras.layers.Dense(width, name="c_proj", dtype=self.dtype_policy)
        self.c_proj.build((*input_shape[:-1], 4 * width))

    def call(self, x, training=None):
        h = keras.activations.gelu(self.c_fc(x), approximate=True)
        return self.drop(self.c_proj(h), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="tfchat")
class TransformerBlock(keras.layers.Layer):
    """Pre-LN GPT-2 block. With `cache=` it returns `(x, new_cache)`."""

    def __init__(self, num_heads: int, dropout: float = 0.0, layer_norm_epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        policy = self.dtype_policy
        self.ln_1 = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="ln_1", dtype=policy)
        self.attn = CausalSelfAttention(num_heads, dropout, name="attn", dtype=policy)
        self.ln_2 = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="ln_2", dtype=policy)
        self.mlp = MLP(dropout, name="mlp", dtype=policy)
        self.resid_drop = keras.layers.Dropout(dropout, dtype=policy)

    def build(self, input_shape):
        for layer in (self.ln_1, self.attn, self.ln_2, self.mlp):
            layer.build(input_shape)

    def call(self, x, padding_mask=None, cache=None, cache_index=None, attention_mask=None, training=None):
        h = self.ln_1(x)
        if cache is None:
            a = self.attn(h, padding_mask=padding_mask, training=training)
        else:
            a, cache = self.attn(h, cache=cache, cache_index=cache_index, attention_mask=attention_mask, training=training)
        x = x + self.resid_drop(a, training=training)
        x = x + self.mlp(self.ln_2(x), training=training)
        return x if cache is None else (x, cache)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
        }
