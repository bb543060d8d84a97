"""Classifier-free guidance for control tags: push a reply further towards its tags.

A model fine-tuned with tag dropout (`training.finetune --tag-dropout`) knows
both p(token | history, tags) and p(token | history). Guidance decodes from

    log p_guided = log p(. | untagged) + scale * (log p(. | tagged) - log p(. | untagged))

so scale 1 is the tagged model as trained, scale 0 the untagged one, and
scale > 1 amplifies what the tags change. The untagged twin of a prompt is
the same chat rendered without control ids: each guided row decodes twice
(twice the compute), both copies fed the token chosen for the tagged one.

This is classifier-free guidance (Ho & Salimans 2022) as Sanchez et al.
(2023, "Stay on topic with classifier-free guidance") apply it to language
models, simplified: the negative prompt is always the untagged chat, and the
guided scores are cut to the tokens the tagged model itself finds plausible
(at least `PLAUSIBILITY` times its most likely token's probability), the
adaptive plausibility constraint of contrastive decoding (Li et al. 2023).
Without the cut, a large scale favours tokens that are merely rare without
the tags (broken word pieces at the start of a reply).

Example:

>>> import numpy as np
>>> tagged = np.log([[0.5, 0.3, 0.2]]); untagged = np.log([[0.7, 0.2, 0.1]])
>>> int(np.argmax(guided_logits(tagged, untagged, 1.0)))   # scale 1: the tagged model's choice
0
>>> int(np.argmax(guided_logits(tagged, untagged, 3.0)))   # what the tags raise most, among plausible tokens
2
"""

from __future__ import annotations

import math

import tensorflow as tf

from tfchat.inference.sampling import MAX_GUIDANCE, check_sampling

# A guided token's tagged probability must be at least this share of the tagged model's best token's.
PLAUSIBILITY = 0.1


def check_scale(scale) -> None:
    """Raises ValueError unless `scale` (a number or a sequence of them) is in 0 .. MAX_GUIDANCE
    (`tfchat.inference.sampling`); tensors: `graph_check`."""
    for value in scale if isinstance(scale, (list, tuple)) else [scale]:
        check_sampling(guidance=value)


def graph_check(scale: tf.Tensor) -> tf.Operation:
    """`check_scale`'s rule as a graph assertion on a float tensor (a SavedModel input)."""
    ok = tf.logical_and(tf.math.is_finite(scale), tf.logical_and(scale >= 0, scale <= MAX_GUIDANCE))
    return tf.debugging.Assert(tf.reduce_all(ok), [f"guidance must be in 0 .. {MAX_GUIDANCE:g} (1 = off)"])


def guided_logits(tagged, untagged, scale, plausibility: float = PLAUSIBILITY) -> tf.Tensor:
    """Guided scores float32 [B, V] from the tagged and untagged logits [B, V] of the same rows.

    `scale` is a scalar or [B]. Rows with scale 1 get their tagged logits back
    unchanged (so sampling them equals unguided decoding); other rows get the
    guided log-probabilities, -inf outside the plausible tokens.
    """
    tagged = tf.cast(tagged, tf.float32)
    scale = tf.broadcast_to(tf.cast(scale, tf.float32), tf.shape(tagged)[:1])[:, None]  # [B, 1]
    lp_tagged = tf.nn.log_softmax(tagged)  # [B, V]
    lp_untagged = tf.nn.log_softmax(tf.cast(untagged, tf.float32))  # [B, V]
    guided = lp_untagged + scale * (lp_tagged - lp_untagged)
    plausible = lp_tagged >= tf.reduce_max(lp_tagged, axis=-1, keepdims=True) + math.log(plausibility)
    guided = tf.where(plausible, guided, float("-inf"))
    return tf.where(tf.equal(scale, 1.0), tagged, guided)
