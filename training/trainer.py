"""The one distributed training loop: every stage (pretraining, fine-tuning, and the objectives to come).

Not `model.fit`: under Keras 3.15 it breaks with MultiWorkerMirroredStrategy
(keras-team/keras#20585, tensorflow/tensorflow#72388) and
`steps_per_execution > 1` fails with more than one replica. Instead, a
`tf.function` step runs `strategy.run` on a distributed dataset:

* each dataset element is one optimizer step: `[accum, micro_batch, ...]`
  per replica, so gradient accumulation is a loop inside the replica step;
* the objective (`training.objectives`) returns sums over its micro-batch;
  sums and gradients are all-reduced once and divided by the *global*
  weight (e.g. the number of unmasked target tokens);
* the global gradient norm is clipped, then AdamW applies it
  (`training.optimizer`);
* bf16/fp16 mixed precision (fp16 with dynamic loss scaling), optional XLA
  for the forward/backward computation.

Around the step, the loop is a few named parts: `_log` (TensorBoard,
console), `_evaluate_and_log` (held-out sums, sample generations),
`save_checkpoint` / `save_model_dir`, and a signal handler that saves before
anything else. Checkpoints (model, optimizer, step, dropout RNG state, loss
scale) go through `tf.train.CheckpointManager`; the data position is the
step count, replayed on resume by skipping that many elements of the
deterministic pipeline.

The run directory (`training.run_dir`) is locked while training, cleaned of
what killed runs left, and records the flags a run started with: resuming
with other values of the flags that change results (`RESUME_FLAGS`) is
refused unless `override=True`, which records the change in run.json. The
final figures are written to run.json before the last checkpoint, so a kill
at any moment of the end leaves a re-run that completes the model
directory and reports them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import time
from typing import Callable, Sequence

import keras
import tensorflow as tf

from tfchat.config import GPTConfig
from tfchat.text.tokenizer import Tokenizer
from training.hardware import measure_peak_flops
from training.objectives import LanguageModeling, Objective
from training.optimizer import OPTIMIZERS, SCHEDULES, make_optimizer, sum_repeated_rows
from training.run_dir import RunDirectory, figures
from training.strategy import barrier, gather, is_chief, worker_dir

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}

DatasetFn = Callable[[tf.distribute.InputContext, int], tf.data.Dataset]

# What a resumed run may not change silently: TrainConfig fields and job metadata that change results.
# (steps may grow, micro-batch size, intervals and XLA only change speed and bookkeeping.)
RESUME_FLAGS = ("batch_size", "seq_len", "lr", "min_lr_ratio", "warmup_steps", "optimizer", "schedule", "cooldown",
                "weight_decay", "beta_1", "beta_2", "grad_clip", "precision", "seed")
RESUME_METADATA = ("job", "data", "from", "lazy_adam", "preference_loss", "beta", "nll_weight", "tag_dropout")
# Model settings a resumed run may change with override (the rest is the model's shape).
OVERRIDABLE_MODEL = ("dropout",)


@dataclasses.dataclass
class TrainConfig:
    """Optimisation settings. `batch_size` is global: sequences per optimizer step."""

    steps: int = 1000
    batch_size: int = 32
    micro_batch_size: int | None = None  # per replica; default batch_size / replicas
    seq_len: int = 128
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    optimizer: str = "adamw"  # or "muon" (hidden matrices; AdamW for embeddings, head, vectors)
    schedule: str = "cosine"  # or "wsd" (warmup, stable, decay over the last `cooldown` of the steps)
    cooldown: float = 0.2
    weight_decay: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.95
    grad_clip: float = 1.0
    precision: str = "fp32"
    xla: bool = False
    log_every: int = 10
    eval_every: int = 250
    eval_batches: int = 20
    save_every: int = 250
    keep_checkpoints: int = 3
    seed: int = 0
    profile_steps: tuple[int, int] | None = None

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("steps", "batch_size", "seq_len", "log_every", "eval_every", "save_every", "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.micro_batch_size is not None and self.micro_batch_size <= 0:
            raise ValueError(f"micro-batch-size must be positive, got {self.micro_batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 < self.cooldown <= 1:
            raise ValueError(f"cooldown must be in (0, 1], got {self.cooldown}")

    def accumulation(self, num_replicas: int) -> tuple[int, int]:
        """(micro batch per replica, accumulation steps) for the global batch."""
        if self.batch_size % num_replicas:
            raise ValueError(
                f"global batch size {self.batch_size} is not divisible by the {num_replicas} replicas"
            )
        per_replica = self.batch_size // num_replicas
        micro = self.micro_batch_size or per_replica
        if per_replica % micro:
            raise ValueError(
                f"per-replica batch {per_replica} (batch size {self.batch_size} / {num_replicas} replicas) "
                f"is not divisible by micro-batch-size {micro}"
            )
        return micro, per_replica // micro


class TrainingError(RuntimeError):
    """A failure the user must act on (NaN loss, incompatible checkpoint...)."""


class ResumeMismatch(TrainingError):
    """Resuming with flags that differ from the ones the run recorded (without `override`)."""


def check_run_job(out: str, job: str | None, record: dict | None = None) -> None:
    """Refuses an `out` that another stage started (`record`: its run.json, read if not given): its checkpoint
    holds other objects, so not even `override` resumes it."""
    started = (RunDirectory(out).read_record() if record is None else record).get("job")
    if job is not None and started not in (None, job):
        raise TrainingError(f"{out} is a {started} run; this command is {job}: choose another --out")


class Trainer:
    """Trains a model under a tf.distribute strategy, with checkpoints, summaries and resume.

    Args:
        config: the model shape (`GPTConfig`, or what the objective builds from, e.g. `ClassifierConfig`).
        tokenizer: saved with the model directory (None for models that tokenize in the graph).
        train_cfg: optimisation settings.
        strategy: from `training.strategy.make_strategy`.
        out_dir: run directory: `model/`, `checkpoints/`, `logs/`, `run.json`.
        train_dataset: `fn(input_context, micro_batch) -> tf.data.Dataset` of
            the batches the objective reads (for language modelling, dicts
            `token_ids`, `targets`, `loss_mask` `[micro_batch, T]`);
            deterministic and repeating.
        eval_dataset: same contract, finite, for held-out metrics (optional).
        init_weights: `fn(model)` that loads starting weights (fine-tuning).
        sample_prompts: token-id prompts for sample generations in TensorBoard.
        metadata: stored in `run.json` and the model directory's marker file.
        objective: what to optimise; default `LanguageModeling()`.
    """

    def __init__(
        self,
        config: GPTConfig,
        tokenizer: Tokenizer | None,
        train_cfg: TrainConfig,
        strategy: tf.distribute.Strategy,
        out_dir: str,
        train_dataset: DatasetFn,
        eval_dataset: DatasetFn | None = None,
        init_weights: Callable[[keras.Model], None] | None = None,
        sample_prompts: Sequence[Sequence[int]] = (),
        metadata: dict | None = None,
        objective: Objective | None = None,
    ):
        self.config, self.tokenizer, self.cfg, self.strategy = config, tokenizer, train_cfg, strategy
        self.objective = objective or LanguageModeling()
        self.run = RunDirectory(out_dir)
        self.out_dir = out_dir
        self.chief = is_chief(strategy)
        self.metadata = dict(metadata or {})
        self.sample_prompts = [list(p) for p in sample_prompts]
        self.replicas = strategy.num_replicas_in_sync
        self.micro_batch, self.accum = train_cfg.accumulation(self.replicas)
        self._train_dataset_fn, self._eval_dataset_fn = train_dataset, eval_dataset
        self._stop_signal = None

        keras.utils.set_random_seed(train_cfg.seed)
        with strategy.scope():
            self.model = self.objective.build_model(config, PRECISIONS[train_cfg.precision])
            if init_weights is not None:
                init_weights(self.model)
            self.optimizer = make_optimizer(train_cfg, self.model.trainable_variables, lazy=self.objective.lazy)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.loss_scale = tf.Variable(2.0**15 if train_cfg.precision == "fp16" else 1.0, trainable=False)
            self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, step=self.step,
            loss_scale=self.loss_scale, good_steps=self.good_steps,
            # Dropout's seed-generator states: tf.train.Checkpoint(model=...) does not track them.
            rng=[v.value for v in self.model.non_trainable_variables],
        )
        self.work_dir = worker_dir(out_dir, strategy)
        self.ckpt_dir = os.path.join(self.work_dir, "checkpoints")
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.ckpt_dir, max_to_keep=train_cfg.keep_checkpoints)
        self._train_step = self._make_train_step()
        self._eval_step = self._make_eval_step()

    # -- distributed steps ------------------------------------------------

    def _make_train_step(self):
        model, cfg, accum, objective = self.model, self.cfg, self.accum, self.objective
        variables = model.trainable_variables
        fp16 = cfg.precision == "fp16"

        def grads_of(micro):
            with tf.GradientTape() as tape:
                sums = objective.sums(model, micro, training=True)
                scaled = sums["loss"] * self.loss_scale if fp16 else sums["loss"]
            grads = tape.gradient(scaled, variables)
            if accum > 1:  # accumulation adds them up: embedding gradients arrive as IndexedSlices
                grads = [tf.convert_to_tensor(g) for g in grads]
            return sums, [tf.cast(g, tf.float32) for g in grads]

        if cfg.xla:
            grads_of = tf.function(grads_of, jit_compile=True)

        def replica_step(batch):
            if accum == 1:
                sums, grads = grads_of({k: v[0] for k, v in batch.items()})
            else:
                def body(i, sums, grads):
                    s, g = grads_of({k: v[i] for k, v in batch.items()})
                    return i + 1, {k: sums[k] + s[k] for k in sums}, [a + b for a, b in zip(grads, g)]

                first_sums, first_grads = grads_of({k: v[0] for k, v in batch.items()})
                _, sums, grads = tf.while_loop(lambda i, *_: i < accum, body, (tf.constant(1), first_sums, first_grads))
            ctx = tf.distribute.get_replica_context()
            names = sorted(sums)
            reduced = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [sums[k] for k in names] + grads)
            sums, grads = dict(zip(names, reduced[: len(names)])), reduced[len(names):]
            weight = tf.maximum(sums.pop("weight"), 1.0)
            grads = [_divide(g, weight * self.loss_scale, objective.lazy) for g in grads]
            norm = tf.linalg.global_norm(grads)
            finite = tf.math.is_finite(norm)
            grads, _ = tf.clip_by_global_norm(grads, cfg.grad_clip, use_norm=norm)
            grads = [tf.cast(g, v.dtype) for g, v in zip(grads, variables)]

            def apply():
                self.optimizer.apply_gradients(zip(grads, variables))
                return tf.constant(True)

            if fp16:  # on overflow skip the update (the scale is halved in train_step)
                tf.cond(finite, apply, lambda: tf.constant(False))
            else:
                apply()
            return {k: v / weight for k, v in sums.items()}, norm, finite

        @tf.function
        def train_step(iterator):
            means, norm, finite = self.strategy.run(replica_step, args=(next(iterator),))
            means = {k: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in means.items()}
            norm = self.strategy.reduce(tf.distribute.ReduceOp.MEAN, norm, axis=None)
            finite = self.strategy.experimental_local_results(finite)[0]
            if fp16:
                self.good_steps.assign(tf.where(finite, self.good_steps + 1, 0))
                new_scale = tf.where(finite, self.loss_scale, self.loss_scale / 2)
                grow = self.good_steps >= 2000
                self.loss_scale.assign(tf.where(grow, new_scale * 2, new_scale))
                self.good_steps.assign(tf.where(grow, tf.zeros_like(self.good_steps), self.good_steps))
            self.step.assign_add(1)
            return means, norm

        return train_step

    def _make_eval_step(self):
        @tf.function
        def eval_step(batch):
            sums = self.strategy.run(lambda b: self.objective.sums(self.model, b, training=False), args=(batch,))
            return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in sums.items()}

        return eval_step

    # -- data -------------------------------------------------------------

    def _train_iterator(self, start_step: int):
        micro, accum = self.micro_batch, self.accum

        def dataset_fn(ctx):
            ds = self._train_dataset_fn(ctx, micro).batch(accum, drop_remainder=True)
            return ds.skip(start_step).prefetch(2)

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def _check_eval_data(self) -> None:
        """Builds the held-out pipeline once now: a held-out split that is empty (a small or duplicated data
        set) fails before the first step, not at the first evaluation after minutes of training."""
        if self._eval_dataset_fn is not None:
            micro = self.micro_batch
            self.strategy.distribute_datasets_from_function(lambda ctx: self._eval_dataset_fn(ctx, micro).take(1))

    def evaluate(self, batches: int | None = None) -> dict:
        """Held-out loss (and perplexity, and the objective's metrics) over up to `batches` batches."""
        if self._eval_dataset_fn is None:
            return {}
        batches = batches or self.cfg.eval_batches
        micro = self.micro_batch

        def dataset_fn(ctx):
            ds = self._eval_dataset_fn(ctx, micro)
            # Workers must run the same number of collective steps.
            return (ds.repeat() if ctx.num_input_pipelines > 1 else ds).take(batches)

        totals: dict[str, float] = {}
        for batch in self.strategy.distribute_datasets_from_function(dataset_fn):
            for k, v in self._eval_step(batch).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        weight = totals.pop("weight", 0.0)
        unit = self.objective.unit
        if weight == 0:
            raise TrainingError(f"the validation data yielded no {unit}")
        results = {k: v / weight for k, v in totals.items()}
        if self.objective.perplexity:
            results["perplexity"] = math.exp(min(results["loss"], 50.0))
        results[unit] = weight
        return results

    # -- checkpoints ----------------------------------------------------------

    def restore(self, resume: bool, override: bool = False) -> int:
        """Restores the latest checkpoint when `resume`; returns the step to start from.

        Refuses a checkpoint of another model shape, and (unless `override`)
        one recorded with other values of `RESUME_FLAGS`.
        """
        self._resume_changes = {}
        # Other workers resume from the chief's checkpoints (their own are throwaway copies).
        latest = (self.manager.latest_checkpoint if self.chief
                  else tf.train.latest_checkpoint(os.path.join(self.out_dir, "checkpoints")))
        if latest and not resume:
            raise TrainingError(
                f"{self.out_dir} already holds checkpoints; pass --resume to continue it or choose another --out"
            )
        if latest:
            record = self.run.read_record()
            saved = record.get("model_config")
            shape = {k: v for k, v in (saved or {}).items() if k not in OVERRIDABLE_MODEL}
            mine = {k: v for k, v in self.config.to_dict().items() if k not in OVERRIDABLE_MODEL}
            if saved and shape != mine:
                raise TrainingError(
                    f"checkpoint in {self.ckpt_dir} is for another model shape ({_diff(shape, mine)}); "
                    "use a new --out or the same preset/flags"
                )
            self._resume_changes = self._check_resume_flags(record, override)
            try:
                self.checkpoint.restore(latest).assert_existing_objects_matched()
            except (ValueError, AssertionError, tf.errors.OpError) as e:
                raise TrainingError(f"cannot restore checkpoint {latest}: {e}") from e
            log.info("Resumed from %s at step %d", latest, int(self.step.numpy()))
        return int(self.step.numpy())

    def _check_resume_flags(self, record: dict, override: bool) -> dict:
        """{flag: [recorded, given]} of the result-changing flags this run changes; raises without `override`."""
        model = record.get("model_config") or {}
        before = {**record.get("train_config", {}), **{k: record[k] for k in RESUME_METADATA if k in record},
                  **{k: model[k] for k in OVERRIDABLE_MODEL if k in model}}
        now = {**dataclasses.asdict(self.cfg), **self.metadata, **{k: getattr(self.config, k) for k in OVERRIDABLE_MODEL}}
        keys = RESUME_FLAGS + RESUME_METADATA + OVERRIDABLE_MODEL
        check_run_job(self.out_dir, self.metadata.get("job"), record)
        changes = {k: [before[k], now.get(k)] for k in keys if k in before and before[k] != now.get(k)}
        if changes and not override:
            flag = lambda k: k if k == "job" else "--" + k.replace("_", "-")  # noqa: E731
            raise ResumeMismatch(
                f"{self.out_dir} was started with " + ", ".join(f"{flag(k)} {v[0]}" for k, v in changes.items())
                + "; this command gives " + ", ".join(f"{flag(k)} {v[1]}" for k, v in changes.items())
                + ". Re-run with the recorded values, or add --override to continue with the new ones "
                "(the change is recorded in run.json)"
            )
        if changes:
            log.warning("Resuming with changed settings (--override): %s",
                        ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items()))
        return changes

    def save_checkpoint(self) -> None:
        # Every worker saves (a collective under MultiWorkerMirroredStrategy); only the chief's dir is kept.
        self.manager.save(checkpoint_number=int(self.step.numpy()))

    def save_model_dir(self, extra: dict | None = None) -> None:
        if self.chief:
            self.objective.save(self.run.model_dir, self.model, self.config, self.tokenizer,
                                {**self.metadata, "step": int(self.step.numpy()), **(extra or {})})

    # -- the loop ---------------------------------------------------------

    def _on_signal(self, signum, frame):
        log.warning("Received signal %d: saving a checkpoint after this step", signum)
        self._stop_signal = signum

    def train(self, resume: bool = True, progress: bool = True, override: bool = False) -> dict:
        """Runs until `cfg.steps`; returns final metrics. Re-running resumes; a finished run returns its record.

        Args:
            resume: continue from the latest checkpoint (else refuse a directory that has one).
            progress: draw a progress bar (on the chief).
            override: resume even when result-changing flags differ from the recorded ones.
        """
        with self.run.lock() if self.chief else contextlib.nullcontext():
            return self._train(resume, progress, override)

    def _train(self, resume: bool, progress: bool, override: bool) -> dict:
        cfg = self.cfg
        start = self.restore(resume, override)
        starts = gather(self.strategy, start)
        if len(set(starts)) > 1:
            raise TrainingError(
                f"the workers resumed at different steps ({[int(s) for s in starts]}): every worker must read "
                f"the chief's --out ({self.out_dir}), e.g. on a shared file system"
            )
        if start >= cfg.steps:
            recorded = self.run.final_metrics(start)
            if self.chief and self.run.model_metadata().get("step") != start:
                self.save_model_dir(recorded)  # killed between the last checkpoint and the model directory
            log.info("%s is complete at step %d (of %d); nothing to do", self.out_dir, start, cfg.steps)
            return {"step": start, **recorded, "complete": True}
        self._check_eval_data()
        if self.chief:
            previous = self.run.read_record()
            record = {
                "model_config": self.config.to_dict(), "train_config": dataclasses.asdict(cfg),
                "objective": self.objective.name, "strategy": type(self.strategy).__name__,
                "replicas": self.replicas, **self.metadata,
            }
            overrides = previous.get("overrides", [])
            if self._resume_changes:
                overrides = overrides + [{"step": start, "changes": self._resume_changes}]
            record.update({"overrides": overrides} if overrides else {})
            record.update({"final": previous["final"]} if "final" in previous else {})
            self.run.write_record(record)
        writer = tf.summary.create_file_writer(os.path.join(self.work_dir, "logs"))
        with writer.as_default(step=start):
            tf.summary.text("config", "```\n" + json.dumps(
                {"model": self.config.to_dict(), "train": dataclasses.asdict(cfg)}, indent=2) + "\n```")
        self._meter = _Throughput(*self.objective.throughput(self.config, cfg), cfg.precision)

        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        metrics: dict = {"step": start}
        bar = None
        try:
            iterator = self._train_iterator(start)
            if progress and self.chief:
                from tqdm.auto import tqdm

                bar = tqdm(total=cfg.steps, initial=start, unit="step", dynamic_ncols=True, mininterval=1.0)
            step = start
            while step < cfg.steps:
                profiling = cfg.profile_steps and self.chief
                if profiling and step == cfg.profile_steps[0]:
                    tf.profiler.experimental.start(os.path.join(self.out_dir, "logs"))
                means, norm = self._train_step(iterator)
                means, norm = {k: float(v) for k, v in means.items()}, float(norm)
                step += 1
                if profiling and step == cfg.profile_steps[1]:
                    tf.profiler.experimental.stop()
                if not math.isfinite(means["loss"]):
                    raise TrainingError(
                        f"loss is {means['loss']} at step {step}; the last good checkpoint is kept in {self.ckpt_dir}. "
                        "Lower --lr, use --precision fp32, or check the data"
                    )
                metrics.update(step=step, grad_norm=norm, **means)
                self._meter.tick()
                if self._stop_signal is not None:  # save first: a SIGTERM grace period is short
                    self.save_checkpoint()
                    self.save_model_dir()
                    writer.flush()
                    raise KeyboardInterrupt(f"stopped by signal {self._stop_signal} at step {step}")
                if step % cfg.log_every == 0 or step == cfg.steps:
                    metrics.update(self._log(writer, step, means, norm, console=bar is None))
                if step % cfg.save_every == 0 and step < cfg.steps:
                    self.save_checkpoint()
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    metrics.update(self._evaluate_and_log(writer, step))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(_postfix(metrics), refresh=False)
            final = figures(metrics)
            if self.chief:
                self.run.record_final(step, final)
            self.save_checkpoint()
            self.save_model_dir(final)
            barrier(self.strategy)  # workers leave together, after the chief's last write
        finally:
            if bar is not None:
                bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            writer.flush()
        return metrics

    def _log(self, writer, step: int, means: dict, norm: float, console: bool) -> dict:
        rate, mfu = self._meter.window()
        lr = float(self.optimizer.learning_rate)
        speed = {f"{self.objective.unit}_per_sec": rate, **({"mfu": mfu} if mfu is not None else {})}
        with writer.as_default(step=step):
            for name, value in {**means, "lr": lr, "grad_norm": norm, **speed}.items():
                tf.summary.scalar(f"train/{name}", value)
        if console and self.chief:
            log.info("step %d/%d: loss %.4f, lr %.2e, grad norm %.3f, %.0f %s/s%s", step, self.cfg.steps, means["loss"],
                     lr, norm, rate, self.objective.unit, f", MFU {100 * mfu:.1f}%" if mfu is not None else "")
        return {**speed, "lr": lr}

    def _evaluate_and_log(self, writer, step: int) -> dict:
        results = self.evaluate()
        out = {}
        with writer.as_default(step=step):
            for name, value in results.items():
                if name != self.objective.unit:
                    tf.summary.scalar(f"val/{name}", value)
                    out[f"val_{name}"] = value
            if self.sample_prompts and self.chief:
                for i, text in enumerate(self.samples()):
                    tf.summary.text(f"samples/{i}", text)
        if results and self.chief:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in results.items() if k not in ("loss", self.objective.unit))
            log.info("step %d: held-out loss %.4f (%s)", step, results["loss"], shown)
        return out

    def samples(self, max_new_tokens: int = 48) -> list[str]:
        """Sample continuations of `sample_prompts` with the current weights (markdown-ready)."""
        from tfchat.inference import generation

        out = []
        for prompt in self.sample_prompts:
            tokens, lengths = generation.generate(
                self.model, tf.ragged.constant([prompt], dtype=tf.int32),
                max_new_tokens=min(max_new_tokens, self.config.block_size // 2),
                temperature=0.8, top_k=40, seed=self.cfg.seed, stop_ids=self.tokenizer.special.stop_ids,
            )
            new = tokens[0, : int(lengths[0])].numpy().tolist()
            out.append(f"**{self.tokenizer.decode(prompt)}** {self.tokenizer.decode(new)}")
        return out


class _Throughput:
    """Units (tokens, examples) per second and MFU (None without a FLOP count) over the steps since `window()`."""

    def __init__(self, units_per_step: int, step_flops: float | None, precision: str):
        self.units_per_step, self.step_flops = units_per_step, step_flops
        dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")
        self.peak = measure_peak_flops(dtype, seconds=0.5) if step_flops else None
        self.start, self.steps = time.perf_counter(), 0

    def tick(self) -> None:
        self.steps += 1

    def window(self) -> tuple[float, float | None]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.steps * self.units_per_step / elapsed
        mfu = self.steps * self.step_flops / elapsed / self.peak if self.step_flops else None
        self.start, self.steps = time.perf_counter(), 0
        return rate, mfu


def _postfix(metrics: dict) -> dict:
    shown = {"loss": f"{metrics['loss']:.3f}"}
    if "val_loss" in metrics:
        shown["val"] = f"{metrics['val_loss']:.3f}"
    for key, short in (("tokens_per_sec", "tok_s"), ("examples_per_sec", "ex_s")):
        if key in metrics:
            shown[short] = f"{metrics[key]:,.0f}"
    return shown


def _diff(a: dict, b: dict) -> str:
    return ", ".join(f"{k}: {a.get(k)} vs {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def _divide(grad, denominator, sparse: bool):
    """grad / denominator; with `sparse`, an embedding's IndexedSlices stays sparse, repeated rows summed (so the
    global norm is the dense gradient's), for the lazy update. Otherwise dense, as the optimizer always saw it."""
    if sparse and isinstance(grad, tf.IndexedSlices):
        grad = sum_repeated_rows(grad)
        return tf.IndexedSlices(grad.values / tf.cast(denominator, grad.values.dtype), grad.indices, grad.dense_shape)
    return tf.convert_to_tensor(grad) / denominator
