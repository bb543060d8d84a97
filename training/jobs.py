"""The training jobs behind the commands: resolve inputs, build a `Trainer` with its objective, run it.

The command-line modules only parse flags; these functions are what tests
and notebooks call.

Example:

>>> metrics = pretrain(JobOptions(out="runs/p", data="wikipedia-sample", train=TrainConfig(steps=10)))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import time

from tfchat.checkpoint.model_dir import TOKENIZER_DIR, is_model_dir, load_model, resolve_model_dir
from tfchat.config import GPTConfig
from tfchat.data.batches import finetune_dataset, pretrain_dataset
from tfchat.data.dialogues import default_dialogue_source, iter_conversations
from tfchat.data.sources import documents_dataset
from tfchat.data.tables import Columns
from tfchat.text import chat_template, chinese
from tfchat.text.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer, train_tokenizer
from training.strategy import is_chief, make_strategy
from training.trainer import TrainConfig, Trainer

log = logging.getLogger(__name__)

# A new tokenizer learns from at most this many documents: SentencePiece samples 2M sentences anyway, and a
# streamed Wikipedia must not be read whole before the first step.
TOKENIZER_DOCUMENTS = 200_000
PRETRAIN_PROMPTS = ("The history of", "In mathematics, a", "Autism is")
PRETRAIN_PROMPTS_ZH = ("中国的历史", "數學是", "北京市是")
# Characters of the training split a new tokenizer learns from (SentencePiece's time grows with them).
TOKENIZER_CHARS = 10_000_000
CHAT_PROMPTS = ("What is the capital of France?", "Can you suggest a good book to read?", "How do I boil an egg?")
CHAT_PROMPTS_ZH = ("你好，你是谁？", "你知道恋恋笔记本这部电影吗？", "周末去哪里玩比较好？")


@dataclasses.dataclass
class JobOptions:
    """What a job needs besides its `TrainConfig` (see `training.cli` for the flags)."""

    out: str
    data: str | None
    train: TrainConfig
    strategy: str = "auto"
    resume: bool = True
    progress: bool = True
    columns: Columns = Columns()  # where table/JSONL rows hold the text or the conversation
    convert_script: str | None = None  # an OpenCC Simplified/Traditional conversion of the data (t2s, s2t...)
    # pretrain only
    preset: str = "tiny"
    tokenizer: str | None = None
    vocab_size: int | None = None
    architecture: dict = dataclasses.field(default_factory=dict)  # GPTConfig fields over the preset's
    # finetune only (pretrain passes dropout in `architecture`)
    dropout: float | None = None
    init_from: str | None = None
    pack: bool = False


def check_writable(out: str) -> None:
    """Fails early, before any work, when `out` cannot be created or written."""
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"cannot write to the output directory {out}: {e.strerror or e}") from e


def check_seq_len(seq_len: int, config: GPTConfig, what: str) -> None:
    if seq_len > config.block_size:
        raise ValueError(f"--seq-len {seq_len} exceeds the {what} context of {config.block_size}")


def pretrain_tokenizer(opts: JobOptions, run_tokenizer_dir: str) -> Tokenizer:
    """A resumed run keeps its tokenizer; else --tokenizer is reused, or a new one is trained on the data."""
    if os.path.isfile(os.path.join(run_tokenizer_dir, TOKENIZER_FILE)):
        if opts.tokenizer:
            log.info("Resuming: using the run's own tokenizer in %s, not --tokenizer", run_tokenizer_dir)
        return load_tokenizer(run_tokenizer_dir)
    if opts.tokenizer:
        path = opts.tokenizer
        if is_model_dir(path) or is_model_dir(os.path.join(path, "model")):
            path = os.path.join(resolve_model_dir(path), TOKENIZER_DIR)
        return load_tokenizer(path)
    vocab_size = opts.vocab_size or GPTConfig.from_preset(opts.preset).vocab_size
    log.info("Training a %d-token SentencePiece tokenizer on the first %s characters of %s",
             vocab_size, f"{TOKENIZER_CHARS:,}", opts.data)
    start = time.perf_counter()
    docs = documents_dataset(opts.data, "train", text_column=opts.columns.text,
                             convert_script=opts.convert_script).take(TOKENIZER_DOCUMENTS)
    tok = train_tokenizer(_first_chars(docs, TOKENIZER_CHARS), vocab_size=vocab_size)
    tok.record_training({**tok.training, "data": opts.data, "convert_script": opts.convert_script})
    log.info("Tokenizer trained in %.1fs (%d ids, character coverage %s, %.0f%% Han characters)",
             time.perf_counter() - start, tok.vocab_size, tok.training["settings"]["character_coverage"],
             100 * tok.training["han_share"])
    return tok


def _sample_prompts(first_texts, english: tuple, chinese_prompts: tuple, convert_script: str | None) -> list[str]:
    """The prompts a run shows samples for: Chinese ones (converted like the data) when the first texts of the
    data are Chinese, else English ones."""
    if not chinese.is_chinese("".join(first_texts)[:20_000]):
        return list(english)
    return [chinese.convert_script(p, convert_script) if convert_script else p for p in chinese_prompts]


def _first_chars(documents, limit: int):
    """Documents (utf-8 tensors) until `limit` characters: a tokenizer needs a sample, not the corpus."""
    seen = 0
    for text in documents.as_numpy_iterator():
        if seen >= limit:
            return
        text = text.decode("utf-8")
        seen += len(text)
        yield text


def pretrain(opts: JobOptions) -> dict:
    """Pretrains a GPT on a text source; returns the final metrics."""
    chinese.check_conversion(opts.convert_script)  # OpenCC missing or a bad name: fail before any work
    strategy = make_strategy(opts.strategy)
    if is_chief(strategy):
        check_writable(opts.out)
    run_tokenizer_dir = os.path.join(opts.out, "tokenizer")
    tokenizer = pretrain_tokenizer(opts, run_tokenizer_dir)
    if is_chief(strategy) and not os.path.isfile(os.path.join(run_tokenizer_dir, TOKENIZER_FILE)):
        tokenizer.save(run_tokenizer_dir)
    config = GPTConfig.from_preset(opts.preset, **opts.architecture, vocab_size=tokenizer.vocab_size)
    cfg = opts.train
    check_seq_len(cfg.seq_len, config, opts.preset)

    def data(split):
        def fn(ctx, batch):
            return pretrain_dataset(opts.data, tokenizer, cfg.seq_len, batch, split=split, seed=cfg.seed,
                                    input_context=ctx, repeat=split == "train", text_column=opts.columns.text,
                                    convert_script=opts.convert_script)
        return fn

    first = documents_dataset(opts.data, "train", text_column=opts.columns.text,
                              convert_script=opts.convert_script).take(8)
    prompts = _sample_prompts((t.decode("utf-8") for t in first.as_numpy_iterator()), PRETRAIN_PROMPTS,
                              PRETRAIN_PROMPTS_ZH, opts.convert_script)
    trainer = Trainer(
        config, tokenizer, cfg, strategy, opts.out, data("train"), eval_dataset=data("validation"),
        sample_prompts=[tokenizer.encode(p) for p in prompts],
        metadata={"job": "pretrain", "preset": opts.preset, "data": opts.data,
                  **({"convert_script": opts.convert_script} if opts.convert_script else {})},
    )
    return trainer.train(resume=opts.resume, progress=opts.progress)


def find_model_dir(init_from: str) -> str:
    """The model directory a fine-tuning stage starts from, with an error that says how to make one."""
    path = resolve_model_dir(init_from)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"model directory not found: {init_from}. Create it with `python -m training.pretrain --out {init_from}` "
            "(or import GPT-2 with `python -m tfchat.convert`)"
        )
    return path


def finetune(opts: JobOptions) -> dict:
    """Fine-tunes a model directory on dialogues into a chat model (language modelling on assistant tokens)."""
    chinese.check_conversion(opts.convert_script)
    strategy = make_strategy(opts.strategy)
    if is_chief(strategy):
        check_writable(opts.out)
    source_dir = find_model_dir(opts.init_from)
    start = load_model(source_dir)
    config = start.config
    if opts.dropout is not None:
        config = config.replace(dropout=opts.dropout)
    tokenizer, cfg = start.tokenizer, opts.train
    check_seq_len(cfg.seq_len, config, "model's")
    weights = start.model.get_weights()
    del start

    def data(split):
        def fn(ctx, batch):
            return finetune_dataset(opts.data, tokenizer, cfg.seq_len, batch, split=split, seed=cfg.seed,
                                    input_context=ctx, repeat=split == "train", pack=opts.pack,
                                    columns=opts.columns, convert_script=opts.convert_script)
        return fn

    first = itertools.islice(iter_conversations(opts.data or default_dialogue_source(), columns=opts.columns), 8)
    questions = _sample_prompts((m["content"] for c in first for m in c), CHAT_PROMPTS, CHAT_PROMPTS_ZH,
                                opts.convert_script)
    prompts = [chat_template.prompt([{"role": "user", "content": p}], tokenizer, cfg.seq_len // 2) for p in questions]
    trainer = Trainer(
        config, tokenizer, cfg, strategy, opts.out, data("train"), eval_dataset=data("validation"),
        init_weights=lambda model: model.set_weights(weights), sample_prompts=prompts,
        metadata={"job": "finetune", "from": os.path.abspath(source_dir), "data": opts.data,
                  **({"convert_script": opts.convert_script} if opts.convert_script else {})},
    )
    return trainer.train(resume=opts.resume, progress=opts.progress)
