"""The training jobs behind the commands: resolve inputs, build a `Trainer` with its objective, run it.

The command-line modules only parse flags; these functions are what tests
and notebooks call.

Example:

>>> metrics = pretrain(JobOptions(out="runs/p", data="wikipedia-sample", train=TrainConfig(steps=10)))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import logging
import os
import shutil
import tempfile
import time
import zlib

import numpy as np

from tfchat import atomic
from tfchat.checkpoint.model_dir import (
    TOKENIZER_DIR, LoadedModel, assign_weights, is_model_dir, load_model, not_found, resolve_model_dir, weights_by_path,
)
from tfchat.config import GPTConfig
from tfchat.data.batches import finetune_dataset, pretrain_dataset
from tfchat.data.dialogues import default_dialogue_source, iter_conversations, tag_values
from tfchat.data.sources import documents_dataset
from tfchat.data.tables import Columns
from tfchat.text import chat_template, chinese
from tfchat.text.control_tags import TagVocabulary
from tfchat.text.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer, train_tokenizer
from training.run_dir import RunDirectory, figures
from training.strategy import gather, is_chief, make_strategy
from training.trainer import TrainConfig, Trainer, TrainingError, check_run_job

log = logging.getLogger(__name__)

# A new tokenizer learns from at most this many documents: SentencePiece samples 2M sentences anyway, and a
# streamed Wikipedia must not be read whole before the first step.
TOKENIZER_DOCUMENTS = 200_000
PRETRAIN_PROMPTS = ("The history of", "In mathematics, a", "Autism is")
# Characters of the training split a new tokenizer learns from (SentencePiece's time grows with them).
TOKENIZER_CHARS = 10_000_000
CHAT_PROMPTS = ("What is the capital of France?", "Can you suggest a good book to read?", "How do I boil an egg?")
PRETRAIN_PROMPTS_ZH = ("中国的历史", "數學是", "北京市是")
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
    override: bool = False  # resume although result-changing flags differ from run.json's
    convert_script: str | None = None  # an OpenCC Simplified/Traditional conversion of the data (t2s, s2t...)
    # pretrain only
    preset: str = "tiny"
    tokenizer: str | None = None
    vocab_size: int | None = None
    architecture: dict = dataclasses.field(default_factory=dict)  # GPTConfig fields over the preset's
    # finetune, align and reward (pretrain passes dropout in `architecture`)
    dropout: float | None = None
    init_from: str | None = None
    pack: bool = False
    tag_dropout: float = 0.2  # finetune: chance a tag name is dropped from a training conversation
    # align only
    beta: float = 0.1
    loss: str = "dpo"
    nll_weight: float = 0.0
    # both: drop what this moderation classifier flags
    content_filter: str | None = None
    filter_threshold: float | None = None


@contextlib.contextmanager
def run_lock(out: str, strategy, job: str):
    """The run directory's lock, held by the chief for the whole job (tokenizer, training, model); an --out
    that another stage started is refused before this one writes anything into it."""
    with RunDirectory(out).lock() if is_chief(strategy) else contextlib.nullcontext():
        check_run_job(out, job)
        yield


def check_seq_len(seq_len: int, config: GPTConfig, what: str) -> None:
    if seq_len > config.block_size:
        raise ValueError(f"--seq-len {seq_len} exceeds the {what} context of {config.block_size}")


def _start_config(config: GPTConfig, opts: JobOptions) -> GPTConfig:
    """The config of the model a stage starts from (`--from`), with `--dropout` applied, checked against
    `--seq-len`."""
    if opts.dropout is not None:
        config = config.replace(dropout=opts.dropout)
    check_seq_len(opts.train.seq_len, config, "model's")
    return config


def pretrain_tokenizer(opts: JobOptions, run_tokenizer_dir: str) -> Tokenizer:
    """A resumed run keeps its tokenizer; else --tokenizer is reused, or a new one is trained on the data."""
    if os.path.isfile(os.path.join(run_tokenizer_dir, TOKENIZER_FILE)):
        if opts.tokenizer:
            log.info("Resuming: using the run's own tokenizer in %s, not --tokenizer", run_tokenizer_dir)
        return load_tokenizer(run_tokenizer_dir)
    if opts.tokenizer:
        path = opts.tokenizer
        if not os.path.exists(path):
            raise FileNotFoundError(f"--tokenizer {path}: not found; give a tokenizer directory, a model or run "
                                    "directory (its tokenizer is used), or leave --tokenizer out to train one "
                                    "(python -m training.pretrain)")
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


def _first_chars(documents, limit: int):
    """Documents (utf-8 tensors) until `limit` characters: a tokenizer needs a sample, not the corpus."""
    seen = 0
    for text in documents.as_numpy_iterator():
        if seen >= limit:
            return
        text = text.decode("utf-8")
        seen += len(text)
        yield text


def load_content_filter(opts: JobOptions):
    """The job's `ContentFilter`, or None without --content-filter."""
    if not opts.content_filter:
        return None
    from tfchat.inference.classifier import ContentFilter

    return ContentFilter.load(opts.content_filter, opts.filter_threshold)


