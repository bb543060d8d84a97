"""Sampling and KV-cached autoregressive generation, graph-safe.

`generate` left-pads a ragged batch of prompts, runs them through the model
once (prefill), then decodes inside a `tf.while_loop` that feeds one token
per row per step: each step writes one cache position and attends over the
filled prefix only, so time per token stays flat as the position grows. It
stops when every row has emitted a stop id (e.g. `end_id`, `eot_id`) or after
`max_new_tokens`. The same function runs inside `tf.function` and SavedModel
signatures (no XLA-only ops, no keras-hub samplers); called eagerly, it runs
itself through a cached `tf.function` (`compiled_generate`), since an eager
while loop would dispatch every op from Python.

Sampling (`sample`) is per row: temperature (0 = greedy), top-k (0 = off),
top-p (1 = off). Randomness is Gumbel-max noise from a counter-based integer
hash keyed by (seed, position of the sampled token), so a prompt with a given
seed gives the same text whatever else is in the batch, and the XLA fast path
(`tfchat.inference.slots`, built from `prefill`, `decode_step` and `sample`)
draws the same noise as this XLA-free loop. The model only needs
`model.config.block_size`, `model.init_cache` and `model.call_with_cache`
(a `tfchat.model.CausalLM`); it knows nothing of tokenization, which
`generate_text` adds on top. Given `unguided_ids` (a tagged chat's prompts
without their control tags), each row decodes beside its twin and samples
from their classifier-free-guided mix (`tfchat.inference.guidance`).

Prompts longer than the room left in the context (`block_size -
max_new_tokens`) are truncated from the left: the model sees the most recent
tokens. `generate_text` logs a warning when that happens.

Example:

>>> import tensorflow as tf
>>> from tfchat.config import GPTConfig
>>> from tfchat.model import build_gpt
>>> model = build_gpt(GPTConfig(vocab_size=50, block_size=32, n_layer=1, n_head=2, n_embd=16))
>>> prompts = tf.ragged.constant([[1, 2, 3], [4]], dtype=tf.int32)
>>> tokens, lengths = generate(model, prompts, max_new_tokens=5, temperature=0.0)
>>> tokens.shape
TensorShape([2, 5])
"""

from __future__ import annotations

import logging
import weakref
from typing import Sequence

import keras
import tensorflow as tf

from tfchat.inference.guidance import check_scale, guided_logits
from tfchat.inference.sampling import SamplingParams, check_sampling

log = logging.getLogger(__name__)

NEG_INF = float("-inf")


def context_size(model) -> int:
    """The model's context length (its config's block_size)."""
    return int(model.config.block_size)


def _context(model, max_len: int | None) -> int:
    return context_size(model) if max_len is None else min(int(max_len), context_size(model))


def _check(context: int, max_new_tokens, temperature, top_k, top_p) -> None:
    check_sampling(max_new_tokens, temperature, top_k, top_p, max_new_limit=context - 1)


def graph_checks(max_new, temperature, top_k, top_p, context, prompt_lengths) -> list:
    """The same rules for tensor arguments, as graph assertions (their messages read like `check_sampling`'s)."""
    a = tf.debugging
    return [
        a.assert_positive(max_new, message="max_new_tokens must be > 0"),
        a.assert_less_equal(max_new, context - 1, message=f"max_new_tokens must be <= {context - 1} (context)"),
        a.assert_non_negative(temperature, message="temperature must be >= 0"),
        a.assert_equal(tf.reduce_all(tf.math.is_finite(temperature)), True, message="temperature must be finite"),
        a.assert_non_negative(top_k, message="top_k must be >= 0"),
        a.assert_positive(top_p, message="top_p must be in (0, 1]"),
        a.assert_less_equal(top_p, 1.0, message="top_p must be in (0, 1]"),
        a.assert_positive(prompt_lengths, message="every prompt needs at least one token"),
        a.assert_positive(tf.size(prompt_lengths), message="give at least one prompt"),
    ]


# ----------------------------------------------------------------------------- sampling


def per_row(x, batch, dtype) -> tf.Tensor:
    """A scalar or [B] argument as a [B] tensor of `dtype`."""
    return tf.broadcast_to(tf.cast(x, dtype), [batch])


