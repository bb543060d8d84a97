"""Preference metrics: does a model prefer the chosen reply? Scored on rendered pairs (`tfchat.data.pair_batches`).

* `preference_accuracy` of a language model: the share of pairs whose
  implicit reward prefers the chosen reply, i.e. whose
  log pi(chosen) - log pi(rejected) is positive, or, with a reference model,
  whose (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))
  is (DPO's implicit reward, up to beta; a model compared with itself scores
  50%). `preference_margin` is the mean of that difference in nats.
* `reward_accuracy` of a reward model: the share of pairs with
  r(chosen) > r(rejected); `reward_margin` the mean of r(chosen) - r(rejected).
* `..._length_baseline`: beside every accuracy, on the same pairs, how often
  "the shorter reply (in characters) is the chosen one" is right: a model
  that only learned length gets about this figure.

Log-probs cover the final reply's tokens and its `<|end|>` only (the pair's
`loss_mask`), as DPO trains them. Ties count half everywhere. Every figure
also comes per source format (`..._by_source`: "hh-rlhf", "oasst",
"messages").

Example:

>>> result = preference_eval("runs/aligned", "preferences-sample", reference="runs/chat")  # doctest: +SKIP
>>> result["preference_accuracy"], result["preference_length_baseline"]                 # doctest: +SKIP
(0.61, 0.51)
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfchat.checkpoint.model_dir import LoadedModel, load_model
from tfchat.data.pair_batches import RenderedPairs, preference_split
from tfchat.eval.logprobs import masked_log_prob

# Batches are padded to a multiple of this many ids: fewer shapes to trace than one per length.
_WIDTH_STEP = 32


def _score(fn: Callable, rendered: RenderedPairs, batch_size: int, desc: str) -> np.ndarray:
    """fn(token_ids [b, W], loss_mask [b, W], lengths [b]) -> [b], over both rows of every pair: float64 [N, 2].

    Rows are scored in order of length, right-padded to the batch's longest
    (rounded up to `_WIDTH_STEP`); padding after a row's end changes nothing.
    """
    rows = [(ids, n) for c, r, n in zip(rendered.chosen, rendered.rejected, rendered.prompt_lengths)
            for ids in (c, r)]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    scores = np.zeros([len(rows)], np.float64)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=None, leave=False):
        picked = order[start:start + batch_size]
        width = -(-max(len(rows[i][0]) for i in picked) // _WIDTH_STEP) * _WIDTH_STEP
        ids = np.zeros([len(picked), width], np.int32)
        mask = np.zeros([len(picked), width], np.float32)
        lengths = np.zeros([len(picked)], np.int32)
        for b, i in enumerate(picked):
            seq, prompt_length = rows[i]
            ids[b, : len(seq)] = seq
            mask[b, prompt_length: len(seq)] = 1.0
            lengths[b] = len(seq)
        scores[picked] = fn(tf.constant(ids), tf.constant(mask), tf.constant(lengths)).numpy()
    return scores.reshape(-1, 2)


# One trace for every batch shape.
_SPECS = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None], tf.int32)]


def pair_log_probs(model, rendered: RenderedPairs, batch_size: int = 16) -> np.ndarray:
    """log p(reply + `<|end|>` | prompt) of each pair's chosen and rejected reply under a language model: [N, 2]."""
    fn = tf.function(lambda ids, mask, lengths: masked_log_prob(model, ids, mask), input_signature=_SPECS)
    return _score(fn, rendered, batch_size, "log-probs")


def pair_rewards(reward_model, rendered: RenderedPairs, batch_size: int = 16) -> np.ndarray:
    """A reward model's score of each pair's chosen and rejected reply: [N, 2]."""
    fn = tf.function(lambda ids, mask, lengths: reward_model({"token_ids": ids, "lengths": lengths}, training=False),
                     input_signature=_SPECS)
    return _score(fn, rendered, batch_size, "rewards")


def length_baseline(rendered: RenderedPairs) -> np.ndarray:
    """Per pair: 1 when the chosen reply is the shorter (in characters), 0 when longer, 0.5 when equal."""
    lengths = np.array([[len(p.chosen), len(p.rejected)] for p in rendered.pairs], np.float64).reshape(-1, 2)
    return _right(lengths[:, 1] - lengths[:, 0])


def _right(margins: np.ndarray) -> np.ndarray:
    return np.where(margins > 0, 1.0, np.where(margins < 0, 0.0, 0.5))


