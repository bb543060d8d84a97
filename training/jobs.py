"""The training jobs behind the commands: resolve inputs, build a `Trainer` with its objective, run it.

The command-line modules only parse flags; these functions are what tests
and notebooks call.

Example:

>>> metrics = pretrain(JobOptions(out="runs/p", data="wikipedia-sample", train=TrainConfig(steps=10)))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time

import numpy as np

from tfchat.checkpoint.model_dir import (
    TOKENIZER_DIR, LoadedModel, assign_weights, is_model_dir, load_model, resolve_model_dir, weights_by_path,
)
from tfchat.config import GPTConfig
from tfchat.data.batches import finetune_dataset, pretrain_dataset
from tfchat.data.sources import documents_dataset
from tfchat.data.tables import Columns
from tfchat.text import chat_template
from tfchat.text.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer, train_tokenizer
from training.strategy import is_chief, make_strategy
from training.trainer import TrainConfig, Trainer

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
    # pretrain only
    preset: str = "tiny"
    tokenizer: str | None = None
    vocab_size: int | None = None
    architecture: dict = dataclasses.field(default_factory=dict)  # GPTConfig fields over the preset's
    # finetune, align and reward (pretrain passes dropout in `architecture`)
    dropout: float | None = None
    init_from: str | None = None
    pack: bool = False
    # align only
    beta: float = 0.1
    loss: str = "dpo"


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


def pretrain(opts: JobOptions) -> dict:
    """Pretrains a GPT on a text source; returns the final metrics."""
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
                                    input_context=ctx, repeat=split == "train", text_column=opts.columns.text)
        return fn

    trainer = Trainer(
        config, tokenizer, cfg, strategy, opts.out, data("train"), eval_dataset=data("validation"),
        sample_prompts=[tokenizer.encode(p) for p in PRETRAIN_PROMPTS],
        metadata={"job": "pretrain", "preset": opts.preset, "data": opts.data},
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
    strategy = make_strategy(opts.strategy)
    if is_chief(strategy):
        check_writable(opts.out)
    source_dir = find_model_dir(opts.init_from)
    start = load_model(source_dir, head="lm")
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
                                    columns=opts.columns)
        return fn

    prompts = [chat_template.prompt([{"role": "user", "content": p}], tokenizer, cfg.seq_len // 2) for p in CHAT_PROMPTS]
    trainer = Trainer(
        config, tokenizer, cfg, strategy, opts.out, data("train"), eval_dataset=data("validation"),
        init_weights=lambda model: model.set_weights(weights), sample_prompts=prompts,
        metadata={"job": "finetune", "from": os.path.abspath(source_dir), "data": opts.data},
    )
    return trainer.train(resume=opts.resume, progress=opts.progress)


# ----------------------------------------------------------------------------- preference stages

REFERENCE_FILE = "reference_logps.npz"


def _preference_data(opts: JobOptions, tokenizer, seq_len: int) -> dict:
    """{"train", "validation"}: the rendered pairs of each split of `opts.data`."""
    from tfchat.data.pair_batches import preference_splits

    return preference_splits(opts.data, tokenizer, seq_len)


def _pair_data(rendered: dict, cfg: TrainConfig, pad_id: int, ref_logps: dict | None = None):
    from tfchat.data.pair_batches import pair_batches

    def data(split):
        def fn(ctx, batch):
            return pair_batches(rendered[split], cfg.seq_len, batch, pad_id, seed=cfg.seed, input_context=ctx,
                                repeat=split == "train", ref_logps=None if ref_logps is None else ref_logps[split])
        return fn
    return data


def reference_log_probs(out: str, model, rendered: dict, key: str) -> dict:
    """The reference model's log-probs of every pair of each split ({split: [N, 2]}), computed once and kept in
    `out/reference_logps.npz` (keyed by `key`, the reference weights and the rendered ids), so a resumed run
    trains against exactly the values it started with. A run whose stored values no longer match is refused."""
    from tfchat.eval.preferences import pair_log_probs
    from training.trainer import TrainingError

    path = os.path.join(out, REFERENCE_FILE)
    keys = {split: hashlib.sha256(f"{key}:{r.fingerprint()}".encode()).hexdigest() for split, r in rendered.items()}
    if os.path.isfile(path):
        with np.load(path) as stored:
            if all(f"{split}_key" in stored and str(stored[f"{split}_key"]) == k for split, k in keys.items()):
                log.info("Reference log-probs: reusing %s", path)
                return {split: stored[split] for split in rendered}
        if os.path.isdir(os.path.join(out, "checkpoints")) and os.listdir(os.path.join(out, "checkpoints")):
            raise TrainingError(f"{path} was computed for another starting model, data or --seq-len than this run's "
                                "checkpoints; use the run's own --from/--data/--seq-len or a new --out")
    start = time.perf_counter()
    values = {split: pair_log_probs(model, r).astype(np.float32) for split, r in rendered.items()}
    log.info("Reference log-probs of %s pairs computed in %.1fs",
             " + ".join(f"{len(r)} {split}" for split, r in rendered.items()), time.perf_counter() - start)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **values, **{f"{split}_key": k for split, k in keys.items()})
    os.replace(tmp, path)
    return values


def _weights_key(weights: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(weights[name]).tobytes())
    return digest.hexdigest()


def align(opts: JobOptions) -> dict:
    """Preference-tunes a chat model with DPO or IPO (`training.objectives.DirectPreference`).

    The policy starts from `opts.init_from`, which is also the frozen
    reference: its log-probs of every pair are computed once, before step 1
    (`reference_log_probs`). Returns the final metrics plus `held_out`:
    preference accuracy of the starting model and of the aligned one on the
    held-out pairs (`tfchat.eval.preferences`).
    """
    from tfchat.eval.preferences import accuracy_figures, pair_log_probs
    from training.objectives import DirectPreference
    from training.trainer import PRECISIONS

    objective = DirectPreference(opts.beta, opts.loss)  # bad --beta/--loss fail before any work
    strategy = make_strategy(opts.strategy)
    if is_chief(strategy):
        check_writable(opts.out)
    source_dir = find_model_dir(opts.init_from)
    cfg = opts.train
    # The reference in the training precision: at step 0 policy and reference agree (rewards 0).
    start = load_model(source_dir, dtype=PRECISIONS[cfg.precision], head="lm")
    config, tokenizer = start.config, start.tokenizer
    if opts.dropout is not None:
        config = config.replace(dropout=opts.dropout)
    check_seq_len(cfg.seq_len, config, "model's")
    rendered = _preference_data(opts, tokenizer, cfg.seq_len)
    weights = weights_by_path(start.model)
    key = f"{_weights_key(weights)}:{cfg.precision}"
    ref = reference_log_probs(opts.out, start.model, rendered, key) if is_chief(strategy) else None
    if ref is None:  # other workers compute their own copy (deterministic), without writing
        ref = {split: pair_log_probs(start.model, r).astype(np.float32) for split, r in rendered.items()}
    del start

    prompts = [chat_template.prompt([{"role": "user", "content": p}], tokenizer, cfg.seq_len // 2) for p in CHAT_PROMPTS]
    data = _pair_data(rendered, cfg, tokenizer.pad_id, ref)
    trainer = Trainer(
        config, tokenizer, cfg, strategy, opts.out, data("train"), eval_dataset=data("validation"),
        init_weights=lambda model: assign_weights(model, weights, source_dir), sample_prompts=prompts,
        metadata={"job": "align", "preference_loss": opts.loss, "beta": opts.beta, "from": os.path.abspath(source_dir),
                  "data": opts.data, "pairs": {split: len(r) for split, r in rendered.items()}},
        objective=objective,
    )
    metrics = trainer.train(resume=opts.resume, progress=opts.progress)
    # Held-out preference accuracy before (the reference) and after, on the same pairs.
    held_out = rendered["validation"]
    before = ref["validation"].astype(np.float64) @ np.array([1.0, -1.0])
    after = pair_log_probs(trainer.model, held_out) @ np.array([1.0, -1.0])
    result = {"start": accuracy_figures(before, held_out, "preference"),
              "aligned": accuracy_figures(after, held_out, "preference"),
              "aligned_vs_reference": accuracy_figures(after - before, held_out, "preference")}
    headline = {name: r["preference_accuracy"] for name, r in result.items()}
    trainer.save_model_dir({"held_out_preference_accuracy": headline,
                            "held_out_length_baseline": result["start"]["preference_length_baseline"],
                            **{k: v for k, v in metrics.items() if k == "loss" or k.startswith("val_")}})
    return {**metrics, "held_out": result}


def reward(opts: JobOptions) -> dict:
    """Trains a reward model (`training.objectives.PairwiseReward`) on the backbone of `opts.init_from`.

    A chat (or pretrained) model gives the backbone and a new scalar head; a
    reward model directory continues with its own head. Returns the final
    metrics plus `held_out`: reward accuracy and the length baseline on the
    held-out pairs.
    """
    from tfchat.eval.preferences import reward_metrics
    from training.objectives import PairwiseReward

    strategy = make_strategy(opts.strategy)
    if is_chief(strategy):
        check_writable(opts.out)
    source_dir = find_model_dir(opts.init_from)
    start = load_model(source_dir)
    config, tokenizer, cfg = start.config, start.tokenizer, opts.train
    if opts.dropout is not None:
        config = config.replace(dropout=opts.dropout)
    check_seq_len(cfg.seq_len, config, "model's")
    weights, whole = weights_by_path(start.model), start.head == "reward"
    del start
    rendered = _preference_data(opts, tokenizer, cfg.seq_len)

    def init(model):  # a chat model gives the backbone; the head starts fresh
        assign_weights(model if whole else model.backbone, weights, source_dir, strict=False)

    data = _pair_data(rendered, cfg, tokenizer.pad_id)
    trainer = Trainer(
        config, tokenizer, cfg, strategy, opts.out, data("train"), eval_dataset=data("validation"),
        init_weights=init, objective=PairwiseReward(),
        metadata={"job": "reward", "from": os.path.abspath(source_dir), "data": opts.data,
                  "pairs": {split: len(r) for split, r in rendered.items()}},
    )
    metrics = trainer.train(resume=opts.resume, progress=opts.progress)
    held_out = reward_metrics(LoadedModel(trainer.model, tokenizer, config, {"head": "reward"}), rendered["validation"])
    trainer.save_model_dir({"held_out_reward_accuracy": held_out["reward_accuracy"],
                            "held_out_length_baseline": held_out["reward_length_baseline"],
                            **{k: v for k, v in metrics.items() if k == "loss" or k.startswith("val_")}})
    return {**metrics, "held_out": held_out}
