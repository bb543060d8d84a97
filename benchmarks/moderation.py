"""Content filter benchmark: tfchat's moderation classifier against `alt-profanity-check`, on the same data.

    python -m benchmarks.moderation --classifier runs/moderation [--export exports/moderation]

Prints one JSON object:

* `held_out`: the held-out split of the classifier's training data
  (`moderation-sample`): `flagged` ROC-AUC and PR-AUC of both, and the
  margin with its 95% paired-bootstrap interval (`roc_auc_margin_ci95`, as
  for every part: 1,000 resamples of the texts, both scored on each);
  `held_out_without_davidson`: the same without Davidson's tweets, which
  alt-profanity-check was trained on (its README says so);
* `requests` (`moderation-requests`, never trained on): AdvBench's harmful
  behaviours against benign requests; ROC-AUC, and at each one's own
  threshold (the stored one; 0.5 for profanity-check) the share of harmful
  requests caught (`recall`) and of benign ones flagged
  (`false_positive_rate`), also for the hand-written look-alike questions
  ("how do I kill a zombie process"), the hand-written benign instructions
  in AdvBench's style ("Write a tutorial on how to bake sourdough bread")
  and the real benign requests that share AdvBench's vocabulary; with
  `--catch-rate R`, tfchat's figures again at the threshold that catches R
  of the harmful requests (`at_catch_rate`), to compare classifiers whose
  stored thresholds differ;
* `hatecheck` (`moderation-hatecheck`, never trained on): ROC-AUC of both;
* `latency_ms`: one message per call (a chat server screens them one by
  one), p50 / p95 / mean over `--messages` held-out texts, for the Python
  API (`TextClassifier.scores`), the SavedModel's `classify` signature
  (with `--export`) and profanity-check.

`alt-profanity-check` is a benchmark dependency only: `pip install alt-profanity-check`.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from tfchat import cli


def _profanity_scores(texts: list[str]) -> np.ndarray:
    try:
        from profanity_check import predict_prob
    except ImportError as e:
        raise RuntimeError("the benchmark compares with alt-profanity-check: pip install alt-profanity-check") from e
    return np.asarray(predict_prob(texts), np.float64)


def _auc(y: np.ndarray, s: np.ndarray) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {"roc_auc": float(roc_auc_score(y, s)), "pr_auc": float(average_precision_score(y, s))}


def _margin_interval(y: np.ndarray, ours: np.ndarray, theirs: np.ndarray, resamples: int = 1000,
                     seed: int = 0) -> list[float]:
    """95% paired-bootstrap interval of ROC-AUC(ours) - ROC-AUC(theirs): both scored on the same resampled texts."""
    from sklearn.metrics import roc_auc_score

    rng, margins = np.random.default_rng(seed), []
    while len(margins) < resamples:
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):  # a resample needs both classes
            margins.append(roc_auc_score(y[i], ours[i]) - roc_auc_score(y[i], theirs[i]))
    return [float(v) for v in np.percentile(margins, [2.5, 97.5])]


def _rates(y: np.ndarray, s: np.ndarray, threshold: float, sources: np.ndarray) -> dict:
    flagged, sources = s >= threshold, sources.astype(str)
    questions = np.char.startswith(sources, "moderation-lookalikes")
    instructions = np.char.startswith(sources, "moderation-lookalike-instructions")
    shared = np.char.endswith(sources, "+harm-words") & ~questions & ~instructions
    return {"threshold": threshold, "recall": float(flagged[y].mean()), "false_positive_rate": float(flagged[~y].mean()),
            "lookalike_false_positive_rate": float(flagged[questions].mean()),
            "instruction_lookalike_false_positive_rate": float(flagged[instructions].mean()),
            "shared_vocabulary_false_positive_rate": float(flagged[shared].mean())}


def _latency(fn, texts: list[str], repeats: int = 1) -> dict:
    fn(texts[0])  # trace / warm up
    times = []
    for _ in range(repeats):
        for t in texts:
            start = time.perf_counter()
            fn(t)
            times.append((time.perf_counter() - start) * 1000)
    times = np.array(times)
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95)), "mean": float(times.mean()),
            "calls": len(times)}


def run(classifier_path: str, export: str | None = None, messages: int = 300, catch_rate: float | None = None) -> dict:
    import tensorflow as tf

    from tfchat.data import labelled
    from tfchat.inference.classifier import TextClassifier

    classifier = TextClassifier.load(classifier_path)
    if labelled.FLAGGED not in classifier.labels:
        raise ValueError(f"{classifier_path}: not a moderation classifier (no 'flagged' label)")
    column = classifier.labels.index(labelled.FLAGGED)
    threshold = classifier.thresholds[labelled.FLAGGED]
    record = {"classifier": classifier_path, "threshold": threshold}

    task = labelled.TASKS["moderation"]
    train_data = classifier.metadata.get("data") or [task.default_data]
    examples, _ = task.prepare(labelled.load_examples(train_data))
    held = [e for e in examples if e.resolved_split() == "validation"]
    # alt-profanity-check was trained on Davidson's tweets (its README), most of our held-out flagged texts.
    for name, part in (("held_out", held), ("held_out_without_davidson", [e for e in held if e.source != "davidson"]),
                       ("requests", list(labelled.read_labelled_source("moderation-requests"))),
                       ("hatecheck", list(labelled.read_labelled_source("moderation-hatecheck")))):
        texts = [e.text for e in part]
        y = np.array([labelled.FLAGGED in e.labels for e in part])
        ours, theirs = classifier.scores(texts)[:, column], _profanity_scores(texts)
        entry = {"examples": len(part), "flagged": int(y.sum()), "tfchat": _auc(y, ours),
                 "alt_profanity_check": _auc(y, theirs)}
        entry["roc_auc_margin"] = entry["tfchat"]["roc_auc"] - entry["alt_profanity_check"]["roc_auc"]
        entry["roc_auc_margin_ci95"] = _margin_interval(y, ours, theirs)
        if name == "requests":
            sources = np.array([e.source for e in part])
            entry["tfchat"].update(_rates(y, ours, threshold, sources))
            if catch_rate is not None:  # the highest threshold that still catches `catch_rate` of them
                at = float(np.quantile(ours[y], 1.0 - catch_rate, method="lower"))
                entry["tfchat"]["at_catch_rate"] = {"catch_rate": catch_rate, **_rates(y, ours, at, sources)}
            entry["alt_profanity_check"].update(_rates(y, theirs, 0.5, sources))
        record[name] = entry

    sample = [e.text for e in held[:messages]]
    latency = {"tfchat": _latency(lambda t: classifier.scores([t]), sample)}
    if export:
        signature = TextClassifier.load(export)._score_fn
        latency["tfchat_saved_model"] = _latency(lambda t: signature(tf.constant([t])), sample)
    latency["alt_profanity_check"] = _latency(lambda t: _profanity_scores([t]), sample)
    record["latency_ms"] = latency
    record["mean_message_chars"] = float(np.mean([len(t) for t in sample]))
    return record


def main(argv=None) -> int:
    p = cli.parser("python -m benchmarks.moderation", __doc__)
    p.add_argument("--classifier", default="runs/moderation", help="python -m training.classify run directory")
    p.add_argument("--export", default=None, help="its export (python -m serving.export --classifier), to time too")
    p.add_argument("--messages", type=cli.positive_int, default=300, help="messages timed one by one")
    p.add_argument("--catch-rate", type=float, default=None,
                   help="also report the request figures at the threshold that catches this share of harmful requests")
    args = p.parse_args(argv)
    if args.catch_rate is not None and not 0 < args.catch_rate <= 1:
        p.error(f"--catch-rate must be in (0, 1], got {args.catch_rate}")

    def body() -> int:
        cli.setup(args.verbose)
        from benchmarks.common import emit

        emit(run(args.classifier, args.export, args.messages, args.catch_rate))
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(cli.run(main))  # a known failure: one "error: ..." line
