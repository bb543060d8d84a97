"""Text classifiers: text in, one score per label out; multi-label (sigmoid) or single-label (softmax).

* `NGramClassifier` (fastText style, the default): in-graph hashed word and
  character n-grams (`tfchat.text.ngrams.HashedNGrams`) -> the mean of their
  embeddings -> an optional hidden layer -> one logit per label. Joulin et
  al. 2016 ("Bag of Tricks for Efficient Text Classification"), simplified:
  one hashed table for words and subwords instead of a word vocabulary plus
  hashed n-grams, and Adam instead of SGD with a linear decay. About a
  millisecond per message on a CPU core, so it can screen every message a
  chat server sees.
* `GPTClassifier` (`kind="gpt"`): the text through a tokenizer (in the graph)
  with `<|endoftext|>` in front, as pretraining shows a document -> a GPT
  backbone started from a tfchat model (`training.classify --kind gpt
  --from runs/pretrain`) -> the mean and the last of its hidden states -> one
  logit per label. GPT-1's fine-tuning for classification (Radford et al.
  2018), simplified: a linear head over pooled states, no auxiliary language
  modelling loss. Subword tokens and attention make other mistakes than
  hashed n-grams do.
* `EnsembleClassifier` (`kind="ensemble"`): the mean of its members'
  log-probabilities. A GPT member and an n-gram member make different
  mistakes, so together they beat both (README "Knowledge and intents").

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

from tfchat.config import GPTConfig
from tfchat.text.ngrams import HashedNGrams

KINDS = ("ngrams", "gpt", "ensemble")


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """What a classifier predicts and how it is shaped.

    Attributes:
        labels: the label names, in output order.
        multi_label: independent sigmoid per label (moderation); False: one
            softmax over labels, exactly one label per text (intents).
        kind: the model: "ngrams", "gpt" or "ensemble" (see the module docstring).
        buckets: hashed feature ids.
        dim: embedding width.
        hidden: width of a ReLU layer between the mean embedding and the
            output; 0 = linear (fastText).
        word_ngrams: longest word n-gram.
        char_ngrams: (shortest, longest) character n-gram; (0, 0) = none.
        max_words: words of a text used (the first); 0 = all.
        dropout: on the pooled features, while training.
        backbone: kind "gpt": the backbone's `GPTConfig` fields.
        max_tokens: kind "gpt": tokens of a text used (the first, `<|endoftext|>` included).
        members: kind "ensemble": how many member classifiers it averages.
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
    backbone: dict | None = None
    max_tokens: int = 64
    members: int = 0

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
        if self.kind == "gpt":
            if not isinstance(self.backbone, dict):
                raise ValueError("a kind 'gpt' classifier needs its backbone's GPTConfig fields (backbone)")
            gpt = GPTConfig.from_dict(self.backbone)
            if not isinstance(self.max_tokens, int) or not 2 <= self.max_tokens <= gpt.block_size:
                raise ValueError(f"max_tokens must be an int in [2, block_size={gpt.block_size}], got {self.max_tokens!r}")
        if (self.kind == "ensemble") != (self.members > 0):
            raise ValueError(f"members > 0 is for kind 'ensemble' (and only it), got kind {self.kind!r} with "
                             f"members={self.members}")

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


class _TextModel(keras.Model):
    """UTF-8 text [B] -> float32 logits [B, num_labels]; `config` is its `ClassifierConfig`."""

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @property
    def _default_save_signature(self):
        # What tf.saved_model.save traces for a Keras model: Keras would guess float inputs; ours are strings.
        return tf.function(lambda text: self(text), input_signature=[tf.TensorSpec([None], tf.string, name="text")])


@keras.saving.register_keras_serializable(package="tfchat")
class NGramClassifier(_TextModel):
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

    @classmethod
    def from_config(cls, config):
        return cls(ClassifierConfig.from_dict(config["config"]), name=config.get("name", "classifier"))


