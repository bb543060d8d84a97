"""Heads: what turns the backbone's hidden states into an answer.

* `CausalLM`: the language model, float32 logits over the vocabulary at
  every position, through the token table transposed (GPT-2's tied head) or
  a separate `lm_head` matrix (`GPTConfig.tie_embeddings=False`), optionally
  soft-capped (`GPTConfig.logit_softcap`). It also runs the KV-cached
  incremental path generation uses.

* `RewardModel`: a scalar per sequence, a linear map (`RewardHead`) of the
  hidden state at each sequence's last real token (the reply's `<|end|>` in
  a rendered preference pair), as InstructGPT's reward model reads the
  final token. Same backbone, so it starts from a chat model's weights.

Every head is a Keras model with `get_config`; the model directory records
which one it holds (`tfchat.json` "head", see `tfchat.model.gpt.HEADS`).

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
import tensorflow as tf

from tfchat.model.backbone import GPTBackbone
from tfchat.model.matvec import project


@keras.saving.register_keras_serializable(package="tfchat")
class SoftCap(keras.layers.Layer):
    """float32 `cap * tanh(logits / cap)`; with cap 0 only the cast to float32."""

    def __init__(self, cap: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.cap = float(cap)

    def call(self, logits):
        logits = tf.cast(logits, tf.float32)
        return self.cap * tf.tanh(logits / self.cap) if self.cap > 0 else logits

    def compute_output_spec(self, logits):
        return keras.KerasTensor(logits.shape, dtype="float32")

    def get_config(self):
        return {**super().get_config(), "cap": self.cap}


@keras.saving.register_keras_serializable(package="tfchat")
class CausalLM(keras.Model):
    """int32 token ids [B, T] -> float32 next-token logits [B, T, vocab_size].

    `lm.backbone` is the shared `GPTBackbone`; `lm.config` its config.
    """

    def __init__(self, backbone: GPTBackbone, name: str = "gpt", **kwargs):
        config, policy = backbone.config, backbone.embeddings.dtype_policy
        lm_head = None
        if not config.tie_embeddings:
            lm_head = keras.layers.Dense(config.vocab_size, use_bias=False, name="lm_head", dtype=policy,
                                         kernel_initializer=keras.initializers.RandomNormal(stddev=0.02))
        softcap = SoftCap(config.logit_softcap, name="softcap")
        token_ids = backbone.input
        hidden = backbone(token_ids)  # [B, T, C]
        logits = softcap(lm_head(hidden) if lm_head else backbone.embeddings(hidden, reverse=True))  # [B, T, V]
        super().__init__(inputs=token_ids, outputs=logits, name=name, **kwargs)
        self.backbone, self.lm_head, self.softcap = backbone, lm_head, softcap

    @property
    def config(self):
        return self.backbone.config

    def logits(self, hidden) -> tf.Tensor:
        """float32 logits [B, T, V] of hidden states [B, T, C]."""
        if self.lm_head is None:
            return self.softcap(self.backbone.embeddings(hidden, reverse=True))
        return self.softcap(project(self.lm_head, hidden))

    def init_cache(self, batch_size, max_len):
        return self.backbone.init_cache(batch_size, max_len)

    def call_with_cache(self, token_ids, positions, caches, cache_index, key_mask, last_only: bool = False):
        """`GPTBackbone.call_with_cache`, returning float32 logits [B, T, V] instead of hidden states
        ([B, 1, V] of the last position with `last_only`: a prefill skips the head's work on the others)."""
        hidden, caches = self.backbone.call_with_cache(token_ids, positions, caches, cache_index, key_mask)
        return self.logits(hidden[:, -1:] if last_only else hidden), caches

    def get_config(self):
        return {"backbone": keras.saving.serialize_keras_object(self.backbone), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["backbone"]), name=config.get("name", "gpt"))


@keras.saving.register_keras_serializable(package="tfchat")
class RewardHead(keras.layers.Layer):
    """(hidden [B, T, C], lengths int32 [B]) -> float32 [B]: `hidden[b, lengths[b] - 1] . kernel`.

    No bias: a pairwise loss only sees reward differences. Computes in float32
    whatever the backbone's precision.
    """

    def __init__(self, stddev: float = 0.02, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.stddev = float(stddev)

    def build(self, hidden_shape, lengths_shape=None):
        self.kernel = self.add_weight(
            name="kernel", shape=(hidden_shape[-1],), initializer=keras.initializers.RandomNormal(stddev=self.stddev)
        )

    def call(self, hidden, lengths):
        last = tf.gather(hidden, tf.maximum(tf.cast(lengths, tf.int32) - 1, 0), batch_dims=1)  # [B, C]
        return tf.linalg.matvec(tf.cast(last, tf.float32), self.kernel)  # [B]

    def compute_output_spec(self, hidden, lengths):
        return keras.KerasTensor(hidden.shape[:1], dtype="float32")

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev}


@keras.saving.register_keras_serializable(package="tfchat")
class RewardModel(keras.Model):
    """{"token_ids": int32 [B, T], "lengths": int32 [B]} -> float32 rewards [B].

    The reward of each sequence is read at its last real id, `lengths - 1`
    (right padding after it changes nothing: the backbone is causal).

    >>> import numpy as np
    >>> from tfchat.config import GPTConfig
    >>> rm = RewardModel(GPTBackbone(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)))
    >>> rm({"token_ids": np.array([[1, 2, 3], [4, 5, 0]], "int32"), "lengths": np.array([3, 2], "int32")}).shape
    TensorShape([2])
    """

    def __init__(self, backbone: GPTBackbone, name: str = "reward_model", **kwargs):
        token_ids = backbone.input
        lengths = keras.Input(shape=(), dtype="int32", name="lengths")
        head = RewardHead(name="reward_head")
        reward = head(backbone(token_ids), lengths)
        super().__init__(inputs={"token_ids": token_ids, "lengths": lengths}, outputs=reward, name=name, **kwargs)
        self.backbone, self.head = backbone, head

    @property
    def config(self):
        return self.backbone.config

    def get_config(self):
        return {"backbone": keras.saving.serialize_keras_object(self.backbone), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["backbone"]), name=config.get("name", "reward_model"))
