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

Values a stage computes once before training ride in the batch: DPO's
reference log-probabilities are the `ref_logps` of its pair batches
(`tfchat.data.pair_batches`), so an objective only ever builds and runs the
one model it trains.

* `LanguageModeling`: next-token cross-entropy over the tokens whose
  `loss_mask` is 1: every token in pretraining, the assistant's tokens in
  supervised fine-tuning (the chat template sets the mask). Built on the one
  log-prob primitive, `tfchat.eval.logprobs.token_log_probs`.
* `PairwiseReward`: a reward model (`tfchat.model.RewardModel`) trained on
  preference pairs with -log sigmoid(r_chosen - r_rejected).
* `DirectPreference`: DPO (Rafailov et al. 2023) or IPO (Azar et al. 2023)
  on a chat model, against precomputed reference log-probabilities.
* `Classification`: text -> labels (`tfchat.model.classifier`), binary
  cross-entropy per label (multi-label) or softmax cross-entropy
  (single-label), averaged over examples; `accuracy` is exact match.

Example:

>>> objective = LanguageModeling()
>>> objective.metrics
()
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfchat.config import GPTConfig
from tfchat.eval.logprobs import masked_log_prob, token_log_probs
from tfchat.model import RewardModel, build_gpt, build_model, flops_per_token
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
    #: whether AdamW updates only the rows a sparse (embedding lookup) gradient names (`training.optimizer`).
    lazy = False

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


# ----------------------------------------------------------------------------- preferences

PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")
LOSSES = ("dpo", "ipo")


def preference_loss(logps: tf.Tensor, ref_logps: tf.Tensor, beta: float, loss: str = "dpo"):
    """DPO or IPO loss of policy and reference log-probs, each float32 [B, 2] (chosen, rejected).

    With h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)):
    DPO: -log sigmoid(beta * h); IPO: (h - 1 / (2 beta))^2 (Azar et al. 2023,
    eq. 17, on sequence log-probs as in the paper; TRL averages them per
    token instead).

    Returns:
        (loss [B], implicit rewards [B, 2] = beta * (logps - ref_logps)).
    """
    ratios = tf.cast(logps, tf.float32) - tf.stop_gradient(tf.cast(ref_logps, tf.float32))  # [B, 2]
    h = ratios[:, 0] - ratios[:, 1]  # [B]
    if loss == "dpo":
        losses = -tf.math.log_sigmoid(beta * h)
    elif loss == "ipo":
        losses = tf.square(h - 1.0 / (2.0 * beta))
    else:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return losses, beta * ratios


def _pair_sums(loss: tf.Tensor, rewards: tf.Tensor) -> dict:
    """Sums over a micro-batch of pairs: loss, weight (pairs) and the TRL-named reward metrics."""
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    # A tie counts half: a model that cannot tell the replies apart scores 50%.
    right = tf.where(chosen > rejected, 1.0, tf.where(chosen < rejected, 0.0, 0.5))
    return {"loss": tf.reduce_sum(loss), "weight": tf.cast(tf.shape(loss)[0], tf.float32),
            "rewards/chosen": tf.reduce_sum(chosen), "rewards/rejected": tf.reduce_sum(rejected),
            "rewards/accuracies": tf.reduce_sum(right), "rewards/margins": tf.reduce_sum(chosen - rejected)}


def _flat(x: tf.Tensor) -> tf.Tensor:
    """[B, 2, ...] -> [2B, ...]: chosen and rejected rows of a pair batch in one forward pass."""
    return tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))


class _PairObjective(Objective):
    unit = "pairs"
    perplexity = False

    def throughput(self, config, train_cfg):
        tokens = 2 * train_cfg.batch_size * train_cfg.seq_len  # two sequences per pair
        return train_cfg.batch_size, flops_per_token(config, train_cfg.seq_len) * tokens


class PairwiseReward(_PairObjective):
    """Reward modelling on preference pairs: -log sigmoid(r_chosen - r_rejected) (InstructGPT, eq. 1).

    Batches are `tfchat.data.pair_batches` examples; the model is a
    `RewardModel` reading each row at its last real id, the reply's `<|end|>`.
    The logged `rewards/*` are the reward model's own scores.
    """

    name = "reward"
    metrics = PAIR_METRICS

    def build_model(self, config: GPTConfig, dtype: str) -> keras.Model:
        return build_model(config, "reward", dtype=dtype)

    def sums(self, model: RewardModel, batch, training):
        rewards = model({"token_ids": _flat(batch["token_ids"]), "lengths": _flat(batch["lengths"])},
                        training=training)  # [2B]
        rewards = tf.reshape(tf.cast(rewards, tf.float32), [-1, 2])  # [B, 2]
        return _pair_sums(-tf.math.log_sigmoid(rewards[:, 0] - rewards[:, 1]), rewards)