class GPTClassifier(_TextModel):
    """UTF-8 text [B] -> float32 logits [B, num_labels] through a tokenizer and a GPT backbone.

    Args:
        config: a kind "gpt" `ClassifierConfig`.
        tokenizer: a `tfchat.text.tokenizer.Tokenizer` whose vocabulary the backbone was trained on.
    """

    def __init__(self, config: ClassifierConfig, tokenizer, dtype=None, **kwargs):
        from tfchat.model.backbone import GPTBackbone

        super().__init__(name=kwargs.pop("name", "classifier"), dtype=dtype, **kwargs)
        gpt = GPTConfig.from_dict(config.backbone)
        if tokenizer.vocab_size != gpt.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids, the backbone {gpt.vocab_size}")
        self.config, self.tokenizer = config, tokenizer
        self.backbone = GPTBackbone(gpt, dtype=dtype)
        self.drop = keras.layers.Dropout(config.dropout, name="dropout")
        self.head = keras.layers.Dense(len(config.labels), name="head", dtype="float32")
        self.head.build((None, 2 * gpt.n_embd))

    def call(self, text, training=False):
        ids = self.tokenizer.tf_encode_documents(tf.reshape(text, [-1]))[:, : self.config.max_tokens]  # ragged [B, T]
        lengths = tf.cast(ids.row_lengths(), tf.int32)  # [B], >= 1 (<|endoftext|>)
        h = self.backbone(ids.to_tensor(self.tokenizer.pad_id), training=training)  # [B, T, C]
        h = tf.cast(h, tf.float32)
        mask = tf.sequence_mask(lengths, tf.shape(h)[1], tf.float32)[..., None]  # [B, T, 1]
        mean = tf.reduce_sum(h * mask, axis=1) / tf.reduce_sum(mask, axis=1)  # [B, C]
        last = tf.gather(h, lengths - 1, batch_dims=1)  # [B, C]: causal, so it has read the whole text
        return self.head(self.drop(tf.concat([mean, last], axis=-1), training=training))


class EnsembleClassifier(_TextModel):
    """UTF-8 text [B] -> float32 logits [B, num_labels]: the mean of the members' log-probabilities.

    Single-label: the mean log-softmax, so the scores are the members'
    normalised geometric mean; multi-label: the mean logit (log-odds) per
    label. Pooling in log space lets a confident member outvote an unsure
    one, which measured better on CLINC150 than the mean of probabilities.
    """

    def __init__(self, config: ClassifierConfig, members: list[keras.Model], **kwargs):
        super().__init__(name=kwargs.pop("name", "classifier"), **kwargs)
        if len(members) != config.members:
            raise ValueError(f"the config names {config.members} members, got {len(members)}")
        self.config, self.members = config, list(members)

    def call(self, text, training=False):
        logits = [tf.cast(m(text, training=training), tf.float32) for m in self.members]  # each [B, L]
        if not self.config.multi_label:
            logits = [tf.nn.log_softmax(x, axis=-1) for x in logits]
        return tf.add_n(logits) / len(logits)


def build_classifier(config: ClassifierConfig, dtype: str | None = None, tokenizer=None,
                     members: list[keras.Model] | None = None) -> keras.Model:
    """The model `config.kind` names, with every weight built; `dtype`: a Keras dtype policy.

    Kind "gpt" needs the backbone's `tokenizer`; kind "ensemble" its built `members`.
    """
    if config.kind == "gpt":
        if tokenizer is None:
            raise ValueError("a kind 'gpt' classifier needs its tokenizer")
        return GPTClassifier(config, tokenizer, dtype=dtype)
    if config.kind == "ensemble":
        return EnsembleClassifier(config, members or [])
    return NGramClassifier(config, dtype=dtype)


def scores(logits: tf.Tensor, multi_label: bool) -> tf.Tensor:
    """Probabilities from logits [B, L]: a sigmoid per label, or a softmax over labels."""
    logits = tf.cast(logits, tf.float32)
    return tf.sigmoid(logits) if multi_label else tf.nn.softmax(logits, axis=-1)
