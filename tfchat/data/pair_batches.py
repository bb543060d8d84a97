"""Preference-pair batches: pairs -> chat template -> one example per pair, chosen and rejected side by side.

Each pair is rendered twice by `chat_template.render_reply`: the prompt
conversation, then the chosen (or rejected) reply and `<|end|>`. Both
follow the same context: the history drops its oldest whole exchanges
until the *longer* reply fits (the fine-tuning rule); a pair whose last
exchange and reply cannot fit whole is skipped and counted, never cut.
Batches:

    {"token_ids": int32 [B, 2, T],    # row 0 chosen, row 1 rejected: prompt + reply + <|end|>, right-padded
     "loss_mask": float32 [B, 2, T],  # 1 on the final reply's ids and its <|end|> (never earlier assistant turns)
     "lengths":   int32 [B, 2],       # real ids in each row (the reward is read at lengths - 1, the <|end|>)
     "ref_logps": float32 [B, 2]}     # only when given: the reference model's log-prob of each reply (DPO)

`T` is `seq_len`, at most the model's context: the reward model reads all
`T` ids, a language model predicts ids 1..T-1 from ids 0..T-2. As with the
other pipelines, `B` is per input pipeline / replica, batches are
deterministic for a seed, and each input pipeline reads a disjoint part.

Example:

>>> rendered = preference_split("preferences-sample", tok, 256, "train")   # doctest: +SKIP
>>> batch = next(iter(pair_batches(rendered, 256, 8, tok.pad_id)))          # doctest: +SKIP
>>> batch["token_ids"].shape                                                # doctest: +SKIP
TensorShape([8, 2, 256])
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfchat.data import preferences
from tfchat.data.batches import _with_options
from tfchat.data.io import ReadStats, shard_of
from tfchat.data.preferences import Pair
from tfchat.text import chat_template

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RenderedPairs:
    """Pairs rendered for training or scoring, in order.

    Attributes:
        pairs: the pairs that fit.
        chosen, rejected: their rendered ids (prompt + reply + `<|end|>`).
        prompt_lengths: ids before the reply (the same for both rows).
        skipped: pairs that could not fit the length they were rendered for.
    """

    pairs: list[Pair]
    chosen: list[list[int]]
    rejected: list[list[int]]
    prompt_lengths: list[int]
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def shard(self, num: int, index: int) -> "RenderedPairs":
        """Every `num`-th pair from `index` (one input pipeline's part)."""
        pick = slice(index, None, num)
        return RenderedPairs(self.pairs[pick], self.chosen[pick], self.rejected[pick], self.prompt_lengths[pick])

    def reply_lengths(self) -> np.ndarray:
        """int [N, 2]: tokens in each reply, its `<|end|>` included."""
        return np.array([[len(c) - n, len(r) - n] for c, r, n in zip(self.chosen, self.rejected, self.prompt_lengths)])

    def fingerprint(self) -> str:
        """SHA-256 of every rendered id: two renderings with the same fingerprint score the same."""
        digest = hashlib.sha256()
        for c, r, n in zip(self.chosen, self.rejected, self.prompt_lengths):
            digest.update(np.array([len(c), len(r), n, *c, *r], np.int64).tobytes())
        return digest.hexdigest()


def _encode(texts: list[str], tokenizer, chunk: int = 512) -> list[list[int]]:
    """Token ids of each text, tokenized in-graph `chunk` at a time."""
    encoded: list[list[int]] = []
    with tqdm(total=len(texts), desc="tokenizing pairs", unit="msg", disable=None, leave=False) as bar:
        for start in range(0, len(texts), chunk):
            encoded.extend(tokenizer.tf_encode_batch(tf.constant(texts[start:start + chunk], tf.string)).to_list())
            bar.update(len(texts[start:start + chunk]))
    return encoded


def render_pairs(pairs: list[Pair], tokenizer, max_len: int) -> RenderedPairs:
    """Renders every pair with the chat template in at most `max_len` ids per row (see the module docstring)."""
    texts = [text for p in pairs for text in (*(m["content"] for m in p.messages), p.chosen, p.rejected)]
    encoded = _encode(texts, tokenizer)
    out = RenderedPairs([], [], [], [])
    pos = 0
    for pair in pairs:
        n = len(pair.messages)
        history, chosen, rejected = encoded[pos:pos + n], encoded[pos + n], encoded[pos + n + 1]
        pos += n + 2
        roles = [m["role"] for m in pair.messages]
        room = max(len(chosen), len(rejected)) + 1
        rows = [chat_template.render_reply(roles, history, reply, tokenizer, max_len, room) for reply in (chosen, rejected)]
        if rows[0] is None or rows[1] is None:
            out.skipped += 1
            continue
        (c_ids, _), (r_ids, _) = rows
        out.pairs.append(pair)
        out.chosen.append(c_ids)
        out.rejected.append(r_ids)
        out.prompt_lengths.append(len(c_ids) - len(chosen) - 1)
    return out


def preference_splits(source: str | list[str], tokenizer, max_len: int, splits=("train", "validation"),
                      stats: ReadStats | None = None) -> dict[str, RenderedPairs]:
    """Reads `source` once and renders each of `splits` ("train", "validation", "all"): {split: RenderedPairs}.

    Raises:
        ValueError: when no pair of a split fits `max_len`.
    """
    stats = stats if stats is not None else ReadStats()
    pairs = preferences.load_pairs(source, stats)
    out = {}
    for split in splits:
        part = preferences.in_split(pairs, split)
        rendered = out[split] = render_pairs(part, tokenizer, max_len)
        log.info("preferences %s [%s]: %d pairs, %d skipped (the last exchange and a reply do not fit %d tokens)",
                 source, split, len(rendered), rendered.skipped, max_len)
        if not rendered.pairs:
            raise ValueError(f"{source}: no preference pair of the {split!r} split fits {max_len} tokens "
                             f"({len(part)} pairs in the split, {rendered.skipped} too long; {stats.summary()})")
    return out


def preference_split(source: str | list[str], tokenizer, max_len: int, split: str) -> RenderedPairs:
    """`preference_splits` of one split."""
    return preference_splits(source, tokenizer, max_len, (split,))[split]


def pair_batches(
    rendered: RenderedPairs,
    seq_len: int,
    batch_size: int,
    pad_id: int,
    *,
    ref_logps: np.ndarray | None = None,
    seed: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    repeat: bool = True,
    shuffle_buffer: int = 10_000,
) -> tf.data.Dataset:
    """Batches of rendered pairs (see the module docstring).

    Args:
        rendered: from `render_pairs` with `max_len <= seq_len`.
        ref_logps: float [N, 2], the reference log-probs of the chosen and
            rejected replies, carried along as `ref_logps`.
        repeat: loop forever with full batches; False = one pass in order
            (the last batch may be smaller).
        shuffle_buffer: pairs in the shuffle buffer; 0 = no shuffling.
    """
    longest = max(max(map(len, rendered.chosen)), max(map(len, rendered.rejected)))
    if longest > seq_len:
        raise ValueError(f"a rendered pair has {longest} ids, more than seq_len={seq_len}")
    num, index = shard_of(input_context)
    part = rendered.shard(num, index) if num > 1 else rendered
    if not len(part):
        raise ValueError(f"input pipeline {index} of {num} has no preference pair ({len(rendered)} in all)")

    def ragged(rows):
        return tf.RaggedTensor.from_row_lengths(np.concatenate(rows).astype(np.int32), [len(r) for r in rows])

    columns = {"chosen": ragged(part.chosen), "rejected": ragged(part.rejected),
               "prompt_length": np.array(part.prompt_lengths, np.int32)}
    if ref_logps is not None:
        ref_logps = np.asarray(ref_logps, np.float32)
        if ref_logps.shape != (len(rendered), 2):
            raise ValueError(f"ref_logps must be [{len(rendered)}, 2], got {ref_logps.shape}")
        columns["ref_logps"] = ref_logps[index::num]
    ds = tf.data.Dataset.from_tensor_slices(columns)
    if shuffle_buffer > 0 and repeat:
        ds = ds.shuffle(min(shuffle_buffer, len(part)), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def to_example(row):
        rows = [row["chosen"], row["rejected"]]
        lengths = tf.stack([tf.size(r, tf.int32) for r in rows])  # [2]
        ids = tf.stack([tf.pad(r, [[0, seq_len - tf.size(r)]], constant_values=pad_id) for r in rows])  # [2, T]
        position = tf.range(seq_len)[None, :]
        mask = (position >= row["prompt_length"]) & (position < lengths[:, None])  # the reply and its <|end|>
        example = {"token_ids": tf.ensure_shape(ids, [2, seq_len]), "loss_mask": tf.cast(mask, tf.float32),
                   "lengths": lengths}
        if "ref_logps" in row:
            example["ref_logps"] = row["ref_logps"]
        return example

    ds = ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
    return _with_options(ds.batch(batch_size, drop_remainder=repeat).prefetch(tf.data.AUTOTUNE))
