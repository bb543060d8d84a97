"""The fast decode path: XLA-compiled multi-token decoding over per-row KV caches ("slots").

`generate` (the XLA-free loop the SavedModel signatures run) shares one cache
index across a left-padded batch, so a batch starts and ends together. Here
every row owns a slot: its keys and values sit at positions `0 .. n-1` of a
`[B, H, max_len, D]` cache and it decodes at its own position, so rows can
join and leave a running batch between calls (continuous batching, as in
vLLM/Orca; simplified: whole rows, no paged memory). The pieces are the
library's own, not a second copy:

* `prefill` is `generation.prefill` (no XLA: one forward pass, few ops per
  token), each prompt cut from the left to its own room, its cache moved
  into slot layout;
* `decode` runs `chunk` steps of `generation.decode_step` in one
  `tf.function(jit_compile=True)` call: XLA fuses each layer's ops, so a
  step costs about its arithmetic, not ~100 op dispatches. Attention runs
  over the whole cache, masked (static shapes); the caches hold the
  positions the batch needs rounded up to a multiple of `LENGTH_STEP`, so
  a step reads little more than the filled prefix and its time grows only
  in those steps;
* on a CPU, attention is `tfchat.model.native_attention`'s kernel (an XLA
  custom call, where a C++ compiler is at hand): XLA:CPU runs each head's
  small dots on one core, one head after another, so the cache was read at
  one core's bandwidth (~0.55 ms a step at 512 positions, small preset,
  2-core machine, against ~2 ms for the weights); the kernel splits the
  heads across the cores and reads each row only up to its own position.
  Measured without gain before it: bf16 caches (cast to f32 for the float32
  dots, or bf16 dots), XNNPACK, oneDNN and YNNPACK dot fusions
  (`XLA_FLAGS`), attention split by heads or halves of the cache
  (independent dots do not run concurrently), block-diagonal or all-pairs
  dots over heads (Eigen packs the cache: 1.3-3x slower), multiply +
  reduce instead of dots (XLA's reductions run at ~11 GB/s a core);
* a batch of one row on a CPU is traced under
  `tfchat.model.matvec.one_row_products`: XLA:CPU runs a one-row dot on one
  core, the same product as a batch of two half-products on all of them;
* sampling is `generation.sample` keyed by (seed, position), so a row's
  tokens equal those `generate` gives it alone, whatever else is batched;
* a row decoded with classifier-free guidance (`tfchat.inference.guidance`)
  has an untagged twin row in the same batch (`Rows.guide`): it samples from
  the guided mix of both rows' logits and the twin is fed its token, as in
  `generate(..., unguided_ids=...)`. Batches without guided rows run a
  program without the mix.

Batches are padded to a power of two with copies of row 0 (`bucket`), so
XLA compiles one decode program per batch bucket and cache length in use
(at most (log2(max_batch) + 1) * max_len / LENGTH_STEP).

Example:

>>> from tfchat.config import GPTConfig
>>> from tfchat.model import build_gpt
>>> decoder = SlotDecoder(build_gpt(GPTConfig(vocab_size=50, block_size=32, n_layer=1, n_head=2, n_embd=16)), chunk=4)
>>> rows = decoder.prefill([[1, 2, 3], [4]], max_new_tokens=[5, 5], temperature=[0.0, 0.0], top_k=[0, 0],
...                        top_p=[1.0, 1.0], seed=[0, 0])
>>> tokens, logits, rows = decoder.decode(rows)
>>> tokens.shape  # 4 more tokens per row after the first (rows.token)
(2, 4)
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfchat.inference.generation import _context, decode_step, prefill, sample
from tfchat.inference.guidance import guided_logits
from tfchat.model.matvec import one_row_products
from tfchat.model.native_attention import available as native_available, native_slot_attention

SAMPLING = ("temperature", "top_k", "top_p", "seed")
GUIDE = ("guidance", "partner", "lead")
# Slot caches grow and shrink in steps of this many positions. A step reads the whole cache: 16 rows of
# the small preset decode 128 tokens 1.15x faster with steps of 32 than of 128 (the server compiles the
# extra programs on a background thread).
LENGTH_STEP = 32
_DTYPES = {"temperature": np.float32, "top_k": np.int32, "top_p": np.float32, "seed": np.int32}


def bucket(n: int) -> int:
    """The smallest power of two >= n: batch sizes XLA compiles for."""
    return 1 << max(0, int(n) - 1).bit_length()


@dataclasses.dataclass
class Rows:
    """A batch of slots: the last sampled (not yet fed) token of each row, its position, the caches
    (one (keys, values) pair of [B, H, max_len, D] per block), per-row sampling settings (numpy [B]),
    and after `prefill` the logits of the first token [B, V]; the guided rows' pairing in `guide`."""

    token: tf.Tensor
    position: tf.Tensor
    caches: list
    sampling: dict
    logits: tf.Tensor | None = None
    # Guidance (numpy [B] each), or None when no row is guided: "guidance" (1 = none), "partner" (a guided
    # row's twin, else the row itself), "lead" (the row whose token a twin is fed, else the row itself).
    guide: dict | None = None

    def __len__(self) -> int:
        return int(self.token.shape[0])


