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

Only core TensorFlow string ops (and TF Text's pure-Python `ngrams`), so the
layer exports into a SavedModel that stock TF Serving runs.

Example:

>>> import tensorflow as tf
>>> ids = HashedNGrams(buckets=1000)(tf.constant(["Kill the process", "你好"]))
>>> ids.shape.rank, int(ids.row_lengths()[0]) > 3
(2, True)
"""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_text as tf_text


def words(text: tf.Tensor) -> tf.RaggedTensor:
    """Normalized words of each text: string [B] -> ragged string [B, None] (step 1 of the module docstring)."""
    text = tf.strings.lower(text, encoding="utf-8")
    text = tf.strings.regex_replace(text, "['\u2019]", "")
    text = tf.strings.regex_replace(text, r"(\p{Han})", r" \1 ")
    text = tf.strings.regex_replace(text, r"[^\pL\pN]+", " ")
    return tf.strings.split(text)


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
        features = [w]
        for n in range(2, self.word_ngrams + 1):
            features.append(tf_text.ngrams(w, n, reduction_type=tf_text.Reduction.STRING_JOIN, string_separator=" "))
        lo, hi = self.char_ngrams
        if hi:
            marked = tf.ragged.map_flat_values(lambda x: tf.strings.join(["<", x, ">"]), w)
            chars = tf.strings.unicode_split(marked, "UTF-8")  # [B, W, C]
            for n in range(lo, hi + 1):
                grams = tf_text.ngrams(chars, n, axis=-1, reduction_type=tf_text.Reduction.STRING_JOIN, string_separator="")
                features.append(grams.merge_dims(1, 2))  # [B, W * (C - n + 1)]
        all_features = tf.concat(features, axis=1) if len(features) > 1 else features[0]
        return tf.ragged.map_flat_values(tf.strings.to_hash_bucket_fast, all_features, self.buckets)

    def get_config(self):
        return {**super().get_config(), "buckets": self.buckets, "word_ngrams": self.word_ngrams,
                "char_ngrams": list(self.char_ngrams), "max_words": self.max_words}
