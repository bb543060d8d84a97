"""Build the knowledge base: text sources split into titled passages, indexed with BM25 (bm25s).

    python -m training.index                                    # bundled Wikipedia sample + Topical-Chat leads
    python -m training.index --data wiki/text --data notes/*.txt --out runs/kb
    python -m training.index --search "who wrote Animal Farm?" --out runs/index   # query a built index

`--data` (repeatable) takes every source `training.pretrain --data` reads
(the bundled `wikipedia-sample`, dumps, WikiExtractor output, `.txt`,
`.jsonl`) and `topical-chat-wiki` (the bundled Wikipedia leads of the
entities Topical-Chat talks about). Documents are split into passages of
at most `--max-words` words (`tfchat/retrieval/passages.py`); the index is
written atomically to OUT/index/ (`tfchat/retrieval/index.py`). Prints a
JSON summary; the server (`python -m serving.server --index OUT`) and the
terminal chat use it through the dialogue manager.
"""

from __future__ import annotations

import json
import os
import sys
import time

from tfchat import cli

DEFAULT_OUT = "runs/index"


def parser():
    p = cli.parser("python -m training.index", __doc__)
    p.add_argument("--data", action="append", default=None,
                   help="text source to index (repeat to combine); default: wikipedia-sample and topical-chat-wiki")
    p.add_argument("--out", default=DEFAULT_OUT, help="run directory; the index goes to OUT/index/")
    p.add_argument("--max-words", type=cli.positive_int, default=100, help="the longest passage, in words")
    p.add_argument("--min-words", type=cli.non_negative_int, default=8, help="shorter passages are dropped")
    p.add_argument("--search", metavar="QUERY", default=None,
                   help="instead of building: print the best passages of an existing index for QUERY")
    p.add_argument("-k", type=cli.positive_int, default=5, help="with --search: passages to print")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    cli.setup_logging(args.verbose)

    def body() -> int:
        from tfchat.retrieval.index import KnowledgeIndex

        if args.search is not None:
            index = KnowledgeIndex.load(args.out)
            print(json.dumps([hit.to_json() for hit in index.search(args.search, args.k)], indent=2,
                             ensure_ascii=False))
            return 0
        if os.path.exists(args.out) and not os.path.isdir(args.out):  # refuse before the (long) build
            raise cli.UsageError(f"--out {args.out} is a file; give a directory for the index")
        start = time.perf_counter()
        index = build_index(args.data, args.out, args.max_words, args.min_words)
        print(json.dumps({"out": args.out, **index.info, "seconds": round(time.perf_counter() - start, 1)}, indent=2))
        cli.print_next(f'python -m training.index --out {args.out} --search "who wrote Animal Farm?"',
                       f"python -m serving.server --model exports/tfchat --index {args.out} --intent runs/intent")
        return 0

    return cli.run(body)


def build_index(data: list[str] | None, out: str, max_words: int = 100, min_words: int = 8):
    """Reads the sources, builds the index and saves it in `out`; returns the `KnowledgeIndex`."""
    import collections

    from tfchat.data.io import ReadStats
    from tfchat.retrieval.index import KnowledgeIndex
    from tfchat.retrieval.passages import DEFAULT_SOURCES, read_passages

    sources = list(data or DEFAULT_SOURCES)
    stats = ReadStats()
    passages = list(read_passages(sources, max_words, min_words, stats))
    by_source = collections.Counter(p.source for p in passages)
    index = KnowledgeIndex.build(passages, sources, max_words=max_words, min_words=min_words,
                                 by_source=dict(by_source), documents=stats.read)
    index.save(out)
    return index


if __name__ == "__main__":
    sys.exit(main())
