"""UTF-8-safe incremental detokenization (tfchat.inference.streaming) and the tokenizers' token bytes."""

import json

import numpy as np
import pytest

from tfchat.inference.streaming import Detokenizer, decode_text
from tfchat.text.tokenizer import GPT2Tokenizer, train_tokenizer

# No Han character, emoji or "é" in the training text: they are spelt in byte-fallback ids.
ENGLISH = ["The quick brown fox jumps over the lazy dog.", "Hello world, how are you today?"] * 30
TEXT = "Hi 你好，世界🙂! café \ufffd end"


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(ENGLISH, vocab_size=400)


def test_a_reply_streamed_id_by_id_equals_the_decoded_reply_byte_for_byte(tok):
    ids = tok.encode(TEXT)
    table = tok.token_bytes()
    assert sum(len(table[i]) == 1 and table[i][0] >= 0x80 for i in ids) >= 3 * 4 + 4  # 你好，世界 and 🙂 in bytes
    stream = Detokenizer(table)
    deltas = [stream.add(i) for i in ids]
    stream.finish()
    assert "".join(deltas).encode("utf-8") == TEXT.encode("utf-8") == tok.decode(ids).encode("utf-8")
    assert stream.text == TEXT == decode_text(ids, table)
    # U+FFFD only where the text has a real one, never for a character still arriving.
    assert [d for d in deltas if "\ufffd" in d] == ["\ufffd"]


@pytest.mark.parametrize("char", ["你", "界", "🙂", "𠀀"])  # 3-byte Han, 4-byte emoji, 4-byte Extension B
def test_a_character_split_across_byte_ids_is_held_back_until_complete(tok, char):
    ids = tok.encode(char)
    width = len(char.encode("utf-8"))
    assert len(ids) == width  # one byte-fallback id per byte
    stream = Detokenizer(tok.token_bytes())
    for k, i in enumerate(ids[:-1]):
        assert stream.add(i) == ""
        assert stream.pending == char.encode("utf-8")[: k + 1]
    assert stream.add(ids[-1]) == char and stream.pending == b""


def test_special_ids_add_nothing(tok):
    table = tok.token_bytes()
    ids = [tok.eot_id, *tok.encode("Hi 你"), tok.end_id]
    assert decode_text(ids, table) == "Hi 你" == tok.decode(ids)
    assert all(table[i] == b"" for i in tok.special.all_ids())


def test_invalid_bytes_become_one_replacement_each_and_a_cut_character_is_left_out(tok):
    sp_bytes = {b[0]: i for i, b in enumerate(tok.token_bytes()) if len(b) == 1}
    lead, cont = sp_bytes[0xE4], sp_bytes[0xBD]
    h = tok.encode("h")
    stream = Detokenizer(tok.token_bytes())
    # A lead byte followed by a letter is invalid: one U+FFFD, then the letter.
    assert stream.extend([lead, cont, *h]) == "\ufffdh"
    assert stream.extend([cont]) == "\ufffd"  # a stray continuation byte
    assert stream.extend([lead, cont]) == ""  # the start of a character when generation stops
    stream.finish()
    assert stream.text == "\ufffdh\ufffd" and stream.pending == b""
    assert decode_text([*h, lead], tok.token_bytes()) == "h"


def test_out_of_range_ids_are_refused(tok):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Detokenizer(tok.token_bytes()).add(tok.vocab_size)


def test_token_bytes_match_decode_for_every_piece(tok):
    table = tok.token_bytes()
    assert len(table) == tok.vocab_size
    for i in range(tok.vocab_size):
        text = tok.decode([i])
        if text != "\ufffd":  # byte-fallback ids >= 0x80 alone are not valid UTF-8
            assert table[i] == text.encode("utf-8"), i
    np.testing.assert_array_equal(tok.byte_lengths(), [len(b) for b in table])


def test_gpt2_token_bytes_are_the_byte_level_vocabulary(tmp_path):
    # A byte-level vocabulary: every byte as GPT-2's printable character, one merge, <|endoftext|>.
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    chars = {b[0]: c for b, c in zip(*bytes_to_unicode())}
    vocab = {c: i for i, c in enumerate(chars[b] for b in range(256))}
    vocab[chars[0xE4] + chars[0xBD]] = 256
    vocab["<|endoftext|>"] = 257
    tok = GPT2Tokenizer(vocab, [f"{chars[0xE4]} {chars[0xBD]}"])
    table = tok.token_bytes()
    assert table[vocab[chars[ord("A")]]] == b"A" and table[256] == b"\xe4\xbd" and table[257] == b""
    ids = tok.encode("你好")
    assert decode_text(ids, table) == "你好" == tok.decode(ids)
    stream = Detokenizer(table)
    assert [stream.add(i) for i in ids][-1] == "好"
    json.dumps([b.hex() for b in table])  # plain bytes, nothing tf.Module wrapped