def _filter_top_k_top_p(logits, top_k, top_p, static_shapes: bool = False):
    """Sets logits outside the top-k / nucleus of each row to -inf. logits [B, V]; top_k, top_p [B]."""
    vocab = tf.shape(logits)[1]
    # Only the best max(top_k) candidates can survive when every row has a top_k: no full sort then
    # (XLA needs a static width: the whole vocabulary).
    width = vocab
    if not static_shapes:
        width = tf.where(tf.reduce_all(top_k > 0), tf.minimum(tf.reduce_max(top_k), vocab), vocab)
    sorted_logits = tf.math.top_k(logits, k=width, sorted=True).values  # [B, width]
    ranks = tf.range(width)[None, :]
    k = tf.where(top_k > 0, tf.minimum(top_k, vocab), vocab)[:, None]
    in_top_k = ranks < k
    sorted_logits = tf.where(in_top_k, sorted_logits, NEG_INF)
    # Nucleus over the top-k renormalized distribution: keep a token while the mass before it is < top_p.
    mass_before = tf.cumsum(tf.nn.softmax(sorted_logits, axis=-1), axis=-1, exclusive=True)
    keep = tf.logical_and(mass_before < top_p[:, None], in_top_k)
    n_keep = tf.maximum(tf.reduce_sum(tf.cast(keep, tf.int32), axis=-1), 1)
    threshold = tf.gather(sorted_logits, n_keep - 1, batch_dims=1)[:, None]
    return tf.where(logits >= threshold, logits, NEG_INF)


def _hash32(x):
    """A 32-bit integer mix ("lowbias32" from C. Wellons' hash-prospector), elementwise on uint32."""
    for shift, mul in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, shift)) * tf.constant(mul, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def gumbel_noise(seed, step, batch, vocab) -> tf.Tensor:
    """float32 [B, V] standard Gumbel noise, a pure function of each row's (seed, step) and the token id.

    A counter-based hash in core integer ops instead of `tf.random.stateless_*`, whose
    XLA kernels draw other numbers than the TF ones: the XLA fast path and the XLA-free
    signatures must sample the same tokens.
    """
    seed = tf.cast(per_row(seed, batch, tf.int32), tf.uint32)
    step = tf.cast(per_row(step, batch, tf.int32), tf.uint32)
    row = _hash32(tf.bitwise.bitwise_xor(_hash32(seed), step * tf.constant(0x9E3779B9, tf.uint32)))  # [B]
    bits = _hash32(row[:, None] + tf.cast(tf.range(vocab), tf.uint32)[None, :])  # [B, V]
    # 24 random bits -> a uniform in (0, 1), never 0 or 1.
    uniform = (tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) + 0.5) * (1.0 / (1 << 24))
    return -tf.math.log(-tf.math.log(uniform))


def sample(logits, temperature=0.0, top_k=0, top_p=1.0, seed=0, step=0, static_shapes: bool = False) -> tf.Tensor:
    """Picks one token per row.

    Args:
        logits: float [B, V].
        temperature: scalar or [B]; 0 means greedy (argmax).
        top_k: scalar or [B] int; keep the k most likely tokens, 0 = all.
        top_p: scalar or [B] float in (0, 1]; keep the smallest set of tokens
            whose probability reaches top_p, 1 = all.
        seed: scalar or [B] int; with `step`, the key of the stateless noise.
        step: scalar or [B] int, e.g. the position of the sampled token, so
            each step draws fresh noise.
        static_shapes: for XLA: the top-k/top-p filter sorts the whole
            vocabulary instead of the largest top_k (a data-dependent size).

    Returns:
        int32 [B].
    """
    logits = tf.cast(logits, tf.float32)
    batch, vocab = tf.shape(logits)[0], tf.shape(logits)[1]
    temperature = per_row(temperature, batch, tf.float32)
    top_k = per_row(top_k, batch, tf.int32)
    top_p = per_row(top_p, batch, tf.float32)
    greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)

    def sampled():
        scaled = logits / tf.maximum(temperature, 1e-6)[:, None]
        needs_filter = tf.reduce_any(tf.logical_or(top_k > 0, top_p < 1.0))
        scaled = tf.cond(
            needs_filter, lambda: _filter_top_k_top_p(scaled, top_k, top_p, static_shapes), lambda: scaled
        )
        # Gumbel-max: argmax(logits + Gumbel noise) is a sample of softmax(logits).
        gumbel = gumbel_noise(seed, step, batch, vocab)
        drawn = tf.argmax(scaled + gumbel, axis=-1, output_type=tf.int32)
        return tf.where(temperature > 0, drawn, greedy)

    return tf.cond(tf.reduce_any(temperature > 0), sampled, lambda: greedy)


# ----------------------------------------------------------------------------- generation