class SlotDecoder:
    """Prefill and chunked XLA decoding for a `CausalLM`, rows joining and leaving between calls.

    Args:
        model: a `tfchat.model.CausalLM`.
        max_len: context (default: block_size); a slot holds this many positions.
        chunk: tokens decoded per `decode` call (more: fewer calls from Python; fewer: finer streaming
            and a sooner chance for new rows to join).
        jit: compile `decode` with XLA (False runs the same graph without XLA, for tests and comparison).
        native: on a CPU, attention through `tfchat.model.native_attention` (all cores) when it can be built;
            False keeps XLA's own dots.
    """

    def __init__(self, model: keras.Model, max_len: int | None = None, chunk: int = 8, jit: bool = True,
                 pad_id: int = 0, native: bool = True):
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.model, self.max_len, self.chunk, self.jit = model, _context(model, max_len), chunk, jit
        self.pad_id = pad_id
        vec = lambda dtype: tf.TensorSpec([None], dtype)  # noqa: E731
        self._prefill = tf.function(self._prefill_fn, input_signature=[
            tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1),
            vec(tf.float32), vec(tf.int32), vec(tf.float32), vec(tf.int32), tf.TensorSpec([], tf.int32),
            vec(tf.float32), vec(tf.int32), vec(tf.int32),
        ])
        self._decode = {}  # (with_logits, one row) -> tf.function; XLA keeps one program per input shape
        self.one_row_halves = jit and not tf.config.list_physical_devices("GPU")
        # Attention on all cores (an XLA:CPU custom call), when its kernel could be built here.
        self.native = native and self.one_row_halves and native_available()
        self.compiled: set[tuple[int, int]] = set()  # (batch, cache length) compiled ahead by `compile`
        self.compiled_guided: set[tuple[int, int]] = set()  # the same, of the programs with guided rows

    # ------------------------------------------------------------------ graph functions

    def _prefill_fn(self, prompt_ids, temperature, top_k, top_p, seed, capacity, guidance, partner, lead):
        # max_new_tokens=1: prompts arrive cut to their own room; a batch-wide cut would change them.
        s = prefill(self.model, prompt_ids, 1, temperature, top_k, top_p, seed, self.pad_id, self.max_len)
        lengths = s["position"]  # [B] kept prompt lengths = the first new token's position
        token = tf.cond(tf.reduce_any(tf.not_equal(lead, tf.range(tf.size(lead)))),  # a guided row's twin is here
                        lambda: guided_tokens(s["token"], s["logits"], (temperature, top_k, top_p, seed), lengths,
                                              guidance, partner, lead),
                        lambda: s["token"])
        pad = s["cache_index"] - lengths  # [B] left padding in prefill's cache
        steps = tf.shape(s["caches"][0])[0]
        # Slot position p of row b <- prefill cache row p + pad[b]; positions >= length hold junk that the
        # slot mask hides until decoding overwrites them.
        src = tf.minimum(tf.range(capacity)[None, :] + pad[:, None], steps - 1)  # [B, S]
        caches = []
        for cache in s["caches"]:  # [T, B, 2, H, D]
            kv = tf.gather(tf.transpose(cache, [1, 2, 3, 0, 4]), src, axis=3, batch_dims=1)  # [B, 2, H, S, D]
            caches.append((kv[:, 0], kv[:, 1]))
        return token, s["logits"], lengths, caches

    def _decode_fn(self, token, position, caches, temperature, top_k, top_p, seed, *guide, with_logits: bool):
        last = tf.shape(caches[0][0])[2] - 1
        out = tf.TensorArray(tf.int32, size=self.chunk)
        out_logits = tf.TensorArray(tf.float32, size=self.chunk if with_logits else 1)

        def body(i, token, position, caches, out, out_logits):
            # Rows past their last position (finished, or batch padding) are clamped: their output is dropped.
            at = tf.minimum(position, last)
            nxt, logits, caches = decode_step(self.model, token, at, caches, at, None, temperature, top_k, top_p,
                                              seed, static_shapes=True)
            if guide:
                nxt = guided_tokens(nxt, logits, (temperature, top_k, top_p, seed), at + 1, *guide, static_shapes=True)
            nxt = tf.ensure_shape(nxt, token.shape)  # sample's tf.cond loses the static batch size
            if with_logits:
                out_logits = out_logits.write(i, logits)
            return i + 1, nxt, position + 1, caches, out.write(i, nxt), out_logits

        _, token, position, caches, out, out_logits = tf.while_loop(
            lambda i, *_: i < self.chunk, body, (tf.constant(0), token, position, caches, out, out_logits),
            maximum_iterations=self.chunk,
        )
        tokens = tf.transpose(out.stack())  # [B, chunk]
        logits = tf.transpose(out_logits.stack(), [1, 0, 2]) if with_logits else tf.zeros([0])
        return tokens, logits, position, caches

    # ------------------------------------------------------------------ public

    def capacity(self, positions) -> int:
        """Cache length for rows at `positions` about to decode a chunk: a multiple of LENGTH_STEP, at most max_len."""
        need = min(self.max_len, int(np.max(positions)) + self.chunk + 1)
        return min(self.max_len, -(-need // LENGTH_STEP) * LENGTH_STEP)

    def prefill(self, prompts: Sequence[Sequence[int]], max_new_tokens, temperature, top_k, top_p, seed,
                guidance: Sequence[float] | None = None, twin_of: Sequence[int] | None = None) -> Rows:
        """Fills slots for `prompts` (lists of ids; each cut from the left to `max_len - its max_new_tokens`)
        and samples each row's first new token (`Rows.token`, its logits `Rows.logits`).

        Guidance: `twin_of[i]` is the index of the row whose untagged twin prompt `i` is (-1: none), and
        `guidance[j]` the scale of a row j that has a twin (1 = none)."""
        if not len(prompts):
            raise ValueError("prefill needs at least one prompt")
        kept = [list(p)[max(0, len(p) - (self.max_len - int(m))):] for p, m in zip(prompts, max_new_tokens)]
        sampling = {k: np.asarray(v, _DTYPES[k]).reshape(-1) for k, v in
                    zip(SAMPLING, (temperature, top_k, top_p, seed))}
        guide = pairing(len(kept), guidance, twin_of)
        token, logits, lengths, caches = self._prefill(
            tf.ragged.constant(kept, tf.int32, ragged_rank=1), *(tf.constant(sampling[k]) for k in SAMPLING),
            tf.constant(self.capacity([len(p) for p in kept]), tf.int32),
            *(tf.constant(guide[k]) for k in GUIDE),
        )
        return Rows(token, lengths, caches, sampling, logits, guide if _any_guided(guide) else None)

    def decode(self, rows: Rows, with_logits: bool = False) -> tuple[np.ndarray, np.ndarray | None, Rows]:
        """Decodes `chunk` tokens for every row (feeding `rows.token` first).

        Returns:
            (tokens int32 [B, chunk], their logits float32 [B, chunk, V] or None, the advanced rows).
        """
        n, size = len(rows), bucket(len(rows))
        fn = self._decode_function(with_logits, size, rows.guide is not None)
        rows = self.resize(rows, self.capacity(rows.position.numpy()))
        padded = rows if size == n else self.select(rows, list(range(n)) + [0] * (size - n))
        guide = [tf.constant(padded.guide[k]) for k in GUIDE] if padded.guide is not None else []
        tokens, logits, position, caches = fn(padded.token, padded.position, padded.caches,
                                              *(tf.constant(padded.sampling[k]) for k in SAMPLING), *guide)
        tokens = tokens.numpy()[:n]
        logits = logits.numpy()[:n] if with_logits else None
        if n != len(padded):
            caches = [(k[:n], v[:n]) for k, v in caches]
        return tokens, logits, Rows(tf.constant(tokens[:, -1]), position[:n], caches, rows.sampling, None, rows.guide)

    def _decode_function(self, with_logits: bool, batch: int, guided: bool = False):
        key = (with_logits, batch == 1 and self.one_row_halves, guided)
        fn = self._decode.get(key)
        if fn is None:
            def trace(*args):
                with contextlib.ExitStack() as stack:
                    if key[1]:
                        stack.enter_context(one_row_products())
                    if self.native:
                        stack.enter_context(native_slot_attention())
                    return self._decode_fn(*args, with_logits=with_logits)

            fn = self._decode[key] = tf.function(trace, jit_compile=self.jit, reduce_retracing=True)
        return fn

    def compile(self, max_batch: int, capacities: Sequence[int] | None = None, guided: bool = False) -> None:
        """Compiles `decode` for every batch bucket up to `max_batch` and each cache length in `capacities`
        (default: all), so requests do not wait for XLA when the batch first reaches a size. `guided`: the
        programs of batches with guided rows instead (two rows and more)."""
        c = self.model.config
        for capacity in capacities or range(LENGTH_STEP, self.max_len + LENGTH_STEP, LENGTH_STEP):
            capacity = min(capacity, self.max_len)
            for b in sorted({bucket(n) for n in range(2 if guided else 1, max_batch + 1)}):
                fn = self._decode_function(False, b, guided)
                zeros = tf.zeros([b, c.n_head, capacity, c.head_dim], self.model.backbone.blocks[0].attn.compute_dtype)
                ints = tf.zeros([b], tf.int32)
                guide = [tf.ones([b]), tf.range(b), tf.range(b)] if guided else []
                fn(ints, ints, [(zeros, zeros)] * c.n_layer, tf.zeros([b], tf.float32), ints, tf.ones([b]), ints, *guide)
                (self.compiled_guided if guided else self.compiled).add((b, capacity))

    @staticmethod
    def resize(rows: Rows, capacity: int) -> Rows:
        """`rows` with caches of `capacity` positions (cut or zero-padded at the end)."""
        have = int(rows.caches[0][0].shape[2])
        if have == capacity:
            return rows
        if have > capacity:
            caches = [(k[:, :, :capacity], v[:, :, :capacity]) for k, v in rows.caches]
        else:
            pad = [[0, 0], [0, 0], [0, capacity - have], [0, 0]]
            caches = [(tf.pad(k, pad), tf.pad(v, pad)) for k, v in rows.caches]
        return dataclasses.replace(rows, caches=caches)

    def select(self, rows: Rows, index: Sequence[int], more: Rows | None = None) -> Rows:
        """The rows `index` of `rows` (followed by those of `more`, numbered after them): rows leave or join.
        A guided row and its twin leave together (a row whose partner is not selected decodes unguided)."""
        if more is not None:
            capacity = max(int(r.caches[0][0].shape[2]) for r in (rows, more))
            rows, more = self.resize(rows, capacity), self.resize(more, capacity)
            guide = None
            if rows.guide is not None or more.guide is not None:
                a, b = (r.guide or pairing(len(r)) for r in (rows, more))
                guide = {k: np.concatenate([a[k], b[k] + (len(rows) if k != "guidance" else 0)]) for k in GUIDE}
            rows = Rows(
                tf.concat([rows.token, more.token], 0), tf.concat([rows.position, more.position], 0),
                [tuple(tf.concat([a, b], 0) for a, b in zip(x, y)) for x, y in zip(rows.caches, more.caches)],
                {k: np.concatenate([rows.sampling[k], more.sampling[k]]) for k in SAMPLING}, None, guide,
            )
        index = np.asarray(index, np.int32)
        guide = None
        if rows.guide is not None:  # renumber partners and leads; the first copy of a row is the one paired
            new = {}
            for j, i in enumerate(index.tolist()):
                new.setdefault(i, j)
            guide = {"guidance": rows.guide["guidance"][index].copy()}
            for k in ("partner", "lead"):
                guide[k] = np.array([new.get(int(rows.guide[k][i]), j) for j, i in enumerate(index.tolist())], np.int32)
            guide["guidance"][guide["partner"] == np.arange(len(index))] = 1.0  # its twin left: unguided
            guide = guide if _any_guided(guide) else None
        return Rows(
            tf.gather(rows.token, index), tf.gather(rows.position, index),
            [(tf.gather(k, index), tf.gather(v, index)) for k, v in rows.caches],
            {k: v[index] for k, v in rows.sampling.items()}, None, guide,
        )


def pairing(n: int, guidance: Sequence[float] | None = None, twin_of: Sequence[int] | None = None) -> dict:
    """Rows.guide arrays (`GUIDE`) for `n` rows: row i is the untagged twin of row `twin_of[i]` (-1: none),
    and a row j with a twin is guided at scale `guidance[j]`."""
    own = np.arange(n, dtype=np.int32)
    guide = {"guidance": np.ones(n, np.float32), "partner": own.copy(), "lead": own.copy()}
    for i, j in enumerate(twin_of if twin_of is not None else []):
        if j >= 0:
            guide["partner"][j], guide["lead"][i] = i, j
            guide["guidance"][j] = guidance[j]
    return guide


def _any_guided(guide: dict) -> bool:
    return bool(np.any(guide["lead"] != np.arange(len(guide["lead"]))))


def guided_tokens(token, logits, sampling, step, guidance, partner, lead, static_shapes: bool = False):
    """Each guided row's token sampled from its guided logits (its twin's as the untagged ones), keyed by
    `step` as `generation.sample` is; each twin takes its row's token; other rows keep `token`.

    token [B], logits [B, V], sampling (temperature, top_k, top_p, seed), step [B] and the `pairing` arrays:
    the fast path's decode step and the server's XLA-free loop (`serving.backend`) mix alike."""
    mixed = guided_logits(logits, tf.gather(logits, partner), guidance)
    token = tf.where(tf.equal(guidance, 1.0), token, sample(mixed, *sampling, step, static_shapes=static_shapes))
    return tf.gather(token, lead)
