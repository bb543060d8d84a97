"""Evaluate a model directory: held-out loss, perplexity and bits per byte; chat replies; minimal pairs.

    python -m training.evaluate --model runs/pretrain --data wikipedia-sample
    python -m training.evaluate --model runs/chat --data dialogues-sample --json
    python -m training.evaluate --model runs/pretrain --data my_notes.txt --split all --blimp 'blimp/*.jsonl' \\
        --logdir runs/pretrain/logs/eval

What is measured (definitions in `tfchat.metrics`):

- text sources: `loss` (mean nats per target token), `perplexity` = exp(loss)
  and `bits_per_byte` = total nats / ln 2 / UTF-8 bytes of the evaluated
  target tokens, over the windows training's held-out loss uses
  (`pretrain_dataset`: `<|endoftext|>` + each document, one stream cut into
  seq_len + 1 token windows; here in source order, the first
  `--max-batches` batches or all; a window's first token is context only).
- dialogue sources: the same three over every token of the rendered
  conversations (chat template, one conversation per sequence, cut to
  seq_len + 1 tokens as in fine-tuning), then
  `assistant_loss` / `assistant_perplexity` / `assistant_bits_per_byte` over
  the assistant's tokens only (what fine-tuning trains on), and `bleu` /
  `rouge_l` of greedy replies: for each of the first `--max-dialogues`
  conversations, the model answers the history before its last assistant
  message, which is the reference.
- `--blimp FILE.jsonl` (BLiMP's format, repeatable, globs allowed):
  `blimp_accuracy`, the fraction of pairs whose `sentence_good` gets the
  higher total log-probability, with `blimp_pairs`, `blimp_correct` and
  `blimp_by_file`.

Text or dialogues (`--kind auto`, the default): a source is a dialogue source
when it is `dialogues-sample`, `tfds:databricks_dolly`, `FORMAT:PATH` with a
dialogue FORMAT (oasst, topical-chat, cornell, dolly, messages), or a file
whose first non-blank line is a JSON object with a "messages" key
(messages-JSONL). Anything else is a text source (`tfchat.sources`).
`--kind text|dialogue` overrides the guess.

`--split`: `validation` (default) is the held-out part training never saw
(5% of documents / conversations, chosen by a hash of their id or
content); `train` the rest; `all` both, e.g. for a file you wrote yourself
for evaluation.

Output: a short table, or with `--json` one JSON object on stdout; with
`--logdir`, TensorBoard scalars `eval/<key>` at the model's training step.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import glob as globlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
from typing import Iterable, Iterator, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from tfchat import chat_template, dialogues, generation, metrics, pipeline  # noqa: E402
from tfchat.model_dir import LoadedModel, load_model  # noqa: E402

KINDS = ("auto", "text", "dialogue")
SPLITS = ("validation", "train", "all")
SAMPLES = 3  # generated replies shown with the metrics
# Settings, not metrics: kept out of TensorBoard.
_NOT_SCALARS = ("step", "seq_len")


# ------------------------------------------------------------- kind of source


def source_kind(source: str) -> str:
    """'dialogue' or 'text' for a `--data` value (the rule in the module docstring)."""
    if source == dialogues.SAMPLE_NAME or source.startswith("tfds:databricks_dolly"):
        return "dialogue"
    fmt, sep, _ = source.partition(":")
    if sep and fmt in dialogues.READERS:
        return "dialogue"
    if os.path.isfile(source):
        try:
            with dialogues.open_text(source) as f:
                first = next((line for line in f if line.strip()), "")
            record = json.loads(first)
        except (OSError, EOFError, UnicodeDecodeError, ValueError):
            return "text"  # not JSONL at all: let the text reader judge it
        if isinstance(record, dict) and "messages" in record:
            return "dialogue"
    return "text"


# --------------------------------------------------------------------- losses


def _loss_step(model, byte_lengths: np.ndarray):
    """A tf.function: (token_ids, targets, {name: mask}) -> {name: [nats, tokens, bytes]}."""
    table = tf.constant(byte_lengths, tf.float32)

    @tf.function(reduce_retracing=True)
    def step(token_ids, targets, masks):
        nats = -metrics.token_log_probs(model, token_ids, targets)
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
        return pipeline.pretrain_dataset(source, tokenizer, seq_len, batch_size, split=split, repeat=False,
                                         shuffle_buffer=0)
    parts, errors = [], []
    for part in ("validation", "train"):
        try:
            parts.append(pipeline.pretrain_dataset(source, tokenizer, seq_len, batch_size, split=part, repeat=False,
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


def _dialogue_batches(ids: list[list[int]], masks: list[list[int]], seq_len: int, batch_size: int,
                      pad_id: int) -> Iterator[dict]:
    """One rendered conversation per row, right-padded; `valid` marks real targets, `loss_mask` assistant ones."""
    for start in range(0, len(ids), batch_size):
        rows = range(start, min(start + batch_size, len(ids)))
        window = np.full([len(rows), seq_len + 1], pad_id, np.int32)
        assistant = np.zeros([len(rows), seq_len + 1], np.float32)
        valid = np.zeros([len(rows), seq_len], np.float32)
        for r, i in enumerate(rows):
            window[r, : len(ids[i])] = ids[i]
            assistant[r, : len(masks[i])] = masks[i]
            valid[r, : len(ids[i]) - 1] = 1.0
        yield {"token_ids": window[:, :-1], "targets": window[:, 1:], "loss_mask": assistant[:, 1:], "valid": valid}


def _check_max_new_tokens(max_new_tokens: int, context: int) -> None:
    # The prompt keeps at least chat_template.MIN_MAX_LEN ids next to the reply.
    if not 1 <= max_new_tokens <= context - chat_template.MIN_MAX_LEN:
        raise ValueError(f"--max-new-tokens must be in 1..{context - chat_template.MIN_MAX_LEN} "
                         f"(the model's context is {context}), got {max_new_tokens}")


def generate_replies(loaded: LoadedModel, conversations: Sequence, max_new_tokens: int,
                     batch_size: int = 8) -> list[dict]:
    """Greedy replies to the history before each conversation's last assistant message.

    Returns [{"prompt": last user message, "reference": the real reply, "reply": the model's}].
    """
    tok, model = loaded.tokenizer, loaded.model
    context = generation.context_size(model)
    _check_max_new_tokens(max_new_tokens, context)
    prompts, items = [], []
    for conv in conversations:
        last = max(i for i, m in enumerate(conv) if m["role"] == "assistant")
        history = conv[:last]
        # Room for the reply: generation would otherwise cut the prompt itself.
        prompts.append(chat_template.prompt(history, tok, max_len=context - max_new_tokens))
        question = next((m["content"] for m in reversed(history) if m["role"] == "user"), "")
        items.append({"prompt": question, "reference": conv[last]["content"]})
    stops = [tok.end_id, tok.eot_id]
    for start in tqdm(range(0, len(prompts), batch_size), desc="replies", unit="batch", disable=None, leave=False):
        chunk = prompts[start:start + batch_size]
        tokens, lengths = generation.generate(
            model, tf.ragged.constant(chunk, dtype=tf.int32, ragged_rank=1), max_new_tokens=max_new_tokens,
            temperature=0.0, stop_ids=stops, pad_id=tok.pad_id,
        )
        tokens, lengths = tokens.numpy(), lengths.numpy()
        for b in range(len(chunk)):
            ids = [int(t) for t in tokens[b, : lengths[b]] if t not in stops]
            items[start + b]["reply"] = tok.decode(ids)
    return items


def dialogue_metrics(loaded: LoadedModel, source: str, *, split: str = "validation", seq_len: int | None = None,
                     batch_size: int = 8, max_batches: int | None = None, max_dialogues: int = 100,
                     max_new_tokens: int | None = None) -> dict:
    """Losses over all and over assistant tokens, and BLEU / ROUGE-L of greedy replies."""
    seq_len = _check_seq_len(loaded, seq_len)
    tok = loaded.tokenizer
    context = generation.context_size(loaded.model) if max_dialogues > 0 else loaded.config.block_size
    max_new = max_new_tokens if max_new_tokens is not None else min(64, context // 2)
    _check_max_new_tokens(max_new, context)  # before the loss, not after
    conversations = _in_split(dialogues.load_conversations(source), split)
    if not conversations:
        raise ValueError(f"{source}: no conversations in the {split!r} split; the held-out split is a hash-chosen "
                         "5% of conversations, so a small file may have none (try --split all)")
    ids, masks, skipped = pipeline.render_conversations(conversations, tok, seq_len + 1)
    if not ids:
        raise ValueError(f"{source}: no conversation keeps an assistant token within --seq-len {seq_len}")
    batches = _dialogue_batches(ids, masks, seq_len, batch_size, tok.pad_id)
    out = {"conversations": len(conversations), "skipped_conversations": skipped}
    out.update(_loss_totals(loaded.model, tok, batches, {"": "valid", "assistant_": "loss_mask"}, max_batches))
    if max_dialogues > 0:
        replies = generate_replies(loaded, conversations[:max_dialogues], max_new, batch_size)
        references, hypotheses = [r["reference"] for r in replies], [r["reply"] for r in replies]
        out.update({
            "replies": len(replies),
            "bleu": metrics.bleu(references, hypotheses),
            "rouge_l": metrics.rouge_l(references, hypotheses),
            "empty_replies": sum(not h.strip() for h in hypotheses),
            "samples": replies[:SAMPLES],
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
        scores, cut = metrics.text_log_probs(loaded.model, loaded.tokenizer, texts, loaded.config.block_size + 1,
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
             max_dialogues: int = 100, max_new_tokens: int | None = None, blimp: Sequence[str] = ()) -> dict:
    """Evaluates a model (directory, run directory or `LoadedModel`) on `data` and/or minimal-pair files.

    Returns the metrics (see the module docstring) plus `model`, `data`,
    `kind`, `split`, `seq_len` and the model's training `step`: numbers,
    except `blimp_by_file` ({file: accuracy}) and `samples` (a few replies).

    Raises:
        ValueError / FileNotFoundError: bad model, source, split or setting.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if data is None and not blimp:
        raise ValueError("nothing to evaluate: give a data source, minimal-pair files or both")
    if batch_size < 1 or (max_batches is not None and max_batches < 1) or max_dialogues < 0:
        raise ValueError("batch size and max batches must be positive, max dialogues >= 0")
    pair_files = read_pair_files(blimp) if blimp else {}  # bad files fail now, not after the loss
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
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


def _jsonable(value):
    # JSON has no NaN/Infinity: a metric without data (e.g. no bytes) becomes null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _print_table(result: dict) -> None:
    for key, value in result.items():
        if key == "samples":
            continue
        if isinstance(value, dict):
            for name, v in value.items():
                print(f"{key}/{name:<30} {v:.4f}")
        elif isinstance(value, float):
            print(f"{key:<30} {value:.4f}")
        else:
            print(f"{key:<30} {value}")
    for sample in result.get("samples", []):
        print(f"\nuser:      {sample['prompt'][:200]!r}\nreference: {sample['reference'][:200]!r}\n"
              f"model:     {sample['reply'][:200]!r}")


# ------------------------------------------------------------------------ CLI


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory, or a training run directory holding model/")
    p.add_argument("--data", default=None,
                   help="text source (wikipedia-sample, tfds:NAME, a dump, .txt/.jsonl files) or dialogue source "
                        "(dialogues-sample, FORMAT:PATH, messages-JSONL, tfds:databricks_dolly)")
    p.add_argument("--kind", choices=KINDS, default="auto", help="text or dialogue source (default: guess from --data)")
    p.add_argument("--split", choices=SPLITS, default="validation", help="which part of --data (default %(default)s)")
    p.add_argument("--seq-len", type=_positive_int, default=None, help="tokens per window (default: the model's context)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="sequences per forward pass (default %(default)s)")
    p.add_argument("--max-batches", type=_positive_int, default=None, help="stop the loss after this many batches (default: all)")
    p.add_argument("--max-dialogues", type=_non_negative_int, default=100,
                   help="conversations to generate replies for, for BLEU/ROUGE-L; 0 = none (default %(default)s)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=None,
                   help="longest generated reply (default: min(64, context / 2))")
    p.add_argument("--blimp", action="append", default=[], metavar="FILE.jsonl",
                   help="minimal pairs in BLiMP's JSONL format (sentence_good / sentence_bad); repeat or use a glob")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--logdir", default=None, help="also write TensorBoard scalars eval/<metric> here")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.data is None and not args.blimp:
        p.error("give --data, --blimp or both")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname).1s %(filename)s:%(lineno)d] %(message)s")
    try:
        result = evaluate(
            args.model, args.data, kind=args.kind, split=args.split, seq_len=args.seq_len,
            batch_size=args.batch_size, max_batches=args.max_batches, max_dialogues=args.max_dialogues,
            max_new_tokens=args.max_new_tokens, blimp=args.blimp,
        )
        if args.logdir:
            write_summaries(result, args.logdir)
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        logging.debug("details", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(_jsonable(result), ensure_ascii=False))
    else:
        _print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