def left_pad(prompt_ids: tf.RaggedTensor, max_prompt_len, pad_id: int = 0):
    """Keeps the last `max_prompt_len` ids of each row and left-pads to a dense batch.

    Returns:
        (ids int32 [B, W], valid bool [B, W], lengths int32 [B]); W = longest kept row.
    """
    lengths = tf.cast(prompt_ids.row_lengths(), tf.int32)
    kept = tf.minimum(lengths, max_prompt_len)
    width = tf.reduce_max(tf.concat([kept, [0]], 0))
    cols = tf.range(width)[None, :]
    pad = (width - kept)[:, None]
    valid = cols >= pad
    # Flat index of each kept id: row start + dropped head + column offset.
    starts = tf.cast(prompt_ids.row_starts(), tf.int32) + lengths - kept
    src = tf.where(valid, starts[:, None] + cols - pad, 0)
    values = tf.cast(prompt_ids.flat_values, tf.int32)
    values = tf.concat([values, [pad_id]], 0)  # gather from an empty batch stays in range
    ids = tf.where(valid, tf.gather(values, src), pad_id)
    return ids, valid, kept


def prefill(
    model: keras.Model,
    prompt_ids: tf.RaggedTensor,
    max_new_tokens=32,
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    seed=0,
    pad_id: int = 0,
    max_len: int | None = None,
) -> dict:
    """Left-pads and truncates the prompts, fills a fresh KV cache, samples each row's first new token.

    The cache holds `W + max(max_new_tokens)` positions (W = longest kept
    prompt); prompts are cut from the left to `context - max(max_new_tokens)`
    ids, where `context = max_len or block_size`.

    Returns:
        dict with `token` int32 [B] (the first new token), `position` int32 [B]
        (its position id), `cache_index` int32 scalar (where it will be
        written, = W), `caches` (list, one per block), `key_mask` bool [B, S],
        `logits` float32 [B, V] (of the first new token), `limit` (max new tokens).
    """
    context = _context(model, max_len)
    _check(context, max_new_tokens, temperature, top_k, top_p)
    if not isinstance(prompt_ids, tf.RaggedTensor):
        prompt_ids = tf.RaggedTensor.from_tensor(tf.convert_to_tensor(prompt_ids))
    batch = prompt_ids.nrows(out_type=tf.int32)
    max_new = per_row(max_new_tokens, batch, tf.int32)
    raw_lengths = tf.cast(prompt_ids.row_lengths(), tf.int32)
    checks = graph_checks(
        max_new, per_row(temperature, batch, tf.float32), per_row(top_k, batch, tf.int32),
        per_row(top_p, batch, tf.float32), context, raw_lengths,
    )
    with tf.control_dependencies(checks):
        limit = tf.reduce_max(tf.concat([max_new, [1]], 0))
    ids, valid, lengths = left_pad(prompt_ids, context - limit, pad_id)
    width = tf.shape(ids)[1]
    key_mask = tf.concat([valid, tf.ones([batch, limit], tf.bool)], axis=1)
    positions = tf.maximum(tf.cumsum(tf.cast(key_mask, tf.int32), axis=1) - 1, 0)
    caches = model.init_cache(batch, width + limit)
    logits, caches = model.call_with_cache(ids, positions[:, :width], caches, tf.constant(0), key_mask, last_only=True)
    logits = logits[:, -1]
    # The step key of a sampled token is its position id: independent of padding and batch.
    token = sample(logits, temperature, top_k, top_p, seed, lengths)
    return dict(
        token=token, position=lengths, cache_index=width, caches=caches, key_mask=key_mask, logits=logits, limit=limit
    )


def decode_step(
    model: keras.Model, token, position, caches, cache_index, key_mask, temperature=0.0, top_k=0, top_p=1.0, seed=0,
    static_shapes: bool = False,
):
    """Feeds `token` [B] (position ids `position` [B]) at cache row `cache_index`; samples the next token.

    `cache_index` is a scalar for the caches of `prefill`, int32 [B] for slot
    caches (`tfchat.inference.slots`, where it equals `position`).

    Returns:
        (next token int32 [B], its logits float32 [B, V], new caches).
    """
    logits, caches = model.call_with_cache(token[:, None], position[:, None], caches, cache_index, key_mask)
    logits = logits[:, 0]
    return sample(logits, temperature, top_k, top_p, seed, position + 1, static_shapes), logits, caches


