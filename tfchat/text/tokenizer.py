"""Tokenizers: a trainable SentencePiece BPE and GPT-2's byte-level BPE.

Both encode and decode in Python and inside TF graphs (`tf.data` maps,
SavedModel signatures) with ops that stock TF Serving links: TF Text's
SentencePiece ops, and the regex-split/lookup ops keras-hub's
`BytePairTokenizer` is built from.

Special tokens are *control* ids: encoding text never produces them (the text
"<|user|>" is ordinary characters), so user input cannot forge a turn marker.
The chat template inserts them by id.

Example:

>>> tok = train_tokenizer(["Hello world.", "你好，世界。"] * 50, vocab_size=400)
>>> tok.decode(tok.encode("你好 world 🙂"))
'你好 world 🙂'
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf

# Import registers the SentencePiece and regex ops with TF.
import tensorflow_text as tf_text
from tensorflow_text.python.ops.sentencepiece_tokenizer import gen_sentencepiece_tokenizer
from tensorflow_text.python.ops.sentencepiece_tokenizer import _SentencepieceModelResource

from tfchat.text import chinese, special_tokens
from tfchat.text.special_tokens import SpecialIds

TOKENIZER_FILE = "tokenizer.json"
SPM_FILE = "tokenizer.model"
GPT2_VOCAB_FILE = "vocab.json"
GPT2_MERGES_FILE = "merges.txt"

class Tokenizer(tf.Module):
    """Common interface. Subclasses set `vocab_size` and `special` (a `SpecialIds`).

    Attributes:
        vocab_size: number of ids, special ids included.
        special: the special ids (`tfchat.text.special_tokens`); `eot_id`,
            `user_id`, ... are shortcuts to them.
    """

    kind = ""
    vocab_size: int
    special: SpecialIds
    _training_json = "{}"

    eot_id = property(lambda self: self.special.eot)
    system_id = property(lambda self: self.special.system)
    user_id = property(lambda self: self.special.user)
    assistant_id = property(lambda self: self.special.assistant)
    end_id = property(lambda self: self.special.end)
    pad_id = property(lambda self: self.special.pad)

    @property
    def special_ids(self) -> dict[str, int]:
        return self.special.to_dict()

    def encode(self, text: str) -> list[int]:
        """Text to ids; never emits special ids."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        ids = self.tf_encode(tf.constant(text))
        return ids.numpy().tolist() if isinstance(ids, tf.Tensor) else list(ids)

    def encode_document(self, text: str) -> list[int]:
        """`<|endoftext|>` + encode(text): a document as pretraining shows it."""
        return self.special.document(self.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        """Ids to text; special ids are dropped."""
        text = self.tf_decode(tf.constant([int(i) for i in ids], tf.int32))
        # keras-hub converts eager string outputs to Python already.
        text = text.numpy() if isinstance(text, tf.Tensor) else text
        return text.decode("utf-8") if isinstance(text, bytes) else text

    def tf_encode(self, strings: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        """Graph-safe encode: scalar -> int32 [n]; [N] -> int32 RaggedTensor."""
        raise NotImplementedError

    def tf_encode_batch(self, strings: tf.Tensor) -> tf.RaggedTensor:
        """Graph-safe encode of strings [N] -> int32 RaggedTensor [N, None], whatever the backend returns."""
        ids = self.tf_encode(strings)
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(ids)
        return tf.cast(ids, tf.int32)

    def tf_encode_documents(self, strings: tf.Tensor) -> tf.RaggedTensor:
        """Graph twin of `encode_document` for strings [N]: int32 RaggedTensor [N, None]."""
        ids = self.tf_encode_batch(strings)
        eot = tf.fill([ids.nrows(out_type=tf.int32), 1], tf.constant(self.eot_id, tf.int32))
        return tf.concat([tf.RaggedTensor.from_tensor(eot), ids], axis=1)

    def tf_decode(self, ids: tf.Tensor | tf.RaggedTensor) -> tf.Tensor:
        """Graph-safe decode: int32 [n] -> scalar string; [N, n] -> [N]."""
        raise NotImplementedError

    def save(self, directory: str) -> None:
        raise NotImplementedError

    @property
    def training(self) -> dict:
        """How the tokenizer was made (`train_tokenizer`'s settings and data, kept in tokenizer.json); {} if unknown."""
        return json.loads(self._training_json)

    def record_training(self, info: dict) -> None:
        """Replaces `training` (a method, not a setter: tf.Module would wrap an assigned dict for tracking)."""
        self._training_json = json.dumps(info, ensure_ascii=False)

    def token_bytes(self) -> tuple[bytes, ...]:
        """The UTF-8 bytes each id stands for in decoded text, special ids b"": [vocab_size].

        Decoding concatenates them: `b"".join(token_bytes[i] for i in ids)`
        is `decode(ids).encode()` for ids that decode to valid UTF-8, and for
        byte-fallback ids it is the raw bytes, where `decode` shows U+FFFD
        for a character not yet complete (`tfchat.inference.streaming` holds
        such a tail back). Computed once per tokenizer.
        """
        if getattr(self, "_token_bytes", None) is None:
            table = self._token_bytes_table()
            for i in self.special.all_ids():
                if 0 <= i < len(table):
                    table[i] = b""
            self._token_bytes = tuple(table)  # a tuple: tf.Module would wrap a list for tracking
        return self._token_bytes

    def _token_bytes_table(self) -> list[bytes]:
        return [self.decode([i]).encode("utf-8") for i in range(self.vocab_size)]

    def byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each id contributes to decoded text: int64 [vocab_size] (`token_bytes`' lengths).

        `sum(lengths[ids]) == len(decode(ids).encode())` for ids that decode
        to valid UTF-8 (bits per byte counts bytes this way). Special ids have 0 bytes.
        """
        return np.array([len(b) for b in self.token_bytes()], np.int64)

    def _metadata(self) -> dict:
        meta = {"type": self.kind, "vocab_size": self.vocab_size, "special_ids": self.special_ids}
        return {**meta, "training": self.training} if self.training else meta


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece BPE with byte fallback (any Unicode text round-trips)."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        super().__init__(name="sentencepiece_tokenizer")
        import sentencepiece as spm

        self._proto = model_proto
        sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = sp.get_piece_size()
        ids = {}
        for name, piece in special_tokens.PIECES.items():
            i = sp.piece_to_id(piece)
            if i != sp.unk_id():
                ids[name] = i
        self.special = SpecialIds(ids, pad=sp.pad_id() if sp.pad_id() >= 0 else ids.get("eot", 0))
        self._sp = tf_text.SentencepieceTokenizer(model=model_proto, out_type=tf.int32)
        self._sp._model_resource = _SharedSentencepieceResource(model_proto)

    def tf_encode(self, strings):
        return self._sp.tokenize(strings)

    def tf_decode(self, ids):
        return self._sp.detokenize(ids)

    def _token_bytes_table(self) -> list[bytes]:
        import sentencepiece as spm

        # Read the pieces: a lone byte-fallback id decodes to U+FFFD, not to its one byte.
        sp = spm.SentencePieceProcessor(model_proto=self._proto)
        table = []
        for i in range(self.vocab_size):
            if sp.is_control(i):
                table.append(b"")
            elif sp.is_byte(i):  # "<0xE4>"
                table.append(bytes([int(sp.id_to_piece(i)[3:5], 16)]))
            elif sp.is_unknown(i):
                table.append(sp.decode([i]).encode("utf-8"))  # " ⁇ ", as decode shows it
            else:
                table.append(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        return table

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, SPM_FILE), "wb") as f:
            f.write(self._proto)
        _write_json(os.path.join(directory, TOKENIZER_FILE), self._metadata())


class _SharedSentencepieceResource(_SentencepieceModelResource):
    """TF Text's model resource, but with a content-derived `shared_name`.

    TF Text's resource is owned by its kernel, so anything that clears the
    eager kernel cache (`tf.random.set_seed`, `keras.utils.set_random_seed`)
    deletes it and later calls fail with "Resource ... does not exist". A
    shared name makes the resource manager own it; deriving the name from the
    model bytes keeps sharing correct (same name, same model).
    """

    def __init__(self, model: bytes):
        self._shared_name = "tfchat_spm_" + hashlib.sha256(model).hexdigest()[:24]
        super().__init__(model, None)

    def _create_resource(self):
        return gen_sentencepiece_tokenizer.sentencepiece_op(model=self._model, shared_name=self._shared_name)


class GPT2Tokenizer(Tokenizer):
    """GPT-2's byte-level BPE through keras-hub's `BytePairTokenizer`.

    GPT-2 has one special token, `<|endoftext|>` (50256). The other special
    tokens (`extra_specials`, names from the registry) get the ids right after
    the BPE vocabulary; models imported with `tfchat.convert` have embedding
    rows for them. Imports made before the registry grew have the four chat
    markers only, which stays the default when loading their tokenizer.json.
    """

    kind = "gpt2"
    LEGACY_SPECIALS = ("system", "user", "assistant", "end")

    def __init__(self, vocabulary: dict[str, int], merges: list[str], extra_specials: Sequence[str] | None = None):
        super().__init__(name="gpt2_tokenizer")
        import keras_hub

        vocabulary, merges = dict(vocabulary), list(merges)
        # tf.Module wraps attribute dicts/lists for tracking: keep plain copies for keras-hub and saving.
        self._files = (json.dumps(vocabulary, ensure_ascii=False), "\n".join(merges))
        eot = special_tokens.PIECES["eot"]
        if eot not in vocabulary:
            raise ValueError(f"GPT-2 vocabulary lacks {eot!r}")
        if not merges:  # keras-hub would fail later with "Could not find device for node: HashTableV2"
            raise ValueError("the GPT-2 tokenizer has no merges (merges.txt holds no merge rules)")
        n = max(vocabulary.values()) + 1
        if extra_specials is None:
            extra_specials = [name for name in special_tokens.NAMES if name != "eot"]
        self.extra_specials = tuple(extra_specials)
        ids = {"eot": vocabulary[eot], **{name: n + i for i, name in enumerate(self.extra_specials)}}
        self.special = SpecialIds(ids, pad=vocabulary[eot])
        self.vocab_size = n + len(self.extra_specials)
        self._bpe_size = n
        self._bpe = keras_hub.tokenizers.BytePairTokenizer(
            vocabulary=vocabulary, merges=merges, dtype="int32", _allow_python_workflow=False
        )
        # keras-hub's BPE graph takes ~2 s to trace: trace it once, and every signature that tokenizes calls it.
        self._tokenize = tf.function(self._bpe.tokenize, input_signature=[tf.TensorSpec([None], tf.string)],
                                     autograph=False)

    def tf_encode(self, strings):
        strings = tf.convert_to_tensor(strings, tf.string)
        if strings.shape.rank == 0:
            return self._tokenize(strings[None])[0]  # int32 [n]
        return self._tokenize(strings)

    def tf_decode(self, ids):
        # keras-hub's detokenize has no notion of our extra ids: drop them.
        if isinstance(ids, tf.RaggedTensor):
            ids = tf.ragged.boolean_mask(ids, ids < self._bpe_size)
        elif ids.shape.rank == 1:
            ids = tf.boolean_mask(ids, ids < self._bpe_size)
        else:
            ids = tf.ragged.boolean_mask(ids, ids < self._bpe_size)
        return self._bpe.detokenize(ids)

    def _token_bytes_table(self) -> list[bytes]:
        # Byte-level BPE: every character of a vocabulary entry stands for one byte (GPT-2's byte <-> unicode map).
        from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

        unicode_to_byte = {c: b[0] for b, c in zip(*bytes_to_unicode())}
        table = [b""] * self.vocab_size
        for token, i in json.loads(self._files[0]).items():
            table[i] = bytes(unicode_to_byte[c] for c in token)
        return table

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        vocab_json, merges = self._files
        with open(os.path.join(directory, GPT2_VOCAB_FILE), "w", encoding="utf-8") as f:
            f.write(vocab_json)
        with open(os.path.join(directory, GPT2_MERGES_FILE), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + merges + "\n")
        meta = {**self._metadata(), "extra_specials": list(self.extra_specials)}
        _write_json(os.path.join(directory, TOKENIZER_FILE), meta)

    @classmethod
    def from_files(
        cls, vocab_path: str, merges_path: str, extra_specials: Sequence[str] | None = None
    ) -> "GPT2Tokenizer":
        with open(vocab_path, encoding="utf-8") as f:
            vocabulary = json.load(f)
        with open(merges_path, encoding="utf-8") as f:
            merges = [ln.rstrip("\r\n") for ln in f if ln.strip() and not ln.startswith("#version")]
        return cls(vocabulary, merges, extra_specials)


# SentencePiece accepts character coverage in [0.98, 1]; 0.9995 is its recommendation for Chinese and Japanese.
MAX_COVERAGE = 0.9995
MIN_COVERAGE = 0.98
# At most this share of the ids left after bytes and specials goes to single characters, the rest to merges.
CHARACTER_SHARE = 0.5


def character_coverage_for(counts: collections.Counter, vocab_size: int) -> tuple[float, int]:
    """(coverage, characters it needs): `MAX_COVERAGE`, lowered until the characters that cover it take at
    most `CHARACTER_SHARE` of the free ids, never below `MIN_COVERAGE` (see `train_tokenizer`).

    Raises:
        ValueError: even `MIN_COVERAGE` needs more characters than `vocab_size` has ids.
    """
    free = vocab_size - _reserved_ids()
    total = sum(counts.values())
    cumulative = np.cumsum(sorted(counts.values(), reverse=True)) / max(total, 1)

    def needed(coverage):  # how many characters SentencePiece keeps for this coverage
        return int(min(np.searchsorted(cumulative, coverage) + 1, len(cumulative)))

    coverage = MAX_COVERAGE
    budget = int(CHARACTER_SHARE * free)
    if needed(coverage) > budget and budget > 0:
        coverage = max(MIN_COVERAGE, float(cumulative[budget - 1]) - 1e-6)
    if needed(coverage) > free:
        raise ValueError(
            f"vocab_size {vocab_size} is too small for this text: {needed(MIN_COVERAGE)} distinct characters cover "
            f"{MIN_COVERAGE:.0%} of it (Chinese text has thousands); use a vocab_size of at least "
            f"{needed(MIN_COVERAGE) + _reserved_ids() + 256}")
    return coverage, needed(coverage)


def _reserved_ids() -> int:
    return 256 + len(special_tokens.NAMES) + 2 + 1  # bytes, specials, <|pad|> and <unk>, "\n"


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    *,
    character_coverage: float | None = None,
    max_sentence_chars: int = 4096,
    input_sentence_size: int = 2_000_000,
    num_threads: int = 2,
) -> SentencePieceTokenizer:
    """Trains a SentencePiece BPE tokenizer with byte fallback, for any script.

    Identity normalization and kept whitespace make `decode(encode(t)) == t`
    for any text (the default NFKC would rewrite e.g. full-width "？" and
    "，", which Chinese text uses). Nothing assumes words separated by spaces:
    a Chinese line is one run of characters that merges can cut anywhere
    (within a script: `split_by_unicode_script`), long lines are cut into
    `max_sentence_chars` pieces for training only, and digits stay single.

    Characters: the ones covering `character_coverage` of the text get their
    own id, rarer ones are spelt in byte-fallback ids (3 per Han character).
    English needs about a hundred characters for 0.9995; Chinese needs
    thousands (the zhwiki sample: 6,300 for 0.9995, 2,700 for 0.98), more
    than a small vocabulary has. So by default (None) the coverage is 0.9995,
    lowered until those characters take at most half of the ids left after
    bytes and specials (the rest go to merges), and never below 0.98, which
    SentencePiece requires (`character_coverage_for`): a 4,096-id tokenizer
    of the zhwiki sample covers 98% of its characters, an 8,192-id one
    99.5%, an English one 99.95%. `python -m benchmarks.tokenizers` measures
    the result (bytes per token, byte-fallback share, held-out bits per byte).

    The texts are read into memory (pass a sample: `training.jobs` passes the
    first 10 M characters). The settings and what the text was are recorded in
    `tokenizer.training` (saved in tokenizer.json).

    Args:
        texts: documents; long ones are cut into lines for training only.
        vocab_size: total ids, the 256 byte pieces and special tokens included.
        character_coverage: in [0.98, 1]; None chooses it as above.

    Raises:
        ValueError: vocab_size too small (for the specials, or for the text's characters), or no text.
    """
    import sentencepiece as spm

    minimum = _reserved_ids()
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} (256 bytes + specials), got {vocab_size}")
    sentences = []
    for text in texts:
        for line in text.split("\n"):
            line = line.strip()
            while line:
                sentences.append(line[:max_sentence_chars])
                line = line[max_sentence_chars:]
    if not sentences:
        raise ValueError("no text to train a tokenizer on")
    counts = collections.Counter()
    for sentence in sentences:
        counts.update(sentence)
    if character_coverage is None:
        character_coverage, _ = character_coverage_for(counts, vocab_size)
    elif not MIN_COVERAGE <= character_coverage <= 1.0:
        raise ValueError(f"character_coverage must be in [{MIN_COVERAGE}, 1], got {character_coverage}")
    characters = sum(counts.values())
    han = sum(n for ch, n in counts.items() if chinese.CJK.match(ch))
    settings = dict(
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=character_coverage,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        split_by_unicode_script=True,
        allow_whitespace_only_pieces=True,
    )
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            **settings,
            pad_id=0,
            unk_id=1,
            bos_id=-1,
            eos_id=-1,
            pad_piece=special_tokens.PAD_PIECE,
            control_symbols=list(special_tokens.PIECES.values()),
            user_defined_symbols=["\n"],
            max_sentence_length=max_sentence_chars * 4,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            hard_vocab_limit=False,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise ValueError(f"SentencePiece training failed: {e}") from e
    tok = SentencePieceTokenizer(model.getvalue())
    tok.record_training({
        "settings": settings,
        "characters": characters,
        "distinct_characters": len(counts),
        "han_share": round(han / characters, 4),
    })
    return tok


def load_tokenizer(directory: str) -> Tokenizer:
    """Loads a tokenizer saved by `Tokenizer.save`; errors name the bad file."""
    meta_path = os.path.join(directory, TOKENIZER_FILE)
    meta = _read_json(meta_path)
    kind = meta.get("type") if isinstance(meta, dict) else None
    try:
        if kind == SentencePieceTokenizer.kind:
            path = os.path.join(directory, SPM_FILE)
            with open(path, "rb") as f:
                proto = f.read()
            try:
                tok = SentencePieceTokenizer(proto)
            except Exception as e:  # sentencepiece raises bare RuntimeError/OSError
                raise ValueError(f"{path}: not a valid SentencePiece model ({e})") from e
        elif kind == GPT2Tokenizer.kind:
            path = os.path.join(directory, GPT2_VOCAB_FILE)
            extra = meta.get("extra_specials", GPT2Tokenizer.LEGACY_SPECIALS)
            tok = GPT2Tokenizer.from_files(path, os.path.join(directory, GPT2_MERGES_FILE), extra)
        else:
            raise ValueError(f"{meta_path}: unknown tokenizer type {kind!r}")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"tokenizer file missing: {e.filename}") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt JSON ({e})") from e
    if tok.vocab_size != meta.get("vocab_size"):
        raise ValueError(
            f"{meta_path}: says vocab_size={meta.get('vocab_size')}, the model has {tok.vocab_size}"
        )
    if isinstance(meta.get("training"), dict):
        tok.record_training(meta["training"])
    return tok


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"tokenizer file missing: {path}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: corrupt JSON ({e})") from e