def write_filter_report(out: str, content_filter, unit: str, counts: dict | None) -> None:
    """Logs what the filter dropped ({split: {"total", "dropped"}}; None: unknown) and writes RUN/content_filter.json."""
    for split, c in (counts or {}).items():
        log.info("content filter: dropped %d of %d %s in the %s split (%.2f%%)", c["dropped"], c["total"], unit, split,
                 100 * c["dropped"] / max(c["total"], 1))
    atomic.write_json(os.path.join(out, "content_filter.json"),
                      {**content_filter.describe(), "unit": unit, "splits": counts})


def report_pretrain_filter(opts: JobOptions, content_filter) -> None:
    """Filters a local source once (cached) and reports its counts; TFDS and table sources are filtered as
    they stream."""
    import json

    from tfchat.data import sources

    from tfchat.data import mixture

    spec = opts.data or sources.default_pretrain_source()
    if mixture.is_mixture(spec):
        log.warning("content filter: %s is a mixture, filtered part by part; the counts are not reported", spec)
        write_filter_report(opts.out, content_filter, "documents", None)
        return
    parsed = sources.parse_source(spec, opts.columns.text, opts.convert_script)
    if parsed.tfds_name or parsed.table:
        log.warning("content filter: %s is filtered as it streams; the counts are not known in advance", opts.data)
        write_filter_report(opts.out, content_filter, "documents", None)
        return
    with open(os.path.join(sources.filter_documents(parsed, content_filter), "meta.json"), encoding="utf-8") as f:
        counts = json.load(f)["content_filter"]["splits"]
    write_filter_report(opts.out, content_filter, "documents", counts)


def report_finetune_filter(opts: JobOptions, content_filter) -> None:
    """Flags every conversation of the data once (memoized for the pipelines) and reports the counts."""
    from tfchat.data import dialogues
    from tfchat.inference.classifier import chunks

    counts = {split: {"total": 0, "dropped": 0} for split in ("train", "validation")}
    conversations = dialogues.iter_conversations(opts.data or dialogues.default_dialogue_source(), columns=opts.columns)
    for part in chunks(conversations, 512):
        for conversation, flagged in zip(part, content_filter.flag_conversations(part)):
            c = counts[dialogues.split_of(conversation)]
            c["total"] += 1
            c["dropped"] += int(flagged)
    write_filter_report(opts.out, content_filter, "conversations", counts)


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


def _sample_prompts(first_texts, english: tuple, chinese_prompts: tuple, convert_script: str | None) -> list[str]:
    """The prompts a run shows samples for: Chinese ones (converted like the data) when the first texts of the
    data are Chinese, else English ones."""
    if not chinese.is_chinese("".join(first_texts)[:20_000]):
        return list(english)
    return [chinese.convert_script(p, convert_script) if convert_script else p for p in chinese_prompts]


def pretrain(opts: JobOptions) -> dict:
    """Pretrains a GPT on a text source; returns the final metrics."""
    chinese.check_conversion(opts.convert_script)  # OpenCC missing or a bad name: fail before any work
    strategy = make_strategy(opts.strategy)
    content_filter = load_content_filter(opts)
    with run_lock(opts.out, strategy, "pretrain"):
        if content_filter is not None and is_chief(strategy):
            report_pretrain_filter(opts, content_filter)
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
                                        input_context=ctx, repeat=split == "train", text_column=opts.columns.text,
                                        content_filter=content_filter, convert_script=opts.convert_script)
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


