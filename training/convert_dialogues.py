"""Converts a dialogue dataset to messages-JSONL, tfchat's fine-tuning format.

    python -m training.convert_dialogues --format oasst --input trees.jsonl.gz --out oasst.jsonl
    python -m training.convert_dialogues --format topical-chat --input valid_freq.json --out tc.jsonl
    python -m training.convert_dialogues --format cornell --input cornell_movie_dialogs_corpus/ --out movies.jsonl
    python -m training.convert_dialogues --format dolly --input tfds:databricks_dolly --out dolly.jsonl
    python -m training.convert_dialogues --format messages --input mine.jsonl --out clean.jsonl

Writes atomically (temp file, then rename; `.gz` output is compressed) and
prints the counts as JSON. Skipped records are logged with file and line.
The formats and their conversions are documented in `tfchat/dialogues.py`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from tfchat import dialogues


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.convert_dialogues",
        description="Convert a dialogue dataset to messages-JSONL.",
    )
    parser.add_argument("--format", required=True, choices=dialogues.FORMATS, help="input format")
    parser.add_argument(
        "--input", required=True,
        help="input file (cornell: the corpus directory; dolly: JSONL or tfds:databricks_dolly)",
    )
    parser.add_argument("--out", required=True, help="output messages-JSONL (.jsonl or .jsonl.gz)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    stats = dialogues.DialogueStats()
    try:
        n = dialogues.write_messages_jsonl(dialogues.read_conversations(args.format, args.input, stats), args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({
        "input": args.input, "format": args.format, "out": args.out, "read": stats.read,
        "written": n, "skipped": sum(stats.skipped.values()), "skipped_by_reason": dict(stats.skipped),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
