"""Evaluate a model directory: held-out loss, perplexity and bits per byte; chat replies; minimal pairs; classifiers.

    python -m training.evaluate --model runs/pretrain --data wikipedia-sample
    python -m training.evaluate --model runs/chat --data dialogues-sample --json --samples-out replies.jsonl
    python -m training.evaluate --model runs/pretrain --data my_notes.txt --split all --blimp 'blimp/*.jsonl' \\
        --logdir runs/pretrain/logs/eval
    python -m training.evaluate --model runs/aligned --reference runs/chat --preferences preferences-sample --json
    python -m training.evaluate --model runs/reward --preferences hh-rlhf-sample --json
    python -m training.evaluate --classifier runs/moderation --data moderation-requests --json
    python -m training.evaluate --model runs/grounded --knowledge-eval --index runs/index --intent runs/intent --json
    python -m training.evaluate --model runs/chat --control --json

Metrics and their definitions: `tfchat/eval/evaluate.py`. Output: a short
table, or with `--json` one compact JSON object on stdout (generated replies
go to `--samples-out` as JSONL, never inline); with `--logdir`, TensorBoard
scalars `eval/<key>` at the model's training step.

With `--classifier` (a `training.classify` run, or its export) and labelled
data (`tfchat/data/labelled.py`): per-label precision, recall, F1, ROC-AUC,
PR-AUC and the threshold used, and the flagged rate per data source
(`tfchat/eval/classification.py`). `--split auto` (the default for
classifiers) takes the held-out 5% of the data the classifier was trained
on, and all of any other data.

With `--knowledge-eval` (and `--model`): retrieval recall@k, knowledge F1
and assistant-token loss with and without retrieved knowledge on held-out
Topical-Chat, and the intent classifier's CLINC150 in-scope accuracy and
out-of-scope recall (`tfchat/eval/knowledge.py`); without `--index` /
`--intent` the default ones are built once and cached.

With `--control` (and `--model`, a chat model fine-tuned on tagged data):
how often a style and a topic classifier assign the requested tag to replies
generated under each tag, against untagged replies to the same held-out
prompts (`tfchat/eval/control.py`); without `--style-classifier` /
`--topic-classifier` the default ones (`training.classify --task style|topic`)
are trained once and cached.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Sequence

from tfchat import cli

KINDS = ("auto", "text", "dialogue")
SPLITS = ("validation", "train", "all", "auto")
SHOWN_SAMPLES = 3


def parser():
    p = cli.parser("python -m training.evaluate", __doc__)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="model directory, or a training run directory holding model/")
    which.add_argument("--classifier", help="classifier (python -m training.classify run directory, or its export); "
                                            "--data is then labelled data")
    p.add_argument("--data", default=None,
                   help="text source (wikipedia-sample, tfds:NAME, a dump, .txt/.jsonl files) or dialogue source "
                        "(dialogues-sample, FORMAT:PATH, messages-JSONL, tfds:databricks_dolly)")
    p.add_argument("--kind", choices=KINDS, default="auto", help="text or dialogue source (auto: guess from --data)")
    p.add_argument("--split", choices=SPLITS, default=None,
                   help="which part of --data or --preferences (default: validation; for --classifier, auto: the held-out part of "
                        "its training data, all of other data)")
    p.add_argument("--threshold", type=cli.probability, default=None,
                   help="--classifier: one threshold for every label instead of the stored ones")
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
    g = p.add_argument_group("knowledge and intents")
    g.add_argument("--knowledge-eval", action="store_true",
                   help="retrieval recall, grounded replies with/without knowledge and intent accuracy (needs --model)")
    g.add_argument("--index", default=None, help="knowledge index (training.index run; default: built and cached)")
    g.add_argument("--intent", default=None,
                   help="intent classifier (training.classify --task intent run; default: trained and cached)")
    g.add_argument("--knowledge-examples", type=cli.positive_int, default=200,
                   help="held-out grounded replies to score and generate")
    g.add_argument("--passages", type=cli.positive_int, default=2, help="retrieved passages per prompt")
    g = p.add_argument_group("control tags")
    g.add_argument("--control", action="store_true",
                   help="whether the model's topic and style tags steer its replies, by classifier agreement "
                        "(needs --model; --data: the dialogues whose held-out user turns are the prompts, default "
                        "chat-sample)")
    g.add_argument("--style-classifier", default=None,
                   help="style classifier (training.classify --task style run; default: trained and cached)")
    g.add_argument("--topic-classifier", default=None,
                   help="topic classifier (training.classify --task topic run; default: trained and cached)")
    g.add_argument("--control-prompts", type=cli.positive_int, default=200, help="held-out prompts per tag")
    g.add_argument("--guidance", type=cli.guidance, default=1.0,
                   help="classifier-free guidance scale of the tagged replies (1 = off; the server's and chat's "
                        "guidance setting)")
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
    if args.classifier:
        if args.data is None or args.blimp or args.preferences:
            p.error("--classifier takes --data (labelled data), not --blimp or --preferences")
        return cli.run(lambda: _evaluate_classifier(args))
    if args.knowledge_eval:
        if args.data or args.blimp or args.preferences:
            p.error("--knowledge-eval runs on bundled held-out data: no --data, --blimp or --preferences")
        return cli.run(lambda: _evaluate_knowledge(args))
    if args.index or args.intent:
        p.error("--index and --intent are for --knowledge-eval")
    if args.control:
        if args.blimp or args.preferences or args.kind != "auto":
            p.error("--control takes --data (dialogues), not --blimp, --preferences or --kind")
        return cli.run(lambda: _evaluate_control(args))
    if args.style_classifier or args.topic_classifier or args.guidance != 1:
        p.error("--style-classifier, --topic-classifier and --guidance are for --control")
    if args.data is None and not args.blimp and args.preferences is None:
        p.error("give --data, --blimp, --preferences or several")
    if args.split == "auto":
        p.error("--split auto is for --classifier")
    if args.threshold is not None:
        p.error("--threshold is for --classifier")

    def run() -> int:
        cli.setup(args.verbose)
        from tfchat.data.io import write_jsonl
        from tfchat.eval.evaluate import evaluate, write_summaries

        result = evaluate(
            args.model, args.data, kind=args.kind, split=args.split or "validation", seq_len=args.seq_len,
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


def default_knowledge_runs(index: str | None, intent: str | None) -> tuple[str, str]:
    """`index` and `intent`, or the default index and intent classifier, built once and kept under the cache
    directory (`$TFCHAT_CACHE_DIR/knowledge-eval`)."""
    import logging
    import os

    from tfchat.cache import default_cache_dir

    log = logging.getLogger("training.evaluate")
    cache = os.path.join(default_cache_dir(), "knowledge-eval")
    if index is None:
        from tfchat.retrieval.index import KnowledgeIndex
        from training.index import build_index

        index = os.path.join(cache, "index")
        try:
            KnowledgeIndex.load(index)
        except (FileNotFoundError, ValueError):
            log.info("building the default knowledge index in %s", index)
            build_index(None, index)
    return index, intent or cached_classifier("intent", os.path.join(cache, "intent"))


def cached_classifier(task: str, path: str) -> str:
    """`path`, holding the default classifier of `task` (`training.classify --task TASK`), trained there first
    unless an earlier run did."""
    import logging
    import os

    from training import classify

    if not os.path.isfile(os.path.join(path, "model", "tfchat.json")):
        logging.getLogger("training.evaluate").info("training the default %s classifier in %s", task, path)
        if classify.main(["--task", task, "--out", path, "--no-progress"]) != 0:
            raise RuntimeError(f"training the default {task} classifier in {path} failed")
    return path


def _evaluate_control(args) -> int:
    cli.setup(args.verbose)
    import os

    from tfchat.checkpoint.model_dir import load_model, resolve_model_dir
    from tfchat.data.io import write_jsonl
    from tfchat.cache import default_cache_dir
    from tfchat.eval.control import control_agreement, control_prompts, held_out_replies
    from tfchat.inference.classifier import TextClassifier

    loaded = load_model(resolve_model_dir(args.model))
    if loaded.tags is None:
        raise ValueError(f"{args.model} has no tag vocabulary: fine-tune it on tagged dialogues (python -m "
                         "training.finetune, whose default chat-sample tags Topical-Chat replies)")
    given = {"style": args.style_classifier, "topic": args.topic_classifier}
    cache = os.path.join(default_cache_dir(), "control-eval")  # the default classifiers, trained once
    classifiers = {name: TextClassifier.load(given[name] or cached_classifier(name, os.path.join(cache, name)))
                   for name in loaded.tags.tags if name in given}
    source = args.data or "chat-sample"
    prompts, shares = control_prompts(source, args.control_prompts)
    result = control_agreement(loaded, classifiers, prompts, shares, max_new_tokens=args.max_new_tokens or 32,
                               batch_size=args.batch_size, guidance=args.guidance,
                               references=held_out_replies(source))
    samples = result.pop("samples")
    if args.samples_out:
        write_jsonl(samples, args.samples_out)
    if args.json:
        print(json.dumps(_jsonable({"control": result}), ensure_ascii=False))
        return 0
    guided = f", tagged replies guided at scale {args.guidance:g}" if args.guidance != 1 else ""
    print(f"{result['prompts']} held-out prompts{guided}; agreement of the classifier with the requested tag")
    for name in (n for n in result if isinstance(result[n], dict)):
        r = result[name]
        print(f"\n{name:<24}{'tagged':>8}{'untagged':>10}{'share':>8}")
        for value, m in r["per_tag"].items():
            mark = "" if value in r["counted"] else "  (too little data: not in the mean)"
            print(f"{value:<24}{m['tagged']:>8.3f}{m['untagged']:>10.3f}{m.get('share', float('nan')):>8.3f}{mark}")
        print(f"{'mean':<24}{r['tagged']:>8.3f}{r['untagged']:>10.3f}   ({100 * (r['tagged'] - r['untagged']):+.1f} points)")
        if "reference" in r:  # the classifier on the people's own held-out replies: the ceiling it sets
            ref = r["reference"]
            print(f"{'real replies (held-out)':<24}{ref['tagged']:>8.3f}{ref['untagged']:>10.3f}   "
                  f"({100 * (ref['tagged'] - ref['untagged']):+.1f} points, {ref['replies']} replies)")
    return 0


def _evaluate_knowledge(args) -> int:
    cli.setup(args.verbose)
    from tfchat.data.io import write_jsonl
    from tfchat.eval.knowledge import knowledge_evaluation

    index, intent = default_knowledge_runs(args.index, args.intent)
    result = knowledge_evaluation(args.model, index, intent, examples=args.knowledge_examples,
                                  passages=args.passages, max_new_tokens=args.max_new_tokens or 32,
                                  batch_size=args.batch_size)
    samples = result.pop("samples", [])
    if args.samples_out:
        write_jsonl(samples, args.samples_out)
    if args.json:
        print(json.dumps(_jsonable(result), ensure_ascii=False))
        return 0
    print(f"retrieval recall@1/5/20: {result['recall_at_1']:.3f} / {result['recall_at_5']:.3f} / "
          f"{result['recall_at_20']:.3f} on {result['questions']} questions ({result['index_passages']} passages)\n"
          f"held-out Topical-Chat ({result['examples']} replies, {result['passages']} passages each; retrieved the "
          f"cited entity for {result['retrieval_hit_rate']:.1%}):\n"
          f"  assistant-token loss  with knowledge {result['loss_with_knowledge']:.4f}, without "
          f"{result['loss_without_knowledge']:.4f} (with the cited lead section: "
          f"{result['loss_with_gold_knowledge']:.4f})\n"
          f"  knowledge F1          with knowledge {result['knowledge_f1']:.4f}, without "
          f"{result['knowledge_f1_without']:.4f}\n"
          f"intents (CLINC150 test): in-scope accuracy {result['in_scope_accuracy']:.4f}, out-of-scope recall "
          f"{result['oos_recall']:.4f}")
    return 0


def _evaluate_classifier(args) -> int:
    cli.setup(args.verbose)
    from tfchat.eval.classification import evaluate_classifier

    result = evaluate_classifier(args.classifier, args.data, split=args.split or "auto", threshold=args.threshold)
    if args.json:
        print(json.dumps(_jsonable(result), ensure_ascii=False))
        return 0
    print(f"{result['examples']} examples ({result['split']}), accuracy {result['accuracy']:.4f}")
    print(f"{'label':<14}{'precision':>10}{'recall':>10}{'F1':>8}{'ROC-AUC':>9}{'PR-AUC':>8}{'threshold':>10}{'support':>9}")
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    for label, m in result["labels"].items():
        print(f"{label:<14}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>8.4f}{fmt(m['roc_auc'], '.4f'):>9}"
              f"{fmt(m['pr_auc'], '.4f'):>8}{fmt(m['threshold'], '.3f'):>10}{m['support']:>9}")
    if result.get("by_source"):
        print(f"\n{'source':<36}{'examples':>9}{'flagged':>9}{'recall':>8}{'FPR':>8}")
        for source, m in result["by_source"].items():
            if "predicted_rate" in m:
                print(f"{source:<36}{m['examples']:>9}{m['predicted_rate']:>9.3f}{fmt(m['recall'], '.3f'):>8}"
                      f"{fmt(m['false_positive_rate'], '.3f'):>8}")
            else:
                print(f"{source:<36}{m['examples']:>9}  accuracy {m['accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
