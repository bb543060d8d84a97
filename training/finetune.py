"""Fine-tune a pretrained model on dialogues into a chat model (supervised, assistant tokens only).

    python -m training.finetune                                   # runs/pretrain -> runs/chat on the bundled dialogues
    python -m training.finetune --from runs/gpt2 --data my_chats.jsonl --out runs/gpt2-chat
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import sys  # noqa: E402

from training import cli, flags  # noqa: E402

DEFAULTS = dict(steps=300, batch_size=16, lr=5e-4, warmup_steps=30, eval_every=100, save_every=100, out="runs/chat")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--from", dest="init_from", default="runs/pretrain",
                   help="model directory (or run directory) to start from, e.g. a pretraining run or an imported GPT-2 (default %(default)s)")
    g.add_argument("--data", default="dialogues-sample",
                   help="dialogues: dialogues-sample (bundled OpenAssistant + Topical-Chat), or messages-JSONL files "
                        "(see python -m training.convert_dialogues) (default %(default)s)")
    g.add_argument("--pack", action="store_true", help="pack several conversations per sequence instead of padding")
    flags.add_training_flags(p, DEFAULTS)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    flags.setup_logging(args.verbose)
    from tfchat.model_dir import load_config, resolve_model_dir
    from training.jobs import JobOptions, finetune, resolve_precision

    def job():
        seq_len = args.seq_len or load_config(resolve_model_dir(args.init_from)).block_size
        opts = JobOptions(
            out=args.out, data=args.data, train=flags.train_config(args, seq_len, resolve_precision(args.precision)),
            strategy=args.strategy, resume=args.resume, progress=args.progress, init_from=args.init_from,
            dropout=args.dropout, pack=args.pack,
        )
        return finetune(opts)

    return cli.run(job, args.out, "finetune")


if __name__ == "__main__":
    sys.exit(main())