class DirectPreference(_PairObjective):
    """DPO / IPO on a chat model (see `preference_loss`), over the final reply's tokens and `<|end|>` only.

    The frozen reference is the checkpoint training starts from; its
    log-probabilities are computed once per pair before training and ride in
    the batch as `ref_logps` [B, 2], rather than run on the fly from a second
    model: the reference never changes, so recomputing it every epoch is
    wasted work; each step then runs one model, forward and backward, instead
    of two (half the forward passes, no second copy of the weights in
    memory); and resuming reuses the stored values (`training.jobs.align`),
    so an interrupted run continues exactly. The cost is one forward pass
    over the data before step 1.

    Logged, as TRL names them: `rewards/chosen` / `rewards/rejected` =
    beta * (log pi - log ref) of each reply, `rewards/accuracies` (share of
    pairs whose chosen reward is higher; ties half), `rewards/margins`, and
    `logps/chosen` / `logps/rejected` = log pi of each reply.

    With `nll_weight` alpha > 0 the loss adds alpha times the chosen reply's
    negative log-likelihood per token (RPO: Pang et al. 2024, "Iterative
    Reasoning Preference Optimization"; also in Llama 3's recipe). DPO alone
    lowers both replies' likelihood, the rejected one faster; the NLL term holds
    the chosen one up, so the model's own ranking, not only its ratio to the
    reference, moves. Logged as `nll`.
    """

    metrics = PAIR_METRICS + ("logps/chosen", "logps/rejected", "nll")

    def __init__(self, beta: float = 0.1, loss: str = "dpo", nll_weight: float = 0.0):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if not beta > 0:
            raise ValueError(f"beta must be positive, got {beta}")
        if not nll_weight >= 0:
            raise ValueError(f"the NLL weight must be 0 or more, got {nll_weight}")
        self.beta, self.loss, self.name, self.nll_weight = float(beta), loss, loss, float(nll_weight)

    def build_model(self, config: GPTConfig, dtype: str) -> keras.Model:
        return build_gpt(config, dtype=dtype)

    def log_probs(self, model, batch, training: bool) -> tf.Tensor:
        """log pi of each pair's chosen and rejected reply: float32 [B, 2]."""
        logps = masked_log_prob(model, _flat(batch["token_ids"]), _flat(batch["loss_mask"]), training)  # [2B]
        return tf.reshape(logps, [-1, 2])

    def sums(self, model, batch, training):
        logps = self.log_probs(model, batch, training)
        loss, rewards = preference_loss(logps, batch["ref_logps"], self.beta, self.loss)
        chosen_tokens = tf.reduce_sum(tf.cast(batch["loss_mask"][:, 0], tf.float32), axis=-1)  # [B]
        nll = -logps[:, 0] / tf.maximum(chosen_tokens, 1.0)  # [B], per token
        return {**_pair_sums(loss + self.nll_weight * nll, rewards), "logps/chosen": tf.reduce_sum(logps[:, 0]),
                "logps/rejected": tf.reduce_sum(logps[:, 1]), "nll": tf.reduce_sum(nll)}


class Classification(Objective):
    """Text classification; batches are `{"text": string [B], "labels": float32 [B, L]}` (multi-hot, or
    one-hot for single-label), the model a `tfchat.model.classifier` model of a `ClassifierConfig`."""

    name = "classification"
    metrics = ("accuracy",)
    unit = "examples"
    perplexity = False

    def __init__(self, multi_label: bool = True, lazy: bool = False, tokenizer=None):
        self.multi_label = multi_label
        self.lazy = lazy  # a batch touches a few thousand rows of the hashed n-gram table
        self.tokenizer = tokenizer  # a kind "gpt" classifier's

    def build_model(self, config: ClassifierConfig, dtype: str) -> keras.Model:
        return build_classifier(config, dtype=dtype, tokenizer=self.tokenizer)

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
