"""The two training jobs behind `python -m training.pretrain` and `training.finetune`.

Each resolves its inputs (tokenizer, model shape, data), builds a `Trainer`
and runs it; the command-line modules only parse flags.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import time

import tensorflow as tf

from tfchat import chat_template
from tfchat.config import GPTConfig
from tfchat.model_dir import TOKENIZER_DIR, is_model_dir, load_model, resolve_model_dir
from tfchat.pipeline import finetune_dataset, pretrain_dataset
from tfchat.sources import documents_dataset
from tfchat.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer, train_tokenizer
from training.loop import TrainConfig, Trainer
from training.strategy import is_chief, make_strategy

PRETRAIN_PROMPTS = ("The history of", "In mathematics, a", "Autism is")
CHAT_PROMPTS = ("What is the capital of France?", "Can you suggest a good book to read?", "How do I boil an egg?")


@dataclasses.dataclass
class JobOptions:
    """Flags shared by both jobs (see `training.flags`)."""

    out: str
    data: str | None
    train: TrainConfig
    strategy: str = "auto"
    resume: bool = True
    progress: bool = True
    # pretrain only
    preset: str = "tiny"
    tokenizer: str | None = None
    vocab_size: int | None = None
    dropout: float | None = None
    # finetune only
    init_from: str | None = None
    pack: bool = False


def resolve_precision(precision: str) -> str:
    """`auto` -> bf16 where the hardware computes it natively (TPU, Ampere+ GPU, AVX512-BF16/AMX CPU), else fp32."""
    if precision != "auto":
        return precision
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "bf16" if details.get("compute_capability", (0, 0)) >= (8, 0) else "fp16"
    if tf.config.list_logical_devices("TPU"):
        return "bf16"
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return "fp32"
    return "bf16" if re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) else "fp32"


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


def _pretrain_tokenizer(opts: JobOptions, run_tokenizer_dir: str) -> Tokenizer:
    """A resumed run keeps its tokenizer; else --tokenizer is reused, or a new one trained."""
    if os.path.isfile(os.path.join(run_tokenizer_dir, TOKENIZER_FILE)):
        if opts.tokenizer:
            logging.info("Resuming: using the run's own tokenizer in %s, not --tokenizer", run_tokenizer_dir)
        return load_tokenizer(run_tokenizer_dir)
    if opts.tokenizer:
        path = opts.tokenizer
        if is_model_dir(path) or is_model_dir(os.path.join(path, "model")):
            path = os.path.join(resolve_model_dir(path), TOKENIZER_DIR)
        return load_tokenizer(path)
    vocab_size = opts.vocab_size or GPTConfig.from_preset(opts.preset).vocab_size
    logging.info("Training a %d-token SentencePiece tokenizer on %s", vocab_size, opts.data)
    start = time.perf_counter()
    texts = (t.decode("utf-8") for t in documents_dataset(opts.data, "train").as_numpy_iterator())
    tok = train_tokenizer(texts, vocab_size=vocab_size)
    logging.info("Tokenizer trained in %.1fs (%d ids)", time.perf_counter() - start, tok.vocab_size)
    return tok


def pretrain(opts: JobOptions) -> dict:
    """Pretrains a GPT on a text source; returns the final metrics."""
    strategy = make_strategy(opts.strategy)
    if is_chief(strategy):
        check_writable(opts.out)
    run_tokenizer_dir = os.path.join(opts.out, "tokenizer")
    tokenizer = _pretrain_tokenizer(opts, run_tokenizer_dir)
    if is_chief(strategy) and not os.path.isfile(os.path.join(run_tokenizer_dir, TOKENIZER_FILE)):
        tokenizer.save(run_tokenizer_dir)
    overrides = {"vocab_size": tokenizer.vocab_size}
    if opts.dropout is not None:
        overrides["dropout"] = opts.dropout
    config = GPTConfig.from_preset(opts.preset, **overrides)
    cfg = opts.train
    if cfg.seq_len > config.block_size:
        raise ValueError(f"--seq-len {cfg.seq_len} exceeds the {opts.preset} context of {config.block_size}")

    def data(split):
        def fn(ctx, batch):
            return pretrain_dataset(opts.data, tokenizer, cfg.seq_len, batch, split=split, seed=cfg.seed,
                                    input_context=ctx, repeat=split == "train")
        return fn

    trainer = Trainer(
        config, tokenizer, cfg, strategy, opts.out, data("train"), eval_dataset=data("validation"),
        sample_prompts=[tokenizer.encode(p) for p in PRETRAIN_PROMPTS],
        metadata={"job": "pretrain", "preset": opts.preset, "data": opts.data},
    )
    return trainer.train(resume=opts.resume, progress=opts.progress)


def finetune(opts: JobOptions) -> dict:
    """Fine-tunes a model directory on dialogues into a chat model."""
    strategy = make_strategy(opts.strategy)
    if is_chief(strategy):
        check_writable(opts.out)
    source_dir = resolve_model_dir(opts.init_from)
    start = load_model(source_dir)
    config = start.config
    if opts.dropout is not None:
        config = config.replace(dropout=opts.dropout)
    tokenizer, cfg = start.tokenizer, opts.train
    if cfg.seq_len > config.block_size:
        raise ValueError(f"--seq-len {cfg.seq_len} exceeds the model's context of {config.block_size}")
    weights = start.model.get_weights()
    del start

    def data(split):
        def fn(ctx, batch):
            return finetune_dataset(opts.data, tokenizer, cfg.seq_len, batch, split=split, seed=cfg.seed,
                                    input_context=ctx, repeat=split == "train", pack=opts.pack)
        return fn

    prompts = [chat_template.prompt([{"role": "user", "content": p}], tokenizer, cfg.seq_len // 2) for p in CHAT_PROMPTS]
    trainer = Trainer(
        config, tokenizer, cfg, strategy, opts.out, data("train"), eval_dataset=data("validation"),
        init_weights=lambda model: model.set_weights(weights), sample_prompts=prompts,
        metadata={"job": "finetune", "from": os.path.abspath(source_dir), "data": opts.data},
    )
    return trainer.train(resume=opts.resume, progress=opts.progress)


def print_summary(metrics: dict, out: str, job: str, wall: float) -> None:
    lines = [
        "",
        f"Done in {wall / 60:.1f} min: step {metrics.get('step')}, train loss {metrics.get('loss', float('nan')):.3f}, "
        f"held-out loss {metrics.get('val_loss', float('nan')):.3f} (perplexity {metrics.get('val_perplexity', float('nan')):.1f}), "
        f"{metrics.get('tokens_per_sec', 0):,.0f} tokens/s.",
        f"Model directory: {os.path.join(out, 'model')}",
        "Next:",
        f"  tensorboard --logdir {os.path.join(out, 'logs')}",
    ]
    if job == "pretrain":
        lines.append(f"  python -m training.finetune --from {out}")
    else:
        lines.append(f"  python -m serving.export --model {out} --out exports/tfchat")
        lines.append("  python -m serving.server --model exports/tfchat")
    print("\n".join(lines), file=sys.stderr)
