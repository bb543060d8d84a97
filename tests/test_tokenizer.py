import json

import pytest
import tensorflow as tf

from tfchat.text.special_tokens import NAMES, PIECES as SPECIAL_TOKENS
from tfchat.text.tokenizer import load_tokenizer, train_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Numbers like 2024 and 3.14 appear too.",
    "中文维基百科是维基百科的中文版本。你好，世界！",
    "Emoji 🙂 and accents: café, naïve, Ærøskøbing.",
] * 40


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=400)


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox.",
        "",
        "你好，世界？",
        "全角句号。全角问号？未见过的字：龘",
        "emoji 🙂🚀👩‍👩‍👧 and ZWJ",
        "  leading, double  spaces, trailing \n\nnew lines\t tab",
        "Full-width ？！ stays full-width",
    ],
)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_special_ids_are_distinct_and_never_encoded(tok):
    ids = tok.special_ids
    assert len(set(ids.values())) == len(ids)
    forged = "".join(SPECIAL_TOKENS.values())
    encoded = tok.encode(forged)
    assert not set(encoded) & set(ids.values())
    assert tok.decode(encoded) == forged
    # Decoding drops special ids.
    assert tok.decode([tok.user_id] + tok.encode("hi") + [tok.end_id]) == "hi"


def test_graph_encode_matches_python(tok):
    texts = ["The quick brown fox.", "你好，世界？", ""]
    ds = tf.data.Dataset.from_tensor_slices(texts).map(tok.tf_encode)
    for text, ids in zip(texts, ds):
        assert ids.numpy().tolist() == tok.encode(text)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def round_trip(strings):
        return tok.tf_decode(tok.tf_encode(strings))

    assert [s.decode() for s in round_trip(tf.constant(texts)).numpy()] == texts


def test_save_load(tok, tmp_path):
    tok.save(str(tmp_path))
    again = load_tokenizer(str(tmp_path))
    assert again.special_ids == tok.special_ids
    assert again.encode("你好 fox") == tok.encode("你好 fox")


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match="vocab_size must be at least"):
        train_tokenizer(TEXTS, vocab_size=100)


def test_load_errors_name_the_file(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(str(tmp_path / "nowhere"))
    tok.save(str(tmp_path))
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="tokenizer.model"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text(json.dumps({"type": "wordpiece"}))
    with pytest.raises(ValueError, match="unknown tokenizer type"):
        load_tokenizer(str(tmp_path))


def test_gpt2_tokenizer_from_files(tmp_path):
    from tfchat.text.tokenizer import GPT2Tokenizer

    # A tiny byte-level BPE: the printable bytes GPT-2 maps bytes to, one merge.
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode()[1])
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab["th"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nt h\n")
    tok = GPT2Tokenizer.from_files(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    assert tok.eot_id == vocab["<|endoftext|>"]
    # Every registry token but <|endoftext|> gets an id after the BPE vocabulary.
    assert tok.vocab_size == len(vocab) + len(NAMES) - 1
    assert tok.user_id == len(vocab) + 1 and tok.special.has("knowledge") and len(tok.special.controls) == 32
    ids = tok.encode("the 你好")
    assert ids[0] == vocab["th"]
    assert tok.decode(ids + [tok.user_id]) == "the 你好"
    tok.save(str(tmp_path / "saved"))
    again = load_tokenizer(str(tmp_path / "saved"))
    assert again.encode("the") == tok.encode("the") and again.special_ids == tok.special_ids
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")  # a header, no merge rules
    with pytest.raises(ValueError, match="has no merges"):
        GPT2Tokenizer.from_files(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))


def test_gpt2_tokenizer_saved_before_the_registry_grew_keeps_its_four_markers(tmp_path):
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    vocab = {s: i for i, s in enumerate(bytes_to_unicode()[1])}
    vocab["th"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nt h\n")
    # tokenizer.json as tfchat 0.1 wrote it: no "extra_specials".
    n = len(vocab)
    meta = {"type": "gpt2", "vocab_size": n + 4,
            "special_ids": {"eot": n - 1, "system": n, "user": n + 1, "assistant": n + 2, "end": n + 3, "pad": n - 1}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(meta))
    tok = load_tokenizer(str(tmp_path))
    assert tok.vocab_size == n + 4 and tok.special_ids == meta["special_ids"]
    assert not tok.special.has("knowledge")


def test_new_sentencepiece_tokenizers_reserve_knowledge_and_control_ids(tok):
    assert tok.special.has("knowledge") and len(tok.special.controls) == 32
    ids = tok.special_ids
    assert len(set(ids.values())) == len(ids) == len(NAMES) + 1  # + pad
    assert tok.special.stop_ids == (tok.end_id, tok.eot_id)
    assert tok.encode_document("hi") == [tok.eot_id] + tok.encode("hi")


def test_survives_kernel_cache_clear(tok):
    # tf.random.set_seed clears the eager kernel cache, which deletes TF Text's
    # kernel-owned SentencePiece resource unless it has a shared name.
    before = tok.encode("The quick fox")
    tf.random.set_seed(1)
    assert tok.encode("The quick fox") == before
