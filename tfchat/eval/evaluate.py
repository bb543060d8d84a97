"""Evaluate a model: held-out loss, perplexity and bits per byte; chat replies; minimal pairs.

What is measured (definitions in `tfchat.eval.metrics`):

- text sources: `loss` (mean nats per target token), `perplexity` = exp(loss)
  and `bits_per_byte` = total nats / ln 2 / UTF-8 bytes of the evaluated
  target tokens, over the windows training's held-out loss uses
  (`pretrain_dataset`: `<|endoftext|>` + each document, one stream cut into
  seq_len + 1 token windows; here in source order, the first
  `max_batches` batches or all; a window's first token is context only).
- dialogue sources: the same three over every token of the rendered
  conversations (chat template, one conversation per sequence, cut to
  seq_len + 1 tokens as in fine-tuning), then
  `assistant_loss` / `assistant_perplexity` / `assistant_bits_per_byte` over
  the assistant's tokens only (what fine-tuning trains on), and `bleu` /
  `rouge_l` of greedy replies: for each of the first `max_dialogues`
  conversations, the model answers the history before its last assistant
  message, which is the reference (over characters for Chinese references:
  `metric_tokenization` "zh", see `tfchat.eval.metrics`).
- minimal pairs (BLiMP's JSONL format): `blimp_accuracy`, the fraction of
  pairs whose `sentence_good` gets the higher total log-probability, with
  `blimp_pairs`, `blimp_correct` and `blimp_by_file`.
- preference pairs (`preferences=SOURCE`, see `tfchat.eval.preferences`):
  `preference_accuracy` (relative to `reference` when given) of a language
  model, `reward_accuracy` of a reward model (`model` itself, or
  `reward_model`), their margins, and the length baseline beside each.

Text or dialogues (`kind="auto"`): see `tfchat.data.dialogues.is_dialogue_source`.
`split`: `validation` (default) is the held-out part training never saw;
`train` the rest; `all` both.

Example:

>>> result = evaluate("runs/pretrain", "wikipedia-sample")  # doctest: +SKIP
>>> round(result["bits_per_byte"], 2)                       # doctest: +SKIP
2.25
"""

from __future__ import annotations

import glob as globlib
import math
import os
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfchat.checkpoint.model_dir import LoadedModel, load_model
from tfchat.data import batches, dialogues
from tfchat.eval import metrics
from tfchat.eval.logprobs import score_texts, token_log_probs
from tfchat.inference import generation
from tfchat.text import chat_template

KINDS = ("auto", "text", "dialogue")
SPLITS = ("validation", "train", "all")
# Settings, not metrics: kept out of TensorBoard.
_NOT_SCALARS = ("step", "seq_len")


# ------------------------------------------------------------- kind of source


def source_kind(source: str) -> str:
    """'dialogue' or 'text' for a `--data` value (the rule in the module docstring)."""
    return "dialogue" if dialogues.is_dialogue_source(source) else "text"


# --------------------------------------------------------------------- losses


def _loss_step(model, byte_lengths: np.ndarray):
    """A tf.function: (token_ids, targets, {name: mask}) -> {name: [nats, tokens, bytes]}."""
    table = tf.constant(byte_lengths, tf.float32)

    @tf.function(reduce_retracing=True)
    def step(token_ids, targets, masks):
        nats = -token_log_probs(model(token_ids, training=False), targets)
        nbytes = tf.gather(table, targets)
        return {
            name: tf.stack([tf.reduce_sum(nats * m), tf.reduce_sum(m), tf.reduce_sum(nbytes * m)])
            for name, m in masks.items()
        }

    return step


def _loss_totals(model, tokenizer, batches: Iterable[dict], mask_names: dict, max_batches: int | None) -> dict:
    """Sums nats, tokens and bytes over `batches` for each mask; `mask_names`: output prefix -> batch key."""
    step = _loss_step(model, metrics.token_byte_lengths(tokenizer))
    totals = {prefix: np.zeros(3, np.float64) for prefix in mask_names}
    n = 0
    for batch in tqdm(batches, desc="loss", unit="batch", total=max_batches, disable=None, leave=False):
        if max_batches is not None and n >= max_batches:
            break
        masks = {prefix: tf.cast(batch[key], tf.float32) for prefix, key in mask_names.items()}
        sums = step(tf.cast(batch["token_ids"], tf.int32), tf.cast(batch["targets"], tf.int32), masks)
        for prefix in mask_names:
            totals[prefix] += sums[prefix].numpy()
        n += 1
    out = {"batches": n}
    for prefix, (nats, tokens, nbytes) in totals.items():
        loss = nats / tokens if tokens else math.nan
        out.update({
            f"{prefix}loss": loss,
            f"{prefix}perplexity": metrics.perplexity(loss),
            f"{prefix}bits_per_byte": metrics.bits_per_byte(nats, nbytes),
            f"{prefix}tokens": int(tokens),
            f"{prefix}bytes": int(nbytes),
        })
    return out


