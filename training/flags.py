"""Command-line flags shared by `training.pretrain` and `training.finetune`."""

from __future__ import annotations

import argparse
import logging

from training.loop import PRECISIONS, TrainConfig
from training.strategy import STRATEGIES


def _profile_steps(text: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two steps 'a,b', got {text!r}") from None
    if not 0 <= a < b:
        raise argparse.ArgumentTypeError(f"need 0 <= a < b, got {a},{b}")
    return a, b


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def add_training_flags(p: argparse.ArgumentParser, defaults: dict) -> None:
    """Optimisation, distribution and bookkeeping flags; `defaults` sets per-job values."""
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=_positive(int), default=defaults["steps"], help="optimizer steps in total (default %(default)s)")
    g.add_argument("--batch-size", type=_positive(int), default=defaults["batch_size"],
                   help="global batch in sequences per optimizer step (default %(default)s)")
    g.add_argument("--micro-batch-size", type=_positive(int), default=None,
                   help="sequences per replica per forward pass; smaller than batch-size/replicas means gradient accumulation")
    g.add_argument("--seq-len", type=_positive(int), default=None, help="tokens per sequence (default: the model's context)")
    g.add_argument("--lr", type=_positive(float), default=defaults["lr"], help="peak learning rate (default %(default)s)")
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr as a fraction of --lr (default %(default)s)")
    g.add_argument("--warmup-steps", type=int, default=defaults["warmup_steps"], help="linear warmup steps (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decay, not applied to norms, biases, embeddings (default %(default)s)")
    g.add_argument("--grad-clip", type=_positive(float), default=1.0, help="global gradient-norm clip (default %(default)s)")
    g.add_argument("--dropout", type=float, default=None, help="dropout rate (default: the model's)")
    g.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                   help="compute precision; auto = bf16 where the hardware has it (AVX512-BF16/AMX CPUs, TPUs, Ampere+ GPUs), else fp32/fp16")
    g.add_argument("--xla", action="store_true", help="XLA-compile the forward/backward pass")
    g.add_argument("--seed", type=int, default=0, help="seed for initialisation and data order (default %(default)s)")
    g.add_argument("--strategy", choices=STRATEGIES, default="auto",
                   help="tf.distribute strategy; auto = TPU if found, multi-worker if TF_CONFIG lists several workers, "
                        "mirrored with several GPUs, else default")
    g = p.add_argument_group("bookkeeping")
    g.add_argument("--out", default=defaults["out"], help="run directory: model/, checkpoints/, logs/ (default %(default)s)")
    g.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="continue from the run directory's latest checkpoint (the default)")
    g.add_argument("--no-resume", dest="resume", action="store_false",
                   help="refuse to touch a run directory that already has checkpoints")
    g.add_argument("--eval-every", type=_positive(int), default=defaults["eval_every"], help="held-out evaluation interval (default %(default)s)")
    g.add_argument("--eval-batches", type=_positive(int), default=20, help="batches per evaluation (default %(default)s)")
    g.add_argument("--save-every", type=_positive(int), default=defaults["save_every"], help="checkpoint interval (default %(default)s)")
    g.add_argument("--keep-checkpoints", type=_positive(int), default=3, help="checkpoints kept (default %(default)s)")
    g.add_argument("--log-every", type=_positive(int), default=10, help="TensorBoard scalar interval (default %(default)s)")
    g.add_argument("--profile-steps", type=_profile_steps, default=None, metavar="A,B",
                   help="write a TF profiler trace for steps A..B into logs/")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def train_config(args: argparse.Namespace, seq_len: int, precision: str) -> TrainConfig:
    return TrainConfig(
        steps=args.steps, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size, seq_len=seq_len,
        lr=args.lr, min_lr_ratio=args.min_lr_ratio, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, precision=precision, xla=args.xla, log_every=args.log_every,
        eval_every=args.eval_every, eval_batches=args.eval_batches, save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints, seed=args.seed, profile_steps=args.profile_steps,
    )


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname).1s%(asctime)s %(filename)s:%(lineno)d] %(message)s",
        datefmt="%m%d %H:%M:%S",
    )
