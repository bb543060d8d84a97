"""The GPT: a Keras functional model built from tfchat's layers, plus its cached forward pass.

Architecture (GPT-2): token + learned position embeddings, `n_layer`
pre-LayerNorm blocks, final LayerNorm `ln_f`, LM head tied to the token
embedding. int32 ids `[B, T]` in, float32 logits `[B, T, vocab]` out.

Example:

>>> import numpy as np
>>> from tfchat.config import GPTConfig
>>> model = build_gpt(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16))
>>> model(np.array([[1, 2, 3]], "int32")).shape
TensorShape([1, 3, 50])
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfchat.attention import cached_attention_mask
from tfchat.block import TransformerBlock
from tfchat.config import GPTConfig
from tfchat.embedding import Embeddings


def build_gpt(config: GPTConfig, dtype: str | None = None) -> keras.Model:
    """Builds the GPT for `config`.

    Args:
        config: the model shape.
        dtype: a Keras dtype policy name ("float32", "mixed_bfloat16",
            "mixed_float16"); default: the global policy.
    """
    policy = keras.dtype_policies.get(dtype) if dtype else keras.config.dtype_policy()
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    embeddings = Embeddings(
        config.vocab_size, config.block_size, config.n_embd, config.dropout, name="embeddings", dtype=policy
    )
    x = embeddings(token_ids)
    for i in range(config.n_layer):
        x = TransformerBlock(
            config.n_head, config.dropout, config.layer_norm_epsilon, name=f"block_{i}", dtype=policy
        )(x)
    x = keras.layers.LayerNormalization(epsilon=config.layer_norm_epsilon, name="ln_f", dtype=policy)(x)
    logits = embeddings(x, reverse=True)
    return keras.Model(token_ids, logits, name="gpt")


def blocks(model: keras.Model) -> list[TransformerBlock]:
    return [layer for layer in model.layers if isinstance(layer, TransformerBlock)]


def init_cache(model: keras.Model, batch_size, max_len) -> list[tf.Tensor]:
    """Zero KV caches, one `[max_len, B, 2, n_head, head_dim]` tensor per block."""
    caches = []
    for block in blocks(model):
        attn = block.attn
        shape = [max_len, batch_size, 2, attn.num_heads, attn.head_dim]
        caches.append(tf.zeros(shape, attn.compute_dtype))
    return caches


def call_with_cache(model: keras.Model, token_ids, positions, caches, cache_index, key_mask):
    """Runs `token_ids` [B, T] through the model, reading and extending the caches.

    Args:
        token_ids: int32 [B, T], the new tokens, written at cache positions
            `cache_index .. cache_index+T-1`.
        positions: int32 [B, T] position ids (they differ from cache positions
            when prompts are left-padded).
        caches: from `init_cache` or a previous call.
        cache_index: scalar int32.
        key_mask: bool [B, max_len], false on padding positions.

    Returns:
        (float32 logits [B, T, vocab], new caches).
    """
    embeddings = model.get_layer("embeddings")
    x = embeddings(token_ids, positions=positions)
    mask = cached_attention_mask(key_mask, cache_index, tf.shape(token_ids)[1])
    new_caches = []
    for block, cache in zip(blocks(model), caches):
        x, cache = block(x, cache=cache, cache_index=cache_index, attention_mask=mask)
        new_caches.append(cache)
    x = model.get_layer("ln_f")(x)
    return embeddings(x, reverse=True), new_caches


def count_params(model: keras.Model, exclude_embeddings: bool = False) -> int:
    """Parameter count; with `exclude_embeddings`, position embeddings are left out (nanoGPT's convention)."""
    n = sum(int(tf.size(w)) for w in model.weights)
    if exclude_embeddings:
        n -= int(tf.size(model.get_layer("embeddings").position_embedding))
    return n
