"""The training jobs behind the commands: resolve inputs, build a `Trainer` with its objective, run it.

The command-line modules only parse flags; these functions are what tests
and notebooks call.

Example:

>>> metrics = pretrain(JobOptions(out="runs/p", data="wikipedia-sample", train=TrainConfig(steps=10)))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
import zlib

from tfchat import atomic
from tfchat.checkpoint.model_dir import TOKENIZER_DIR, is_model_dir, load_model, not_found, resolve_model_dir
from tfchat.config import GPTConfig
from tfchat.data.batches import finetune_dataset, pretrain_dataset
from tfchat.data.sources import documents_dataset
from tfchat.data.tables import Columns
from tfchat.text import chat_template
from tfchat.text.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer, train_tokenizer
from training.run_dir import RunDirectory
from training.strategy import gather, is_chief, make_strategy
from training.trainer import TrainConfig, Trainer, TrainingError

log = logging.getLogger(__name__)

# A new tokenizer learns from at most this many documents: SentencePiece samples 2M sentences anyway, and a
# streamed Wikipedia must not be read whole before the first step.
TOKENIZER_DOCUMENTS = 200_000
PRETRAIN_PROMPTS = ("The history of", "In mathematics, a", "Autism is")
# Characters of the training split a new tokenizer learns from (SentencePiece's time grows with them).
TOKENIZER_CHARS = 10_000_000
CHAT_PROMPTS = ("What is the capital of France?", "Can you suggest a good book to read?", "How do I boil an egg?")


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
    override: bool = False  # resume although result-changing flags differ from run.json's
    # pretrain only
    preset: str = "tiny"
    tokenizer: str | None = None
    vocab_size: int | None = None
    architecture: dict = dataclasses.field(default_factory=dict)  # GPTConfig fields over the preset's
    # finetune only (pretrain passes dropout in `architecture`)
    dropout: float | None = None
    init_from: str | None = None
    pack: bool = False


def run_lock(out: str, strategy):
    """The run directory's lock, held by the chief for the whole job (tokenizer, training, model)."""
    return RunDirectory(out).lock() if is_chief(strategy) else contextlib.nullcontext()


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
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"tokenizer not found: {path}; --tokenizer takes a run or model directory (e.g. one written by "
                "`python -m training.pretrain`) or its tokenizer/ folder; leave it out to train a new one")
        return load_tokenizer(path)
    vocab_size = opts.vocab_size or GPTConfig.from_preset(opts.preset).vocab_size
    log.info("Training a %d-token SentencePiece tokenizer on the first %s characters of %s",
             vocab_size, f"{TOKENIZER_CHARS:,}", opts.data)
    start = time.perf_counter()
    docs = documents_dataset(opts.data, "train", text_column=opts.columns.text).take(TOKENIZER_DOCUMENTS)
    tok = train_tokenizer(_first_chars(docs, TOKENIZER_CHARS), vocab_size=vocab_size)
    log.info("Tokenizer trained in %.1fs (%d ids)", time.perf_counter() - start, tok.vocab_size)
    return tok


def _first_chars(documents, limit: int):
    """Documents (utf-8 tensors) until `limit` characters: a tokenizer needs a sample, not the corpus."""
    seen = 0
    for text in documents.as_numpy_iterator():
        if seen >= limit:
            return
        text = text.decode("utf-8")
        seen += len(text)
        yield text


def tokenizer_fingerprint(tokenizer: Tokenizer) -> int:
    """CRC32 of the tokenizer's saved files."""
    crc = 0
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save(d)
        for name in sorted(os.listdir(d)):
            with open(os.path.join(d, name), "rb") as f:
                crc = zlib.crc32(f.read(), crc)
    return crc


def save_tokenizer(tokenizer: Tokenizer, directory: str) -> None:
    """Writes the run's tokenizer atomically (a kill leaves none or a complete one)."""
    tmp = atomic.temp_path(directory)
    tokenizer.save(tmp)
    shutil.rmtree(directory, ignore_errors=True)  # an incomplete one (no tokenizer.json) left by an older tfchat
    os.rename(tmp, directory)


