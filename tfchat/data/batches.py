"""Input pipelines: documents or conversations -> batches of token ids.

Both pipelines yield dict batches with the same contract:

    {"token_ids": int32 [B, T],    # model input
     "targets":   int32 [B, T],    # the next token at each position
     "loss_mask": float32 [B, T]}  # 1 where the prediction counts

`B` is the batch size *per input pipeline / replica*: under a
`tf.distribute` strategy build the dataset in `distribute_datasets_from_function`
and pass `input_context.get_per_replica_batch_size(global_batch_size)`.

Pretraining: documents -> in-graph tokenization (`tokenizer.tf_encode` in a
parallel map) -> `eot_id` before every document -> one token stream cut into
fixed windows of `seq_len + 1` tokens (no padding; window k holds stream
tokens [k(T+1), (k+1)(T+1)) so no token is lost or repeated) -> shuffle ->
batch. The mask is all ones. A mixture of sources (`tfchat.data.mixture`)
packs each source into its own windows and draws windows by weight.

Fine-tuning: conversations (streamed from the source, rendered a chunk at a
time, so only their token ids are held) -> `chat_template.render` -> one example per
conversation padded to `seq_len` (padding has mask 0), or with `pack=True`
concatenated and cut into `seq_len + 1` windows like pretraining (each
conversation starts with `eot_id`; only the final window is padded).

Classifiers: `labelled_batches` batches texts with their label targets.

Everything is deterministic for a given `seed`, so a resumed run replays the
pipeline to where it stopped; pipelines are built from native tf.data ops
(checkpointable with `tf.train.Checkpoint(iterator=iter(ds))`), except that
table sources (Parquet, `hf:`) read their chunks with a Python generator; and
each input pipeline of an `input_context` reads a disjoint part of the data.

Example:

>>> tok = load_tokenizer("runs/tokenizer")                        # doctest: +SKIP
>>> ds = pretrain_dataset("wikipedia-sample", tok, seq_len=256, batch_size=16)  # doctest: +SKIP
>>> batch = next(iter(ds)); batch["token_ids"].shape              # doctest: +SKIP
TensorShape([16, 256])
"""

from __future__ import annotations

import itertools
import logging
from typing import Iterable

import numpy as np
import tensorflow as tf

from tfchat.data import dialogues, mixture, sources
from tfchat.data.io import ReadStats, check_split, shard_of
from tfchat.data.tables import Columns
from tfchat.text import chat_template
from tfchat.text.control_tags import TagVocabulary

log = logging.getLogger(__name__)

# Documents shuffled before tokenizing (a Wikipedia article is ~30 KB, and the
# buffer is saved in iterator checkpoints, so keep it modest).
DOC_SHUFFLE_BUFFER = 128
# Documents tokenized per map call: amortizes op overhead.
DOC_BATCH = 16


def _examples(windows: tf.Tensor, mask: tf.Tensor | None = None) -> dict:
    """[B, T+1] windows -> the dict contract (targets shifted by one)."""
    targets = windows[:, 1:]
    loss_mask = tf.ones_like(targets, tf.float32) if mask is None else tf.cast(mask[:, 1:], tf.float32)
    return {"token_ids": windows[:, :-1], "targets": targets, "loss_mask": loss_mask}


