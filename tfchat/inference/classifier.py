"""Running a trained classifier: scores for texts, and a content filter for texts, documents and conversations.

* `TextClassifier.load(path)` reads what `training.classify` wrote (the run
  directory or its `model/`) or its SavedModel export
  (`serving.classifier_export`); `scores(texts)` -> float32 [N, L].
* `ContentFilter` flags what a moderation classifier scores at or above a
  threshold on one label (`flagged`): single texts, documents (flagged when
  any paragraph is; a bag-of-n-grams model dilutes one bad paragraph in a
  long article) and conversations (flagged when any message is). Results are
  memoized by text, so filtering both splits of a dataset, or a reply as it
  grows, costs one scoring per distinct text.

Example:

>>> f = ContentFilter(TextClassifier.load("runs/moderation"))      # doctest: +SKIP
>>> f.flag_texts(["have a nice day", "I will kill you"])           # doctest: +SKIP
array([False,  True])
"""

from __future__ import annotations

import hashlib
import json
import os
import itertools
from typing import Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfchat.data.labelled import FLAGGED, paragraphs

EXPORT_FORMAT = "tfchat-classifier-export"
# Texts scored per call: one compiled shape class, bounded memory for long documents.
BATCH = 256
# Scores remembered by a ContentFilter (then it starts afresh).
MEMO_SIZE = 500_000


def keras_score_fn(model, multi_label: bool):
    """A tf.function: string [N] -> scores [N, L] of a classifier Keras model (`tfchat.model.classifier`)."""
    from tfchat.model.classifier import scores

    return tf.function(lambda text: scores(model(text, training=False), multi_label),
                       input_signature=[tf.TensorSpec([None], tf.string)])


def batched_scores(score_fn, texts: Sequence[str], num_labels: int) -> np.ndarray:
    """`score_fn` over `texts` in batches of BATCH: float32 [N, num_labels]."""
    texts = list(texts)
    starts = range(0, len(texts), BATCH)  # a bar only for sets that take a while, not for a server's messages
    bar = tqdm(starts, desc="scoring", unit="batch", leave=False, disable=None if len(texts) > 4 * BATCH else True)
    parts = [score_fn(tf.constant(texts[i:i + BATCH], tf.string)).numpy() for i in bar]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros([0, num_labels], np.float32)


