"""The one log-probability primitive, and what is built from it.

Everything that scores tokens goes through `token_log_probs`: the training
loss (language modelling, SFT), evaluation (loss, perplexity, bits per
byte, minimal pairs), the exported `score` signature, and preference
objectives (DPO's sequence log-probabilities, reward margins).

    token_log_probs(logits [B, T, V], targets [B, T], mask [B, T]) -> float32 [B, T]
    sequence_log_probs(...)                                     -> (sum [B], count [B])
    masked_log_prob(model, token_ids [B, T], mask [B, T])       -> float32 [B]

Log-probabilities are computed in float32 whatever the logits' dtype (a
fused log-softmax cross-entropy, so no [B, T, V] probability tensor is
materialised beyond the logits themselves).

Example:

>>> import numpy as np
>>> logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]], "float32"))
>>> lp = token_log_probs(logits, np.array([[0, 1]]), mask=np.array([[1, 0]]))
>>> np.round(np.exp(lp.numpy()), 3).tolist()  # masked positions give log p = 0
[[0.5, 1.0]]
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf


def token_log_probs(logits, targets, mask=None) -> tf.Tensor:
    """log p(targets[b, t]) under logits[b, t]: float32 [B, T]; 0 where `mask` is 0.

    Args:
        logits: float [B, T, V] (any float dtype; computed in float32).
        targets: int [B, T].
        mask: optional [B, T], 1 where a position counts.
    """
    log_probs = -tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(targets, tf.int32), logits=tf.cast(logits, tf.float32)
    )
    if mask is None:
        return log_probs
    return log_probs * tf.cast(mask, tf.float32)


def sequence_log_probs(logits, targets, mask) -> tuple[tf.Tensor, tf.Tensor]:
    """(sum of masked token log-probs, number of masked tokens), each float32 [B]."""
    mask = tf.cast(mask, tf.float32)
    return tf.reduce_sum(token_log_probs(logits, targets, mask), axis=-1), tf.reduce_sum(mask, axis=-1)


def masked_log_prob(model: Callable, token_ids, mask, training: bool = False) -> tf.Tensor:
    """log p(the ids where `mask` is 1 | everything before them) of each row: float32 [B].

    `token_ids` [B, T] is a whole rendered sequence; the model reads ids
    0..T-2 and predicts ids 1..T-1, and `mask[:, t]` says whether id `t`
    counts (`mask[:, 0]` never does: nothing predicts it). A preference pair's
    mask covers its final reply and `<|end|>`, so this is DPO's log pi(y | x).
    """
    logits = model(token_ids[:, :-1], training=training)  # [B, T-1, V]
    return sequence_log_probs(logits, token_ids[:, 1:], mask[:, 1:])[0]


def score_sequences(
    model: Callable, sequences: Sequence[Sequence[int]], batch_size: int = 32, pad_id: int = 0
) -> np.ndarray:
    """Total log-probability of each id sequence after its first id: float64 [N].

    `sum_t log p(seq[t] | seq[:t])` for t >= 1, so seq[0] is the context the
    model starts from (e.g. `eot_id`). Sequences are batched by length and
    right-padded; the model is causal, so padding after a position never
    changes it. `model(ids, training=False)` returns logits [B, T, V].
    """
    scores = np.zeros([len(sequences)], np.float64)
    for i, seq in enumerate(sequences):
        if len(seq) < 2:
            raise ValueError(f"sequence {i} has {len(seq)} ids; need a first id and at least one to score")
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # less padding per batch
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(sequences[i]) for i in rows)
        ids = np.full([len(rows), width], pad_id, np.int32)
        mask = np.zeros([len(rows), width - 1], np.float32)
        for r, i in enumerate(rows):
            ids[r, : len(sequences[i])] = sequences[i]
            mask[r, : len(sequences[i]) - 1] = 1.0
        logits = model(tf.constant(ids[:, :-1]), training=False)
        lp = token_log_probs(logits, ids[:, 1:], mask).numpy()
        scores[rows] = lp.astype(np.float64).sum(axis=1)
    return scores


def score_texts(
    model: Callable, tokenizer, texts: Sequence[str], max_len: int, batch_size: int = 32
) -> tuple[np.ndarray, int]:
    """Total log-probability of each text as a document: `log p(encode(text) | <|endoftext|>)`.

    Returns (float64 [N], how many texts were cut to `max_len` ids, the
    `<|endoftext|>` included, to fit the model's context).
    """
    sequences, truncated = [], 0
    for text in texts:
        ids = tokenizer.encode_document(text)
        truncated += len(ids) > max_len
        sequences.append(ids[:max_len])
    return score_sequences(model, sequences, batch_size, tokenizer.pad_id), truncated
