"""What the training commands share: their flags, the `TrainConfig` they build, running a job, the summary.

Importing this module does not import TensorFlow, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import sys
import time
from typing import Callable

from tfchat import cli

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "muon")  # training.optimizer's, without importing TensorFlow for --help
SCHEDULES = ("cosine", "wsd")
STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")


def add_convert_script_flag(group) -> None:
    """`--convert-script`: Simplified/Traditional conversion of the data (none by default: text as written)."""
    from tfchat.text.chinese import SCRIPT_CONVERSIONS

    group.add_argument("--convert-script", choices=tuple(SCRIPT_CONVERSIONS), default=None,
                       help="convert Chinese text with OpenCC as it is read: " + "; ".join(
                           f"{k} = {v}" for k, v in SCRIPT_CONVERSIONS.items() if k in ("s2t", "t2s"))
                       + "; also Taiwan/Hong Kong standards (default: keep Simplified and Traditional as written)")


def _profile_steps(text: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two steps 'a,b', got {text!r}") from None
    if not 0 <= a < b:
        raise argparse.ArgumentTypeError(f"need 0 <= a < b, got {a},{b}")
    return a, b


def add_training_flags(p: argparse.ArgumentParser, defaults: dict, sequences: bool = True) -> None:
    """Optimisation, distribution and bookkeeping flags; `defaults` sets per-job values.
    `sequences=False` leaves out --seq-len (models that do not read token sequences)."""
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=cli.positive_int, default=defaults["steps"], help="optimizer steps in total")
    g.add_argument("--batch-size", type=cli.positive_int, default=defaults["batch_size"],
                   help="global batch in sequences per optimizer step")
    g.add_argument("--micro-batch-size", type=cli.positive_int, default=None,
                   help="sequences per replica per forward pass; smaller than batch-size/replicas means gradient accumulation")
    if sequences:
        g.add_argument("--seq-len", type=cli.positive_int, default=None,
                       help="tokens per sequence (default: the model's context)")
    g.add_argument("--lr", type=cli.positive_float, default=defaults["lr"], help="peak learning rate")
    g.add_argument("--min-lr-ratio", type=cli.non_negative_float, default=0.1, help="final lr as a fraction of --lr")
    g.add_argument("--warmup-steps", type=cli.non_negative_int, default=defaults["warmup_steps"], help="linear warmup steps")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.get("optimizer", "adamw"),
                   help="adamw, or muon for the hidden matrices (AdamW for embeddings, head and vectors)")
    g.add_argument("--schedule", choices=SCHEDULES, default=defaults.get("schedule", "cosine"),
                   help="learning-rate schedule after warmup: cosine decay, or wsd (stable, then linear decay)")
    g.add_argument("--cooldown", type=cli.probability, default=defaults.get("cooldown", 0.2),
                   help="wsd: the fraction of the steps spent decaying")
    g.add_argument("--weight-decay", type=cli.non_negative_float, default=0.1,
                   help="AdamW decay of matrices (weights of rank >= 2; never biases or norm scales)")
    g.add_argument("--grad-clip", type=cli.positive_float, default=1.0, help="global gradient-norm clip")
    g.add_argument("--dropout", type=cli.fraction, default=None, help="dropout rate (default: the model's)")
    g.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                   help="compute precision; auto = bf16 where the hardware has it (AVX512-BF16/AMX CPUs, TPUs, "
                        "Ampere+ GPUs), else fp32/fp16")
    g.add_argument("--xla", action="store_true", help="XLA-compile the forward/backward pass")
    g.add_argument("--seed", type=int, default=0, help="seed for initialisation and data order")
    g.add_argument("--strategy", choices=STRATEGIES, default="auto",
                   help="tf.distribute strategy; auto = TPU if found, multi-worker if TF_CONFIG lists several workers, "
                        "mirrored with several GPUs, else default")
    g = p.add_argument_group("bookkeeping")
    g.add_argument("--out", default=defaults["out"], help="run directory: model/, checkpoints/, logs/")
    g.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="continue from the run directory's latest checkpoint (the default)")
    g.add_argument("--no-resume", dest="resume", action="store_false",
                   help="refuse to touch a run directory that already has checkpoints")
    g.add_argument("--override", action="store_true",
                   help="resume although flags that change results (batch size, seq len, lr, schedule, precision, "
                        "seed, data...) differ from the ones in run.json; the change is recorded there")
    g.add_argument("--eval-every", type=cli.positive_int, default=defaults["eval_every"], help="held-out evaluation interval")
    g.add_argument("--eval-batches", type=cli.positive_int, default=defaults.get("eval_batches", 20),
                   help="batches per evaluation")
    g.add_argument("--save-every", type=cli.positive_int, default=defaults["save_every"], help="checkpoint interval")
    g.add_argument("--keep-checkpoints", type=cli.positive_int, default=3, help="checkpoints kept")
    g.add_argument("--log-every", type=cli.positive_int, default=10, help="TensorBoard scalar interval")
    g.add_argument("--profile-steps", type=_profile_steps, default=None, metavar="A,B",
                   help="write a TF profiler trace for steps A..B into logs/")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def add_content_filter_flags(p: argparse.ArgumentParser, what: str) -> None:
    """--content-filter DIR and --filter-threshold T: drop the training `what` a moderation classifier flags."""
    g = p.add_argument_group("content filter")
    g.add_argument("--content-filter", default=None, metavar="DIR",
                   help=f"drop the {what} this moderation classifier flags (a python -m training.classify run "
                        "directory or its export); counts go to the log and RUN/content_filter.json")
    g.add_argument("--filter-threshold", type=cli.probability, default=None,
                   help="flag at or above this 'flagged' score (default: the classifier's stored threshold)")


def check_content_filter_flags(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.filter_threshold is not None and args.content_filter is None:
        p.error("--filter-threshold needs --content-filter")


def train_config(args: argparse.Namespace, seq_len: int):
    """The `TrainConfig` of parsed flags (`--precision auto` resolved without starting the TF runtime)."""
    from training.hardware import resolve_precision
    from training.trainer import TrainConfig

    return TrainConfig(
        steps=args.steps, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size, seq_len=seq_len,
        lr=args.lr, min_lr_ratio=args.min_lr_ratio, warmup_steps=args.warmup_steps, optimizer=args.optimizer,
        schedule=args.schedule, cooldown=args.cooldown, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, precision=resolve_precision(args.precision), xla=args.xla, log_every=args.log_every,
        eval_every=args.eval_every, eval_batches=args.eval_batches, save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints, seed=args.seed, profile_steps=args.profile_steps,
    )


def job_options(args: argparse.Namespace, seq_len: int | None = None, **extra):
    """The `JobOptions` of the flags every training command has, plus a command's own (`extra`).

    A command that starts from a model (`--from`) trains at that model's block size
    unless `--seq-len` says otherwise; pretraining passes the length it chose.
    """
    from training.jobs import JobOptions, find_model_dir

    if seq_len is None:
        from tfchat.checkpoint.model_dir import load_config

        seq_len = args.seq_len or load_config(find_model_dir(args.init_from)).block_size
        extra.update(init_from=args.init_from, dropout=args.dropout)
    return JobOptions(out=args.out, data=args.data, train=train_config(args, seq_len), strategy=args.strategy,
                      resume=args.resume, override=args.override, progress=args.progress, **extra)


def run_job(job: Callable[[], dict], args: argparse.Namespace, next_commands: Callable[[str], list[str]],
            summary: Callable[[dict], str] | None = None) -> int:
    """Sets up logging and TensorFlow, runs `job`, prints its summary (plus `summary(metrics)`, a job's own
    figures) and the next commands; returns the exit code."""
    start = time.perf_counter()

    def body() -> int:
        cli.setup(args.verbose)
        from training.trainer import TrainingError  # noqa: F401  (a RuntimeError: reported as one line)

        metrics = job()
        print_summary(metrics, args.out, time.perf_counter() - start)
        if summary is not None:
            print(summary(metrics), file=sys.stderr)
        cli.print_next(f"tensorboard --logdir {os.path.join(args.out, 'logs')}", *next_commands(args.out))
        return 0

    code = cli.run(body)
    checkpoints = os.path.join(args.out, "checkpoints")
    if code == cli.EXIT_INTERRUPTED and os.path.isdir(checkpoints) and os.listdir(checkpoints):
        print(f"The checkpoint in {checkpoints} is saved: re-run the same command to resume.", file=sys.stderr)
    elif code == cli.EXIT_INTERRUPTED:
        print("Interrupted before the first checkpoint: nothing was saved to resume from.", file=sys.stderr)
    return code


def print_summary(metrics: dict, out: str, wall: float) -> None:
    nan = float("nan")

    def num(key, fmt):
        value = metrics.get(key, nan)
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

    figures = f"train loss {num('loss', '.3f')}, held-out loss {num('val_loss', '.3f')}"
    if "val_perplexity" in metrics or "val_loss" not in metrics:
        figures += f" (perplexity {num('val_perplexity', '.1f')})"
    if metrics.get("complete"):
        head = f"\nThe run in {out} is already complete at step {metrics.get('step')}: {figures}."
    else:
        rate = next(((k[: -len("_per_sec")], v) for k, v in metrics.items() if k.endswith("_per_sec")), ("tokens", 0))
        head = f"\nDone in {wall / 60:.1f} min: step {metrics.get('step')}, {figures}, {rate[1]:,.0f} {rate[0]}/s."
    print(head + f"\nModel directory: {os.path.join(out, 'model')}", file=sys.stderr)


def exit_process(code: int) -> None:
    """Ends a training command's process with `code`.

    With several workers in TF_CONFIG the process leaves at once (exit
    handlers run, TensorFlow's seconds-long teardown is skipped). Peers that
    leave at different times make TF's coordination service log errors (the
    chief reports a worker that left first as crashed, a worker alive after
    the chief logs failed heartbeats), so after a successful run every
    worker finishes its output, meets the others at a last barrier, and
    stops writing to stderr before it leaves.
    """
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
        workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    except (ValueError, AttributeError, TypeError):
        workers = 0
    if workers > 1 and "tensorflow" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        atexit._run_exitfuncs()
        if code == 0:
            from training.strategy import leave_together

            try:
                if leave_together():
                    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # all said: peers' departures go unreported
            except Exception:  # noqa: BLE001  (a peer that failed: leave anyway, with our own exit code)
                pass
        os._exit(code)
    sys.exit(code)
