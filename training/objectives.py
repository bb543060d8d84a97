"""Training objectives: what a stage optimises, separate from how the trainer runs it.

The trainer (`training.trainer.Trainer`) owns the strategy, gradient
accumulation, precision, clipping, checkpoints, TensorBoard and the progress
bar; an objective only says how to build the model and what to sum over a
micro-batch:

    objective.build_model(config, dtype) -> keras.Model
    objective.sums(model, batch, training) -> {"loss": summed loss, "weight": what it is averaged over,
                                               other metric sums ...}

Every sum is all-reduced over replicas and accumulation steps, then divided
by the global `weight`, so the loss is a true mean over the global batch
however it is split. Metric names are logged as `train/NAME` and `val/NAME`.

* `LanguageModeling`: next-token cross-entropy over the tokens whose
  `loss_mask` is 1: every token in pretraining, the assistant's tokens in
  supervised fine-tuning (the chat template sets the mask). Built on the one
  log-prob primitive, `tfchat.eval.logprobs.token_log_probs`.

Preference and classification objectives plug in the same way.

Example:

>>> objective = LanguageModeling()
>>> objective.metrics
()
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfchat.config import GPTConfig
from tfchat.eval.logprobs import token_log_probs
from tfchat.model import build_gpt


class Objective:
    """Base class: see the module docstring."""

    name = ""
    #: extra sums `sums` returns (besides "loss" and "weight"), logged as means per weight.
    metrics: tuple[str, ...] = ()

    def build_model(self, config: GPTConfig, dtype: str) -> keras.Model:
        raise NotImplementedError

    def sums(self, model: keras.Model, batch: dict, training: bool) -> dict[str, tf.Tensor]:
        raise NotImplementedError


class LanguageModeling(Objective):
    """Masked next-token cross-entropy; batches are `{"token_ids", "targets", "loss_mask"}` [B, T]."""

    name = "language-modeling"

    def build_model(self, config: GPTConfig, dtype: str) -> keras.Model:
        return build_gpt(config, dtype=dtype)

    def sums(self, model, batch, training):
        logits = model(batch["token_ids"], training=training)  # [B, T, V]
        mask = tf.cast(batch["loss_mask"], tf.float32)
        log_probs = token_log_probs(logits, batch["targets"], mask)  # [B, T]
        return {"loss": -tf.reduce_sum(log_probs), "weight": tf.reduce_sum(mask)}