def pretrain(opts: JobOptions) -> dict:
    """Pretrains a GPT on a text source; returns the final metrics."""
    strategy = make_strategy(opts.strategy)
    with run_lock(opts.out, strategy):
        run_tokenizer_dir = os.path.join(opts.out, "tokenizer")
        tokenizer = pretrain_tokenizer(opts, run_tokenizer_dir)
        if len(set(gather(strategy, tokenizer_fingerprint(tokenizer)))) > 1:
            raise TrainingError("the workers built different tokenizers; give every worker the same one with "
                                "--tokenizer (e.g. the chief's RUN/tokenizer)")
        if is_chief(strategy) and not os.path.isfile(os.path.join(run_tokenizer_dir, TOKENIZER_FILE)):
            save_tokenizer(tokenizer, run_tokenizer_dir)
        config = GPTConfig.from_preset(opts.preset, **opts.architecture, vocab_size=tokenizer.vocab_size)
        cfg = opts.train
        check_seq_len(cfg.seq_len, config, opts.preset)

        def data(split):
            def fn(ctx, batch):
                return pretrain_dataset(opts.data, tokenizer, cfg.seq_len, batch, split=split, seed=cfg.seed,
                                        input_context=ctx, repeat=split == "train", text_column=opts.columns.text)
            return fn

        trainer = Trainer(
            config, tokenizer, cfg, strategy, opts.out, data("train"), eval_dataset=data("validation"),
            sample_prompts=[tokenizer.encode(p) for p in PRETRAIN_PROMPTS],
            metadata={"job": "pretrain", "preset": opts.preset, "data": opts.data},
        )
        return trainer.train(resume=opts.resume, progress=opts.progress, override=opts.override)


def find_model_dir(init_from: str) -> str:
    """The model directory a fine-tuning stage starts from, with an error that says how to make one."""
    path = resolve_model_dir(init_from)
    if not os.path.isdir(path):
        raise not_found(init_from)
    return path


def check_dialogue_files(data: str | None) -> None:
    """Fails early, naming the converter, when a dialogue file of `data` does not exist."""
    from tfchat.data.dialogues import default_dialogue_source, parse_dialogue_source

    for fmt, path in parse_dialogue_source(data or default_dialogue_source()):
        if fmt != "table" and not path.startswith("tfds:") and not os.path.exists(path):
            raise FileNotFoundError(
                f"{path}: no such file; convert your dialogues into messages JSONL with "
                f"`python -m training.convert_dialogues --format FORMAT --input FILE --out {path}`")


def finetune(opts: JobOptions) -> dict:
    """Fine-tunes a model directory on dialogues into a chat model (language modelling on assistant tokens)."""
    strategy = make_strategy(opts.strategy)
    source_dir = find_model_dir(opts.init_from)
    check_dialogue_files(opts.data)
    with run_lock(opts.out, strategy):
        start = load_model(source_dir)
        config = start.config
        if opts.dropout is not None:
            config = config.replace(dropout=opts.dropout)
        tokenizer, cfg = start.tokenizer, opts.train
        check_seq_len(cfg.seq_len, config, "model's")
        weights = start.model.get_weights()
        del start
        built: dict = {}  # conversations are read and tokenized once per split and pipeline, not at every evaluation

        def data(split):
            def fn(ctx, batch):
                key = (split, ctx.num_input_pipelines, ctx.input_pipeline_id, batch)
                if key not in built:
                    built[key] = finetune_dataset(opts.data, tokenizer, cfg.seq_len, batch, split=split, seed=cfg.seed,
                                                  input_context=ctx, repeat=split == "train", pack=opts.pack,
                                                  columns=opts.columns)
                return built[key]
            return fn

        prompts = [chat_template.prompt([{"role": "user", "content": p}], tokenizer, cfg.seq_len // 2)
                   for p in CHAT_PROMPTS]
        trainer = Trainer(
            config, tokenizer, cfg, strategy, opts.out, data("train"), eval_dataset=data("validation"),
            init_weights=lambda model: model.set_weights(weights), sample_prompts=prompts,
            metadata={"job": "finetune", "from": os.path.abspath(source_dir), "data": opts.data},
        )
        return trainer.train(resume=opts.resume, progress=opts.progress, override=opts.override)
