import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfchat.config import GPTConfig
from tfchat.inference.generation import compiled_generate, generate, generate_text, sample
from tfchat.model import build_gpt
from tfchat.checkpoint.model_dir import LoadedModel
from tfchat.text.tokenizer import train_tokenizer

CFG = GPTConfig(vocab_size=61, block_size=32, n_layer=2, n_head=2, n_embd=32)
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_gpt(CFG)


def ragged(rows):
    return tf.ragged.constant(rows, dtype=tf.int32, ragged_rank=1)


def naive_greedy(model, prompt, n):
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(np.argmax(model(np.array([seq], "int32"))[0, -1])))
    return seq[len(prompt):]


def run(model, prompts, **kw):
    """`generate` through its compiled form, sampling arguments per row."""
    b = len(prompts)
    args = {"max_new_tokens": 6, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0, **kw}
    per_row = lambda v, dt: tf.cast(tf.broadcast_to(v, [b]), dt)  # noqa: E731
    stop = tf.constant(args.pop("stop_ids", []), tf.int32)
    tokens, lengths = compiled_generate(model)(
        ragged(prompts),
        per_row(args["max_new_tokens"], tf.int32), per_row(args["temperature"], tf.float32),
        per_row(args["top_k"], tf.int32), per_row(args["top_p"], tf.float32), per_row(args["seed"], tf.int32),
        stop,
    )
    return tokens.numpy(), lengths.numpy()


def test_greedy_matches_full_forward_argmax(model):
    # Called eagerly (it runs itself as a cached tf.function) and through compiled_generate: same answer.
    tokens, lengths = generate(model, ragged(PROMPTS), max_new_tokens=6)
    assert tokens.shape == (3, 6) and lengths.numpy().tolist() == [6, 6, 6]
    for row, prompt in zip(tokens.numpy(), PROMPTS):
        assert row.tolist() == naive_greedy(model, prompt, 6)
    compiled, _ = run(model, PROMPTS)
    np.testing.assert_array_equal(compiled, tokens.numpy())


def test_stop_ids_end_rows_and_pad(model):
    free, _ = run(model, PROMPTS, max_new_tokens=8)
    stop = int(free[1, 2])  # row 1 emits this at step 2 (maybe earlier too)
    first = [list(r).index(stop) if stop in r else None for r in free]
    tokens, lengths = run(model, PROMPTS, max_new_tokens=8, stop_ids=[stop])
    for b in range(3):
        if first[b] is None:
            assert lengths[b] == 8
            np.testing.assert_array_equal(tokens[b], free[b])
        else:
            n = first[b] + 1
            assert lengths[b] == n and tokens[b, n - 1] == stop
            np.testing.assert_array_equal(tokens[b, :n], free[b, :n])
            assert (tokens[b, n:] == 0).all()  # pad_id


def test_per_row_max_new_tokens(model):
    tokens, lengths = generate(model, ragged(PROMPTS), max_new_tokens=tf.constant([2, 5, 1]))
    assert tokens.shape == (3, 5)
    assert lengths.numpy().tolist() == [2, 5, 1]
    full, _ = run(model, PROMPTS, max_new_tokens=5)
    for b, n in enumerate([2, 5, 1]):
        np.testing.assert_array_equal(tokens.numpy()[b, :n], full[b, :n])
        assert (tokens.numpy()[b, n:] == 0).all()


def test_seeded_sampling_is_reproducible_and_batch_independent(model):
    kw = dict(max_new_tokens=10, temperature=1.5, seed=7)
    a, _ = run(model, PROMPTS, **kw)
    b, _ = run(model, PROMPTS, **kw)
    np.testing.assert_array_equal(a, b)
    alone, _ = run(model, PROMPTS[1:2], **kw)
    np.testing.assert_array_equal(alone[0], a[1])  # same row, other batch mates
    other, _ = run(model, PROMPTS, **{**kw, "seed": 8})
    assert (other != a).any()
    greedy, _ = run(model, PROMPTS, max_new_tokens=10)
    assert (a != greedy).any()


def test_top_k_1_and_tiny_top_p_are_greedy(model):
    greedy, _ = run(model, PROMPTS)
    k1, _ = run(model, PROMPTS, temperature=2.0, top_k=1, seed=3)
    p0, _ = run(model, PROMPTS, temperature=2.0, top_p=1e-6, seed=3)
    np.testing.assert_array_equal(k1, greedy)
    np.testing.assert_array_equal(p0, greedy)


