"""tfchat.eval.metrics on small fixtures with hand-checked values."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from tfchat.eval import logprobs, metrics


class BigramStub:
    """A 'model' whose next-token distribution depends only on the current token: P[current]."""

    def __init__(self, probs):
        self.logits = tf.math.log(tf.constant(probs, tf.float32))

    def __call__(self, token_ids, training=False):
        return tf.gather(self.logits, token_ids)


class UniformStub:
    """Equal logits over `vocab` ids at every position: log p = -ln(vocab) for every token."""

    def __init__(self, vocab):
        self.vocab = vocab

    def __call__(self, token_ids, training=False):
        shape = tf.shape(token_ids)
        return tf.zeros([shape[0], shape[1], self.vocab])


# ------------------------------------------------------------ loss -> numbers


def test_perplexity_and_bits_per_byte_by_hand():
    assert metrics.perplexity(0.0) == 1.0
    assert metrics.perplexity(math.log(50.0)) == pytest.approx(50.0)
    assert metrics.perplexity(1e6) == math.inf
    # 3 tokens at p = 1/4 each: 6 bits, over 4 bytes.
    assert metrics.bits_per_byte(3 * math.log(4.0), 4) == pytest.approx(1.5)
    assert math.isnan(metrics.bits_per_byte(1.0, 0))


def test_byte_lengths_sentencepiece_count_every_utf8_byte(data_tokenizer):
    tok = data_tokenizer
    lengths = metrics.token_byte_lengths(tok)
    assert lengths.shape == (tok.vocab_size,)
    for text in ["Hello world.", "  two  spaces\n\nand lines", "你好，世界。", "rare: ж ☃ 🙂 é", "x"]:
        ids = tok.encode(text)
        assert lengths[ids].sum() == len(text.encode("utf-8")), text
    for special in tok.special_ids.values():
        assert lengths[special] == 0
    byte_piece = tok.encode("🙂")[0]  # not in the training text: byte fallback, one byte per id
    assert lengths[byte_piece] == 1


def test_byte_lengths_gpt2_byte_level(tmp_path):
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    from tfchat.text.tokenizer import GPT2Tokenizer

    vocab = {s: i for i, s in enumerate(bytes_to_unicode()[1])}
    vocab["th"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nt h\n")
    tok = GPT2Tokenizer.from_files(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    lengths = metrics.token_byte_lengths(tok)
    text = "the 你好 🙂"
    assert lengths[tok.encode(text)].sum() == len(text.encode("utf-8")) == 15
    assert lengths[vocab["th"]] == 2
    assert lengths[tok.eot_id] == lengths[tok.user_id] == lengths[tok.end_id] == 0


# ------------------------------------------------------- log-probs of a model


PROBS = [
    [0.1, 0.2, 0.3, 0.4],
    [0.25, 0.25, 0.25, 0.25],
    [0.7, 0.1, 0.1, 0.1],
    [0.4, 0.3, 0.2, 0.1],
]


def test_score_sequences_bigram_by_hand():
    seqs = [[0, 3, 2, 0], [1, 1], [2, 0, 1]]
    # 0->3 (.4), 3->2 (.2), 2->0 (.7); 1->1 (.25); 2->0 (.7), 0->1 (.2). batch_size=2 mixes lengths (padding).
    got = logprobs.score_sequences(BigramStub(PROBS), seqs, batch_size=2)
    np.testing.assert_allclose(got, np.log([0.4 * 0.2 * 0.7, 0.25, 0.7 * 0.2]), rtol=1e-5)
    with pytest.raises(ValueError, match="at least one to score"):
        logprobs.score_sequences(BigramStub(PROBS), [[1]])


def test_score_texts_start_at_eot_and_truncate(data_tokenizer):
    tok = data_tokenizer
    texts = ["Hello world.", "The quick brown fox jumps over the lazy dog."]
    n = [len(tok.encode(t)) for t in texts]
    scores, cut = logprobs.score_texts(UniformStub(tok.vocab_size), tok, texts, max_len=100)
    np.testing.assert_allclose(scores, [-k * math.log(tok.vocab_size) for k in n], rtol=1e-5)
    assert cut == 0
    scores, cut = logprobs.score_texts(UniformStub(tok.vocab_size), tok, texts, max_len=3)
    np.testing.assert_allclose(scores, [-2 * math.log(tok.vocab_size)] * 2, rtol=1e-5)  # eot + 2 scored ids
    assert cut == 2


# -------------------------------------------------------------- minimal pairs


def test_read_minimal_pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [{"sentence_good": "Dogs run.", "sentence_bad": "Dogs runs.", "UID": "agreement", "pair_id": 0},
             {"sentence_good": "A cat sleeps.", "sentence_bad": "A cat sleep."}]
    path.write_text(json.dumps(lines[0]) + "\n\n" + json.dumps(lines[1]) + "\n")
    pairs = metrics.read_minimal_pairs(str(path))
    assert pairs == [metrics.MinimalPair("Dogs run.", "Dogs runs."), metrics.MinimalPair("A cat sleeps.", "A cat sleep.")]


@pytest.mark.parametrize("content, message", [
    ("", "no minimal pairs"),
    ("\n  \n", "no minimal pairs"),
    ('{"sentence_good": "a"\n', r"pairs.jsonl:1: not JSON"),
    ('{"sentence_good": "a", "sentence_bad": "b"}\n["a", "b"]\n', r"pairs.jsonl:2: expected a JSON object"),
    ('{"sentence_good": "a", "sentence_bad": ""}\n', r"pairs.jsonl:1: 'sentence_bad' missing"),
    ('{"good": "a", "bad": "b"}\n', r"pairs.jsonl:1: 'sentence_good' missing"),
])
def test_read_minimal_pairs_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        metrics.read_minimal_pairs(str(path))


def test_read_minimal_pairs_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such minimal-pair file"):
        metrics.read_minimal_pairs(str(tmp_path / "nope.jsonl"))


def test_minimal_pair_accuracy_ties_are_wrong():
    assert metrics.minimal_pair_accuracy([-1.0, -5.0, -2.0, -3.0], [-2.0, -4.0, -2.0, -9.0]) == 0.5
    with pytest.raises(ValueError):
        metrics.minimal_pair_accuracy([], [])


def test_minimal_pairs_with_a_bigram_model_by_hand():
    # With PROBS, after id 0 the likeliest next id is 3 (.4), the least 0 (.1).
    good, bad = [[0, 3, 0], [2, 0, 3]], [[0, 0, 3], [2, 1, 3]]
    g = logprobs.score_sequences(BigramStub(PROBS), good)
    b = logprobs.score_sequences(BigramStub(PROBS), bad)
    np.testing.assert_allclose(g, np.log([0.4 * 0.4, 0.7 * 0.4]), rtol=1e-5)  # 0->3->0 ; 2->0->3
    np.testing.assert_allclose(b, np.log([0.1 * 0.4, 0.1 * 0.25]), rtol=1e-5)  # 0->0->3 ; 2->1->3
    assert metrics.minimal_pair_accuracy(g, b) == 1.0
    assert metrics.minimal_pair_accuracy(b, g) == 0.0


# --------------------------------------------------------------- BLEU, ROUGE-L


def test_bleu_by_hand():
    # Identical: every n-gram precision 1, no brevity penalty.
    assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat": clipped n-gram precisions
    # 5/6, 3/5, 2/4, 1/3 -> geometric mean (1/12)^(1/4); equal lengths, so no brevity penalty.
    assert metrics.bleu(["the cat sat on a mat"], ["the cat sat on the mat"]) == pytest.approx(12 ** -0.25, rel=1e-5)
    # A 4-word prefix of a 6-word reference: precisions all 1, brevity penalty exp(1 - 6/4).
    assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on"]) == pytest.approx(math.exp(-0.5), rel=1e-5)
    # Corpus-level: n-gram counts are pooled before the geometric mean.
    pooled = metrics.bleu(["the cat sat on a mat", "the cat sat on the mat"], ["the cat sat on the mat"] * 2)
    assert pooled == pytest.approx(((11 / 12) * (8 / 10) * (6 / 8) * (4 / 6)) ** 0.25, rel=1e-5)
    assert metrics.bleu(["the cat"], [""]) == 0.0  # an empty reply matches nothing
    with pytest.raises(ValueError):
        metrics.bleu(["a"], [])


def test_rouge_l_by_hand():
    # LCS("the cat sat on the mat", "the cat on mat") = 4: P = 4/4, R = 4/6, F1 = 0.8.
    assert metrics.rouge_l(["the cat sat on the mat"], ["the cat on mat"]) == pytest.approx(0.8, rel=1e-6)
    # Reversed: LCS 1 of 4 -> F1 0.25; case and punctuation are ignored -> 1.0; mean of the three.
    refs, hyps = ["the cat sat on the mat", "a b c d", "The Cat!"], ["the cat on mat", "d c b a", "the cat"]
    assert metrics.rouge_l(refs, hyps) == pytest.approx((0.8 + 0.25 + 1.0) / 3, rel=1e-6)
    assert metrics.rouge_l(["words"], [""]) == 0.0


def test_chinese_bleu_and_rouge_count_characters_by_hand():
    # BLEU-4 over characters (。 included), computed here from clipped n-gram counts and the brevity penalty.
    ref, hyp = "我们去公园散步吧。", "我们去公园吧。"
    r, h = list(ref), list(hyp)
    precisions = []
    for n in range(1, 5):
        grams = lambda xs: [tuple(xs[i:i + n]) for i in range(len(xs) - n + 1)]  # noqa: E731
        ref_grams = grams(r)
        matched = sum(min(grams(h).count(g), ref_grams.count(g)) for g in set(grams(h)))
        precisions.append(matched / len(grams(h)))
    want = math.exp(1 - len(r) / len(h)) * math.prod(precisions) ** 0.25
    assert metrics.bleu([ref], [hyp]) == pytest.approx(want, rel=1e-5) and want > 0.3
    assert metrics.bleu([ref], [hyp], tokenize="13a") == 0.0  # one "word" each: nothing matches
    # ROUGE-L over characters (punctuation dropped): LCS 6 of 8 and 6 -> F1 2 * 1 * 0.75 / 1.75.
    assert metrics.rouge_l([ref], [hyp]) == pytest.approx(2 * 0.75 / 1.75, rel=1e-6)
    assert metrics.rouge_l([ref], [hyp], tokenize="13a") == 0.0  # rouge-score drops every Han character
    # Latin words and numbers inside Chinese stay words; Traditional characters are characters too.
    assert metrics.rouge_l(["我喜欢iPhone 12"], ["我喜歡iPhone 12"]) == pytest.approx(2 * (4 / 5) ** 2 / (8 / 5))
    assert metrics.metric_tokenization(["The cat sat."]) == "13a" and metrics.metric_tokenization([ref]) == "zh"
    with pytest.raises(ValueError, match="tokenize"):
        metrics.bleu([ref], [hyp], tokenize="jieba")


def test_token_log_probs_is_the_masked_log_softmax():
    logits = np.random.default_rng(0).normal(size=(2, 3, 5)).astype("float32")
    targets = np.array([[0, 4, 2], [1, 1, 3]])
    mask = np.array([[1, 0, 1], [1, 1, 0]], "float32")
    expected = np.take_along_axis(logits - np.log(np.exp(logits).sum(-1, keepdims=True)), targets[..., None], -1)[..., 0]
    got = logprobs.token_log_probs(logits, targets, mask).numpy()
    np.testing.assert_allclose(got, expected * mask, rtol=1e-5, atol=1e-6)
    total, count = logprobs.sequence_log_probs(logits, targets, mask)
    np.testing.assert_allclose(total.numpy(), (expected * mask).sum(-1), rtol=1e-5)
    assert count.numpy().tolist() == [2.0, 2.0]


def test_minimal_pairs_not_utf8_or_nested_too_deeply_name_the_file(tmp_path):
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"sentence_good": "caf\xe9", "sentence_bad": "x"}\n')
    with pytest.raises(ValueError, match=r"latin1\.jsonl: not UTF-8 text"):
        metrics.read_minimal_pairs(str(latin1))
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ValueError, match=r"deep\.jsonl:1: not JSON \(nested too deeply\)"):
        metrics.read_minimal_pairs(str(deep))
