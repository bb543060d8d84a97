"""The fast decode path (XLA, slots) against the XLA-free loop, and continuous batching in the backend."""

import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from serving.backend import Backend, Cancelled, GenRequest
from tests.fixtures import MODERN, before_each_decode, tiny_export
from tfchat.config import GPTConfig
from tfchat.inference.generation import generate
from tfchat.inference.sampling import SamplingParams
from tfchat.inference.slots import LENGTH_STEP, SlotDecoder, bucket
from tfchat.model import build_gpt

PROMPTS = [[5, 6, 7], [9], [3, 1, 4, 1, 5, 9, 2, 6], [8, 8]]
SAMPLED = dict(temperature=[1.0, 0.7, 1.3, 0.0], top_k=[0, 5, 0, 3], top_p=[1.0, 1.0, 0.8, 0.9], seed=[1, 2, 3, 4])
GREEDY = dict(temperature=[0.0] * 4, top_k=[0] * 4, top_p=[1.0] * 4, seed=[0] * 4)


def _model(**architecture):
    import keras

    keras.utils.set_random_seed(1)
    return build_gpt(GPTConfig(vocab_size=97, block_size=40, n_layer=2, n_head=2, n_embd=32, **architecture))


def _slot_tokens(decoder, prompts, max_new, sampling):
    rows = decoder.prefill(prompts, max_new, **sampling)
    out = [rows.token.numpy()[:, None]]
    while sum(t.shape[1] for t in out) < max(max_new):
        tokens, _, rows = decoder.decode(rows)
        out.append(tokens)
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize("architecture", [{}, MODERN], ids=["gpt2", "modern"])
@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_fast_path_tokens_equal_the_xla_free_loop(architecture, sampling):
    model = _model(**architecture)
    max_new = [12, 7, 12, 9]
    tensors = {k: tf.constant(v) for k, v in sampling.items()}
    expected, lengths = generate(model, tf.ragged.constant(PROMPTS), max_new_tokens=tf.constant(max_new), **tensors)
    expected, lengths = expected.numpy(), lengths.numpy()
    assert (lengths == max_new).all()  # no stop ids: every row runs to its limit
    # XLA with the native attention kernel (where it builds), XLA's own dots, and the same graph without XLA.
    for jit, native in ((True, True), (True, False), (False, False)):
        got = _slot_tokens(SlotDecoder(model, chunk=5, jit=jit, native=native), PROMPTS, max_new, sampling)
        for b, n in enumerate(max_new):
            assert got[b, :n].tolist() == expected[b, :n].tolist(), (jit, native, b)
    # A row alone runs the batch-1 program, whose products are split in halves (tfchat.model.matvec).
    alone = SlotDecoder(model, chunk=5)
    assert alone.one_row_halves
    for b, n in enumerate(max_new):
        got = _slot_tokens(alone, [PROMPTS[b]], [n], {k: [v[b]] for k, v in sampling.items()})
        assert got[0, :n].tolist() == expected[b, :n].tolist(), ("alone", b)


def test_a_row_gets_the_same_tokens_alone_or_joining_and_leaving_a_batch():
    model = _model()
    decoder = SlotDecoder(model, chunk=3)
    one = lambda b: {k: [v[b]] for k, v in SAMPLED.items()}  # noqa: E731
    alone = [_slot_tokens(decoder, [PROMPTS[b]], [9], one(b))[0, :9].tolist() for b in range(3)]
    # Row 0 starts; row 1 joins after one chunk; row 0 leaves; row 2 joins; then 1 and 2 run on together.
    rows = decoder.prefill([PROMPTS[0]], [9], **one(0))
    seen = {0: [int(rows.token[0])]}
    tokens, _, rows = decoder.decode(rows)
    seen[0] += tokens[0].tolist()
    joining = decoder.prefill([PROMPTS[1]], [9], **one(1))
    seen[1] = [int(joining.token[0])]
    rows = decoder.select(rows, [0, 1], more=joining)
    tokens, _, rows = decoder.decode(rows)  # a batch of 2
    seen[0] += tokens[0].tolist()
    seen[1] += tokens[1].tolist()
    joining = decoder.prefill([PROMPTS[2]], [9], **one(2))
    seen[2] = [int(joining.token[0])]
    rows = decoder.select(rows, [1, 2], more=joining)  # row 0 leaves, row 2 joins: a batch padded to 2
    for _ in range(3):
        tokens, _, rows = decoder.decode(rows)
        seen[1] += tokens[0].tolist()
        seen[2] += tokens[1].tolist()
    assert seen[0] == alone[0][:7]  # 1 + 2 chunks, then it left
    assert [seen[1][:9], seen[2][:9]] == alone[1:]


