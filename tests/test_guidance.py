"""Classifier-free guidance of tagged replies: the mix, the XLA-free loop, the fast path, and their agreement."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfchat.config import GPTConfig
from tfchat.inference.generation import generate
from tfchat.inference.guidance import PLAUSIBILITY, guided_logits
from tfchat.inference.sampling import SamplingParams
from tfchat.inference.slots import SlotDecoder
from tfchat.model import build_gpt

# Row b decodes TAGGED[b] guided against UNGUIDED[b] (the same chat without its control ids).
TAGGED = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12]]
UNGUIDED = [[5, 8, 9], [4], [10, 12]]
SCALES = [3.0, 1.0, 5.0]


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    model = build_gpt(GPTConfig(vocab_size=60, block_size=64, n_layer=2, n_head=2, n_embd=32))
    for w in model.weights:  # sharper logits than at initialisation, so that guidance changes tokens
        w.assign(w * 4.0)
    return model


def ragged(rows):
    return tf.ragged.constant(rows, dtype=tf.int32, ragged_rank=1)


def log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))


def test_guided_logits_by_hand():
    tagged = np.array([[2.0, 1.5, 0.1, -3.0]])
    untagged = np.array([[2.5, 0.5, -1.0, -3.0]])
    lt, lu = log_softmax(tagged), log_softmax(untagged)
    out = guided_logits(tagged, untagged, [3.0]).numpy()
    plausible = lt >= lt.max() + np.log(PLAUSIBILITY)
    assert plausible.tolist() == [[True, True, True, False]]  # the last token is too unlikely with the tags
    np.testing.assert_allclose(out[plausible], (lu + 3.0 * (lt - lu))[plausible], rtol=1e-5)
    assert np.isneginf(out[~plausible]).all()
    assert int(np.argmax(out)) == 1  # what the tags raise most, not the tagged model's own best token (0)
    # Scale 1 gives the tagged logits back untouched; scale 0 the untagged model's choice among plausible tokens.
    np.testing.assert_array_equal(guided_logits(tagged, untagged, 1.0).numpy(), tagged.astype(np.float32))
    assert int(np.argmax(guided_logits(tagged, untagged, 0.0))) == 0
    # Per-row scales.
    both = guided_logits(np.repeat(tagged, 2, 0), np.repeat(untagged, 2, 0), [1.0, 3.0]).numpy()
    np.testing.assert_array_equal(both[0], tagged[0].astype(np.float32))
    np.testing.assert_allclose(both[1], out[0], rtol=1e-6)


def naive_guided(model, tagged, unguided, scale, n):
    """Greedy guided decoding by full forward passes: both sequences get each chosen token."""
    a, b = list(tagged), list(unguided)
    for _ in range(n):
        lt = model(np.array([a], "int32"))[0, -1]
        lu = model(np.array([b], "int32"))[0, -1]
        token = int(np.argmax(guided_logits(lt[None], lu[None], scale)[0]))
        a.append(token)
        b.append(token)
    return a[len(tagged):]


def test_guided_generate_matches_full_forward_guidance(model):
    tokens, lengths = generate(model, ragged(TAGGED), max_new_tokens=8, guidance=SCALES, unguided_ids=ragged(UNGUIDED))
    plain, _ = generate(model, ragged(TAGGED), max_new_tokens=8)
    assert lengths.numpy().tolist() == [8, 8, 8]
    for b in range(3):
        assert tokens.numpy()[b].tolist() == naive_guided(model, TAGGED[b], UNGUIDED[b], SCALES[b], 8), b
    # Scale 1 (row 1) decodes as without guidance; the guided rows (0, 2) say something else.
    assert tokens.numpy()[1].tolist() == plain.numpy()[1].tolist()
    assert tokens.numpy()[0].tolist() != plain.numpy()[0].tolist()
    assert tokens.numpy()[2].tolist() != plain.numpy()[2].tolist()


def test_scale_1_samples_exactly_as_unguided(model):
    sampling = dict(temperature=1.0, top_k=0, top_p=0.9, seed=[7, 8, 9])
    guided, _ = generate(model, ragged(TAGGED), 10, guidance=1.0, unguided_ids=ragged(UNGUIDED), **sampling)
    plain, _ = generate(model, ragged(TAGGED), 10, **sampling)
    np.testing.assert_array_equal(guided.numpy(), plain.numpy())


def _slot_tokens(decoder, rows, n):
    out = [rows.token.numpy()[:, None]]
    while sum(t.shape[1] for t in out) < n:
        tokens, _, rows = decoder.decode(rows)
        out.append(tokens)
    return np.concatenate(out, axis=1)[:, :n]


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_fast_path_guidance_equals_the_xla_free_loop(model, temperature):
    """Twins as extra rows of the slot batch give `generate`'s guided tokens, to the twins as well; when a guided
    row leaves with its twin, the others go on unchanged."""
    seeds = [1, 2, 3]
    expected, _ = generate(model, ragged(TAGGED), 12, temperature=temperature, seed=seeds, guidance=SCALES,
                           unguided_ids=ragged(UNGUIDED))
    expected = expected.numpy()
    decoder = SlotDecoder(model, chunk=4)

    def prefill():
        return decoder.prefill(TAGGED + UNGUIDED, [12] * 6, [temperature] * 6, [0] * 6, [1.0] * 6, seeds * 2,
                               guidance=SCALES + [1.0] * 3, twin_of=[-1, -1, -1, 0, 1, 2])

    got = _slot_tokens(decoder, prefill(), 12)
    np.testing.assert_array_equal(got[:3], expected)
    np.testing.assert_array_equal(got[3:], expected)  # each twin was fed its row's tokens
    rows = decoder.select(prefill(), [0, 2, 3, 5])  # row 1 (and its twin, 4) leave before decoding
    np.testing.assert_array_equal(_slot_tokens(decoder, rows, 12)[:2], expected[[0, 2]])
    # Without its twin a row is no longer guided: a batch without pairs drops the pairing (a faster program).
    assert decoder.select(prefill(), [0]).guide is None
    # A guided pair joining a running batch (`more`) keeps its pairing.
    running = decoder.prefill(TAGGED[1:2], [12], [temperature], [0], [1.0], seeds[1:2])
    pair = decoder.prefill([TAGGED[0], UNGUIDED[0]], [12] * 2, [temperature] * 2, [0] * 2, [1.0] * 2, [1, 1],
                           guidance=[SCALES[0], 1.0], twin_of=[-1, 0])
    joined = decoder.select(running, [0, 1, 2], more=pair)
    np.testing.assert_array_equal(_slot_tokens(decoder, joined, 12)[:2], expected[[1, 0]])


@pytest.mark.parametrize("bad", [-0.5, 31.0, float("nan"), "3", True])
def test_bad_guidance_is_a_clear_error(model, bad):
    with pytest.raises(ValueError, match="guidance must be a number in 0 .. 30"):
        SamplingParams(guidance=bad)
    with pytest.raises(ValueError, match="guidance must be a number in 0 .. 30"):
        generate(model, ragged(TAGGED), 4, guidance=bad, unguided_ids=ragged(UNGUIDED))


def test_guided_programs_compile_ahead_for_two_rows_and_more(model):
    decoder = SlotDecoder(model, chunk=4)
    decoder.compile(4, [32], guided=True)
    assert decoder.compiled_guided == {(2, 32), (4, 32)} and not decoder.compiled
