"""Converts a dialogue dataset to messages-JSONL, tfchat's fine-tuning format, or preference data to preference JSONL.

    python -m training.convert_dialogues --format oasst --input trees.jsonl.gz --out oasst.jsonl
    python -m training.convert_dialogues --format topical-chat --input valid_freq.json --out tc.jsonl
    python -m training.convert_dialogues --format cornell --input cornell_movie_dialogs_corpus/ --out movies.jsonl
    python -m training.convert_dialogues --format dolly --input tfds:databricks_dolly --out dolly.jsonl
    python -m training.convert_dialogues --format messages --input mine.jsonl --out clean.jsonl
    python -m training.convert_dialogues --format hh-rlhf --input harmless-base/train.jsonl.gz --out hh.jsonl
    python -m training.convert_dialogues --format oasst-pairs --input trees.jsonl.gz --out oasst-pairs.jsonl
    python -m training.convert_dialogues --format kdconv --input KdConv/data/film/train.json --out kdconv-film.jsonl

Writes atomically (temp file, then rename; `.gz` output is compressed) and
prints the counts as JSON. Skipped records are logged with file and line.
The formats and their conversions are documented in `tfchat/data/dialogues.py`;
the preference formats (`hh-rlhf`, `oasst-pairs`: the ranked sibling replies
of OpenAssistant trees, `preferences`: preference JSONL) in
`tfchat/data/preferences.py`. A malformed line of preference data is an
error naming its file and line.
"""

from __future__ import annotations

import json
import sys

from tfchat import cli
from tfchat.data import dialogues, preferences
from tfchat.data.io import ReadStats

PREFERENCE_FORMATS = ("hh-rlhf", "oasst-pairs", "preferences")


def parser():
    p = cli.parser("python -m training.convert_dialogues", __doc__)
    p.add_argument("--format", required=True, choices=dialogues.FORMATS + PREFERENCE_FORMATS,
                   help="input format; hh-rlhf, oasst-pairs and preferences give preference JSONL")
    p.add_argument("--input", required=True,
                   help="input file (cornell: the corpus directory; dolly: JSONL or tfds:databricks_dolly)")
    p.add_argument("--out", required=True, help="output messages-JSONL or preference JSONL (.jsonl or .jsonl.gz)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    cli.setup_logging(args.verbose)

    def run() -> int:
        stats = ReadStats()
        pairs = args.format in PREFERENCE_FORMATS
        if pairs:
            n = preferences.write_pairs(preferences.read_pairs(args.format, args.input, stats), args.out)
        else:
            n = dialogues.write_messages_jsonl(dialogues.read_conversations(args.format, args.input, stats), args.out)
        print(json.dumps({
            "input": args.input, "format": args.format, "out": args.out, "read": stats.read,
            "written": n, "skipped": sum(stats.skipped.values()), "skipped_by_reason": dict(stats.skipped),
        }))
        cli.print_next(f"python -m training.align --data {args.out}" if pairs
                       else f"python -m training.finetune --data {args.out}")
        return 0

    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
