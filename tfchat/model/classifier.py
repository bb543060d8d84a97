"""Text classifiers: text in, one score per label out; multi-label (sigmoid) or single-label (softmax).

* `NGramClassifier` (fastText style, the default): in-graph hashed word and
  character n-grams (`tfchat.text.ngrams.HashedNGrams`) -> the mean of their
  embeddings -> an optional hidden layer -> one logit per label. Joulin et
  al. 2016 ("Bag of Tricks for Efficient Text Classification"), simplified:
  one hashed table for words and subwords instead of a word vocabulary plus
  hashed n-grams, and Adam instead of SGD with a linear decay. About a
  millisecond per message on a CPU core, so it can screen every message a
  chat server sees.

The model maps UTF-8 strings [B] to float32 logits [B, num_labels];
`scores(logits)` turns them into probabilities (sigmoid per label, or a
softmax over labels). Which labels, and how the model is shaped, is a
`ClassifierConfig`, stored with the model (`tfchat.checkpoint.classifier_dir`),
so the same code serves moderation, intents or reply styles.

Example:

>>> import tensorflow as tf
>>> config = ClassifierConfig(labels=("flagged", "hate"), buckets=1000, dim=8)
>>> model = build_classifier(config)
>>> scores(model(tf.constant(["hello there"])), config.multi_label).shape
TensorShape([1, 2])
"""

from __future__ import annotations

import dataclasses
import json

import keras
import tensorflow as tf

from tfchat.text.ngrams import HashedNGrams

KINDS = ("ngrams",)


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """What a classifier predicts and how it is shaped.

    Attributes:
        labels: the label names, in output order.
        multi_label: independent sigmoid per label (moderation); False: one
            softmax over labels, exactly one label per text (intents).
        kind: the model ("ngrams").
        buckets: hashed feature ids.
        dim: embedding width.
        hidden: width of a ReLU layer between the mean embedding and the
            output; 0 = linear (fastText).
        word_ngrams: longest word n-gram.
        char_ngrams: (shortest, longest) character n-gram; (0, 0) = none.
        max_words: words of a text used (the first); 0 = all.
        dropout: on the mean embedding, while training.
    """

    labels: tuple[str, ...]
    multi_label: bool = True
    kind: str = "ngrams"
    buckets: int = 1 << 18
    dim: int = 16
    hidden: int = 0
    word_ngrams: int = 2
    char_ngrams: tuple[int, int] = (3, 5)
    max_words: int = 0
    dropout: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "char_ngrams", tuple(self.char_ngrams))
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be distinct and at least one, got {list(self.labels)}")
        if not all(isinstance(x, str) and x for x in self.labels):
            raise ValueError(f"labels must be non-empty strings, got {list(self.labels)}")
        if not self.multi_label and len(self.labels) < 2:
            raise ValueError("single-label classification needs at least two labels")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("buckets", "dim", "word_ngrams"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"ClassifierConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.hidden < 0 or self.max_words < 0:
            raise ValueError("hidden and max_words must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def replace(self, **changes) -> "ClassifierConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["labels"], d["char_ngrams"] = list(self.labels), list(self.char_ngrams)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a classifier config must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown ClassifierConfig fields: {', '.join(unknown)}")
        return cls(**d)


@keras.saving.register_keras_serializable(package="tfchat")
class NGramClassifier(keras.Model):
    """UTF-8 text [B] -> float32 logits [B, num_labels] (see the module docstring)."""

    def __init__(self, config: ClassifierConfig, **kwargs):
        super().__init__(name=kwargs.pop("name", "classifier"), **kwargs)
        self.config = config
        self.features = HashedNGrams(config.buckets, config.word_ngrams, config.char_ngrams, config.max_words,
                                     name="features")
        self.embedding = keras.layers.Embedding(config.buckets, config.dim, name="embedding")
        self.drop = keras.layers.Dropout(config.dropout, name="dropout")
        self.hidden = keras.layers.Dense(config.hidden, activation="relu", name="hidden") if config.hidden else None
        self.head = keras.layers.Dense(len(config.labels), name="head", dtype="float32")
        # Build every weight now (a subclassed model has none until called).
        self.embedding.build((None,))
        width = config.dim
        if self.hidden is not None:
            self.hidden.build((None, width))
            width = config.hidden
        self.head.build((None, width))

    def embed(self, text: tf.Tensor) -> tf.Tensor:
        """The mean embedding of each text's features: float [B, dim] (zeros for a text with none)."""
        ids = self.features(tf.reshape(text, [-1]))  # ragged [B, F]
        vectors = self.embedding(ids.flat_values)  # [sum F, dim]
        return tf.math.unsorted_segment_mean(vectors, ids.value_rowids(), num_segments=ids.nrows())

    def call(self, text, training=False):
        x = self.drop(self.embed(text), training=training)
        if self.hidden is not None:
            x = self.hidden(x)
        return self.head(x)

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(ClassifierConfig.from_dict(config["config"]), name=config.get("name", "classifier"))

    @property
    def _default_save_signature(self):
        # What tf.saved_model.save traces for a Keras model: Keras would guess float inputs; ours are strings.
        return tf.function(lambda text: self(text), input_signature=[tf.TensorSpec([None], tf.string, name="text")])


def build_classifier(config: ClassifierConfig, dtype: str | None = None) -> keras.Model:
    """The model `config.kind` names, with every weight built; `dtype`: a Keras dtype policy."""
    return NGramClassifier(config, dtype=dtype)


def scores(logits: tf.Tensor, multi_label: bool) -> tf.Tensor:
    """Probabilities from logits [B, L]: a sigmoid per label, or a softmax over labels."""
    logits = tf.cast(logits, tf.float32)
    return tf.sigmoid(logits) if multi_label else tf.nn.softmax(logits, axis=-1)
