"""Train a text classifier: moderation (the content filter), or any labels in labelled JSONL.

    python -m training.classify --task moderation                       # bundled moderation data -> runs/moderation
    python -m training.classify --task moderation --data moderation-sample --data extra.jsonl --out runs/mod2
    python -m training.classify --task intent --out runs/intent             # CLINC150 + routing intents (bundled)
    python -m training.classify --task intent --kind gpt --from runs/pretrain --out runs/intent-gpt
    python -m training.classify --task intent --ensemble runs/intent --ensemble runs/intent-gpt --out runs/intent-ensemble
    python -m training.classify --task style --out runs/style             # Topical-Chat turns by style tag
    python -m training.classify --task single-label --data clinc150:data_full.json@train,val --out runs/intents

`--data` (repeatable): a bundled set (moderation-sample), labelled JSONL
(`{"text": ..., "labels": [...]}`), `FORMAT:PATH` for a public dataset,
`benign:SOURCE` for unlabelled text, or `counterfactual:SOURCE` for benign
requests in the frames of SOURCE's harmful ones (see
`tfchat/data/labelled.py` and `python -m training.convert_labelled`). 5% of
texts (by hash) are held out; when training ends, each label's threshold is
the one with the best F1 on them, stored with the model, and the held-out
metrics are printed. The run directory has TensorBoard logs and checkpoints:
re-running resumes.

`--kind gpt` fine-tunes the backbone of a tfchat model (`--from`) with a
classification head; `--ensemble` (repeatable, no training) writes a
classifier that averages the log-probabilities of classifiers trained on the
same task and data, with thresholds chosen again on their held-out split.
An ensemble is a classifier, so it can be a member (a nested one weighs its
members by half).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from tfchat import cli
from training.cli import add_training_flags, train_config

TASKS = ("moderation", "intent", "style", "topic", "multi-label", "single-label")  # tfchat.data.labelled.TASKS, without importing it
DEFAULTS = dict(steps=2500, batch_size=64, lr=5e-3, warmup_steps=100, eval_every=500, save_every=500,
                out=None)


def _ngram_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'lo,hi' such as 3,5 (or 0,0 for none), got {text!r}") from None
    if (lo, hi) != (0, 0) and not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"need 1 <= lo <= hi, or 0,0; got {text}")
    return lo, hi


def parser():
    p = cli.parser("python -m training.classify", __doc__)
    g = p.add_argument_group("task and data")
    g.add_argument("--task", choices=TASKS, default="moderation",
                   help="moderation: multi-label OpenAI-style categories plus 'flagged'; multi-label: any labels, "
                        "sigmoid each; intent: CLINC150's 150 intents, out-of-scope (oos) and the routing intents "
                        "chit_chat and knowledge_question, softmax with an out-of-scope threshold (bundled data); "
                        "style / topic: Topical-Chat turns by their style / topic tag (bundled; the classifiers of "
                        "training.evaluate --control); single-label: exactly one label per text, softmax")
    g.add_argument("--data", action="append", default=None,
                   help="labelled source (repeat to combine); default: moderation-sample for moderation, "
                        "intent-sample for intent (bundled)")
    g.add_argument("--balance", type=cli.unit_interval, default=0.5,
                   help="sample each data source with probability ~ size^(1 - balance): 0 = the data's own mix, "
                        "1 = every source equally; lifts small sources of rare examples (harmful requests)")
    g = p.add_argument_group("model")
    g.add_argument("--kind", choices=("ngrams", "gpt"), default="ngrams",
                   help="ngrams: fastText-style hashed word and character n-grams (the flags below); gpt: the "
                        "backbone of a tfchat model (--from) with a classification head")
    g.add_argument("--from", dest="init_from", default=None,
                   help="--kind gpt: the model directory (pretrain or chat run) whose backbone and tokenizer it "
                        "starts from")
    g.add_argument("--max-tokens", type=cli.positive_int, default=None,
                   help="--kind gpt: tokens of a text read (default: 64, or the model's context if shorter)")
    g.add_argument("--ensemble", action="append", default=None, metavar="DIR",
                   help="no training: average the log-probabilities of these classifiers (repeat; at least two, "
                        "trained on the same task and data) into --out")
    g.add_argument("--buckets", type=cli.positive_int, default=1 << 18, help="hashed feature ids")
    g.add_argument("--dim", type=cli.positive_int, default=16, help="embedding width")
    g.add_argument("--hidden", type=cli.non_negative_int, default=0, help="ReLU layer width; 0 = linear")
    g.add_argument("--word-ngrams", type=cli.positive_int, default=2, help="longest word n-gram")
    g.add_argument("--char-ngrams", type=_ngram_range, default=(3, 5), metavar="LO,HI",
                   help="character n-gram lengths of each word; 0,0 = none")
    add_training_flags(p, DEFAULTS, sequences=False)
    p.add_argument("--lazy-adam", action="store_true",
                   help="AdamW updates only the embedding rows a batch uses (LazyAdam): --task intent trains in 1.9 "
                        "instead of 8.2 min, at slightly different accuracy (README)")
    p.set_defaults(weight_decay=0.0)
    return p


# Settings that differ by task and kind (measured on CLINC150: a wider embedding, dropout and the data's own mix
# lift in-scope accuracy; a GPT backbone is fine-tuned for 8 epochs at a lower rate; README "Knowledge and intents").
KIND_DEFAULTS = {"gpt": dict(lr=1e-3, warmup_steps=50, weight_decay=0.01)}
TASK_DEFAULTS = {("intent", "ngrams"): dict(dim=128, dropout=0.2, balance=0.0, steps=4000),
                 ("intent", "gpt"): dict(balance=0.0, steps=1900)}


def main(argv=None) -> int:
    p = parser()
    known = p.parse_known_args(argv)[0]
    p.set_defaults(**KIND_DEFAULTS.get(known.kind, {}), **TASK_DEFAULTS.get((known.task, known.kind), {}))
    args = p.parse_args(argv)
    if args.ensemble:
        if len(args.ensemble) < 2:
            p.error("--ensemble needs at least two classifiers (repeat it)")
        if not args.out:
            p.error("--ensemble needs --out (the ensemble's run directory)")
        if args.data or args.init_from:
            p.error("--ensemble trains nothing: it reads the members' task and data (no --data, --kind or --from)")
    elif args.task not in ("moderation", "intent", "style", "topic") and not args.data:
        p.error(f"--task {args.task} needs --data (labelled JSONL or FORMAT:PATH)")
    if args.lazy_adam and args.optimizer != "adamw":
        p.error("--lazy-adam changes AdamW's update; it needs --optimizer adamw")
    if args.lazy_adam and args.kind != "ngrams":
        p.error("--lazy-adam is for the n-gram table (--kind ngrams)")
    if (args.kind == "gpt") != bool(args.init_from):
        p.error("--kind gpt starts from a model: give --from DIR (a pretrain or chat run)" if args.kind == "gpt"
                else "--from is for --kind gpt")
    args.out = args.out or f"runs/{args.task}"
    start = time.perf_counter()

    def body() -> int:
        cli.setup(args.verbose)
        from training.jobs import classify, ensemble

        if args.ensemble:
            metrics = ensemble(args.out, args.ensemble)
        else:
            metrics = classify(options(args))
        print_summary(metrics, args.out, time.perf_counter() - start)
        test = {"intent": "intent-test", "style": "style-sample", "topic": "topic-sample"}.get(metrics["task"],
                                                                                         "moderation-requests")
        cli.print_next(f"python -m training.evaluate --classifier {args.out} --data {test}",
                       f"python -m serving.export --classifier {args.out} --out exports/{os.path.basename(args.out)}",
                       *([] if args.ensemble else [f"tensorboard --logdir {os.path.join(args.out, 'logs')}"]))
        return 0

    return cli.run(body)


def options(args: argparse.Namespace):
    """The `ClassifyOptions` of parsed flags."""
    from training.jobs import ClassifyOptions

    if args.kind == "gpt":
        model = dict(kind="gpt", max_tokens=args.max_tokens, dropout=args.dropout or 0.0)
    else:
        model = dict(buckets=args.buckets, dim=args.dim, hidden=args.hidden, word_ngrams=args.word_ngrams,
                     char_ngrams=args.char_ngrams, dropout=args.dropout or 0.0)
    return ClassifyOptions(
        out=args.out, task=args.task, data=args.data or [], train=train_config(args, seq_len=1), model=model,
        init_from=args.init_from, balance=args.balance, lazy_adam=args.lazy_adam, strategy=args.strategy,
        resume=args.resume, override=args.override, progress=args.progress,
    )


def print_summary(metrics: dict, out: str, wall: float) -> None:
    held = metrics["held_out"]
    trained = (f"step {metrics.get('step')}, train loss {metrics.get('loss', float('nan')):.4f}, "
               if "step" in metrics else "")
    lines = [f"\nDone in {wall / 60:.1f} min: {trained}held-out accuracy {held['accuracy']:.3f} on "
             f"{held['examples']} examples."]
    for label, m in held["labels"].items():
        auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
        threshold = "" if m["threshold"] is None else f" at threshold {m['threshold']:.2f}"
        lines.append(f"  {label:<12} ROC-AUC {auc}, precision {m['precision']:.3f}, recall {m['recall']:.3f}, "
                     f"F1 {m['f1']:.3f}{threshold} ({m['support']} positive)")
    lines.append(f"Classifier: {os.path.join(out, 'model')}")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
