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

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")


class _AdamW(keras.optimizers.AdamW):
    # The train step all-reduces gradients once itself (to clip the *global*
    # norm before the update); Keras must not sum them across replicas again.
    def _all_reduce_sum_gradients(self, grads_and_vars):
        return grads_and_vars


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


def make_optimizer(cfg, variables: Sequence) -> keras.optimizers.Optimizer:
    """The optimizer `cfg.optimizer` names for `variables`, built (call inside `strategy.scope()`).

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
            epsilon=1e-8, name="adamw",
        )
    opt.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) < 2])
    opt.build(variables)
    return opt
