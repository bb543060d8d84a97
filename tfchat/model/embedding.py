"""Token + position embedding whose token table doubles as the tied LM head.

Example:

>>> import numpy as np
>>> emb = Embeddings(vocab_size=10, max_positions=4, width=8)
>>> x = emb(np.array([[1, 2, 3]]))
>>> emb(x, reverse=True).shape  # logits over the vocabulary
TensorShape([1, 3, 10])
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tfchat")
class Embeddings(keras.layers.Layer):
    """`wte` (token) and `wpe` (position) tables, GPT-2 style.

    `call(token_ids, positions=None)` embeds; positions default to 0..T-1.
    `call(hidden, reverse=True)` multiplies by the token table transposed
    (the tied LM head) and returns float32 logits.
    """

    def __init__(self, vocab_size: int, max_positions: int, width: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.max_positions = max_positions
        self.width = width
        self.dropout = dropout
        self.drop = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape=None):
        init = keras.initializers.RandomNormal(stddev=0.02)
        self.token_embedding = self.add_weight(
            name="token_embedding", shape=(self.vocab_size, self.width), initializer=init
        )
        self.position_embedding = self.add_weight(
            name="position_embedding", shape=(self.max_positions, self.width),
            initializer=keras.initializers.RandomNormal(stddev=0.01),
        )

    def call(self, inputs, positions=None, reverse=False, training=None):
        if reverse:
            table = tf.cast(self.token_embedding, self.compute_dtype)
            logits = tf.matmul(inputs, table, transpose_b=True)
            return tf.cast(logits, "float32")
        if positions is None:
            positions = tf.range(tf.shape(inputs)[-1])[None]
        x = tf.gather(self.token_embedding, inputs) + tf.gather(self.position_embedding, positions)
        return self.drop(tf.cast(x, self.compute_dtype), training=training)

    def compute_output_shape(self, input_shape, reverse=False):
        if reverse:
            return (*input_shape[:-1], self.vocab_size)
        return (*input_shape, self.width)

    def compute_output_spec(self, inputs, positions=None, reverse=False, training=None):
        if reverse:
            return keras.KerasTensor((*inputs.shape[:-1], self.vocab_size), dtype="float32")
        return keras.KerasTensor((*inputs.shape, self.width), dtype=self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "max_positions": self.max_positions,
            "width": self.width,
            "dropout": self.dropout,
        }
