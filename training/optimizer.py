"""The optimizer and its learning-rate schedule.

AdamW with decoupled weight decay on matrices only (every variable of rank
2 or more: projections and embeddings decay; biases and norm scales do
not), as nanoGPT does, chosen by shape so a new layer's vectors are never
decayed by accident. Schedule: linear warmup to `lr`, then cosine decay to
`lr * min_lr_ratio`.

The train step all-reduces and clips gradients itself (to clip the *global*
norm), so the optimizer must not sum them across replicas again.

Example:

>>> from training.trainer import TrainConfig
>>> opt = make_optimizer(TrainConfig(steps=10, warmup_steps=2))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Sequence

import keras


class _AdamW(keras.optimizers.AdamW):
    # The train step all-reduces gradients once itself (to clip the *global*
    # norm before the update); Keras must not sum them across replicas again.
    def _all_reduce_sum_gradients(self, grads_and_vars):
        return grads_and_vars


def learning_rate_schedule(cfg) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warmup to `cfg.lr`, then cosine decay to `cfg.lr * cfg.min_lr_ratio` at `cfg.steps`."""
    warmup = min(cfg.warmup_steps, max(cfg.steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else cfg.lr,
        warmup_target=cfg.lr if warmup else None,
        warmup_steps=warmup,
        decay_steps=max(cfg.steps - warmup, 1),
        alpha=cfg.min_lr_ratio,
    )


def make_optimizer(cfg, variables: Sequence) -> keras.optimizers.Optimizer:
    """AdamW for `variables`, built (call inside `strategy.scope()`): decay on rank >= 2 only.

    Built here, not lazily inside a replica context, where AdamW fails with
    "You must feed a value for placeholder tensor ...".
    """
    opt = _AdamW(
        learning_rate=learning_rate_schedule(cfg), weight_decay=cfg.weight_decay, beta_1=cfg.beta_1,
        beta_2=cfg.beta_2, epsilon=1e-8, name="adamw",
    )
    opt.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) < 2])
    opt.build(variables)
    return opt