def tag_vocabulary(start: LoadedModel, opts: JobOptions) -> TagVocabulary | None:
    """The tag vocabulary a fine-tuned model gets: its starting model's (a tagged chat model fine-tuned further),
    else the tags the training data carries, else None (an untagged model, as before tags existed)."""
    found = tag_values(iter_conversations(opts.data or default_dialogue_source(), columns=opts.columns))
    if start.tags is not None:
        for name, values in found.items():
            new = sorted(set(values) - set(start.tags.tags.get(name, ())))
            if new:
                raise ValueError(f"the data tags {name} {', '.join(new)}, which the model's tag vocabulary lacks "
                                 f"({name}: {', '.join(start.tags.tags.get(name, ())) or 'none'}); fine-tune a model "
                                 "without tags (e.g. the pretrained one) to learn a new vocabulary")
        return start.tags
    if not found:
        return None
    tags = TagVocabulary(found, start.tokenizer.special)
    log.info("tags of the data, rendered as control ids before each reply (dropout %.2f): %s", opts.tag_dropout,
             "; ".join(f"{name}: {', '.join(values)}" for name, values in found.items()))
    return tags


def init_tag_embeddings(start: LoadedModel, tags: TagVocabulary) -> None:
    """Gives the control ids of a new tag vocabulary embeddings a model can read.

    Pretraining never feeds control ids in, so weight decay has shrunk their rows to a few percent of a word's
    norm, and a tag would barely enter the residual stream. Each tag starts as the mean embedding of its
    value's words ("sci_tech" -> "sci tech"), as prompt tuning initialises soft prompts from label words
    (Lester et al. 2021), so "music" starts out meaning music.
    """
    table = next(w for w in start.model.weights if w.path.endswith("token_embedding"))
    rows = table.numpy()
    for name, values in tags.tags.items():
        for value in values:
            [control] = tags.ids({name: value})
            rows[control] = rows[start.tokenizer.encode(" " + value.replace("_", " "))].mean(axis=0)
    table.assign(rows)


def finetune(opts: JobOptions) -> dict:
    """Fine-tunes a model directory on dialogues into a chat model (language modelling on assistant tokens)."""
    chinese.check_conversion(opts.convert_script)
    strategy = make_strategy(opts.strategy)
    source_dir = find_model_dir(opts.init_from)
    check_dialogue_files(opts.data)
    content_filter = load_content_filter(opts)
    with run_lock(opts.out, strategy, "finetune"):
        if content_filter is not None and is_chief(strategy):
            report_finetune_filter(opts, content_filter)
        start = load_model(source_dir, head="lm")
        config, tokenizer, cfg = _start_config(start.config, opts), start.tokenizer, opts.train
        tags = tag_vocabulary(start, opts)
        if tags is not None and start.tags is None:
            init_tag_embeddings(start, tags)
        weights = start.model.get_weights()
        del start
        built: dict = {}  # conversations are read and tokenized once per split and pipeline, not at every evaluation

        def data(split):
            def fn(ctx, batch):
                key = (split, ctx.num_input_pipelines, ctx.input_pipeline_id, batch)
                if key not in built:
                    built[key] = finetune_dataset(opts.data, tokenizer, cfg.seq_len, batch, split=split, seed=cfg.seed,
                                                  input_context=ctx, repeat=split == "train", pack=opts.pack,
                                                  columns=opts.columns, content_filter=content_filter,
                                                  convert_script=opts.convert_script, tags=tags,
                                                  tag_dropout=opts.tag_dropout)
                return built[key]
            return fn

        first = itertools.islice(iter_conversations(opts.data or default_dialogue_source(), columns=opts.columns), 8)
        questions = _sample_prompts((m["content"] for c in first for m in c), CHAT_PROMPTS, CHAT_PROMPTS_ZH,
                                    opts.convert_script)
        prompts = [chat_template.prompt([{"role": "user", "content": p}], tokenizer, cfg.seq_len // 2)
                   for p in questions]
        trainer = Trainer(
            config, tokenizer, cfg, strategy, opts.out, data("train"), eval_dataset=data("validation"),
            init_weights=lambda model: model.set_weights(weights), sample_prompts=prompts,
            metadata={"job": "finetune", "from": os.path.abspath(source_dir), "data": opts.data,
                      **({"convert_script": opts.convert_script} if opts.convert_script else {}),
                      **({"tags": tags.to_dict(), "tag_dropout": opts.tag_dropout} if tags is not None else {})},
        )
        return trainer.train(resume=opts.resume, progress=opts.progress, override=opts.override)


# ----------------------------------------------------------------------------- preference stages

REFERENCE_FILE = "reference_logps.npz"


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
    from tfchat.data.pair_batches import preference_splits
    from tfchat.eval.preferences import accuracy_figures, pair_log_probs
    from training.objectives import DirectPreference
    from training.trainer import PRECISIONS

    objective = DirectPreference(opts.beta, opts.loss, opts.nll_weight)  # bad values fail before any work
    strategy = make_strategy(opts.strategy)
    with run_lock(opts.out, strategy, "align"):
        source_dir = find_model_dir(opts.init_from)
        cfg = opts.train
        # The reference in the training precision: at step 0 policy and reference agree (rewards 0).
        start = load_model(source_dir, dtype=PRECISIONS[cfg.precision], head="lm")
        config, tokenizer = _start_config(start.config, opts), start.tokenizer
        rendered = preference_splits(opts.data, tokenizer, cfg.seq_len)
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
            metadata={"job": "align", "preference_loss": opts.loss, "beta": opts.beta, "nll_weight": opts.nll_weight,
                      "from": os.path.abspath(source_dir), "data": opts.data,
                      "pairs": {split: len(r) for split, r in rendered.items()}},
            objective=objective,
        )
        metrics = trainer.train(resume=opts.resume, progress=opts.progress, override=opts.override)
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
                                **figures(metrics)})
        return {**metrics, "held_out": result}


