"""Exports a classifier (`training.classify`) as a versioned SavedModel for TF Serving.

Signatures (the batch is dimension 0 of every input and output, so TF
Serving's row format works):

* `classify` = `serving_default`: text string [B] -> scores float32 [B, L]
  (sigmoid per label, or softmax), labels string [B, L] (the label names,
  the same in every row), predicted bool [B, L] (score at or above the
  label's stored threshold; single-label: the highest score).

Tokenization (hashed n-grams) is in the graph; no XLA ops, so stock
`tensorflow_model_server` runs it. `assets.extra/tfchat.json` holds the
labels, thresholds and the classifier's metadata, which
`tfchat.inference.classifier.TextClassifier.load` reads.

Example:

>>> path = export_classifier(load_classifier("runs/moderation"), "exports/moderation")  # doctest: +SKIP
"""

from __future__ import annotations

import tensorflow as tf

from serving.exporter import model_variables, save_version, untracked
from tfchat.checkpoint.classifier_dir import LoadedClassifier
from tfchat.inference.classifier import EXPORT_FORMAT
from tfchat.model.classifier import scores


class ClassifierModule(tf.Module):
    """The exported object: the Keras classifier, its labels and thresholds, and the `classify` signature."""

    def __init__(self, loaded: LoadedClassifier):
        super().__init__(name="tfchat_classifier")
        untracked(self, "model", loaded.model)
        self.model_variables = model_variables(self.model)
        # The resources the graph uses besides the weights: GPT members' tokenizers.
        self.tokenizers = [layer.tokenizer for layer in self.model._flatten_layers() if hasattr(layer, "tokenizer")]
        self.labels = list(loaded.config.labels)
        self.multi_label = loaded.config.multi_label
        thresholds = loaded.thresholds
        self.thresholds = [thresholds.get(label, 0.5) for label in self.labels]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def classify(self, text):
        s = scores(self.model(text, training=False), self.multi_label)  # [B, L]
        batch = tf.shape(s)[0]
        if self.multi_label:
            predicted = s >= tf.constant(self.thresholds, tf.float32)
        else:
            predicted = tf.one_hot(tf.argmax(s, axis=-1), len(self.labels), on_value=True, off_value=False)
        labels = tf.tile(tf.constant([self.labels]), [batch, 1])
        return {"scores": s, "labels": labels, "predicted": predicted}


def export_classifier(loaded: LoadedClassifier, base: str, version: int | None = None, name: str = "moderation") -> str:
    """Writes `base/<version>/` atomically plus `base/models.config`; returns the version directory."""
    module = ClassifierModule(loaded)
    fn = module.classify.get_concrete_function()
    meta = {"format": EXPORT_FORMAT, "labels": module.labels, "multi_label": module.multi_label,
            "thresholds": loaded.thresholds, "config": loaded.config.to_dict(), "model_metadata": loaded.metadata}
    return save_version(module, {"serving_default": fn, "classify": fn}, base, meta, version=version, name=name)