def generate(
    model: keras.Model,
    prompt_ids: tf.RaggedTensor,
    max_new_tokens=32,
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    seed=0,
    stop_ids: Sequence[int] | tf.Tensor = (),
    pad_id: int = 0,
    max_len: int | None = None,
    guidance=1.0,
    unguided_ids: tf.RaggedTensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Generates up to `max_new_tokens` ids after each prompt.

    Args:
        model: a `tfchat.model.CausalLM` (`build_gpt`).
        prompt_ids: int RaggedTensor [B, None], each row at least one id.
            Rows longer than `context - max(max_new_tokens)` are truncated
            from the left.
        max_new_tokens: scalar or [B] int; 1 .. context - 1.
        temperature, top_k, top_p, seed: see `sample`; scalars or [B].
        stop_ids: ids that end a row (the stop id is emitted and counted).
        pad_id: fills the output after a row stops.
        max_len: context to use, at most (and by default) the model's block_size.
        guidance, unguided_ids: classifier-free guidance (`tfchat.inference.guidance`):
            with `unguided_ids` (int RaggedTensor [B, None], each prompt without its
            control tags), every row also decodes its twin and samples from the guided
            scores at scale `guidance` (scalar or [B]; 1 = the prompt's own logits).

    Returns:
        (tokens int32 [B, max(max_new_tokens)], lengths int32 [B]):
        `tokens[b, :lengths[b]]` are row b's new ids, its stop id included.
    """
    guided = unguided_ids is not None
    if tf.executing_eagerly():
        # Eager tf.while_loop runs op by op (slow): run the same code as a cached tf.function.
        _check(_context(model, max_len), max_new_tokens, temperature, top_k, top_p)
        check_scale(guidance)
        prompt_ids = _ragged(prompt_ids)
        batch = prompt_ids.nrows(out_type=tf.int32)
        fn = compiled_generate(model, pad_id=pad_id, max_len=max_len, guided=guided)
        args = [
            prompt_ids,
            per_row(max_new_tokens, batch, tf.int32), per_row(temperature, batch, tf.float32),
            per_row(top_k, batch, tf.int32), per_row(top_p, batch, tf.float32), per_row(seed, batch, tf.int32),
            tf.reshape(tf.convert_to_tensor(stop_ids, tf.int32), [-1]),
        ]
        return fn(*args, per_row(guidance, batch, tf.float32), _ragged(unguided_ids)) if guided else fn(*args)
    sampling = (temperature, top_k, top_p, seed)
    if guided:
        # Rows then their untagged twins, in one batch; each twin is fed its row's token.
        prompt_ids, unguided_ids = _ragged(prompt_ids), _ragged(unguided_ids)
        rows = prompt_ids.nrows(out_type=tf.int32)
        twice = [tf.tile(per_row(x, rows, d), [2])
                 for x, d in zip((max_new_tokens,) + sampling, (tf.int32, tf.float32, tf.int32, tf.float32, tf.int32))]
        state = prefill(model, tf.concat([prompt_ids, unguided_ids], 0), *twice, pad_id, max_len)
    else:
        state = prefill(model, prompt_ids, max_new_tokens, *sampling, pad_id, max_len)
    limit, width, key_mask, positions = state["limit"], state["cache_index"], state["key_mask"], state["position"]
    token = state["token"]
    if guided:
        lengths = positions[:rows]
        token = sample(guided_logits(state["logits"][:rows], state["logits"][rows:], guidance), *sampling, lengths)
    else:
        lengths = positions
    batch = tf.shape(token)[0]
    max_new = per_row(max_new_tokens, batch, tf.int32)
    stop_ids = tf.reshape(tf.cast(tf.convert_to_tensor(stop_ids, tf.int32), tf.int32), [-1])

    def is_stop(tokens):
        return tf.reduce_any(tf.equal(tokens[:, None], stop_ids[None, :]), axis=1)

    count = tf.ones([batch], tf.int32)
    done = tf.logical_or(is_stop(token), count >= max_new)
    out = tf.TensorArray(tf.int32, size=limit, element_shape=tf.TensorShape([None]))
    out = out.write(0, token)

    def cond(i, token, done, count, caches, out):
        return tf.logical_and(i + 1 < limit, tf.logical_not(tf.reduce_all(done)))

    def body(i, token, done, count, caches, out):
        if guided:  # the twins' own samples are not used: greedy is the cheapest
            _, logits, caches = decode_step(model, tf.concat([token, token], 0), positions + i, caches, width + i,
                                            key_mask)
            nxt = sample(guided_logits(logits[:rows], logits[rows:], guidance), *sampling, lengths + i + 1)
        else:
            nxt, _, caches = decode_step(model, token, lengths + i, caches, width + i, key_mask, *sampling)
        nxt = tf.where(done, pad_id, nxt)
        count += tf.cast(tf.logical_not(done), tf.int32)
        done = tf.logical_or(done, tf.logical_or(is_stop(nxt), count >= max_new))
        return i + 1, nxt, done, count, caches, out.write(i + 1, nxt)

    i, _, _, count, _, out = tf.while_loop(
        cond, body, (tf.constant(0), token, done, count, state["caches"], out), maximum_iterations=limit
    )
    tokens = tf.transpose(out.gather(tf.range(i + 1)))  # [B, steps]
    tokens = tf.pad(tokens, [[0, 0], [0, limit - (i + 1)]], constant_values=pad_id)
    return tokens, count


# ----------------------------------------------------------------------------- eager helper

_COMPILED: "weakref.WeakKeyDictionary[keras.Model, dict]" = weakref.WeakKeyDictionary()


def _ragged(ids) -> tf.RaggedTensor:
    """int32 RaggedTensor [B, None] (ragged_rank 1) from a ragged or dense batch of ids."""
    if not isinstance(ids, tf.RaggedTensor):
        ids = tf.RaggedTensor.from_tensor(tf.convert_to_tensor(ids))
    ids = tf.cast(ids, tf.int32)
    if ids.ragged_rank != 1:
        ids = tf.RaggedTensor.from_row_splits(ids.flat_values, ids.row_splits)
    return ids


def compiled_generate(model: keras.Model, pad_id: int = 0, max_len: int | None = None, guided: bool = False):
    """`generate` as a `tf.function` with a fixed signature (one trace per model and settings).

    Its arguments: prompt_ids (int32 RaggedTensor [B, None]), then int32/float32
    vectors [B] max_new_tokens, temperature, top_k, top_p, seed, then stop_ids [S];
    `guided`: then guidance float32 [B] and unguided_ids (RaggedTensor [B, None]).
    """
    per_model = _COMPILED.setdefault(model, {})
    fn = per_model.get((pad_id, max_len, guided))
    if fn is None:
        vec = lambda dtype: tf.TensorSpec([None], dtype)  # noqa: E731
        ragged = tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1)
        spec = [ragged, vec(tf.int32), vec(tf.float32), vec(tf.int32), vec(tf.float32), vec(tf.int32), vec(tf.int32)]

        def fn(prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, stop_ids, *guide):
            return generate(
                model, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, stop_ids, pad_id, max_len, *guide
            )

        fn = per_model[(pad_id, max_len, guided)] = tf.function(
            fn, input_signature=spec + ([vec(tf.float32), ragged] if guided else []))
    return fn


def generate_text(
    loaded_or_model,
    tokenizer=None,
    prompts: Sequence[str] = (),
    sampling: SamplingParams | None = None,
    **overrides,
) -> list[str]:
    """Continues each prompt as a document; returns only the new text (stop tokens dropped).

    Args:
        loaded_or_model: a `LoadedModel` (then `tokenizer` may be None) or a `CausalLM`.
        tokenizer: a `tfchat.text.tokenizer.Tokenizer`.
        prompts: texts to continue, each encoded as `tokenizer.encode_document`.
        sampling: default `SamplingParams.greedy()`; `overrides` replace its fields
            (e.g. `max_new_tokens=16`). A None seed becomes a random one.
    """
    model = getattr(loaded_or_model, "model", loaded_or_model)
    tokenizer = tokenizer or getattr(loaded_or_model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("generate_text needs a tokenizer (or a LoadedModel)")
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    params = (sampling or SamplingParams.greedy()).replace(**overrides).resolved()
    if not prompts:
        return []
    context = context_size(model)
    params.check_fits(context - 1)
    encoded = [tokenizer.encode_document(p) for p in prompts]
    room = context - params.max_new_tokens
    for p, ids in zip(prompts, encoded):
        if len(ids) > room:
            log.warning("prompt of %d tokens truncated from the left to %d: %.40r...", len(ids), room, p)
    n = len(prompts)
    tokens, lengths = compiled_generate(model)(
        tf.ragged.constant(encoded, dtype=tf.int32, ragged_rank=1),
        tf.fill([n], params.max_new_tokens),
        tf.fill([n], params.temperature),
        tf.fill([n], params.top_k),
        tf.fill([n], params.top_p),
        tf.fill([n], params.seed),
        tf.constant(tokenizer.special.stop_ids, tf.int32),
    )
    tokens, lengths = tokens.numpy(), lengths.numpy()
    return [tokenizer.decode(tokens[b, : lengths[b]].tolist()) for b in range(n)]