def reward(opts: JobOptions) -> dict:
    """Trains a reward model (`training.objectives.PairwiseReward`) on the backbone of `opts.init_from`.

    A chat (or pretrained) model gives the backbone and a new scalar head; a
    reward model directory continues with its own head. Returns the final
    metrics plus `held_out`: reward accuracy and the length baseline on the
    held-out pairs.
    """
    from tfchat.data.pair_batches import preference_splits
    from tfchat.eval.preferences import reward_metrics
    from training.objectives import PairwiseReward

    strategy = make_strategy(opts.strategy)
    with run_lock(opts.out, strategy, "reward"):
        source_dir = find_model_dir(opts.init_from)
        start = load_model(source_dir)
        config, tokenizer, cfg = _start_config(start.config, opts), start.tokenizer, opts.train
        weights, whole = weights_by_path(start.model), start.head == "reward"
        del start
        rendered = preference_splits(opts.data, tokenizer, cfg.seq_len)

        def init(model):  # a chat model gives the backbone; the head starts fresh
            assign_weights(model if whole else model.backbone, weights, source_dir, strict=False)

        data = _pair_data(rendered, cfg, tokenizer.pad_id)
        trainer = Trainer(
            config, tokenizer, cfg, strategy, opts.out, data("train"), eval_dataset=data("validation"),
            init_weights=init, objective=PairwiseReward(),
            metadata={"job": "reward", "from": os.path.abspath(source_dir), "data": opts.data,
                      "pairs": {split: len(r) for split, r in rendered.items()}},
        )
        metrics = trainer.train(resume=opts.resume, progress=opts.progress, override=opts.override)
        held_out = reward_metrics(LoadedModel(trainer.model, tokenizer, config, {"head": "reward"}), rendered["validation"])
        trainer.save_model_dir({"held_out_reward_accuracy": held_out["reward_accuracy"],
                                "held_out_length_baseline": held_out["reward_length_baseline"],
                                **figures(metrics)})
        return {**metrics, "held_out": held_out}


@dataclasses.dataclass
class ClassifyOptions:
    """What `classify` needs (see `training.classify` for the flags)."""

    out: str
    task: str
    data: list[str]
    train: TrainConfig
    model: dict = dataclasses.field(default_factory=dict)  # ClassifierConfig fields besides the labels
    init_from: str | None = None  # kind "gpt": the model directory whose backbone and tokenizer it starts from
    balance: float = 0.0  # source balancing of training batches (`labelled_batches`)
    lazy_adam: bool = False  # AdamW updates only the n-gram rows a batch uses (`training.optimizer`)
    strategy: str = "auto"
    resume: bool = True
    override: bool = False
    progress: bool = True


