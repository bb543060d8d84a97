"""Token (+ learned position) embedding whose token table doubles as the tied LM head.

Example:

>>> import numpy as np
>>> from tfchat.config import GPTConfig
>>> emb = Embeddings(GPTConfig(vocab_size=10, block_size=4, n_embd=8, n_head=2))
>>> x = emb(np.array([[1, 2, 3]]))
>>> emb(x, reverse=True).shape  # logits over the vocabulary
TensorShape([1, 3, 10])
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfchat.config import GPTConfig
from tfchat.model.configured import configured


@keras.saving.register_keras_serializable(package="tfchat")
@configured
class Embeddings(keras.layers.Layer):
    """`token_embedding` (wte) and, with learned positions, `position_embedding` (wpe), GPT-2 style.

    `call(token_ids, positions=None)` embeds; positions default to 0..T-1
    (rotary models have no position table: attention rotates q and k).
    `call(hidden, reverse=True)` multiplies by the token table transposed
    (the tied LM head) and returns float32 logits.
    """

    def __init__(self, config: GPTConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.vocab_size, self.width = config.vocab_size, config.n_embd
        self.drop = keras.layers.Dropout(config.dropout, dtype=self.dtype_policy)

    def build(self, input_shape=None):
        self.token_embedding = self.add_weight(
            name="token_embedding", shape=(self.vocab_size, self.width),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )
        if self.config.position == "learned":
            self.position_embedding = self.add_weight(
                name="position_embedding", shape=(self.config.block_size, self.width),
                initializer=keras.initializers.RandomNormal(stddev=0.01),
            )

    def call(self, inputs, positions=None, reverse=False, training=None):
        if reverse:
            table = tf.cast(self.token_embedding, self.compute_dtype)  # [V, C]
            # A 2-D MatMul, not a batched one: oneDNN's BatchMatMul takes 1.8x as long for one decode row.
            flat = tf.reshape(inputs, [-1, self.width])  # [B*T, C]
            logits = tf.matmul(flat, table, transpose_b=True)  # [B*T, V]
            logits = tf.reshape(logits, tf.concat([tf.shape(inputs)[:-1], [self.vocab_size]], 0))
            logits.set_shape(inputs.shape[:-1].concatenate([self.vocab_size]))  # [B, T, V]
            return tf.cast(logits, "float32")
        x = tf.gather(self.token_embedding, inputs)  # [B, T, C]
        if self.config.position == "learned":
            if positions is None:
                positions = tf.range(tf.shape(inputs)[-1])[None]
            x = x + tf.gather(self.position_embedding, positions)
        return self.drop(tf.cast(x, self.compute_dtype), training=training)

    def compute_output_shape(self, input_shape, reverse=False):
        if reverse:
            return (*input_shape[:-1], self.vocab_size)
        return (*input_shape, self.width)

    def compute_output_spec(self, inputs, positions=None, reverse=False, training=None):
        if reverse:
            return keras.KerasTensor((*inputs.shape[:-1], self.vocab_size), dtype="float32")
        return keras.KerasTensor((*inputs.shape, self.width), dtype=self.compute_dtype)
