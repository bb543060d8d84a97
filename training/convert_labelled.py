"""Converts labelled datasets to labelled JSONL, the classifier's training format, or rebuilds a bundled set.

    python -m training.convert_labelled davidson:labeled_data.csv toxigen:toxigen.csv --out safety.jsonl.gz
    python -m training.convert_labelled benign:clinc150:data_full.json@train --out benign.jsonl
    python -m training.convert_labelled --bundle moderation-sample --shared ../shared/data --out tfchat/resources

Sources are `FORMAT:PATH`, `benign:SOURCE`, `counterfactual:SOURCE` or
labelled JSONL paths; the formats and their label mappings are documented in
`tfchat/data/labelled.py`.
Writes atomically (temp file, then rename; `.gz` compresses), drops exact
duplicates and prints the counts as JSON. `--bundle` rebuilds one of the
files tfchat ships from the public data under `--shared` (the recipes are
`BUNDLES` below).
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys

from tfchat import cli

# What each bundled file is made of ({shared}: the --shared directory; {resources}: tfchat/resources).
BUNDLES = {
    "moderation-sample": ("moderation-train.jsonl.gz", (
        "davidson:{shared}/safety/davidson-hate-offensive-labeled.csv",
        "toxigen:{shared}/safety/toxigen-prompt-sentences.csv",
        "convabuse:{shared}/safety/convabuse",
        "harmbench:{shared}/safety/harmbench/harmbench_behaviors_text_all.csv",
        "jailbreakbench:{shared}/safety/jailbreakbench/jbb_harmful_behaviors.csv",
        "simplesafetytests:{shared}/safety/simplesafetytests/simplesafetytests.csv",
        "benign:clinc150:{shared}/intent/clinc150-data-full.json@train,oos_train",
    )),
    "moderation-requests": ("moderation-requests.jsonl.gz", (
        "advbench:{shared}/safety/advbench-harmful-behaviors.csv",
        "benign:clinc150:{shared}/intent/clinc150-data-full.json@test,oos_test",
        "benign:topical-chat-questions:{shared}/dialogue/topical-chat-valid-rare.json",
        "benign:lines:{resources}/moderation-lookalikes.txt",
        "benign:lines:{resources}/moderation-lookalike-instructions.txt",
    )),
    "moderation-hatecheck": ("moderation-hatecheck.jsonl.gz", (
        "hatecheck:{shared}/safety/hatecheck/test_suite_cases.csv",
    )),
}
# Evaluation sets: whatever they share with the training set is dropped from them.
EVALUATION_BUNDLES = ("moderation-requests", "moderation-hatecheck")
_STOPWORDS = set("""that this with from into your their them they what which when where while about would could
should there these those have will been some someone something other people person using without how write
create provide develop give make explain steps step detailed guide tutorial instructions""".split())


def _normalized(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def harm_words(harmful_texts: list[str], min_count: int = 5) -> set[str]:
    """Content words (4+ letters, not instruction boilerplate) in at least `min_count` harmful texts."""
    counts = collections.Counter(w for t in harmful_texts for w in set(re.findall(r"[a-z]{4,}", t.lower())))
    return {w for w, n in counts.items() if n >= min_count and w not in _STOPWORDS}


def tag_shared_vocabulary(examples: list, words: set[str]) -> list:
    """Benign examples that contain one of `words` get `+harm-words` appended to their source."""
    import dataclasses

    out = []
    for e in examples:
        if not e.labels and words & set(re.findall(r"[a-z]{4,}", e.text.lower())):
            e = dataclasses.replace(e, source=e.source + "+harm-words")
        out.append(e)
    return out


def parser():
    p = cli.parser("python -m training.convert_labelled", __doc__)
    p.add_argument("sources", nargs="*",
                   help="FORMAT:PATH, benign:SOURCE, counterfactual:SOURCE or labelled JSONL files")
    p.add_argument("--out", required=True, help="output labelled JSONL (.jsonl or .jsonl.gz); with --bundle, a directory")
    p.add_argument("--bundle", choices=sorted(BUNDLES), default=None, help="rebuild this bundled file instead")
    p.add_argument("--shared", default="../shared/data", help="with --bundle: the public data directory")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if bool(args.sources) == bool(args.bundle):
        p.error("give sources or --bundle (one of them)")
    cli.setup_logging(args.verbose)

    def run() -> int:
        from tfchat.data import labelled
        from tfchat.data.io import ReadStats, resource_path

        sources, out = args.sources, args.out
        if args.bundle:
            name, recipe = BUNDLES[args.bundle]
            if not os.path.isdir(args.shared):
                raise cli.UsageError(f"--shared {args.shared}: no such directory")
            resources = os.path.dirname(resource_path("ATTRIBUTION.md"))
            sources = [s.format(shared=args.shared, resources=resources) for s in recipe]
            out = os.path.join(args.out, name)
        stats = ReadStats()
        examples = labelled.load_examples(sources, stats)
        if args.bundle in EVALUATION_BUNDLES:  # never trained on: drop what the training set holds too
            trained = {_normalized(e.text) for e in labelled.read_labelled_source("moderation-sample")}
            kept = [e for e in examples if _normalized(e.text) not in trained]
            stats.skipped["also in moderation-sample"] += len(examples) - len(kept)
            examples = kept
        if args.bundle == "moderation-requests":
            words = harm_words([e.text for e in examples if e.labels])
            examples = tag_shared_vocabulary(examples, words)
        n = labelled.write_labelled_jsonl(examples, out)
        labels = collections.Counter(label for e in examples for label in e.labels)
        by_source = collections.Counter(e.source for e in examples)
        print(json.dumps({
            "out": out, "read": stats.read, "written": n, "skipped": sum(stats.skipped.values()),
            "skipped_by_reason": dict(stats.skipped), "labels": dict(labels.most_common()),
            "unlabelled": sum(1 for e in examples if not e.labels), "by_source": dict(by_source.most_common()),
        }))
        cli.print_next(f"python -m training.classify --task moderation --data {out}")
        return 0

    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