def test_prefill_without_prompts_is_a_clear_error():
    decoder = SlotDecoder(_model(), chunk=2)
    with pytest.raises(ValueError, match="at least one prompt"):
        decoder.prefill([], [], [], [], [], [])


def test_bucket_sizes():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 16)] == [1, 2, 4, 4, 8, 8, 16, 16]
    with pytest.raises(ValueError, match="chunk"):
        SlotDecoder(_model(), chunk=0)


# ------------------------------------------------------------------------------------------- backend


@pytest.fixture(scope="module")
def export_path(tmp_path_factory):
    return tiny_export(tmp_path_factory.mktemp("fast"))[1]


def _requests():
    """Chat and text requests with their own lengths and seeds, greedy and sampled."""
    hi = [{"role": "user", "content": "Hi there"}]
    return [
        GenRequest(prompt="The quick brown", sampling=SamplingParams(max_new_tokens=30, temperature=1.0, seed=5)),
        GenRequest(messages=hi, sampling=SamplingParams.greedy(9)),
        GenRequest(prompt="Hello", sampling=SamplingParams(max_new_tokens=14, temperature=0.9, top_k=20, seed=1)),
        GenRequest(messages=hi, sampling=SamplingParams(max_new_tokens=20, temperature=1.2, top_p=0.8, seed=7),
                   logprobs=2),
    ]


def test_fast_and_plain_backends_give_the_same_answers(export_path):
    fast, plain = Backend(export_path), Backend(export_path, fast=False)
    try:
        assert fast.decoder is not None and plain.decoder is None
        for a, b in zip(_requests(), _requests()):
            x, y = fast.complete(a), plain.complete(b)
            assert (x.token_ids, x.text, x.finish_reason, x.prompt_tokens) == (y.token_ids, y.text, y.finish_reason,
                                                                               y.prompt_tokens)
            if a.logprobs is not None:
                assert [t.token_id for t in x.logprobs] == [t.token_id for t in y.logprobs]
                np.testing.assert_allclose([t.logprob for t in x.logprobs], [t.logprob for t in y.logprobs],
                                           atol=1e-4)
    finally:
        fast.close()
        plain.close()


def test_requests_join_a_running_batch_and_answer_as_alone(export_path, monkeypatch):
    backend = Backend(export_path, max_batch=4, chunk=2)
    try:
        alone = [backend.complete(r) for r in _requests()]
        before_each_decode(backend, lambda: time.sleep(0.03), monkeypatch)  # room to join mid-run
        requests = _requests()
        finished = {}
        long = requests[0]
        pieces = backend.stream(long)
        first = next(pieces)  # the long request is decoding now
        for r in requests[1:]:
            r.future.add_done_callback(lambda f, r=r: finished.setdefault(id(r), time.monotonic()))
            backend.submit(r)
        text = first + "".join(pieces)
        end_of_long = time.monotonic()
        results = [r.future.result(timeout=60) for r in requests]
        assert text == results[0].text
        assert [(c.token_ids, c.text) for c in results] == [(c.token_ids, c.text) for c in alone]
        assert backend.largest_batch > 1
        # The short ones joined the running batch and were done before the long one, not after it.
        assert all(finished[id(r)] < end_of_long for r in requests[1:] if r.sampling.max_new_tokens < 20)
    finally:
        backend.close()