def test_sample_respects_top_k_and_top_p():
    logits = tf.math.log(tf.constant([[0.5, 0.3, 0.15, 0.05]] * 4))
    seen_k, seen_p, seen_all = set(), set(), set()
    for step in range(300):
        seen_k.update(sample(logits, 1.0, top_k=2, seed=1, step=step).numpy().tolist())
        seen_p.update(sample(logits, 1.0, top_p=0.7, seed=1, step=step).numpy().tolist())  # 0.5 + 0.3 reach 0.7
        seen_all.update(sample(logits, 1.0, seed=1, step=step).numpy().tolist())
    assert seen_k == {0, 1} and seen_p == {0, 1}
    assert seen_all == {0, 1, 2, 3}


def test_sample_per_row_temperature_and_frequencies():
    logits = tf.math.log(tf.constant([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]]))
    draws = np.stack([sample(logits, [1.0, 0.0], seed=0, step=s).numpy() for s in range(2000)])
    assert (draws[:, 1] == 0).all()  # temperature 0: greedy row
    freq = np.bincount(draws[:, 0], minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [0.7, 0.2, 0.1], atol=0.04)


def test_long_prompts_are_truncated_from_the_left(model):
    long = list(np.arange(1, 41) % CFG.vocab_size)  # 40 ids > block_size 32
    tokens, _ = run(model, [long, [3, 4]], max_new_tokens=4)
    kept = long[-(CFG.block_size - 4):]
    assert tokens[0].tolist() == naive_greedy(model, kept, 4)
    assert tokens[1].tolist() == naive_greedy(model, [3, 4], 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=0), r"max_new_tokens must be an integer in 1 \.\. 31"),
        (dict(max_new_tokens=32), r"1 \.\. 31 \(what the context leaves room for\)"),
        (dict(max_new_tokens=1.5), "max_new_tokens must be an integer"),
        (dict(temperature=-0.1), "temperature must be a finite number >= 0"),
        (dict(temperature=float("inf")), "temperature must be a finite number >= 0"),
        (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
        (dict(top_p=0.0), "top_p must be a number in"),
        (dict(top_p=1.5), "top_p must be a number in"),
        (dict(top_k=-1), "top_k must be an integer in 0"),
        (dict(top_k=2**40), "top_k must be an integer in 0"),
    ],
)
def test_bad_arguments_raise_value_errors(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model, ragged(PROMPTS), **{"max_new_tokens": 4, **kwargs})


def test_bad_tensor_arguments_fail_in_the_graph(model):
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_new_tokens"):
        run(model, PROMPTS, max_new_tokens=40)
    with pytest.raises(tf.errors.InvalidArgumentError, match="top_p"):
        run(model, PROMPTS, top_p=0.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least one token"):
        run(model, [[1], []])


def test_graph_has_no_xla_ops_and_cache_writes_one_row(model):
    graph = compiled_generate(model).get_concrete_function().graph
    types = {op.type for op in graph.get_operations()}
    for f in graph.as_graph_def().library.function:
        types |= {n.op for n in f.node_def}
    assert not {t for t in types if t.startswith("Xla")}
    assert "TensorScatterUpdate" in types
    assert types & {"While", "StatelessWhile"}


def test_generate_text_with_a_tokenizer():
    tok = train_tokenizer(["Hello there. How are you? I am fine."] * 30, vocab_size=400)
    keras.utils.set_random_seed(1)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    m = build_gpt(cfg)
    out = generate_text(m, tok, ["Hello", "How are"], max_new_tokens=5)
    assert len(out) == 2 and all(isinstance(s, str) for s in out)
    # Same as decoding generate()'s ids by hand.
    tokens, lengths = generate(
        m, ragged([[tok.eot_id] + tok.encode("Hello")]), 5, stop_ids=[tok.end_id, tok.eot_id]
    )
    assert out[0] == tok.decode(tokens.numpy()[0, : lengths.numpy()[0]].tolist())
    loaded = LoadedModel(model=m, tokenizer=tok, config=cfg, metadata={})
    assert generate_text(loaded, prompts=["Hello", "How are"], max_new_tokens=5) == out
    assert generate_text(loaded, prompts=[]) == []
    with pytest.raises(ValueError, match="temperature"):
        generate_text(loaded, prompts=["Hi"], max_new_tokens=5, temperature=-1)


def test_generate_text_warns_on_truncation(caplog):
    tok = train_tokenizer(["abc def ghi"] * 30, vocab_size=400)
    m = build_gpt(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    with caplog.at_level(logging.WARNING, logger="tfchat.inference.generation"):
        out = generate_text(m, tok, ["abc def ghi " * 10], max_new_tokens=4)
    assert len(out) == 1
    assert "truncated from the left" in caplog.text


def test_an_empty_batch_is_a_clear_error(model):
    from tfchat.cli import error_line

    empty = tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int32), tf.zeros([0], tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        generate(model, empty, max_new_tokens=4)
    assert error_line(info.value) == "give at least one prompt"
