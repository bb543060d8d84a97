"""Hashed n-gram features, in the graph: the tokenizer of tfchat's fast text classifier (fastText style).

`HashedNGrams` maps UTF-8 text [B] to feature ids, a ragged int64 [B, None]:

1. lower-case (Unicode), drop apostrophes, every other run of characters that
   is not a letter or a digit becomes a space, and every Han character stands
   alone (Chinese has no spaces: its "words" are characters, its word bigrams
   character bigrams);
2. features: the words, the word n-grams up to `word_ngrams` (joined by a
   space), and the character n-grams of `<word>` for n in `char_ngrams`
   (fastText's subwords: "killer" -> "<ki", "kil", ..., "er>"), so unseen
   spellings and inflections share features with known ones;
3. each feature hashed (FarmHash fingerprint) into `buckets` ids.

Only core TensorFlow string ops, so the layer exports into a SavedModel that
any TensorFlow runtime loads (stock TF Serving, C++ `LoadSavedModel`) without
extra op libraries.

Example:

>>> import tensorflow as tf
>>> ids = HashedNGrams(buckets=1000)(tf.constant(["Kill the process", "你好"]))
>>> ids.shape.rank, int(ids.row_lengths()[0]) > 3
(2, True)
"""

from __future__ import annotations

import keras
import tensorflow as tf


def words(text: tf.Tensor) -> tf.RaggedTensor:
    """Normalized words of each text: string [B] -> ragged string [B, None] (step 1 of the module docstring)."""
    text = tf.strings.lower(text, encoding="utf-8")
    text = tf.strings.regex_replace(text, "['\u2019]", "")
    text = tf.strings.regex_replace(text, r"(\p{Han})", r" \1 ")
    text = tf.strings.regex_replace(text, r"[^\pL\pN]+", " ")
    return tf.strings.split(text)


def word_ngrams(w: tf.RaggedTensor, n: int) -> tf.RaggedTensor:
    """The word n-grams of each row, joined by a space: ragged string [B, W] -> [B, max(W - n + 1, 0)]."""
    flat, lengths = w.flat_values, w.row_lengths()
    count = tf.maximum(lengths - (n - 1), 0)  # n-grams per row
    # Start of each n-gram in `flat`: the first `count` word positions of every row.
    starts = (tf.ragged.range(count) + tf.expand_dims(w.row_starts(), 1)).flat_values
    grams = tf.strings.join([tf.gather(flat, starts + k) for k in range(n)], separator=" ")
    return tf.RaggedTensor.from_row_lengths(grams, count)


def char_ngrams(strings: tf.Tensor, n: int) -> tf.RaggedTensor:
    """The character n-grams of each string: string [N] -> ragged string [N, max(chars - n + 1, 0)]."""
    length = tf.strings.length(strings, unit="UTF8_CHAR")
    starts = tf.ragged.range(tf.maximum(length - n + 1, 0))  # [N, None]
    pos = tf.cast(starts.flat_values, tf.int32)
    grams = tf.strings.substr(tf.repeat(strings, starts.row_lengths()), pos, tf.fill(tf.shape(pos), n), unit="UTF8_CHAR")
    return tf.RaggedTensor.from_row_splits(grams, starts.row_splits)


@keras.saving.register_keras_serializable(package="tfchat")
class HashedNGrams(keras.layers.Layer):
    """string [B] -> hashed word and character n-gram ids, ragged int64 [B, None] in [0, buckets).

    Args:
        buckets: size of the hashed id space.
        word_ngrams: longest word n-gram (1 = words only).
        char_ngrams: (shortest, longest) character n-gram of `<word>`; (0, 0) = none.
        max_words: words of a text that are used (the first ones); 0 = all.
    """

    def __init__(self, buckets: int = 1 << 18, word_ngrams: int = 2, char_ngrams=(3, 5), max_words: int = 0, **kwargs):
        kwargs["trainable"] = False  # no weights
        super().__init__(**kwargs)
        if buckets < 1 or word_ngrams < 1:
            raise ValueError(f"buckets and word_ngrams must be positive, got {buckets}, {word_ngrams}")
        lo, hi = char_ngrams
        if (lo, hi) != (0, 0) and not 1 <= lo <= hi:
            raise ValueError(f"char_ngrams must be (0, 0) or 1 <= lo <= hi, got {char_ngrams}")
        self.buckets, self.word_ngrams, self.char_ngrams, self.max_words = buckets, word_ngrams, (lo, hi), max_words

    def call(self, text):
        w = words(text)  # [B, W]
        if self.max_words:
            w = w[:, : self.max_words]
        features = [w] + [word_ngrams(w, n) for n in range(2, self.word_ngrams + 1)]
        lo, hi = self.char_ngrams
        marked = tf.strings.join(["<", w.flat_values, ">"])  # [sum W]
        for n in range(lo, hi + 1) if hi else ():
            per_word = char_ngrams(marked, n)  # [sum W, None]
            features.append(tf.RaggedTensor.from_row_splits(per_word, w.row_splits).merge_dims(1, 2))
        all_features = tf.concat(features, axis=1)  # [B, F]
        return tf.ragged.map_flat_values(tf.strings.to_hash_bucket_fast, all_features, self.buckets)

    def get_config(self):
        return {**super().get_config(), "buckets": self.buckets, "word_ngrams": self.word_ngrams,
                "char_ngrams": list(self.char_ngrams), "max_words": self.max_words}