def test_a_client_that_leaves_frees_its_slot(export_path, monkeypatch):
    backend = Backend(export_path, max_batch=1, chunk=2)
    try:
        backend.complete(GenRequest(prompt="Hi", sampling=SamplingParams.greedy(4)))  # compiled and traced
        calls = []
        before_each_decode(backend, lambda: (calls.append(1), time.sleep(0.05)), monkeypatch)
        leaving = GenRequest(prompt="The quick brown", sampling=SamplingParams(max_new_tokens=60, temperature=1.0,
                                                                               top_k=0, top_p=1.0, seed=3))
        pieces = backend.stream(leaving)
        next(pieces)
        pieces.close()  # the client hangs up
        waiting = GenRequest(prompt="Hello", sampling=SamplingParams.greedy(4))
        t0 = time.monotonic()
        assert backend.complete(waiting).token_ids  # the only slot was freed for it
        # It waited a chunk or two, not the ~30 chunks (1.5 s) left to the one that left.
        assert time.monotonic() - t0 < 1.2
        with pytest.raises(Cancelled):
            leaving.future.result(timeout=5)
        assert len(calls) < 10
    finally:
        backend.close()


def test_concurrent_clients_all_finish_with_their_own_answers(export_path):
    backend = Backend(export_path, max_batch=3, chunk=3)
    try:
        requests = [GenRequest(prompt=f"Hello {i}", sampling=SamplingParams(max_new_tokens=5 + i, temperature=1.0,
                                                                            seed=i)) for i in range(7)]
        alone = [backend.complete(GenRequest(prompt=r.prompt, sampling=r.sampling)).token_ids for r in requests]
        out = [None] * len(requests)

        def stream(i):
            out[i] = "".join(backend.stream(requests[i]))

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert [r.future.result().token_ids for r in requests] == alone
        assert out == [r.future.result().text for r in requests]
        assert backend.largest_batch == 3  # never more than max_batch slots
    finally:
        backend.close()


def test_caches_grow_and_shrink_with_the_positions_in_use():
    model = _model(position="rope", norm="rmsnorm")
    model = build_gpt(model.config.replace(block_size=300))
    decoder = SlotDecoder(model, chunk=5)
    long, short = list(np.arange(118) % 90 + 1), [4, 2]
    expected = [generate(model, tf.ragged.constant([p]), max_new_tokens=20, temperature=0.0)[0][0].numpy().tolist()
                for p in (long, short)]
    greedy = dict(temperature=[0.0], top_k=[0], top_p=[1.0], seed=[0])
    rows = decoder.prefill([long], [20], **greedy)
    assert rows.caches[0][0].shape[2] == 128
    seen = [[int(rows.token[0])], []]
    tokens, _, rows = decoder.decode(rows)  # positions 118..122: still 128
    seen[0] += tokens[0].tolist()
    joining = decoder.prefill([short], [20], **greedy)
    seen[1] = [int(joining.token[0])]
    rows = decoder.select(rows, [0, 1], more=joining)
    for _ in range(3):  # the long row crosses position 128: the caches grow one step (to 160) for both rows
        tokens, _, rows = decoder.decode(rows)
        seen[0] += tokens[0].tolist()
        seen[1] += tokens[1].tolist()
    assert rows.caches[0][0].shape[2] == 128 + LENGTH_STEP
    rows = decoder.select(rows, [1])  # the long row leaves; the short one's next chunk shrinks them to one step
    tokens, _, rows = decoder.decode(rows)
    seen[1] += tokens[0].tolist()
    assert rows.caches[0][0].shape[2] == LENGTH_STEP
    assert seen[0][:20] == expected[0] and seen[1][:20] == expected[1]


def test_warmup_compiles_every_batch_size(export_path):
    backend = Backend(export_path, max_batch=3, chunk=2)
    try:
        backend.warmup()
        # Batch buckets 1, 2, 4 at the shortest cache now, then the longer caches of the export's context
        # of 64 on a background thread.
        assert {(1, LENGTH_STEP), (2, LENGTH_STEP), (4, LENGTH_STEP)} <= backend.decoder.compiled
        deadline = time.monotonic() + 120
        while backend.compiling and time.monotonic() < deadline:
            time.sleep(0.1)
        lengths = range(LENGTH_STEP, 64 + 1, LENGTH_STEP)
        assert backend.decoder.compiled == {(b, n) for b in (1, 2, 4) for n in lengths}
        assert backend.complete(GenRequest(prompt="Hello", sampling=SamplingParams.greedy(3))).token_ids
    finally:
        backend.close()