def _with_options(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True  # same seed, same batches, whatever the thread timing
    return ds.with_options(options)


def pretrain_dataset(
    source: str | None,
    tokenizer,
    seq_len: int,
    batch_size: int,
    *,
    split: str = "train",
    seed: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    repeat: bool = True,
    shuffle_buffer: int = 1024,
    cache_dir: str | None = None,
    content_filter=None,
    text_column: str = Columns.text,
    convert_script: str | None = None,
) -> tf.data.Dataset:
    """Packed next-token batches from a text source (see the module docstring).

    Args:
        source: a `tfchat.data.sources` name or a mixture (`tfchat.data.mixture`);
            None = the default pretraining data.
        tokenizer: a `tfchat.text.tokenizer.Tokenizer`.
        seq_len: tokens per example (T).
        batch_size: examples per batch for this input pipeline / replica.
        split: "train" or "validation" (held-out articles).
        seed: fixes file, document and window order.
        input_context: shards the data across input pipelines.
        repeat: loop forever (batches then all have exactly `batch_size`
            rows); False = one pass, the last batch may be smaller and the
            final < seq_len + 1 tokens are dropped.
        shuffle_buffer: windows in the shuffle buffer; 0 = no shuffling at all
            (documents and windows in source order).
        cache_dir: where local sources' extracted text is cached.
        content_filter: drop the documents it flags (`sources.filter_documents`).
        text_column: the text field of JSONL, Parquet, `hf:` and TFDS sources.
        convert_script: an OpenCC Simplified/Traditional conversion (`tfchat.data.sources`).
    """
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be positive, got {seq_len}, {batch_size}")
    source = source or sources.default_pretrain_source()
    shuffle = shuffle_buffer > 0

    def windows_of(name: str) -> tf.data.Dataset:
        docs = sources.documents_dataset(
            name, split, cache_dir=cache_dir, input_context=input_context, seed=seed if shuffle else None,
            text_column=text_column, convert_script=convert_script, content_filter=content_filter,
        )
        if shuffle:
            docs = docs.shuffle(DOC_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            docs = docs.repeat()
        tokens = docs.batch(DOC_BATCH).map(encode, num_parallel_calls=tf.data.AUTOTUNE)
        # Cut the stream into windows across document boundaries: no padding.
        windows = tokens.rebatch(seq_len + 1, drop_remainder=True)
        return windows.map(lambda w: tf.ensure_shape(w, [seq_len + 1]))

    def encode(texts):
        return tokenizer.tf_encode_documents(texts).flat_values  # one stream

    parts = mixture.parse_mixture(source)
    windows = mixture.sample([windows_of(name) for name, _ in parts], [w for _, w in parts], seed)
    if shuffle:
        windows = windows.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    batches = windows.batch(batch_size, drop_remainder=repeat).map(_examples)
    return _with_options(batches.prefetch(tf.data.AUTOTUNE))


def drop_tags(conversation: list, rng: np.random.Generator, rate: float) -> list:
    """Tag dropout: each tag name drops from every message of the conversation with probability `rate`, so
    the model also learns to reply without that tag (and with any subset of tags)."""
    names = sorted({name for m in conversation for name in m.get("tags") or {}})
    dropped = {name for name in names if rng.random() < rate}
    if not dropped:
        return conversation
    return [{**m, "tags": {k: v for k, v in m["tags"].items() if k not in dropped}} if m.get("tags") else m
            for m in conversation]


def render_conversations(
    conversations: Iterable, tokenizer, max_len: int, chunk: int = 256, *,
    tags: TagVocabulary | None = None, tag_dropout: float = 0.0, seed: int = 0,
) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Renders conversations (a list or a stream) with the chat template, tokenizing `chunk` at a time.

    `tags` (the model's tag vocabulary) renders the assistant messages' tags as
    control ids, after `drop_tags` at `tag_dropout` (seeded by `seed`); without
    it tags are ignored.

    Returns (ids, masks, skipped): int32 ids and int8 masks per conversation;
    conversations left with no assistant token after truncation are skipped
    (and counted), not returned.
    """
    all_ids, all_masks, skipped = [], [], 0
    rng = np.random.default_rng(seed)
    stream = iter(conversations)
    # No progress bar of its own: this runs inside a command's bar (one bar per command).
    while part := list(itertools.islice(stream, chunk)):
        # The knowledge of grounded conversations (`dialogues.Grounded`) is encoded in the same batch, after them.
        contents = [m["content"] for conv in part for m in conv] + [dialogues.knowledge_of(c) for c in part]
        encoded = tokenizer.tf_encode_batch(tf.constant(contents, tf.string)).to_list()
        knowledge = encoded[len(contents) - len(part):]
        pos = 0
        for conv, known in zip(part, knowledge):
            controls = None
            if tags is not None:
                kept = drop_tags(conv, rng, tag_dropout) if tag_dropout else conv
                controls = [tags.ids(m.get("tags")) if m["role"] == "assistant" else None for m in kept]
            ids, mask = chat_template.render_encoded([m["role"] for m in conv], encoded[pos:pos + len(conv)],
                                                     tokenizer, max_len, knowledge=known or None, controls=controls)
            pos += len(conv)
            if not any(mask):
                skipped += 1
                continue
            all_ids.append(np.asarray(ids, np.int32))
            all_masks.append(np.asarray(mask, np.int8))
    return all_ids, all_masks, skipped


def finetune_dataset(
    source: str | list[str] | None,
    tokenizer,
    seq_len: int,
    batch_size: int,
    *,
    split: str = "train",
    seed: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    repeat: bool = True,
    pack: bool = False,
    shuffle_buffer: int = 10_000,
    content_filter=None,
    columns: Columns | None = None,
    convert_script: str | None = None,
    tags: TagVocabulary | None = None,
    tag_dropout: float = 0.0,
) -> tf.data.Dataset:
    """Chat fine-tuning batches (see the module docstring).

    Args:
        source: a `tfchat.data.dialogues` source name or a list of them; None =
            the bundled OASST + Topical-Chat samples.
        tokenizer: a `tfchat.text.tokenizer.Tokenizer`.
        seq_len: tokens per example (T); longer conversations are truncated
            by `chat_template` (oldest exchanges first).
        batch_size: examples per batch for this input pipeline / replica.
        split: "train" or "validation" (held out by conversation).
        seed: fixes the order.
        input_context: shards conversations across input pipelines.
        repeat: loop forever with full batches; False = one pass.
        pack: concatenate conversations into full windows instead of padding
            each one.
        shuffle_buffer: conversations in the shuffle buffer; 0 = no shuffling.
        content_filter: drop the conversations it flags (any message;
            `tfchat.inference.classifier.ContentFilter.unflagged_conversations`).
        columns: where rows of JSONL and table sources hold their conversation.
        convert_script: an OpenCC Simplified/Traditional conversion of every
            message (`tfchat.text.chinese.SCRIPT_CONVERSIONS`); the split is
            chosen before it, so it is the same as without.
        tags: the model's tag vocabulary: message tags become control ids
            before each reply (`render_conversations`); None ignores them.
        tag_dropout: the chance that a tag name is dropped from a training
            conversation (`drop_tags`); validation keeps every tag.

    Raises:
        ValueError: when the split has no usable conversation.
    """
    check_split(split)
    source = source or dialogues.default_dialogue_source()
    stats = ReadStats()
    num, index = shard_of(input_context)
    in_split = (c for c in dialogues.iter_conversations(source, stats, columns) if dialogues.split_of(c) == split)
    if content_filter is not None:
        in_split = content_filter.unflagged_conversations(in_split)
    chosen = itertools.islice(in_split, index, None, num)  # disjoint conversations per input pipeline
    if convert_script:
        chosen = (dialogues.convert_script(c, convert_script) for c in chosen)
    ids, masks, skipped = render_conversations(chosen, tokenizer, seq_len + 1, tags=tags,
                                               tag_dropout=tag_dropout if split == "train" else 0.0,
                                               seed=seed * 1009 + index)
    if not ids and not skipped:
        raise ValueError(f"{source}: no conversations in the {split!r} split for input pipeline {index} of {num} "
                         f"({stats.summary()})")
    log.info(
        "finetune %s [%s]: %d conversations, %d skipped (no reply left after truncation to %d tokens); %s",
        source, split, len(ids), skipped, seq_len + 1, stats.summary(),
    )
    if skipped:
        log.warning("%d conversations had no assistant token left after truncation; skipped", skipped)
    if not ids:
        raise ValueError(f"{source}: no conversation in the {split!r} split fits seq_len={seq_len}")
    return conversation_batches(ids, masks, seq_len, batch_size, tokenizer.pad_id, seed=seed, repeat=repeat,
                                pack=pack, shuffle_buffer=shuffle_buffer)


def conversation_batches(
    ids: list[list[int]],
    masks: list[list[int]],
    seq_len: int,
    batch_size: int,
    pad_id: int,
    *,
    seed: int = 0,
    repeat: bool = True,
    pack: bool = False,
    shuffle_buffer: int = 10_000,
    with_valid: bool = False,
) -> tf.data.Dataset:
    """Batches of rendered conversations (`render_conversations`' ids and masks), one per row or packed.

    With `with_valid`, batches also hold `valid` float32 [B, T]: 1 on every
    real (non-padding) target, for losses over all tokens (evaluation).
    """
    lengths = [len(x) for x in ids]
    ragged_ids = tf.RaggedTensor.from_row_lengths(np.concatenate(ids).astype(np.int32), lengths)
    ragged_mask = tf.RaggedTensor.from_row_lengths(np.concatenate(masks).astype(np.int32), lengths)
    ds = tf.data.Dataset.from_tensor_slices((ragged_ids, ragged_mask))
    if shuffle_buffer > 0:
        ds = ds.shuffle(min(shuffle_buffer, len(ids)), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if pack:
        ds = ds.rebatch(seq_len + 1, drop_remainder=False)

    def to_example(window, mask):
        window, mask = tf.convert_to_tensor(window), tf.convert_to_tensor(mask)
        example = {"token_ids": window[:-1], "targets": window[1:], "loss_mask": tf.cast(mask[1:], tf.float32)}
        if with_valid:
            example["valid"] = tf.ones_like(example["loss_mask"])
        return example

    ds = ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
    keys = ("token_ids", "targets", "loss_mask") + (("valid",) if with_valid else ())
    pad = tf.constant(pad_id, tf.int32)
    ds = ds.padded_batch(
        batch_size,
        padded_shapes={k: [seq_len] for k in keys},
        padding_values={k: (pad if k in ("token_ids", "targets") else tf.constant(0.0)) for k in keys},
        drop_remainder=repeat,
    )
    return _with_options(ds.prefetch(tf.data.AUTOTUNE))


def labelled_batches(
    texts: list[str],
    targets: np.ndarray,
    batch_size: int,
    *,
    sources: list[str] | None = None,
    balance: float = 0.0,
    seed: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    repeat: bool = True,
    shuffle_buffer: int = 100_000,
) -> tf.data.Dataset:
    """Classifier batches `{"text": string [B], "labels": float32 [B, L]}` from texts and their
    multi-hot (or one-hot) targets [N, L]; each input pipeline reads every n-th example.

    Args:
        sources: each text's source; with `balance` > 0 (and `repeat`), sources
            are sampled with probability proportional to size^(1 - balance):
            0 keeps the data's own mix, 1 samples every source equally often
            (a small source of rare examples is seen more often, a big one less).
        repeat: loop forever with full batches; False = one pass, the last batch may be smaller.
    """
    if len(texts) != len(targets) or not len(texts):
        raise ValueError(f"need as many targets as texts, and at least one (got {len(texts)} and {len(targets)})")
    if not 0.0 <= balance <= 1.0:
        raise ValueError(f"balance must be in [0, 1], got {balance}")
    num, index = shard_of(input_context)
    groups = {"": np.arange(len(texts))}
    if sources is not None and balance > 0 and repeat:
        names = np.array(sources)
        groups = {s: np.flatnonzero(names == s) for s in sorted(set(sources))}

    def part(rows: np.ndarray, k: int) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices({"text": tf.constant([texts[i] for i in rows], tf.string),
                                                 "labels": tf.constant(targets[rows], tf.float32)})
        if num > 1:
            ds = ds.shard(num, index)
        if shuffle_buffer > 0:
            ds = ds.shuffle(min(shuffle_buffer, len(rows)), seed=seed + k, reshuffle_each_iteration=True)
        return ds.repeat() if repeat else ds

    parts = [part(rows, k) for k, rows in enumerate(groups.values())]
    if len(parts) == 1:
        ds = parts[0]
    else:
        weights = np.array([len(rows) for rows in groups.values()], np.float64) ** (1.0 - balance)
        ds = tf.data.Dataset.sample_from_datasets(parts, weights=(weights / weights.sum()).tolist(), seed=seed)
    return _with_options(ds.batch(batch_size, drop_remainder=repeat).prefetch(tf.data.AUTOTUNE))
