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

An objective also says what its `weight` counts (`unit`, for throughput
and logs), whether a perplexity means anything, how many units and FLOPs a
step has, and how its model directory is saved.

* `LanguageModeling`: next-token cross-entropy over the tokens whose
  `loss_mask` is 1: every token in pretraining, the assistant's tokens in
  supervised fine-tuning (the chat template sets the mask). Built on the one
  log-prob primitive, `tfchat.eval.logprobs.token_log_probs`.
* `Classification`: text -> labels (`tfchat.model.classifier`), binary
  cross-entropy per label (multi-label) or softmax cross-entropy
  (single-label), averaged over examples; `accuracy` is exact match.

Preference objectives plug in the same way.

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
from tfchat.model import build_gpt, flops_per_token
from tfchat.model.classifier import ClassifierConfig, build_classifier


class Objective:
    """Base class: see the module docstring. The defaults fit objectives on the GPT."""

    name = ""
    #: extra sums `sums` returns (besides "loss" and "weight"), logged as means per weight.
    metrics: tuple[str, ...] = ()
    #: what "weight" counts.
    unit = "tokens"
    #: whether exp(loss) is a perplexity worth logging.
    perplexity = True

    def build_model(self, config: GPTConfig, dtype: str) -> keras.Model:
        raise NotImplementedError

    def sums(self, model: keras.Model, batch: dict, training: bool) -> dict[str, tf.Tensor]:
        raise NotImplementedError

    def throughput(self, config, train_cfg) -> tuple[int, float | None]:
        """(units per optimizer step, FLOPs per step or None) for the throughput and MFU logs."""
        tokens = train_cfg.batch_size * train_cfg.seq_len
        return tokens, flops_per_token(config, train_cfg.seq_len) * tokens

    def save(self, path: str, model: keras.Model, config, tokenizer, metadata: dict) -> None:
        """Writes the model directory (`tfchat.checkpoint.model_dir`)."""
        from tfchat.checkpoint.model_dir import save_model

        save_model(path, model, tokenizer, config, metadata=metadata)


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


class Classification(Objective):
    """Text classification; batches are `{"text": string [B], "labels": float32 [B, L]}` (multi-hot, or
    one-hot for single-label), the model a `tfchat.model.classifier` model of a `ClassifierConfig`."""

    name = "classification"
    metrics = ("accuracy",)
    unit = "examples"
    perplexity = False

    def __init__(self, multi_label: bool = True):
        self.multi_label = multi_label

    def build_model(self, config: ClassifierConfig, dtype: str) -> keras.Model:
        return build_classifier(config, dtype=dtype)

    def sums(self, model, batch, training):
        logits = tf.cast(model(batch["text"], training=training), tf.float32)  # [B, L]
        labels = tf.cast(batch["labels"], tf.float32)  # [B, L]
        if self.multi_label:  # one binary decision per label, summed over labels
            loss = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits), axis=-1)
            correct = tf.reduce_all(tf.equal(logits >= 0.0, labels > 0.5), axis=-1)
        else:
            loss = tf.nn.softmax_cross_entropy_with_logits(labels, logits)
            correct = tf.equal(tf.argmax(logits, -1), tf.argmax(labels, -1))
        return {"loss": tf.reduce_sum(loss), "weight": tf.cast(tf.shape(logits)[0], tf.float32),
                "accuracy": tf.reduce_sum(tf.cast(correct, tf.float32))}

    def throughput(self, config, train_cfg):
        return train_cfg.batch_size, None

    def save(self, path, model, config, tokenizer, metadata):
        from tfchat.checkpoint.classifier_dir import save_classifier

        save_classifier(path, model, config, metadata)
