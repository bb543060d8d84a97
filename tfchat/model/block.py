"""The pre-norm transformer block: `x + attn(norm_1(x))`, then `x + mlp(norm_2(x))`.

Example:

>>> import numpy as np
>>> from tfchat.config import GPTConfig
>>> block = TransformerBlock(GPTConfig(n_embd=8, n_head=2))
>>> block(np.zeros((1, 5, 8), "float32")).shape
TensorShape([1, 5, 8])
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfchat.config import GPTConfig
from tfchat.model.attention import CausalSelfAttention
from tfchat.model.configured import configured
from tfchat.model.matvec import project
from tfchat.model.norm import make_norm


@keras.saving.register_keras_serializable(package="tfchat")
@configured
class MLP(keras.layers.Layer):
    """Feed-forward: `c_fc`, activation, `c_proj`.

    gelu: tanh-approximated GELU (GPT-2). relu2: ReLU squared (Primer, used by
    modded-nanogpt and nanochat). swiglu: `c_fc` computes gate and value in
    one matmul, `silu(gate) * value` (Shazeer 2020).
    """

    def __init__(self, config: GPTConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        width = config.mlp_width * (2 if config.mlp == "swiglu" else 1)
        self.c_fc = keras.layers.Dense(width, use_bias=config.bias, name="c_fc", dtype=self.dtype_policy)
        self.c_proj = keras.layers.Dense(config.n_embd, use_bias=config.bias, name="c_proj", dtype=self.dtype_policy)
        self.drop = keras.layers.Dropout(config.dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.c_fc.build(input_shape)
        self.c_proj.build((*input_shape[:-1], self.config.mlp_width))

    def call(self, x, training=None):
        h = project(self.c_fc, x)  # [B, T, hidden] (x2 for swiglu)
        if self.config.mlp == "gelu":
            h = keras.activations.gelu(h, approximate=True)
        elif self.config.mlp == "relu2":
            h = tf.square(tf.nn.relu(h))
        else:
            gate, value = tf.split(h, 2, axis=-1)
            h = tf.nn.silu(gate) * value
        return self.drop(project(self.c_proj, h), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="tfchat")
@configured
class TransformerBlock(keras.layers.Layer):
    """Pre-norm block. With `cache=` it returns `(x, new_cache)`."""

    def __init__(self, config: GPTConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        policy = self.dtype_policy
        self.ln_1 = make_norm(config, "ln_1", policy)
        self.attn = CausalSelfAttention(config, name="attn", dtype=policy)
        self.ln_2 = make_norm(config, "ln_2", policy)
        self.mlp = MLP(config, name="mlp", dtype=policy)
        self.resid_drop = keras.layers.Dropout(config.dropout, dtype=policy)

    def build(self, input_shape):
        for layer in (self.ln_1, self.attn, self.ln_2, self.mlp):
            layer.build(input_shape)

    def call(self, x, padding_mask=None, cache=None, cache_index=None, attention_mask=None, positions=None,
             training=None):
        h = self.ln_1(x)
        if cache is None:
            a = self.attn(h, padding_mask=padding_mask, training=training)
        else:
            a, cache = self.attn(h, cache=cache, cache_index=cache_index, attention_mask=attention_mask,
                                 positions=positions, training=training)
        x = x + self.resid_drop(a, training=training)
        x = x + self.mlp(self.ln_2(x), training=training)
        return x if cache is None else (x, cache)

    def compute_output_shape(self, input_shape):
        return input_shape