def _labelled_splits(task, data: list[str]) -> tuple[dict, list[str]]:
    """{"train": [...], "validation": [...]} examples of `data` for `task`, and the labels."""
    from tfchat.data import labelled

    examples, labels = task.prepare(labelled.load_examples(data))
    split = {s: [e for e in examples if e.resolved_split() == s] for s in ("train", "validation")}
    for s, part in split.items():
        if not part:
            raise ValueError(f"{', '.join(data)}: no examples in the {s!r} split ({len(examples)} in all; the held-out "
                             "split is 5% of texts by hash, so a tiny set may have none: give some \"split\": "
                             "\"validation\")")
    return split, labels


def _held_out_figures(model, task, held_out: list, labels: list[str]) -> tuple[dict, dict]:
    """Thresholds and held-out metrics of a classifier: (classification metrics, what to store with the
    model: thresholds, the out-of-scope fallback)."""
    from tfchat.data import labelled
    from tfchat.eval.classification import (best_fallback_threshold, best_thresholds, classification_metrics,
                                            out_of_scope_metrics, predict_with_fallback)
    from tfchat.inference.classifier import batched_scores, keras_score_fn

    scores = batched_scores(keras_score_fn(model, task.multi_label), [e.text for e in held_out], len(labels))
    targets = labelled.targets(held_out, labels)
    thresholds = best_thresholds(targets, scores, labels) if task.multi_label else {}
    result = classification_metrics(targets, scores, labels, task.multi_label, thresholds,
                                    sources=[e.source for e in held_out], primary=labelled.FLAGGED)
    stored = {"thresholds": thresholds}
    if task.fallback and task.fallback in labels:
        truth = [e.labels[0] for e in held_out]
        t = best_fallback_threshold(scores, labels, truth, task.fallback)
        stored["fallback"] = {"label": task.fallback, "threshold": t}
        predicted = predict_with_fallback(scores, labels, task.fallback, t)
        result["with_fallback"] = {"threshold": t, **out_of_scope_metrics([labels[j] for j in predicted], truth,
                                                                           task.fallback)}
    return result, stored


def classify(opts: ClassifyOptions) -> dict:
    """Trains a text classifier on labelled data; stores per-label thresholds chosen on the held-out split.

    Returns the final training metrics plus `held_out`: `tfchat.eval.classification` metrics of the
    held-out split at the stored thresholds.
    """
    from tfchat.data import labelled
    from tfchat.data.batches import labelled_batches
    from tfchat.model.classifier import ClassifierConfig
    from training.objectives import Classification

    task = labelled.TASKS[opts.task]
    data = opts.data or [task.default_data]
    strategy = make_strategy(opts.strategy)
    split, labels = _labelled_splits(task, data)
    fields, tokenizer, init, source = dict(opts.model), None, None, None
    if fields.get("kind") == "gpt":
        if not opts.init_from:
            raise ValueError("a kind 'gpt' classifier starts from a model directory (--from runs/pretrain): "
                             "its backbone and tokenizer")
        source = find_model_dir(opts.init_from)
        start = load_model(source)
        tokenizer, weights = start.tokenizer, weights_by_path(start.model)
        # --dropout regularises the backbone too (GPT-1 fine-tuned with dropout in both).
        fields["backbone"] = start.config.replace(dropout=fields.get("dropout", 0.0)).to_dict()
        fields["max_tokens"] = fields.get("max_tokens") or min(64, start.config.block_size)
        if not 2 <= fields["max_tokens"] <= start.config.block_size:
            raise ValueError(f"--max-tokens {fields['max_tokens']}: {source} reads 2 to {start.config.block_size} "
                             "tokens")
        del start

        def init(model):  # the backbone from the model directory; the head starts fresh
            assign_weights(model.backbone, weights, source, strict=False)
    config = ClassifierConfig(labels=tuple(labels), multi_label=task.multi_label, **fields)
    cfg = opts.train
    counts = {s: len(part) for s, part in split.items()}
    log.info("classify %s on %s: %d labels (%s); %d train / %d held-out examples", task.name, ", ".join(data),
             len(labels), ", ".join(labels), counts["train"], counts["validation"])

    def batches(part):
        texts, targets = [e.text for e in split[part]], labelled.targets(split[part], labels)
        sources = [e.source for e in split[part]]

        def fn(ctx, batch):
            return labelled_batches(texts, targets, batch, sources=sources, balance=opts.balance, seed=cfg.seed,
                                    input_context=ctx, repeat=part == "train")
        return fn

    with run_lock(opts.out, strategy, "classify"):
        examples = split["train"] + split["validation"]
        metadata = {"job": "classify", "task": task.name, "data": data, "examples": counts, "balance": opts.balance,
                    "lazy_adam": opts.lazy_adam, **({"from": os.path.abspath(source)} if source else {}),
                    "label_counts": {label: int(n)
                                     for label, n in zip(labels, labelled.targets(examples, labels).sum(0))}}
        trainer = Trainer(config, None, cfg, strategy, opts.out, batches("train"), eval_dataset=batches("validation"),
                          metadata=metadata, init_weights=init,
                          objective=Classification(task.multi_label, opts.lazy_adam, tokenizer=tokenizer))
        metrics = trainer.train(resume=opts.resume, progress=opts.progress, override=opts.override)
        result, stored = _held_out_figures(trainer.model, task, split["validation"], labels)
        trainer.save_model_dir({**stored, "held_out": _summary(result), **figures(metrics)})
        return {**metrics, "task": task.name, "held_out": result}


