"""Evaluate a model directory: held-out loss, perplexity and bits per byte; chat replies; minimal pairs.

    python -m training.evaluate --model runs/pretrain --data wikipedia-sample
    python -m training.evaluate --model runs/chat --data dialogues-sample --json --samples-out replies.jsonl
    python -m training.evaluate --model runs/pretrain --data my_notes.txt --split all --blimp 'blimp/*.jsonl' \\
        --logdir runs/pretrain/logs/eval
    python -m training.evaluate --model runs/aligned --reference runs/chat --preferences preferences-sample --json
    python -m training.evaluate --model runs/reward --preferences hh-rlhf-sample --json

Metrics and their definitions: `tfchat/eval/evaluate.py`. Output: a short
table, or with `--json` one compact JSON object on stdout (generated replies
go to `--samples-out` as JSONL, never inline); with `--logdir`, TensorBoard
scalars `eval/<key>` at the model's training step.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Sequence

from tfchat import cli

KINDS = ("auto", "text", "dialogue")
SPLITS = ("validation", "train", "all")
SHOWN_SAMPLES = 3


def parser():
    p = cli.parser("python -m training.evaluate", __doc__)
    p.add_argument("--model", required=True, help="model directory, or a training run directory holding model/")
    p.add_argument("--data", default=None,
                   help="text source (wikipedia-sample, tfds:NAME, a dump, .txt/.jsonl files) or dialogue source "
                        "(dialogues-sample, FORMAT:PATH, messages-JSONL, tfds:databricks_dolly)")
    p.add_argument("--kind", choices=KINDS, default="auto", help="text or dialogue source (auto: guess from --data)")
    p.add_argument("--split", choices=SPLITS, default="validation", help="which part of --data or --preferences")
    p.add_argument("--seq-len", type=cli.positive_int, default=None, help="tokens per window (default: the model's context)")
    p.add_argument("--batch-size", type=cli.positive_int, default=8, help="sequences per forward pass")
    p.add_argument("--max-batches", type=cli.positive_int, default=None, help="stop the loss after this many batches (default: all)")
    p.add_argument("--max-dialogues", type=cli.non_negative_int, default=100,
                   help="conversations to generate replies for, for BLEU/ROUGE-L; 0 = none")
    p.add_argument("--max-new-tokens", type=cli.positive_int, default=None,
                   help="longest generated reply (default: min(64, context / 2))")
    p.add_argument("--blimp", action="append", default=[], metavar="FILE.jsonl",
                   help="minimal pairs in BLiMP's JSONL format (sentence_good / sentence_bad); repeat or use a glob")
    g = p.add_argument_group("preference pairs")
    g.add_argument("--preferences", default=None, metavar="SOURCE",
                   help="preference pairs (preferences-sample, hh-rlhf-sample, oasst-pairs-sample, a preference "
                        "JSONL file, FORMAT:PATH): preference accuracy of --model (reward accuracy if it is a reward "
                        "model), beside the length baseline")
    g.add_argument("--reference", default=None, metavar="DIR",
                   help="judge --model's implicit reward relative to this model (DPO's reference, e.g. runs/chat)")
    g.add_argument("--reward-model", default=None, metavar="DIR", help="also the reward accuracy of this reward model")
    p.add_argument("--json", action="store_true", help="print one compact JSON object on stdout")
    p.add_argument("--samples-out", default=None, metavar="FILE.jsonl",
                   help="write every generated reply (prompt, reference, reply) here as JSONL")
    p.add_argument("--logdir", default=None, help="also write TensorBoard scalars eval/<metric> here")
    return p


def _jsonable(value):
    # JSON has no NaN/Infinity: a metric without data (e.g. no bytes) becomes null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _print_table(result: dict, samples: list) -> None:
    for key, value in result.items():
        if isinstance(value, dict):  # per file / per source, maybe nested once more
            _print_table({f"{key}/{name}": v for name, v in value.items()}, [])
        elif isinstance(value, float):
            print(f"{key:<30} {value:.4f}")
        else:
            print(f"{key:<30} {value}")
    for sample in samples[:SHOWN_SAMPLES]:
        print(f"\nuser:      {sample['prompt'][:200]!r}\nreference: {sample['reference'][:200]!r}\n"
              f"model:     {sample['reply'][:200]!r}")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if (args.reference or args.reward_model) and args.preferences is None:
        p.error("--reference and --reward-model need --preferences")
    if args.data is None and not args.blimp and args.preferences is None:
        p.error("give --data, --blimp, --preferences or several")

    def run() -> int:
        cli.setup(args.verbose)
        from tfchat.data.io import write_jsonl
        from tfchat.eval.evaluate import evaluate, write_summaries

        result = evaluate(
            args.model, args.data, kind=args.kind, split=args.split, seq_len=args.seq_len,
            batch_size=args.batch_size, max_batches=args.max_batches, max_dialogues=args.max_dialogues,
            max_new_tokens=args.max_new_tokens, blimp=args.blimp,
            preferences=args.preferences, reference=args.reference, reward_model=args.reward_model,
        )
        samples = result.pop("samples", [])
        if args.logdir:
            write_summaries(result, args.logdir)
        if args.samples_out:
            write_jsonl(samples, args.samples_out)
        if args.json:
            print(json.dumps(_jsonable(result), ensure_ascii=False))
        else:
            _print_table(result, samples)
            if samples and args.samples_out:
                print(f"\n{len(samples)} replies written to {args.samples_out}")
        return 0

    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