def accuracy_figures(margins: np.ndarray, rendered: RenderedPairs, prefix: str) -> dict:
    """`{prefix}_accuracy`, `_margin`, `_pairs`, `_length_baseline` overall and `_by_source`, of per-pair margins."""
    right, baseline = _right(margins), length_baseline(rendered)
    sources = np.array([p.source for p in rendered.pairs])

    def figures(pick) -> dict:
        return {"accuracy": float(right[pick].mean()), "length_baseline": float(baseline[pick].mean()),
                "margin": float(margins[pick].mean()), "pairs": int(pick.sum())}

    overall = figures(np.ones(len(margins), bool))
    out = {f"{prefix}_{k}": v for k, v in overall.items()}
    out[f"{prefix}_by_source"] = {s: figures(sources == s) for s in sorted(set(sources))}
    return out


def _loaded(model: str | LoadedModel, head: str) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model, head=head)


def _check_same_tokenizer(a: LoadedModel, b: LoadedModel, what: str) -> None:
    if a.tokenizer.special_ids != b.tokenizer.special_ids or a.tokenizer.vocab_size != b.tokenizer.vocab_size:
        raise ValueError(f"the {what} uses another tokenizer than the model; compare models fine-tuned from the "
                         "same pretrained model")


def _max_len(loaded: LoadedModel, seq_len: int | None) -> int:
    block = loaded.config.block_size
    if seq_len is not None and not 1 <= seq_len <= block:
        raise ValueError(f"--seq-len must be in 1..{block} (the model's context), got {seq_len}")
    return seq_len or block


def preference_metrics(loaded: LoadedModel, rendered: RenderedPairs, reference: LoadedModel | None = None,
                       batch_size: int = 16) -> dict:
    """`preference_*` figures of a language model (and its reference) on rendered pairs."""
    margins = pair_log_probs(loaded.model, rendered, batch_size) @ np.array([1.0, -1.0])
    if reference is not None:
        margins = margins - pair_log_probs(reference.model, rendered, batch_size) @ np.array([1.0, -1.0])
    return accuracy_figures(margins, rendered, "preference")


def reward_metrics(reward: LoadedModel, rendered: RenderedPairs, batch_size: int = 16) -> dict:
    """`reward_*` figures of a reward model on rendered pairs."""
    return accuracy_figures(pair_rewards(reward.model, rendered, batch_size) @ np.array([1.0, -1.0]), rendered, "reward")


def preference_eval(model: str | LoadedModel, source: str, *, reference: str | LoadedModel | None = None,
                    reward_model: str | LoadedModel | None = None, split: str = "validation",
                    seq_len: int | None = None, batch_size: int = 16) -> dict:
    """Preference figures of `model` on a preference source: `preference_*` for a language model (relative to
    `reference` when given), `reward_*` for a reward model, and `reward_*` of `reward_model` too when given.

    Pairs are rendered with each model's tokenizer and context (`seq_len`
    caps it); pairs that do not fit are left out (counted in `..._skipped`).
    """
    loaded = _loaded(model, None)
    out: dict = {"preferences": source, "preference_split": split}
    if loaded.head == "reward":
        if reference is not None or reward_model is not None:
            raise ValueError("the model is a reward model: give it alone (no --reference, no --reward-model)")
        rendered = preference_split(source, loaded.tokenizer, _max_len(loaded, seq_len), split)
        return {**out, **reward_metrics(loaded, rendered, batch_size), "reward_skipped": rendered.skipped}
    rendered = preference_split(source, loaded.tokenizer, _max_len(loaded, seq_len), split)
    ref = None
    if reference is not None:
        ref = _loaded(reference, "lm")
        _check_same_tokenizer(loaded, ref, "reference model")
        out["reference"] = reference if isinstance(reference, str) else None
    out.update(preference_metrics(loaded, rendered, ref, batch_size), preference_skipped=rendered.skipped)
    if reward_model is not None:
        scorer = _loaded(reward_model, "reward")
        same = scorer.tokenizer.special_ids == loaded.tokenizer.special_ids and scorer.config.block_size == loaded.config.block_size
        scored = rendered if same else preference_split(source, scorer.tokenizer, _max_len(scorer, seq_len), split)
        out.update(reward_metrics(scorer, scored, batch_size), reward_skipped=scored.skipped)
    return out


def summary_line(result: dict) -> str:
    """One line of the headline figures, e.g. for a command's closing summary."""
    parts = []
    for prefix, what in (("preference", "preference accuracy"), ("reward", "reward accuracy")):
        if f"{prefix}_accuracy" in result:
            acc, base = result[f"{prefix}_accuracy"], result[f"{prefix}_length_baseline"]
            parts.append(f"{what} {100 * acc:.1f}% (length baseline {100 * base:.1f}%, "
                         f"{result[f'{prefix}_pairs']} pairs)")
    return "; ".join(parts) if parts else "no preference figures"


def standard_error(accuracy: float, pairs: int) -> float:
    """One standard error of an accuracy over `pairs` pairs (binomial)."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / max(pairs, 1))