def ensemble(out: str, members: list[str]) -> dict:
    """Writes `out/model`: a classifier averaging the log-probabilities of the classifiers `members` (run or
    classifier directories trained by `classify` on the same task and data), with thresholds chosen on their
    held-out split. Returns its held-out metrics, like `classify`.
    """
    from tfchat.checkpoint.classifier_dir import load_classifier, marker_metadata, resolve_classifier_dir, save_classifier
    from tfchat.data import labelled
    from tfchat.model.classifier import ClassifierConfig, build_classifier

    resolved = [os.path.abspath(resolve_classifier_dir(path)) for path in members]
    if len(set(resolved)) < 2 or len(set(resolved)) != len(resolved):
        raise ValueError(f"an ensemble needs at least two different classifiers, got {', '.join(members)}")
    target = os.path.abspath(os.path.join(out, "model"))
    if target in resolved:
        raise ValueError(f"{members[resolved.index(target)]} is the ensemble's own output (--out {out}); write it "
                         "elsewhere")
    if os.path.exists(os.path.join(out, "run.json")) or (
            os.path.exists(target) and marker_metadata(target).get("job") != "ensemble"):
        raise ValueError(f"{out} holds a training run; write the ensemble to a new --out (an ensemble replaces "
                         "only an earlier ensemble)")
    loaded = [load_classifier(path) for path in members]
    first = loaded[0]
    for path, m in zip(members[1:], loaded[1:]):
        for what, a, b in (("labels", first.config.labels, m.config.labels),
                           ("multi_label", first.config.multi_label, m.config.multi_label),
                           ("task", first.metadata.get("task"), m.metadata.get("task")),
                           ("data", first.metadata.get("data"), m.metadata.get("data"))):
            if a != b:  # the same data: the held-out split the thresholds are chosen on was held out from all
                short = [x if len(str(x)) < 80 else f"{str(x)[:76]}...)" for x in (b, a)]
                raise ValueError(f"{path}: its {what} ({short[0]}) differ from {members[0]}'s ({short[1]}); an "
                                 "ensemble's members must be trained on the same task and data")
    task_name, data = first.metadata.get("task"), first.metadata.get("data")
    if task_name not in labelled.TASKS or not data:
        raise ValueError(f"{members[0]}: no task and data recorded; train the members with python -m training.classify")
    task = labelled.TASKS[task_name]
    split, labels = _labelled_splits(task, data)
    if tuple(labels) != first.config.labels:
        raise ValueError(f"{', '.join(data)} now gives other labels than the members were trained on")
    config = ClassifierConfig(labels=first.config.labels, multi_label=first.config.multi_label, kind="ensemble",
                              members=len(loaded))
    model = build_classifier(config, members=[m.model for m in loaded])
    result, stored = _held_out_figures(model, task, split["validation"], labels)
    save_classifier(target, model, config, {
        "job": "ensemble", "task": task_name, "data": data, "members": [os.path.abspath(p) for p in members],
        "examples": {s: len(part) for s, part in split.items()}, **stored, "held_out": _summary(result)},
        members=members)
    return {"task": task_name, "held_out": result}


def _summary(result: dict) -> dict:
    """The headline numbers of `classification_metrics` (stored with the model)."""
    keep = ("precision", "recall", "f1", "roc_auc", "pr_auc", "threshold", "support")
    return {"examples": result["examples"], "accuracy": result["accuracy"], "macro_f1": result["macro_f1"],
            "labels": {label: {k: m[k] for k in keep} for label, m in result["labels"].items()}}
