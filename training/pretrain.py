"""Pretrain a GPT on Wikipedia (by default the bundled sample).

    python -m training.pretrain                       # tiny preset, bundled sample, ~10 min on 2 CPU cores
    python -m training.pretrain --preset small --data tfds:wikipedia/20230601.en --steps 20000
    python -m training.pretrain --preset small --data hf:wikimedia/wikipedia:20231101.en --steps 20000
"""

from __future__ import annotations

import sys

from tfchat import cli
from training.cli import add_training_flags, run_job, train_config

DEFAULTS = dict(steps=1500, batch_size=16, lr=2e-3, warmup_steps=100, eval_every=250, save_every=250, out="runs/pretrain")
PRESETS = ("tiny", "small", "gpt2", "gpt2-medium")  # tfchat.config.PRESETS, without importing it


def parser():
    p = cli.parser("python -m training.pretrain", __doc__)
    g = p.add_argument_group("model and data")
    g.add_argument("--preset", choices=PRESETS, default="tiny", help="model shape")
    g.add_argument("--data", default="wikipedia-sample",
                   help="text source: wikipedia-sample (bundled), tfds:wikipedia/20230601.en, tfds:wiki40b/en, "
                        "hf:NAME[:CONFIG][@SPLIT] (a Hugging Face dataset or save_to_disk directory; "
                        "pip install 'tfchat[hf]'), a dump *.xml.bz2, a .txt/.jsonl/.parquet file or a glob of them")
    g.add_argument("--text-column", default="text",
                   help="the column (Parquet, hf:), field (JSONL) or feature (tfds:) holding the text")
    g.add_argument("--tokenizer", default=None, help="reuse this tokenizer (a tokenizer or model directory) instead of training one")
    g.add_argument("--vocab-size", type=cli.positive_int, default=None,
                   help="train a new SentencePiece tokenizer of this size (default: the preset's); the default for a new run")
    add_training_flags(p, DEFAULTS)
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.tokenizer and args.vocab_size:
        p.error("--tokenizer and --vocab-size exclude each other: reuse a tokenizer or train a new one")

    def job() -> dict:
        from tfchat.config import GPTConfig
        from tfchat.data.tables import Columns
        from training.jobs import JobOptions, pretrain

        seq_len = args.seq_len or GPTConfig.from_preset(args.preset).block_size
        return pretrain(JobOptions(
            out=args.out, data=args.data, train=train_config(args, seq_len), strategy=args.strategy,
            resume=args.resume, progress=args.progress, preset=args.preset, tokenizer=args.tokenizer,
            vocab_size=args.vocab_size, dropout=args.dropout, columns=Columns(text=args.text_column),
        ))

    return run_job(job, args, lambda out: [f"python -m training.finetune --from {out}"])


if __name__ == "__main__":
    sys.exit(main())
