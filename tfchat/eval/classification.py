"""Classifier metrics: per-label precision, recall, F1, ROC-AUC, PR-AUC at a threshold; thresholds; by source.

Definitions (scikit-learn's):

- a label is predicted when its score is at or above its threshold
  (multi-label), or when it has the highest score (single-label);
- precision, recall, F1 of those predictions; `false_positive_rate` =
  predicted among the texts without the label;
- `roc_auc`: area under the ROC curve of the scores, threshold-free (the
  chance a random positive scores above a random negative); `pr_auc`:
  average precision (area under the precision-recall curve); both None when
  the data has only positives or only negatives for the label;
- `best_threshold`: the score threshold with the highest F1 (ties: the
  higher threshold), what `training.classify` stores with a model (0.5 for
  a label with fewer than `MIN_POSITIVES` held-out positives);
- `by_source` (multi-label: for `primary`, usually `flagged`): per data
  source, how many texts, how many have the label, and the share predicted
  (`recall` over those with the label, `false_positive_rate` over the rest).

Example:

>>> import numpy as np
>>> m = label_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]), threshold=0.5)
>>> m["precision"], m["recall"], m["roc_auc"]
(0.5, 0.5, 0.75)
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Mapping, Sequence

import numpy as np


def _auc(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float | None, float | None]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    if y_true.min() == y_true.max():  # one class only: undefined
        return None, None
    return float(roc_auc_score(y_true, y_score)), float(average_precision_score(y_true, y_score))


def label_metrics(y_true: np.ndarray, y_score: np.ndarray, threshold: float | None = None,
                  predicted: np.ndarray | None = None) -> dict:
    """Metrics of one label: `y_true` 0/1 [N], `y_score` [N]; predictions are `y_score >= threshold`
    unless `predicted` [N] bool is given (single-label argmax)."""
    y_true = np.asarray(y_true).astype(bool)
    y_score = np.asarray(y_score, np.float64)
    predicted = y_score >= threshold if predicted is None else np.asarray(predicted, bool)
    tp = int(np.sum(predicted & y_true))
    fp = int(np.sum(predicted & ~y_true))
    positives, negatives = int(y_true.sum()), int((~y_true).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    roc_auc, pr_auc = _auc(y_true, y_score)
    return {"precision": precision, "recall": recall, "f1": f1, "roc_auc": roc_auc, "pr_auc": pr_auc,
            "threshold": threshold, "support": positives,
            "false_positive_rate": fp / negatives if negatives else None}


def best_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """The threshold with the highest F1 (0.5 when the label never or always occurs)."""
    from sklearn.metrics import precision_recall_curve

    y_true = np.asarray(y_true).astype(bool)
    if y_true.all() or not y_true.any():
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y_true, y_score)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best = np.flatnonzero(f1 == f1.max())[-1]
    return float(thresholds[best])


# Fewer held-out positives than this make a best-F1 threshold noise: such a label keeps 0.5.
MIN_POSITIVES = 20


def best_thresholds(targets: np.ndarray, scores: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """`best_threshold` of every label with at least MIN_POSITIVES positives, else 0.5: targets 0/1 [N, L],
    scores [N, L]."""
    return {label: best_threshold(targets[:, j], scores[:, j]) if targets[:, j].sum() >= MIN_POSITIVES else 0.5
            for j, label in enumerate(labels)}


def predict_with_fallback(scores: np.ndarray, labels: Sequence[str], fallback: str, threshold: float) -> np.ndarray:
    """Single-label predictions (label indices [N]): the argmax, or `fallback` when the argmax scores below
    `threshold` (the out-of-scope rule of Larson et al. 2019, "An Evaluation Dataset for Intent Classification
    and Out-of-Scope Prediction": a confident-enough in-scope intent, else out of scope)."""
    scores = np.asarray(scores)
    predicted = scores.argmax(axis=1)
    predicted[scores.max(axis=1) < threshold] = list(labels).index(fallback)
    return predicted


def out_of_scope_metrics(predicted: Sequence[str], truth: Sequence[str], fallback: str) -> dict:
    """CLINC150's figures: `in_scope_accuracy` (over texts whose true label is not `fallback`) and
    `oos_recall` (share of `fallback` texts predicted `fallback`); None where a group is empty."""
    predicted, truth = np.asarray(predicted, object), np.asarray(truth, object)
    inside = truth != fallback
    return {"in_scope_accuracy": float(np.mean(predicted[inside] == truth[inside])) if inside.any() else None,
            "oos_recall": float(np.mean(predicted[~inside] == fallback)) if (~inside).any() else None,
            "in_scope": int(inside.sum()), "out_of_scope": int((~inside).sum())}


def best_fallback_threshold(scores: np.ndarray, labels: Sequence[str], truth: Sequence[str], fallback: str) -> float:
    """The threshold of `predict_with_fallback` with the highest accuracy on held-out texts as they come (in
    CLINC150's validation set 3% are out of scope, so the threshold costs little in-scope accuracy); 0 when
    they have no out-of-scope text."""
    if fallback not in truth:
        return 0.0
    truth = np.asarray(truth, object)
    best, best_t = -1.0, 0.0
    for t in np.linspace(0.0, 0.95, 96):
        predicted = np.asarray([labels[j] for j in predict_with_fallback(scores, labels, fallback, t)], object)
        value = float(np.mean(predicted == truth))
        if value > best + 1e-9:
            best, best_t = value, float(t)
    return best_t


def classification_metrics(
    targets: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    multi_label: bool,
    thresholds: Mapping[str, float] | None = None,
    sources: Sequence[str] | None = None,
    primary: str | None = None,
) -> dict:
    """Every metric of a classifier's scores [N, L] against 0/1 targets [N, L].

    Returns `{"examples", "labels": {label: label_metrics}, "macro_f1"}`, plus
    `"accuracy"` (exact match of every label, or argmax for single-label),
    `"micro_f1"` (multi-label), and `"by_source"` when `sources` are given.
    """
    targets, scores = np.asarray(targets, bool), np.asarray(scores, np.float64)
    if targets.shape != scores.shape or targets.shape[1] != len(labels):
        raise ValueError(f"targets {targets.shape} and scores {scores.shape} must be [N, {len(labels)}]")
    if multi_label:
        thresholds = {label: float((thresholds or {}).get(label, 0.5)) for label in labels}
        cut = np.array([thresholds[label] for label in labels])
        predicted = scores >= cut
    else:
        predicted = np.zeros_like(targets)
        predicted[np.arange(len(scores)), scores.argmax(axis=1)] = True
    per_label = {
        label: label_metrics(targets[:, j], scores[:, j], thresholds[label] if multi_label else None, predicted[:, j])
        for j, label in enumerate(labels)
    }
    result = {
        "examples": int(len(targets)),
        "accuracy": float(np.mean(np.all(predicted == targets, axis=1))) if len(targets) else 0.0,
        "macro_f1": float(np.mean([m["f1"] for m in per_label.values()])),
        "labels": per_label,
    }
    if multi_label:
        tp, fp, fn = (int(np.sum(predicted & targets)), int(np.sum(predicted & ~targets)),
                      int(np.sum(~predicted & targets)))
        result["micro_f1"] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    if sources is not None:
        j = list(labels).index(primary) if multi_label and primary in labels else None
        result["by_source"] = by_source(sources, targets, predicted, j)
    return result


def by_source(sources: Sequence[str], targets: np.ndarray, predicted: np.ndarray, j: int | None) -> dict:
    """Per source: examples, and for label column `j` positives, recall, false-positive rate;
    without `j` (single-label), accuracy."""
    rows = collections.defaultdict(list)
    for i, s in enumerate(sources):
        rows[s or "?"].append(i)
    out = {}
    for s, idx in sorted(rows.items()):
        idx = np.array(idx)
        if j is None:
            out[s] = {"examples": len(idx), "accuracy": float(np.mean(np.all(predicted[idx] == targets[idx], axis=1)))}
            continue
        t, p = targets[idx, j], predicted[idx, j]
        out[s] = {"examples": len(idx), "positives": int(t.sum()), "predicted_rate": float(p.mean()),
                  "recall": float(p[t].mean()) if t.any() else None,
                  "false_positive_rate": float(p[~t].mean()) if (~t).any() else None}
    return out


def evaluate_classifier(path: str, data: str | Sequence[str], split: str = "auto",
                        threshold: float | None = None) -> dict:
    """`classification_metrics` of a trained classifier (run directory, classifier directory or export) on
    labelled data (`tfchat.data.labelled` sources).

    Args:
        split: "validation" (the held-out 5%), "train", "all", or "auto": validation when every source in
            `data` is one the classifier was trained on, else all (a separate test set).
        threshold: one threshold for every label instead of the stored ones.
    """
    from tfchat.data import labelled
    from tfchat.inference.classifier import TextClassifier

    classifier = TextClassifier.load(path)
    names = [data] if isinstance(data, str) else list(data)
    if split not in ("auto", "validation", "train", "all"):
        raise ValueError(f"split must be auto, validation, train or all, got {split!r}")
    if split == "auto":
        trained_on = classifier.metadata.get("data") or []
        split = "validation" if set(names) <= set(trained_on) else "all"
    examples = labelled.load_examples(names)
    task = labelled.TASKS.get(classifier.metadata.get("task", ""))
    if task is not None and task.implied:
        examples = [dataclasses.replace(e, labels=(*e.labels, task.implied))
                    if e.labels and task.implied not in e.labels else e for e in examples]
    if split != "all":
        examples = [e for e in examples if e.resolved_split() == split]
    if not examples:
        raise ValueError(f"{', '.join(names)}: no examples in the {split!r} split")
    thresholds = classifier.thresholds if threshold is None else {label: threshold for label in classifier.labels}
    scores = classifier.scores([e.text for e in examples])
    result = classification_metrics(labelled.targets(examples, classifier.labels), scores, classifier.labels,
                                    classifier.multi_label, thresholds, [e.source for e in examples],
                                    primary=labelled.FLAGGED)
    unknown = sorted({label for e in examples for label in e.labels} - set(classifier.labels))
    if classifier.fallback:  # an intent classifier: CLINC150's figures, with its out-of-scope threshold
        result["with_fallback"] = evaluate_intents(classifier, names) if split == "all" else None
    return {"classifier": path, "data": names, "split": split, **result, "labels_not_in_model": unknown}


def evaluate_intents(path_or_classifier, data: str | Sequence[str] = "intent-test") -> dict:
    """CLINC150's figures of an intent classifier on a test set (default: the bundled CLINC150 `test` +
    `oos_test`): `in_scope_accuracy`, `oos_recall`, plus `accuracy` over all texts. Predictions use the
    classifier's out-of-scope threshold; a predicted label outside the test set's labels (the routing intents
    `chit_chat`, `knowledge_question`) counts as out of scope, since the test set's 150 intents are its scope."""
    from tfchat.data import labelled
    from tfchat.inference.classifier import TextClassifier

    classifier = (TextClassifier.load(path_or_classifier) if isinstance(path_or_classifier, str)
                  else path_or_classifier)
    examples = labelled.load_examples(data)
    truth = [e.labels[0] if e.labels else labelled.OUT_OF_SCOPE for e in examples]
    scope = set(truth)
    predicted = [p[0] if p and p[0] in scope else labelled.OUT_OF_SCOPE
                 for p in classifier.predict([e.text for e in examples])]
    result = out_of_scope_metrics(predicted, truth, labelled.OUT_OF_SCOPE)
    result["accuracy"] = float(np.mean(np.array(predicted, object) == np.array(truth, object)))
    result["threshold"] = classifier.fallback[1] if classifier.fallback else None
    return result