def _text_batches(source: str, tokenizer, seq_len: int, batch_size: int, split: str) -> tf.data.Dataset:
    """Training's held-out pipeline, unshuffled and finite; split 'all' chains both splits."""
    if split != "all":
        return batches.pretrain_dataset(source, tokenizer, seq_len, batch_size, split=split, repeat=False,
                                         shuffle_buffer=0)
    parts, errors = [], []
    for part in ("validation", "train"):
        try:
            parts.append(batches.pretrain_dataset(source, tokenizer, seq_len, batch_size, split=part, repeat=False,
                                                   shuffle_buffer=0))
        except ValueError as e:  # one split may be empty (a source of a few documents)
            errors.append(e)
    if not parts:
        raise errors[0]
    return parts[0] if len(parts) == 1 else parts[0].concatenate(parts[1])


def text_metrics(loaded: LoadedModel, source: str, *, split: str = "validation", seq_len: int | None = None,
                 batch_size: int = 8, max_batches: int | None = None) -> dict:
    """loss, perplexity, bits_per_byte (+ tokens, bytes, batches) of a text source."""
    seq_len = _check_seq_len(loaded, seq_len)
    batches = _text_batches(source, loaded.tokenizer, seq_len, batch_size, split)
    out = _loss_totals(loaded.model, loaded.tokenizer, batches, {"": "loss_mask"}, max_batches)
    if not out["tokens"]:
        raise ValueError(f"{source} [{split}]: not one full window of {seq_len + 1} tokens to evaluate; "
                         "use a smaller --seq-len or more text")
    return out


# ------------------------------------------------------------------ dialogues


def _in_split(conversations: list, split: str) -> list:
    return conversations if split == "all" else [c for c in conversations if dialogues.split_of(c) == split]


def check_max_new_tokens(max_new_tokens: int, context: int) -> None:
    # The prompt keeps at least chat_template.MIN_MAX_LEN ids next to the reply.
    if not 1 <= max_new_tokens <= context - chat_template.MIN_MAX_LEN:
        raise ValueError(f"--max-new-tokens must be in 1..{context - chat_template.MIN_MAX_LEN} "
                         f"(the model's context is {context}), got {max_new_tokens}")


def generate_replies(loaded: LoadedModel, conversations: Sequence, max_new_tokens: int,
                     batch_size: int = 8, knowledge: Sequence[str] | None = None) -> list[dict]:
    """Greedy replies to the history before each conversation's last assistant message (with the text of
    `knowledge[i]`, when given, in the chat template's knowledge segment).

    Returns [{"prompt": last user message, "reference": the real reply, "reply": the model's}].
    """
    tok, context = loaded.tokenizer, loaded.config.block_size
    check_max_new_tokens(max_new_tokens, context)
    prompts, items = [], []
    for i, conv in enumerate(conversations):
        last = max(i for i, m in enumerate(conv) if m["role"] == "assistant")
        history = conv[:last]
        # Room for the reply: generation would otherwise cut the prompt itself.
        prompts.append(chat_template.prompt(history, tok, max_len=context - max_new_tokens, tags=loaded.tags,
                                            knowledge=knowledge[i] if knowledge is not None else None))
        question = next((m["content"] for m in reversed(history) if m["role"] == "user"), "")
        items.append({"prompt": question, "reference": conv[last]["content"]})
    for item, reply in zip(items, greedy_replies(loaded, prompts, max_new_tokens, batch_size)):
        item["reply"] = reply
    return items


