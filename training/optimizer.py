"""Optimizers and learning-rate schedules.

* `adamw`: AdamW with decoupled weight decay on matrices only (every
  variable of rank 2 or more: projections and embeddings decay; biases and
  norm scales do not), as nanoGPT does, chosen by shape so a new layer's
  vectors are never decayed by accident.
* `muon`: Keras' Muon (Jordan et al. 2024; the Moonlight RMS scaling of Liu
  et al. 2025, so it takes AdamW-sized learning rates) for the hidden
  matrices (attention and MLP projections), and its built-in AdamW for the
  embeddings, an untied `lm_head` and every vector, as nanochat and the
  modded-nanogpt speed runs split them. Simplified from those: one learning
  rate for both groups (Keras' `adam_lr_ratio=1`) and Muon on the fused QKV
  matrix as one matrix rather than per head.

Sparse gradients (`lazy=True`): a gradient that arrives as
`tf.IndexedSlices` (an embedding looked up, not multiplied: the hashed
n-gram table of `tfchat.model.classifier`) updates only the rows it names,
moments included, as TensorFlow Addons' LazyAdam does. A dense Adam step
reads and writes every row of the 33M-weight table each step (about 115 ms
on two cores) although a batch touches a few thousand. Opt-in
(`training.classify --lazy-adam`): a row no longer drifts on its momentum
between the batches that use it, which changes what the model learns (README,
"Knowledge and intents"). A tied GPT embedding's gradient is dense anyway.

Schedules: `cosine` (linear warmup to `lr`, cosine decay to
`lr * min_lr_ratio`) or `wsd` (warmup-stable-decay: linear warmup, constant
`lr`, then linear decay to `lr * min_lr_ratio` over the last `cooldown`
fraction of the steps; Hu et al. 2024, MiniCPM).

The train step all-reduces and clips gradients itself (to clip the *global*
norm), so the optimizers must not sum them across replicas again.

Example:

>>> from training.trainer import TrainConfig
>>> schedule = learning_rate_schedule(TrainConfig(steps=100, warmup_steps=10, lr=1.0, schedule="wsd", cooldown=0.2))
>>> [round(float(schedule(s)), 2) for s in (5, 50, 80, 90, 100)]
[0.5, 1.0, 1.0, 0.55, 0.1]
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")


def sum_repeated_rows(grad: tf.IndexedSlices) -> tf.IndexedSlices:
    """The same gradient with each row id once (an id looked up twice in a batch arrives twice, values to be summed)."""
    ids, position = tf.unique(grad.indices)
    return tf.IndexedSlices(tf.math.unsorted_segment_sum(grad.values, position, tf.shape(ids)[0]), ids, grad.dense_shape)


class _AdamW(keras.optimizers.AdamW):
    def __init__(self, *args, lazy: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    # The train step all-reduces gradients once itself (to clip the *global*
    # norm before the update); Keras must not sum them across replicas again.
    def _all_reduce_sum_gradients(self, grads_and_vars):
        return grads_and_vars

    def update_step(self, gradient, variable, learning_rate):
        if not (self.lazy and isinstance(gradient, tf.IndexedSlices)):
            return super().update_step(gradient, variable, learning_rate)
        # Adam on the rows the gradient names (repeated ids summed first); other rows and their moments stay.
        gradient = sum_repeated_rows(gradient)
        ids, dtype = gradient.indices, variable.dtype
        grad = tf.cast(gradient.values, dtype)  # [U, dim]
        step = tf.cast(self.iterations + 1, dtype)
        alpha = tf.cast(learning_rate, dtype) * tf.sqrt(1 - tf.pow(tf.cast(self.beta_2, dtype), step)) / (
            1 - tf.pow(tf.cast(self.beta_1, dtype), step))
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        m_rows = tf.gather(m.value, ids) * self.beta_1 + grad * (1 - self.beta_1)
        v_rows = tf.gather(v.value, ids) * self.beta_2 + tf.square(grad) * (1 - self.beta_2)
        self.assign(m, tf.IndexedSlices(m_rows, ids))
        self.assign(v, tf.IndexedSlices(v_rows, ids))
        self.assign_sub(variable, tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), ids))


class _Muon(keras.optimizers.Muon):
    def _all_reduce_sum_gradients(self, grads_and_vars):
        return grads_and_vars


@keras.saving.register_keras_serializable(package="tfchat")
class WarmupStableDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `peak`, constant, then linear decay to `peak * min_ratio` over the last `decay_steps`."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, decay_steps: int, min_ratio: float):
        self.peak, self.warmup_steps, self.total_steps = peak, warmup_steps, total_steps
        self.decay_steps, self.min_ratio = decay_steps, min_ratio

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = step / max(self.warmup_steps, 1)
        left = (self.total_steps - step) / max(self.decay_steps, 1)  # 1 at the start of the decay, 0 at the end
        decay = self.min_ratio + (1.0 - self.min_ratio) * keras.ops.clip(left, 0.0, 1.0)
        return self.peak * keras.ops.minimum(keras.ops.minimum(warm, 1.0), decay)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "decay_steps": self.decay_steps, "min_ratio": self.min_ratio}


def learning_rate_schedule(cfg) -> keras.optimizers.schedules.LearningRateSchedule:
    """The schedule `cfg.schedule` names, over `cfg.steps` steps."""
    warmup = min(cfg.warmup_steps, max(cfg.steps - 1, 0))
    if cfg.schedule == "wsd":
        decay = max(round(cfg.cooldown * cfg.steps), 1)
        return WarmupStableDecay(cfg.lr, warmup, cfg.steps, decay, cfg.min_lr_ratio)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else cfg.lr,
        warmup_target=cfg.lr if warmup else None,
        warmup_steps=warmup,
        decay_steps=max(cfg.steps - warmup, 1),
        alpha=cfg.min_lr_ratio,
    )


def make_optimizer(cfg, variables: Sequence, lazy: bool = False) -> keras.optimizers.Optimizer:
    """The optimizer `cfg.optimizer` names for `variables`, built (call inside `strategy.scope()`).

    `lazy`: AdamW updates only the rows a sparse gradient names (module docstring).

    Built here, not lazily inside a replica context, where Adam-style
    optimizers fail with "You must feed a value for placeholder tensor ...".
    """
    schedule = learning_rate_schedule(cfg)
    if cfg.optimizer == "muon":
        opt = _Muon(
            learning_rate=schedule, weight_decay=cfg.weight_decay, adam_weight_decay=cfg.weight_decay,
            adam_beta_1=cfg.beta_1, adam_beta_2=cfg.beta_2, epsilon=1e-8, exclude_layers=["lm_head"], name="muon",
        )
    else:
        opt = _AdamW(
            learning_rate=schedule, weight_decay=cfg.weight_decay, beta_1=cfg.beta_1, beta_2=cfg.beta_2,
            epsilon=1e-8, name="adamw", lazy=lazy,
        )
    # No decay at all: skip Keras' pass over every weight (it multiplies by 0.0 otherwise).
    opt.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) < 2 or not cfg.weight_decay])
    opt.build(variables)
    return opt
