"""Heads: what turns the backbone's hidden states into an answer.

* `CausalLM`: the language model, logits over the vocabulary at every
  position, through the token embedding transposed (GPT-2's tied head). It
  also runs the KV-cached incremental path generation uses.

Reward and classifier heads join here, each a small layer on the same
backbone (see `DESIGN.md`).

Example:

>>> import numpy as np
>>> from tfchat.config import GPTConfig
>>> from tfchat.model.backbone import GPTBackbone
>>> lm = CausalLM(GPTBackbone(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)))
>>> lm(np.array([[1, 2, 3]], "int32")).shape
TensorShape([1, 3, 50])
"""

from __future__ import annotations

import keras

from tfchat.model.backbone import GPTBackbone


@keras.saving.register_keras_serializable(package="tfchat")
class CausalLM(keras.Model):
    """int32 token ids [B, T] -> float32 next-token logits [B, T, vocab_size].

    `lm.backbone` is the shared `GPTBackbone`; `lm.config` its config.
    """

    def __init__(self, backbone: GPTBackbone, name: str = "gpt", **kwargs):
        token_ids = backbone.input
        logits = backbone.embeddings(backbone(token_ids), reverse=True)  # tied head, float32 [B, T, V]
        super().__init__(inputs=token_ids, outputs=logits, name=name, **kwargs)
        self.backbone = backbone

    @property
    def config(self):
        return self.backbone.config

    def init_cache(self, batch_size, max_len):
        return self.backbone.init_cache(batch_size, max_len)

    def call_with_cache(self, token_ids, positions, caches, cache_index, key_mask):
        """`GPTBackbone.call_with_cache`, returning float32 logits [B, T, V] instead of hidden states."""
        hidden, caches = self.backbone.call_with_cache(token_ids, positions, caches, cache_index, key_mask)
        return self.backbone.embeddings(hidden, reverse=True), caches

    def get_config(self):
        return {"backbone": keras.saving.serialize_keras_object(self.backbone), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["backbone"]), name=config.get("name", "gpt"))
