"""The SavedModel of a reward model: one `reward` signature (also `serving_default`), XLA-free.

* `reward`: roles, contents string [B, M] (one conversation per row; a ""
  role marks padding; the last message of a row is the assistant reply to
  score) -> score float32 [B], num_tokens int32 [B] (ids the model read).

A row is rendered as training renders a preference pair
(`chat_template.render_reply`): the history as an inference prompt, then
the reply and `<|end|>`, whose hidden state the reward head reads. Where
training skips a pair that does not fit, serving cuts instead: the reply
keeps its first `max_len - 9` ids and the history its newest tokens
(`tf_prompt`'s rule). Core TF and TF Text ops only, like every tfchat
signature, so stock TF Serving runs it.

Example:

>>> from tfchat import load_model
>>> export(load_model("runs/reward"), "exports/reward")   # doctest: +SKIP
"""

from __future__ import annotations

import tensorflow as tf

from serving.exporter import ModelModule
from tfchat.checkpoint.model_dir import LoadedModel
from tfchat.text import chat_template

SIGNATURES = ("serving_default", "reward")


class RewardServingModule(ModelModule):
    """The exported reward model: the `reward` signature (a conversation ending in a reply -> its score)."""

    MIN_LEN = chat_template.MIN_MAX_LEN + 2  # the history needs MIN_MAX_LEN ids, the reply one and its <|end|>

    def __init__(self, loaded: LoadedModel, max_len: int | None = None):
        super().__init__(loaded, max_len, name="tfchat_reward")

    def _row_ids(self, args):
        roles, contents = args
        keep = tf.not_equal(roles, "")
        roles, contents = tf.boolean_mask(roles, keep), tf.boolean_mask(contents, keep)
        n = tf.size(roles)
        checks = [
            tf.debugging.assert_greater(n, 0, message="a row has no messages"),
            tf.debugging.assert_equal(tf.concat([roles, [""]], 0)[tf.maximum(n - 1, 0)], "assistant",
                                      message="the last message of a row must be the assistant reply to score"),
        ]
        with tf.control_dependencies(checks):
            reply = self.tokenizer.tf_encode_batch(contents[n - 1:]).flat_values
        reply = reply[: self.max_len - chat_template.MIN_MAX_LEN - 1]
        history = chat_template.tf_prompt(roles[: n - 1], contents[: n - 1], self.tokenizer,
                                          self.max_len - tf.size(reply) - 1)
        return tf.concat([history, reply, [self.tokenizer.special.end]], 0)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.string, name="roles"),
            tf.TensorSpec([None, None], tf.string, name="contents"),
        ]
    )
    def reward(self, roles, contents):
        ids = tf.map_fn(self._row_ids, (roles, contents),
                        fn_output_signature=tf.RaggedTensorSpec([None], tf.int32, ragged_rank=0))
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        score = self.model({"token_ids": ids.to_tensor(self.pad_id), "lengths": lengths}, training=False)
        return {"score": tf.cast(score, tf.float32), "num_tokens": lengths}

    def signatures(self) -> dict:
        fn = self.reward.get_concrete_function()
        return {"serving_default": fn, "reward": fn}
