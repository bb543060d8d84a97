"""Pretrain a GPT on Wikipedia (by default the bundled sample).

    python -m training.pretrain                       # tiny preset, bundled sample, ~10 min on 2 CPU cores
    python -m training.pretrain --preset small --data tfds:wikipedia/20230601.en --steps 20000
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import sys  # noqa: E402

from tfchat.config import PRESETS, GPTConfig  # noqa: E402
from training import cli, flags  # noqa: E402

DEFAULTS = dict(steps=1500, batch_size=16, lr=2e-3, warmup_steps=100, eval_every=250, save_every=250, out="runs/pretrain")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--preset", choices=list(PRESETS), default="tiny", help="model shape (default %(default)s)")
    g.add_argument("--data", default="wikipedia-sample",
                   help="text source: wikipedia-sample (bundled), tfds:wikipedia/20230601.en, tfds:wiki40b/en, "
                        "a dump *.xml.bz2, a .txt/.jsonl file or a glob of them (default %(default)s)")
    g.add_argument("--tokenizer", default=None, help="reuse this tokenizer (a tokenizer or model directory) instead of training one")
    g.add_argument("--vocab-size", type=flags._positive(int), default=None,
                   help="train a new SentencePiece tokenizer of this size (default: the preset's); the default for a new run")
    flags.add_training_flags(p, DEFAULTS)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    flags.setup_logging(args.verbose)
    if args.tokenizer and args.vocab_size:
        parser().error("--tokenizer and --vocab-size exclude each other: reuse a tokenizer or train a new one")
    from training.jobs import JobOptions, pretrain, resolve_precision

    def job():
        seq_len = args.seq_len or GPTConfig.from_preset(args.preset).block_size
        opts = JobOptions(
            out=args.out, data=args.data, train=flags.train_config(args, seq_len, resolve_precision(args.precision)),
            strategy=args.strategy, resume=args.resume, progress=args.progress, preset=args.preset,
            tokenizer=args.tokenizer, vocab_size=args.vocab_size, dropout=args.dropout,
        )
        return pretrain(opts)

    return cli.run(job, args.out, "pretrain")


if __name__ == "__main__":
    sys.exit(main())
