"""The GPT backbone: token ids -> final hidden states, with a KV-cached incremental path.

Architecture (GPT-2 by default): token embeddings (+ learned positions, or
rotary positions inside attention), `n_layer` pre-norm blocks, a final norm
`ln_f`. Every choice is a `GPTConfig` field (norm, biases, QK-norm, MLP
activation, positions); the backbone keeps its config as `backbone.config`.
Heads (`tfchat.model.heads`) turn the hidden states into logits, a reward or
class scores; the backbone knows nothing of them.

Example:

>>> import numpy as np
>>> from tfchat.config import GPTConfig
>>> backbone = GPTBackbone(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16))
>>> backbone(np.array([[1, 2, 3]], "int32")).shape
TensorShape([1, 3, 16])
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfchat.config import GPTConfig
from tfchat.model.attention import cached_attention_mask, slot_attention_mask
from tfchat.model.block import TransformerBlock
from tfchat.model.embedding import Embeddings
from tfchat.model.norm import make_norm


def dtype_policy(dtype: str | None):
    """A Keras dtype policy by name ("float32", "mixed_bfloat16", ...); default: the global policy."""
    return keras.dtype_policies.get(dtype) if dtype else keras.config.dtype_policy()


@keras.saving.register_keras_serializable(package="tfchat")
class GPTBackbone(keras.Model):
    """int32 token ids [B, T] -> hidden states [B, T, n_embd] in the compute dtype.

    Args:
        config: the model shape.
        dtype: a Keras dtype policy name; default: the global policy.
    """

    def __init__(self, config: GPTConfig, dtype: str | None = None, name: str = "backbone", **kwargs):
        policy = dtype_policy(dtype)
        embeddings = Embeddings(config, name="embeddings", dtype=policy)
        blocks = [TransformerBlock(config, name=f"block_{i}", dtype=policy) for i in range(config.n_layer)]
        final_norm = make_norm(config, "ln_f", policy)

        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        x = embeddings(token_ids)  # [B, T, C]
        for block in blocks:
            x = block(x)  # [B, T, C]
        x = final_norm(x)
        super().__init__(inputs=token_ids, outputs=x, name=name, **kwargs)
        self.config = config
        self.embeddings, self.blocks, self.final_norm = embeddings, blocks, final_norm

    def init_cache(self, batch_size, max_len) -> list[tf.Tensor]:
        """Zero KV caches, one `[max_len, B, 2, n_head, head_dim]` tensor per block."""
        c = self.config
        dtype = self.blocks[0].attn.compute_dtype
        return [tf.zeros([max_len, batch_size, 2, c.n_head, c.head_dim], dtype) for _ in self.blocks]

    def call_with_cache(self, token_ids, positions, caches, cache_index, key_mask):
        """Runs `token_ids` [B, T] through the blocks, reading and extending the caches.

        With slot caches (`tfchat.inference.slots`: one (keys, values) pair of
        `[B, n_head, S, head_dim]` per block), T is 1, `cache_index` is int32 [B]
        (each row's own write position) and `key_mask` is ignored.

        Args:
            token_ids: int32 [B, T], the new tokens, written at cache positions
                `cache_index .. cache_index+T-1`.
            positions: int32 [B, T] position ids (they differ from cache
                positions when prompts are left-padded).
            caches: from `init_cache` or a previous call.
            cache_index: scalar int32.
            key_mask: bool [B, max_len], false on padding positions.

        Returns:
            (hidden states [B, T, C], new caches).
        """
        x = self.embeddings(token_ids, positions=positions)
        if isinstance(caches[0], tuple):  # slots: key_mask unused, a row sees its cache up to its own index
            mask = slot_attention_mask(cache_index, tf.shape(caches[0][0])[2])  # [B, 1, 1, S]
        else:
            mask = cached_attention_mask(key_mask, cache_index, tf.shape(token_ids)[1])  # [B, 1, T, n]
        new_caches = []
        for block, cache in zip(self.blocks, caches):
            x, cache = block(x, cache=cache, cache_index=cache_index, attention_mask=mask, positions=positions)
            new_caches.append(cache)
        return self.final_norm(x), new_caches

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(GPTConfig.from_dict(config["config"]), name=config.get("name", "backbone"))
