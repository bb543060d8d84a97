"""Causal multi-head self-attention with a preallocated key/value cache.

Two paths through the same weights:

* full sequence (training, scoring): `layer(x)`, causal mask built here, an
  optional `padding_mask` [B, T] hides padded keys;
* cached (generation): `layer(x, cache=c, cache_index=i, attention_mask=m,
  positions=p)` writes the new keys/values of `x` at positions
  `i .. i+T-1` of `c` and attends over the filled prefix `c[:i+T]` only
  (one new token: `step_attention`, without moving the cache);
* slots (the XLA fast path, continuous batching): `cache=(k, v)`, each
  `[B, H, S, D]`, `cache_index` [B]: one new token per row, written at the
  row's own position; attention runs over all S positions, masked (static
  shapes for XLA; no transpose of the cache per step), or, traced for a CPU
  under `native_attention.native_slot_attention()`, through its kernel over
  each row's filled prefix, on all cores.

The cache of one layer is a single time-major tensor `[max_len, B, 2, H, D]`
(keys and values together), so the write is one `tf.tensor_scatter_nd_update`
with `T` row indices: a core op that stock TF Serving runs without XLA, unlike
`keras.ops.slice_update` (it lowers to `XlaDynamicUpdateSlice`).

Options from `GPTConfig`: biases (`bias`), RMS-normalised queries and keys
(`qk_norm`, parameter-free, as nanochat), rotary positions (`position="rope"`:
keys are stored in the cache already rotated, so a cached step rotates only
its new query and key).

Example:

>>> import numpy as np
>>> from tfchat.config import GPTConfig
>>> attn = CausalSelfAttention(GPTConfig(n_embd=8, n_head=2))
>>> attn(np.zeros((1, 5, 8), "float32")).shape
TensorShape([1, 5, 8])
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfchat.config import GPTConfig
from tfchat.model.configured import configured
from tfchat.model.matvec import project
from tfchat.model.native_attention import slot_attention
from tfchat.model.norm import rms_normalize
from tfchat.model.rope import rotate

# The score of masked keys; softmax runs in float32, where -1e9 is safe.
MASK_VALUE = -1e9


@keras.saving.register_keras_serializable(package="tfchat")
@configured
class CausalSelfAttention(keras.layers.Layer):
    """Fused QKV projection (`c_attn`), output projection (`c_proj`).

    Softmax is computed in float32 whatever the compute dtype, so bf16/fp16
    mixed precision keeps attention weights accurate.
    """

    def __init__(self, config: GPTConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.num_heads, self.head_dim = config.n_head, config.head_dim
        self.c_attn = keras.layers.Dense(3 * config.n_embd, use_bias=config.bias, name="c_attn", dtype=self.dtype_policy)
        self.c_proj = keras.layers.Dense(config.n_embd, use_bias=config.bias, name="c_proj", dtype=self.dtype_policy)
        self.attn_dropout = keras.layers.Dropout(config.dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.c_attn.build(input_shape)
        self.c_proj.build(input_shape)

    def _prepare(self, q, k, q_positions, k_positions):
        """QK-norm and RoPE on q, k [B, H, T, D]."""
        c = self.config
        if c.qk_norm:
            q, k = (tf.cast(rms_normalize(t, c.layer_norm_epsilon), t.dtype) for t in (q, k))
        if c.position == "rope":
            q, k = rotate(q, q_positions, c.rope_theta), rotate(k, k_positions, c.rope_theta)
        return q, k

    def call(self, x, padding_mask=None, cache=None, cache_index=None, attention_mask=None, positions=None,
             training=None):
        shape = tf.shape(x)
        batch, length = shape[0], shape[1]
        qkv = tf.reshape(project(self.c_attn, x), [batch, length, 3, self.num_heads, self.head_dim])
        if cache is None:
            q, k, v = tf.unstack(tf.transpose(qkv, [2, 0, 3, 1, 4]))  # 3 x [B, H, T, D]
            steps = tf.range(length)
            q, k = self._prepare(q, k, steps, steps)
            mask = causal_mask(length, padding_mask)
        elif isinstance(cache, tuple):  # slots: one new token per row, each row at its own cache_index [B]
            q, k_new, v_new = (t[:, :, None] for t in tf.unstack(qkv[:, 0], axis=1))  # 3 x [B, H, 1, D]
            q, k_new = self._prepare(q, k_new, positions, positions)
            k, v = (tf.tensor_scatter_nd_update(c, slot_rows(cache_index, self.num_heads), tf.cast(t[:, :, 0], c.dtype))
                    for c, t in zip(cache, (k_new, v_new)))  # 2 x [B, H, S, D]
            cache, mask = (k, v), attention_mask
            y = slot_attention(q, k, v, cache_index)  # [B, H, 1, D] on all cores, under the fast path on a CPU
            if y is not None:
                return project(self.c_proj, tf.reshape(y, [batch, 1, self.num_heads * self.head_dim])), cache
        else:
            q = tf.transpose(qkv[:, :, 0], [0, 2, 1, 3])  # [B, H, T, D]
            if self.config.qk_norm or self.config.position == "rope":
                k_new = tf.transpose(qkv[:, :, 1], [0, 2, 1, 3])  # [B, H, T, D]
                q, k_new = self._prepare(q, k_new, positions, positions)
                new_kv = tf.stack([tf.transpose(k_new, [2, 0, 1, 3]), tf.transpose(qkv[:, :, 2], [1, 0, 2, 3])],
                                  axis=2)  # [T, B, 2, H, D]
            else:  # one transpose: a decode step runs as few ops as it can
                new_kv = tf.transpose(qkv[:, :, 1:], [1, 0, 2, 3, 4])  # [T, B, 2, H, D]
            rows = tf.range(cache_index, cache_index + length)[:, None]
            cache = tf.tensor_scatter_nd_update(cache, rows, tf.cast(new_kv, cache.dtype))
            if x.shape[1] == 1:  # a decode step: products and sums over the cache as it lies
                y = step_attention(q[:, :, 0], cache[: cache_index + 1], attention_mask)  # [B, H, D]
                return project(self.c_proj, tf.reshape(y, [batch, 1, self.num_heads * self.head_dim])), cache
            kv = tf.transpose(cache[: cache_index + length], [2, 1, 3, 0, 4])  # [2, B, H, n, D]
            k, v = kv[0], kv[1]
            mask = attention_mask
        scores = tf.matmul(q, tf.cast(k, q.dtype), transpose_b=True)
        # A select, not an added -inf bias: oneDNN fuses fp32 BatchMatMul + a
        # broadcast [1, 1, T, T] Add into a kernel ~500x slower than both ops.
        scores = tf.where(mask, tf.cast(scores, "float32") * (self.head_dim**-0.5), MASK_VALUE)
        weights = tf.cast(tf.nn.softmax(scores, axis=-1), q.dtype)
        weights = self.attn_dropout(weights, training=training)
        y = tf.matmul(weights, tf.cast(v, q.dtype))  # [B, H, T, D]
        y = tf.reshape(tf.transpose(y, [0, 2, 1, 3]), [batch, length, self.num_heads * self.head_dim])
        y = project(self.c_proj, y)
        return y if cache is None else (y, cache)

    def compute_output_shape(self, input_shape):
        return input_shape


def step_attention(q, kv, mask):
    """One query per row and head, q [B, H, D], over a time-major cache prefix kv [n, B, 2, H, D] -> [B, H, D].

    Broadcast products and sums read the cache where it lies: no transpose of the prefix to [B, H, n, D]
    for two batched matmuls. Without XLA (the SavedModel loop) a batch-1 step of the small preset runs
    1.09x faster early in the context and 1.03x late; 8 rows run 0.97x.
    """
    k, v = kv[:, :, 0], kv[:, :, 1]  # [n, B, H, D]
    scores = tf.reduce_sum(tf.cast(k, q.dtype) * q, -1)  # [n, B, H]
    scores = tf.transpose(scores, [1, 2, 0])[:, :, None]  # [B, H, 1, n]
    scores = tf.where(mask, tf.cast(scores, "float32") * (q.shape[-1] ** -0.5), MASK_VALUE)
    weights = tf.cast(tf.nn.softmax(scores, axis=-1)[:, :, 0], q.dtype)  # [B, H, n]
    return tf.reduce_sum(tf.cast(v, q.dtype) * tf.transpose(weights, [2, 0, 1])[..., None], 0)  # [B, H, D]


def causal_mask(length, padding_mask=None):
    """Bool [1 or B, 1, T, T]: true where a query may attend to a key."""
    allowed = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)[None, None]
    if padding_mask is not None:
        allowed = tf.logical_and(allowed, tf.cast(padding_mask, tf.bool)[:, None, None, :])
    return allowed


def slot_rows(cache_index, num_heads):
    """int32 [B, H, 3] scatter indices (row, head, cache_index[row]) of one new key per row and head."""
    batch = tf.shape(cache_index)[0]
    rows = tf.broadcast_to(tf.range(batch)[:, None], [batch, num_heads])
    heads = tf.broadcast_to(tf.range(num_heads)[None, :], [batch, num_heads])
    return tf.stack([rows, heads, tf.broadcast_to(cache_index[:, None], [batch, num_heads])], axis=-1)


def slot_attention_mask(cache_index, max_len):
    """Bool [B, 1, 1, S]: a slot's query at `cache_index[b]` sees keys 0 .. cache_index[b]."""
    return (tf.range(max_len)[None, :] <= cache_index[:, None])[:, None, None, :]


def cached_attention_mask(key_mask, cache_index, length):
    """Bool [B, 1, T, n] for a cached step over keys `0 .. n-1`, n = cache_index + T.

    Args:
        key_mask: bool/int [B, max_len], true where a cache position holds a
            real token (false on left padding).
        cache_index: position of the first of the T new tokens.
        length: T, the number of new tokens.
    """
    n = cache_index + length
    query_pos = tf.range(cache_index, n)[:, None]
    causal = tf.range(n)[None, :] <= query_pos  # [T, n]
    return tf.logical_and(causal[None, None], tf.cast(key_mask[:, :n], tf.bool)[:, None, None, :])
