"""Rotary position embeddings (RoPE, Su et al. 2021), in core TF ops (no XLA-only ops: TF Serving runs them).

Queries and keys are rotated in 2-D planes by an angle proportional to their
position, so the attention score between two tokens depends on their
distance only. As in GPT-NeoX and Llama, a head's first and second halves
form the planes ("rotate half"); frequencies are `theta ** (-2i / head_dim)`.
No position table: the model has no learned limit, though it is trained on
`block_size` positions.

Example:

>>> import numpy as np
>>> q = np.random.default_rng(0).normal(size=(1, 1, 3, 4)).astype("float32")  # [B, H, T, D]
>>> k = np.random.default_rng(1).normal(size=(1, 1, 3, 4)).astype("float32")
>>> s0 = tf.matmul(rotate(q, tf.range(3)), rotate(k, tf.range(3)), transpose_b=True)
>>> s5 = tf.matmul(rotate(q, tf.range(5, 8)), rotate(k, tf.range(5, 8)), transpose_b=True)
>>> bool(np.allclose(s0, s5, atol=1e-5))  # shifting every position leaves the scores unchanged
True
"""

from __future__ import annotations

import tensorflow as tf


def rotate(x, positions, theta: float = 10000.0) -> tf.Tensor:
    """Rotates `x` [B, H, T, D] by its positions: `positions` [T] or [B, T] (int). Same dtype as `x`."""
    x = tf.convert_to_tensor(x)
    half = x.shape[-1] // 2
    inv_freq = theta ** (-tf.range(half, dtype=tf.float32) * 2.0 / (2 * half))  # [D/2]
    angles = tf.cast(positions, tf.float32)[..., None] * inv_freq  # [T, D/2] or [B, T, D/2]
    if angles.shape.rank == 3:
        angles = angles[:, None]  # [B, 1, T, D/2]: one angle per row and position, shared by heads
    cos, sin = tf.cast(tf.cos(angles), x.dtype), tf.cast(tf.sin(angles), x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return tf.concat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