class TextClassifier:
    """Scores texts with a trained classifier. Use `TextClassifier.load(path)`.

    Attributes: `labels`, `multi_label`, `thresholds` ({label: t}), `metadata`, `path`, `fingerprint`
    (changes when the weights do).
    """

    def __init__(self, score_fn, labels: Sequence[str], multi_label: bool, thresholds: dict, metadata: dict,
                 path: str, fingerprint: str):
        self._score_fn = score_fn
        self.labels, self.multi_label = list(labels), multi_label
        self.thresholds, self.metadata, self.path, self.fingerprint = dict(thresholds), metadata, path, fingerprint

    @classmethod
    def load(cls, path: str) -> "TextClassifier":
        """A run directory, a classifier directory, or a classifier export (base path or version directory)."""
        if not os.path.isdir(path):
            raise FileNotFoundError(f"classifier not found: {path}; train one with python -m training.classify")
        version_dir = _export_version_dir(path)
        if version_dir:
            return cls._load_export(version_dir)
        from tfchat.checkpoint.classifier_dir import load_classifier, weights_files

        loaded = load_classifier(path)
        return cls(keras_score_fn(loaded.model, loaded.config.multi_label), loaded.config.labels,
                   loaded.config.multi_label, loaded.thresholds, loaded.metadata, os.path.abspath(path),
                   _file_fingerprint(*weights_files(path)))

    @classmethod
    def _load_export(cls, version_dir: str) -> "TextClassifier":
        import tensorflow_text  # noqa: F401  (registers the TF Text ops a SavedModel may use)

        with open(os.path.join(version_dir, "assets.extra", "tfchat.json")) as f:
            meta = json.load(f)
        signature = tf.saved_model.load(version_dir).signatures["classify"]

        def score_fn(text):
            return signature(text=text)["scores"]

        return cls(score_fn, meta["labels"], meta["multi_label"], meta.get("thresholds") or {},
                   meta.get("model_metadata", {}), version_dir,
                   _file_fingerprint(os.path.join(version_dir, "saved_model.pb"), os.path.join(version_dir, "variables")))

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [N, L] scores of `texts` (probabilities: sigmoid per label, or softmax)."""
        return batched_scores(self._score_fn, texts, len(self.labels))

    @property
    def fallback(self) -> tuple[str, float] | None:
        """(label, threshold) of a single-label classifier with an out-of-scope label (`training.classify
        --task intent`): that label is predicted when no label scores at least the threshold."""
        f = self.metadata.get("fallback")
        return (f["label"], float(f["threshold"])) if isinstance(f, dict) and f.get("label") in self.labels else None

    def predict(self, texts: Sequence[str]) -> list[list[str]]:
        """The labels predicted for each text: those at or above their thresholds, or the argmax (the
        fallback label when the argmax scores below its threshold)."""
        s = self.scores(texts)
        if not self.multi_label:
            if self.fallback:
                from tfchat.eval.classification import predict_with_fallback

                return [[self.labels[j]] for j in predict_with_fallback(s, self.labels, *self.fallback)]
            return [[self.labels[j]] for j in s.argmax(axis=1)]
        cut = np.array([self.thresholds.get(label, 0.5) for label in self.labels])
        return [[label for label, on in zip(self.labels, row) if on] for row in s >= cut]


def _export_version_dir(path: str) -> str | None:
    """The SavedModel version directory of a classifier export at `path` (base or version), else None."""
    candidates = [path]
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        versions = sorted((int(d) for d in os.listdir(path) if d.isdigit()), reverse=True)
        candidates = [os.path.join(path, str(v)) for v in versions[:1]]
    for d in candidates:
        try:
            with open(os.path.join(d, "assets.extra", "tfchat.json")) as f:
                if json.load(f).get("format") == EXPORT_FORMAT:
                    return d
        except (OSError, ValueError, AttributeError):
            continue
    return None


def _file_fingerprint(*paths: str) -> str:
    h = hashlib.sha256()
    for path in paths:
        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(root, n) for root, _, names in os.walk(path) for n in names)
        for file in files:
            st = os.stat(file)
            h.update(f"{os.path.abspath(file)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


class ContentFilter:
    """Flags texts whose `label` score is at or above `threshold` (default: the threshold stored with the model).

    Args:
        classifier: a multi-label `TextClassifier` with `label` among its labels.
        threshold: in (0, 1]; None = the model's own.
        label: the label that decides (`flagged`).
    """

    def __init__(self, classifier: TextClassifier, threshold: float | None = None, label: str = FLAGGED):
        if not classifier.multi_label or label not in classifier.labels:
            raise ValueError(f"{classifier.path}: a content filter needs a multi-label classifier with a {label!r} "
                             f"label (this one has {classifier.labels}); train one with "
                             "python -m training.classify --task moderation")
        if threshold is not None and not 0 < threshold <= 1:
            raise ValueError(f"the filter threshold must be in (0, 1], got {threshold}")
        self.classifier, self.label = classifier, label
        self.threshold = float(threshold if threshold is not None else classifier.thresholds.get(label, 0.5))
        self._column = classifier.labels.index(label)
        self._memo: dict[str, float] = {}

    @classmethod
    def load(cls, path: str, threshold: float | None = None) -> "ContentFilter":
        return cls(TextClassifier.load(path), threshold)

    @property
    def fingerprint(self) -> str:
        """Identifies the model and threshold (for caches of filtered data)."""
        return f"{self.classifier.fingerprint}-{self.label}-{self.threshold:.6g}"

    def describe(self) -> dict:
        return {"classifier": self.classifier.path, "label": self.label, "threshold": self.threshold}

    def text_scores(self, texts: Sequence[str]) -> np.ndarray:
        """The deciding label's score of each text, float [N] (memoized; safe to call from several threads)."""
        known = {t: self._memo.get(t) for t in texts}
        todo = [t for t, s in known.items() if s is None]
        if todo:
            known.update(zip(todo, self.classifier.scores(todo)[:, self._column].tolist()))
            if len(self._memo) + len(todo) > MEMO_SIZE:
                self._memo = {}
            self._memo.update((t, known[t]) for t in todo)
        return np.array([known[t] for t in texts], np.float32)

    def flag_texts(self, texts: Sequence[str]) -> np.ndarray:
        """bool [N]: is each text flagged?"""
        return self.text_scores(texts) >= self.threshold

    def flag_documents(self, documents: Sequence[str]) -> np.ndarray:
        """bool [N]: is any paragraph of each document flagged? (A document without paragraphs of
        `labelled.MIN_PARAGRAPH` characters is scored whole.)"""
        parts = [paragraphs(d) or [d] for d in documents]
        flags = self.flag_texts([p for ps in parts for p in ps])
        out, i = np.zeros(len(documents), bool), 0
        for k, ps in enumerate(parts):
            out[k] = flags[i:i + len(ps)].any()
            i += len(ps)
        return out

    def unflagged_conversations(self, conversations: Iterable[Sequence[dict]], chunk: int = 512) -> Iterator:
        """The conversations no message of which is flagged, scored `chunk` at a time (streams)."""
        for part in chunks(conversations, chunk):
            yield from (c for c, flagged in zip(part, self.flag_conversations(part)) if not flagged)

    def flag_conversations(self, conversations: Sequence[Sequence[dict]]) -> np.ndarray:
        """bool [N]: is any message of each conversation (`{"role", "content"}` dicts) flagged?"""
        flags = self.flag_texts([m["content"] for c in conversations for m in c])
        out, i = np.zeros(len(conversations), bool), 0
        for k, c in enumerate(conversations):
            out[k] = flags[i:i + len(c)].any()
            i += len(c)
        return out


def chunks(items: Iterable, size: int) -> Iterator[list]:
    """Lists of up to `size` consecutive items."""
    it = iter(items)
    while part := list(itertools.islice(it, size)):
        yield part