def greedy_replies(loaded: LoadedModel, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                   batch_size: int = 8, desc: str = "replies", guidance: float = 1.0,
                   unguided: Sequence[Sequence[int]] | None = None) -> list[str]:
    """The greedy reply text (stop ids dropped) to each prompt of token ids, `batch_size` prompts at a time
    (guided at scale `guidance` against `unguided[i]`, the prompt without its tags, when given)."""
    tok, stops, out = loaded.tokenizer, loaded.tokenizer.special.stop_ids, []
    ragged = lambda rows: tf.ragged.constant(rows, dtype=tf.int32, ragged_rank=1)  # noqa: E731
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", disable=None, leave=False):
        chunk = prompts[start:start + batch_size]
        guide = {} if unguided is None else dict(guidance=guidance, unguided_ids=ragged(unguided[start:start + batch_size]))
        tokens, lengths = generation.generate(
            loaded.model, ragged(chunk), max_new_tokens=max_new_tokens,
            temperature=0.0, stop_ids=stops, pad_id=tok.pad_id, **guide,
        )
        tokens, lengths = tokens.numpy(), lengths.numpy()
        out += [tok.decode([int(t) for t in tokens[b, : lengths[b]] if t not in stops]) for b in range(len(chunk))]
    return out


def dialogue_metrics(loaded: LoadedModel, source: str, *, split: str = "validation", seq_len: int | None = None,
                     batch_size: int = 8, max_batches: int | None = None, max_dialogues: int = 100,
                     max_new_tokens: int | None = None) -> dict:
    """Losses over all and over assistant tokens, and BLEU / ROUGE-L of greedy replies."""
    seq_len = _check_seq_len(loaded, seq_len)
    tok = loaded.tokenizer
    context = loaded.config.block_size
    max_new = max_new_tokens if max_new_tokens is not None else min(64, context // 2)
    check_max_new_tokens(max_new, context)  # before the loss, not after
    conversations = _in_split(dialogues.load_conversations(source), split)
    if not conversations:
        raise ValueError(f"{source}: no conversations in the {split!r} split; the held-out split is a hash-chosen "
                         "5% of conversations, so a small file may have none (try --split all)")
    ids, masks, skipped = batches.render_conversations(conversations, tok, seq_len + 1)
    if not ids:
        raise ValueError(f"{source}: no conversation keeps an assistant token within --seq-len {seq_len}")
    rows = batches.conversation_batches(ids, masks, seq_len, batch_size, tok.pad_id, repeat=False, shuffle_buffer=0,
                                        with_valid=True)
    out = {"conversations": len(conversations), "skipped_conversations": skipped}
    out.update(_loss_totals(loaded.model, tok, rows, {"": "valid", "assistant_": "loss_mask"}, max_batches))
    if max_dialogues > 0:
        replies = generate_replies(loaded, conversations[:max_dialogues], max_new, batch_size)
        references, hypotheses = [r["reference"] for r in replies], [r["reply"] for r in replies]
        out.update({
            "replies": len(replies),
            "bleu": metrics.bleu(references, hypotheses),
            "rouge_l": metrics.rouge_l(references, hypotheses),
            "metric_tokenization": metrics.metric_tokenization(references),  # "zh": over characters
            "empty_replies": sum(not h.strip() for h in hypotheses),
            "samples": replies,
        })
    return out


# -------------------------------------------------------------- minimal pairs


def _expand(patterns: Sequence[str]) -> list[str]:
    paths = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matched = sorted(globlib.glob(os.path.expanduser(pattern)))
            if not matched:
                raise FileNotFoundError(f"{pattern}: the glob matches no minimal-pair files")
            paths.extend(matched)
        else:
            paths.append(os.path.expanduser(pattern))
    return paths


def read_pair_files(files: Sequence[str]) -> dict[str, list[metrics.MinimalPair]]:
    """Reads every minimal-pair file (globs expanded) up front: {file name without .jsonl: pairs}."""
    out = {}
    for path in _expand(files):
        name = os.path.basename(path)
        name = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
        out[path if name in out else name] = metrics.read_minimal_pairs(path)  # same name twice: use the path
    return out


def minimal_pair_metrics(loaded: LoadedModel, files: Sequence[str] | dict, batch_size: int = 32) -> dict:
    """blimp_accuracy over all pairs of `files` (BLiMP JSONL, or `read_pair_files`' result), with counts."""
    by_file, correct, total, truncated = {}, 0, 0, 0
    pair_files = files if isinstance(files, dict) else read_pair_files(files)
    for name, pairs in pair_files.items():
        texts = [p.good for p in pairs] + [p.bad for p in pairs]
        # Context + 1 ids: <|endoftext|> and `block_size` scored tokens.
        scores, cut = score_texts(loaded.model, loaded.tokenizer, texts, loaded.config.block_size + 1,
                                             batch_size)
        good, bad = scores[: len(pairs)], scores[len(pairs):]
        n_right = int(np.sum(good > bad))
        by_file[name] = n_right / len(pairs)
        correct, total, truncated = correct + n_right, total + len(pairs), truncated + cut
    return {"blimp_accuracy": correct / total, "blimp_correct": correct, "blimp_pairs": total,
            "blimp_truncated_sentences": truncated, "blimp_by_file": by_file}


# ------------------------------------------------------------------- together


def _check_seq_len(loaded: LoadedModel, seq_len: int | None) -> int:
    block = loaded.config.block_size
    if seq_len is None:
        return block
    if not 1 <= seq_len <= block:
        raise ValueError(f"--seq-len must be in 1..{block} (the model's context), got {seq_len}")
    return seq_len


def evaluate(model: str | LoadedModel, data: str | None = None, *, kind: str = "auto", split: str = "validation",
             seq_len: int | None = None, batch_size: int = 8, max_batches: int | None = None,
             max_dialogues: int = 100, max_new_tokens: int | None = None, blimp: Sequence[str] = (),
             preferences: str | None = None, reference: str | None = None, reward_model: str | None = None) -> dict:
    """Evaluates a model (directory, run directory or `LoadedModel`) on `data` and/or minimal-pair files.

    Returns the metrics (see the module docstring) plus `model`, `data`,
    `kind`, `split`, `seq_len` and the model's training `step`: numbers,
    except `blimp_by_file` ({file: accuracy}) and `samples` (every generated
    reply: {"prompt", "reference", "reply"}).

    Raises:
        ValueError / FileNotFoundError: bad model, source, split or setting.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if data is None and not blimp and preferences is None:
        raise ValueError("nothing to evaluate: give a data source, minimal-pair files, preference pairs or several")
    if (reference or reward_model) and preferences is None:
        raise ValueError("a reference or reward model is only used with preference pairs (--preferences)")
    if batch_size < 1 or (max_batches is not None and max_batches < 1) or max_dialogues < 0:
        raise ValueError("batch size and max batches must be positive, max dialogues >= 0")
    pair_files = read_pair_files(blimp) if blimp else {}  # bad files fail now, not after the loss
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    if loaded.head != "lm" and (data is not None or pair_files):
        raise ValueError(f"{model} is a {loaded.head} model: evaluate it on preference pairs (--preferences)")
    result: dict = {"model": model if isinstance(model, str) else None}
    if "step" in loaded.metadata:
        result["step"] = loaded.metadata["step"]
    if data is not None:
        kind = source_kind(data) if kind == "auto" else kind
        result.update(data=data, kind=kind, split=split, seq_len=_check_seq_len(loaded, seq_len))
        options = dict(split=split, seq_len=seq_len, batch_size=batch_size, max_batches=max_batches)
        if kind == "text":
            result.update(text_metrics(loaded, data, **options))
        else:
            result.update(dialogue_metrics(loaded, data, max_dialogues=max_dialogues,
                                           max_new_tokens=max_new_tokens, **options))
    if pair_files:
        result.update(minimal_pair_metrics(loaded, pair_files, batch_size=max(batch_size, 32)))
    if preferences is not None:
        from tfchat.eval.preferences import preference_eval

        result.update(preference_eval(loaded, preferences, reference=reference, reward_model=reward_model,
                                      split=split, seq_len=seq_len, batch_size=max(batch_size, 16)))
    return result


def scalars(result: dict, prefix: str = "eval/") -> dict[str, float]:
    """The numeric entries of `result` as TensorBoard tags (nested dicts joined with '/')."""
    out = {}
    for key, value in result.items():
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key not in _NOT_SCALARS:
            out[prefix + key] = float(value)
    return out


def write_summaries(result: dict, logdir: str, step: int | None = None) -> None:
    """Writes `scalars(result)` to TensorBoard at `step` (default: the model's training step, else 0)."""
    step = int(result.get("step", 0)) if step is None else step
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for tag, value in scalars(result).items():
            tf.summary.scalar(tag, value, step=step)
    writer.flush()
    writer.close()
