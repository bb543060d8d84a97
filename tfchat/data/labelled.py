"""Labelled text for classifiers: one JSONL format, converters from public datasets, the bundled sets.

The canonical format is labelled JSONL, one example per line:

    {"text": "you are all idiots", "labels": ["harassment", "flagged"]}   # multi-label; [] = no label
    {"text": "book me a flight to Oslo", "labels": ["book_flight"]}        # single-label: exactly one

Optional keys: `source` (where the example comes from: metrics break down by
it) and `split` (`train` or `validation`; default: `split_of(text)`, the
project's deterministic 5% held-out rule, so equal texts share a split).

Converters turn public datasets into examples (`FORMAT:PATH`):

| format | labels |
|---|---|
| `davidson` | tweets by majority `class`: hate speech -> `hate`, offensive -> `harassment`, neither -> none; `RT`, @handles and links removed, HTML entities decoded |
| `toxigen` | ToxiGen prompt sentences: `hate` or none |
| `convabuse` | the user turn; abusive when most annotators rate it -1 or below -> `harassment`, plus `hate` (sexist, racist, homophobic, transphobic, ableist by majority) and `sexual` (sexual harassment); PATH: the directory or one CSV |
| `hatecheck` | hateful -> `hate` (threat tests also `violence`); abuse of individuals or non-protected groups -> `harassment`; the other non-hateful tests (counter-speech, negation, reclaimed slurs, non-hateful profanity...) -> none |
| `simplesafetytests` | harm area -> `self-harm`, `violence`, `illicit`, `illicit`, `sexual` (child safety) |
| `harmbench` | standard behaviours by semantic category -> `illicit` (chemical/biological, cybercrime, illegal), `harassment`, none beyond `flagged` (harmful, misinformation); copyright and contextual rows skipped |
| `jailbreakbench` | category -> `harassment`, `illicit`, `violence`, `sexual`, none beyond `flagged` (disinformation); "Expert advice" skipped (unqualified advice is not a moderation category) |
| `advbench` | every behaviour: `flagged` only (no categories) |
| `cold` | COLD (Chinese): offensive -> `hate`, else none; PATH: the directory or one CSV |
| `clinc150` | CLINC150 utterances: their intent (`oos` out of scope); `PATH@train,oos_train` picks parts; `val`/`oos_val` rows are in the `validation` split, `train`/`oos_train` rows in `train` |
| `topical-chat-intents` | the routing intents of a chat assistant from Topical-Chat user turns, by their annotated knowledge source: `knowledge_question` (a question that drew on a Wikipedia fact section), `chit_chat` (a turn from personal knowledge only); at most `ROUTING_PER_INTENT` of each |
| `topical-chat-questions` | user turns of Topical-Chat that ask a question: no label |
| `topical-chat-style`, `topical-chat-topic` | every Topical-Chat turn, labelled with its `style` or its conversation's `topic` tag (`tfchat.data.dialogues`); split: its conversation's split in chat fine-tuning, so a classifier never trains on the conversations a chat model holds out |
| `lines` | a text file, one example per line: no label |
| `labelled` | labelled JSONL itself (a bare path means this) |

Every converter of harmful data also adds `flagged`. `benign:SPEC` reads
any source as examples with no label: a labelled SPEC with its labels
dropped (`benign:clinc150:clinc.json@train`), a text source
(`benign:wikipedia-sample`: one example per paragraph) or a dialogue source
(`benign:dialogues-sample`: one per message). `counterfactual:SPEC` makes
benign requests in the frames of SPEC's harmful requests ("Give detailed
instructions for setting up direct deposit"; `tfchat/data/counterfactual.py`).

Bundled sets (in `tfchat/resources`, licences in `ATTRIBUTION.md`):

* `moderation-sample`: the default moderation training data: Davidson,
  ToxiGen, ConvAbuse, HarmBench, JailbreakBench and SimpleSafetyTests, with
  benign CLINC150 training requests, Wikipedia paragraphs, OpenAssistant and
  Topical-Chat messages;
* `moderation-requests`: an evaluation set never trained on: AdvBench's
  harmful behaviours against benign requests (CLINC150 test utterances,
  Topical-Chat questions from the split tfchat does not bundle, and
  hand-written look-alikes such as "how do I kill a zombie process");
* `style-sample`, `topic-sample`: the bundled Topical-Chat turns (both
  splits) by style and by topic, for the classifiers that measure whether a
  chat model's control tags steer it (`training.evaluate --control`);
* `moderation-hatecheck`: HateCheck, a functional test suite for hate speech
  (its authors' intent is testing, so it is never trained on).

Example:

>>> examples = list(read_labelled_source("moderation-hatecheck"))
>>> sorted({label for e in examples for label in e.labels})
['flagged', 'harassment', 'hate', 'violence']
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import html
import json
import logging
import os
import re
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from tfchat.data import io
from tfchat.data.io import SPLITS, ReadStats, open_text

log = logging.getLogger(__name__)

FLAGGED = "flagged"
# The OpenAI moderation categories the bundled data supports (README: "Content filter").
MODERATION_LABELS = (FLAGGED, "harassment", "hate", "violence", "self-harm", "sexual", "illicit")


@dataclasses.dataclass(frozen=True)
class Example:
    text: str
    labels: tuple[str, ...] = ()
    source: str = ""
    split: str = ""  # "" = by the hash of the text

    def resolved_split(self) -> str:
        return self.split or io.split_of(self.text)

    def to_json(self) -> dict:
        record = {"text": self.text, "labels": list(self.labels)}
        if self.source:
            record["source"] = self.source
        if self.split:
            record["split"] = self.split
        return record


def harmful(text: str, *categories: str, source: str, split: str = "") -> Example:
    """An example of harmful content: its categories plus `flagged`."""
    return Example(text, tuple(dict.fromkeys([*categories, FLAGGED])), source, split)


# ------------------------------------------------------------------ labelled JSONL


def validate(obj) -> str | None:
    """Why a labelled JSONL record is unusable ("reason (detail)"), or None."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    text = obj.get("text")
    if not isinstance(text, str):
        return 'no "text" string'
    if not text.strip():
        return "empty text"
    labels = obj.get("labels", obj.get("label"))
    if labels is None:
        return 'no "labels" list'
    if isinstance(labels, str):
        labels = [labels]
    if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
        return f"labels must be a list of non-empty strings (got {json.dumps(labels)[:60]})"
    if obj.get("split", "") not in ("", *SPLITS):
        return f"unknown split ({obj.get('split')!r}; expected one of {SPLITS})"
    return None


def read_labelled_jsonl(path: str, stats: ReadStats) -> Iterator[Example]:
    """Labelled JSONL (`"labels"` may also be a single string, or `"label"`)."""
    source = os.path.basename(path).split(".")[0]
    for where, obj in io.iter_jsonl(path, stats):
        reason = validate(obj)
        if reason:
            stats.skip(path, where, reason)
            continue
        labels = obj.get("labels", obj.get("label"))
        labels = [labels] if isinstance(labels, str) else labels
        yield Example(obj["text"].strip(), tuple(dict.fromkeys(x.strip() for x in labels)),
                      str(obj.get("source") or source), obj.get("split", ""))


# ------------------------------------------------------------------ converters


def _csv_rows(path: str, stats: ReadStats) -> Iterator[tuple[str, dict]]:
    with open_text(path, encoding="utf-8-sig") as f:  # COLD's header starts with a byte-order mark
        reader = csv.DictReader(f)
        for row in reader:
            stats.read += 1
            yield f"{path}:{reader.line_num}", row


def _require(path: str, row: dict, columns: Sequence[str], fmt: str) -> None:
    missing = [c for c in columns if c not in row]
    if missing:
        raise ValueError(f"{path}: not a {fmt} file (no column {missing[0]!r}; columns: {sorted(row)[:8]})")


def _csv_files(path: str, pattern: str) -> list[str]:
    """`path` itself, or the files in directory `path` whose names match `pattern`."""
    if not os.path.isdir(path):
        return [path]
    files = sorted(os.path.join(path, n) for n in os.listdir(path) if re.fullmatch(pattern, n))
    if not files:
        raise FileNotFoundError(f"{path}: no files matching {pattern}")
    return files


_TWEET_NOISE = re.compile(r"\bRT\b:?|@\w+:?|https?://\S+")


def clean_tweet(text: str) -> str:
    """HTML entities decoded; retweet marks, @handles and links removed; whitespace collapsed."""
    return " ".join(_TWEET_NOISE.sub(" ", html.unescape(html.unescape(text))).split())


def read_davidson(path: str, stats: ReadStats) -> Iterator[Example]:
    labels = {"0": ("hate",), "1": ("harassment",), "2": ()}
    for i, (where, row) in enumerate(_csv_rows(path, stats)):
        if i == 0:
            _require(path, row, ("class", "tweet"), "Davidson")
        text = clean_tweet(row["tweet"] or "")
        if row["class"] not in labels or not text:
            stats.skip(path, where, "no class or empty tweet")
            continue
        cats = labels[row["class"]]
        yield harmful(text, *cats, source="davidson") if cats else Example(text, (), "davidson")


def read_toxigen(path: str, stats: ReadStats) -> Iterator[Example]:
    for i, (where, row) in enumerate(_csv_rows(path, stats)):
        if i == 0:
            _require(path, row, ("text", "label"), "ToxiGen")
        text = (row["text"] or "").strip()
        if row["label"] not in ("hate", "neutral") or not text:
            stats.skip(path, where, "label not hate/neutral or empty text")
            continue
        yield harmful(text, "hate", source="toxigen") if row["label"] == "hate" else Example(text, (), "toxigen")


_CONVABUSE_HATE = ("sexist", "racist", "homophobic", "transphobic", "ableist")


def read_convabuse(path: str, stats: ReadStats) -> Iterator[Example]:
    """ConvAbuse: majority vote of the annotators who rated each user turn."""
    for file in _csv_files(path, r"ConvAbuse.*\.csv"):
        for i, (where, row) in enumerate(_csv_rows(file, stats)):
            if i == 0:
                _require(file, row, ("user", "Annotator1_is_abuse.1"), "ConvAbuse")
            text = " ".join((row.get("user") or "").split())
            votes, types = [], collections.Counter()
            for a in range(1, 9):
                levels = [lv for lv in (1, 0, -1, -2, -3) if row.get(f"Annotator{a}_is_abuse.{lv}") == "1"]
                if not levels:
                    continue  # this annotator did not rate the turn
                votes.append(levels[0] <= -1)
                types.update(t for t in (*_CONVABUSE_HATE, "sex_harassment", "intellectual")
                             if row.get(f"Annotator{a}_{t}") == "1")
            if not text or not votes:
                stats.skip(file, where, "empty user turn or no rating")
                continue
            if 2 * sum(votes) <= len(votes):
                yield Example(text, (), "convabuse")
                continue
            majority = [t for t, n in types.items() if 2 * n > len(votes)]
            cats = ["harassment"]
            if any(t in _CONVABUSE_HATE for t in majority):
                cats.append("hate")
            if "sex_harassment" in majority:
                cats.append("sexual")
            yield harmful(text, *cats, source="convabuse")


def read_hatecheck(path: str, stats: ReadStats) -> Iterator[Example]:
    harassment = ("target_indiv_nh", "target_group_nh")
    for i, (where, row) in enumerate(_csv_rows(path, stats)):
        if i == 0:
            _require(path, row, ("functionality", "test_case", "label_gold"), "HateCheck")
        text, test = (row["test_case"] or "").strip(), row["functionality"]
        if not text or row["label_gold"] not in ("hateful", "non-hateful"):
            stats.skip(path, where, "empty case or unknown label")
        elif row["label_gold"] == "hateful":
            yield harmful(text, "hate", *(["violence"] if test.startswith("threat_") else []), source="hatecheck")
        elif test in harassment:
            yield harmful(text, "harassment", source="hatecheck")
        else:
            yield Example(text, (), "hatecheck")


_SST_AREAS = {
    "Suicide, Self-Harm, and Eating Disorders": "self-harm",
    "Physical harm and Violence": "violence",
    "Illegal and Highly Regulated items": "illicit",
    "Scams and fraud": "illicit",
    "Child safety": "sexual",  # the 20 prompts are about sexual abuse of children
}


def read_simplesafetytests(path: str, stats: ReadStats) -> Iterator[Example]:
    for i, (where, row) in enumerate(_csv_rows(path, stats)):
        if i == 0:
            _require(path, row, ("harm_area", "prompts_final"), "SimpleSafetyTests")
        text = (row["prompts_final"] or "").strip()
        if row["harm_area"] not in _SST_AREAS or not text:
            stats.skip(path, where, "unknown harm area or empty prompt")
            continue
        yield harmful(text, _SST_AREAS[row["harm_area"]], source="simplesafetytests")


_HARMBENCH = {
    "chemical_biological": ("illicit",), "cybercrime_intrusion": ("illicit",), "illegal": ("illicit",),
    "harassment_bullying": ("harassment",), "harmful": (), "misinformation_disinformation": (),
}


def read_harmbench(path: str, stats: ReadStats) -> Iterator[Example]:
    for i, (where, row) in enumerate(_csv_rows(path, stats)):
        if i == 0:
            _require(path, row, ("Behavior", "SemanticCategory", "FunctionalCategory"), "HarmBench")
        text, category = (row["Behavior"] or "").strip(), row["SemanticCategory"]
        if row["FunctionalCategory"] != "standard" or category not in _HARMBENCH:
            stats.skip(path, where, "not a standard behaviour (copyright or contextual)")
        elif text:
            yield harmful(text, *_HARMBENCH[category], source="harmbench")


_JBB = {
    "Harassment/Discrimination": ("harassment",), "Malware/Hacking": ("illicit",), "Physical harm": ("violence",),
    "Economic harm": ("illicit",), "Fraud/Deception": ("illicit",), "Disinformation": (),
    "Sexual/Adult content": ("sexual",), "Privacy": ("illicit",), "Government decision-making": ("illicit",),
}


def read_jailbreakbench(path: str, stats: ReadStats) -> Iterator[Example]:
    for i, (where, row) in enumerate(_csv_rows(path, stats)):
        if i == 0:
            _require(path, row, ("goal", "category"), "JailbreakBench")
        text = (row["goal"] or "").strip()
        if row["category"] not in _JBB:
            stats.skip(path, where, f"category not moderated ({row['category']})")
        elif text:
            yield harmful(text, *_JBB[row["category"]], source="jailbreakbench")


def read_advbench(path: str, stats: ReadStats) -> Iterator[Example]:
    for i, (where, row) in enumerate(_csv_rows(path, stats)):
        if i == 0:
            _require(path, row, ("goal",), "AdvBench")
        text = (row["goal"] or "").strip()
        if text:
            yield harmful(text, source="advbench")
        else:
            stats.skip(path, where, "empty goal")


def read_cold(path: str, stats: ReadStats) -> Iterator[Example]:
    for file in _csv_files(path, r"(train|dev|test)\.csv"):
        for i, (where, row) in enumerate(_csv_rows(file, stats)):
            if i == 0:
                _require(file, row, ("TEXT", "label"), "COLD")
            text = (row["TEXT"] or "").strip()
            if row["label"] not in ("0", "1") or not text:
                stats.skip(file, where, "label not 0/1 or empty text")
                continue
            yield harmful(text, "hate", source="cold") if row["label"] == "1" else Example(text, (), "cold")


def read_clinc150(path: str, stats: ReadStats) -> Iterator[Example]:
    """CLINC150's `data_full.json`; `path@part,part` selects parts (default: all six)."""
    path, _, parts = path.partition("@")
    try:
        with open_text(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a CLINC150 JSON file ({e})") from None
    if not isinstance(data, dict) or "train" not in data:
        raise ValueError(f"{path}: not a CLINC150 JSON file (expected parts such as 'train', 'oos_test')")
    chosen = parts.split(",") if parts else sorted(data)
    unknown = [p for p in chosen if p not in data]
    if unknown:
        raise ValueError(f"{path}: no part {unknown[0]!r}; parts: {', '.join(sorted(data))}")
    for part in chosen:
        for i, row in enumerate(data[part]):
            stats.read += 1
            if not (isinstance(row, list) and len(row) == 2 and all(isinstance(x, str) and x.strip() for x in row)):
                stats.skip(path, f"{path}:{part}[{i}]", "not a [text, intent] pair")
                continue
            # CLINC150's own validation parts are the held-out split (chosen thresholds are tuned on them).
            split = {"train": "train", "oos_train": "train", "val": "validation", "oos_val": "validation"}.get(part, "")
            yield Example(row[0].strip(), (row[1],), f"clinc150-{part}", split)


def read_topical_chat_questions(path: str, stats: ReadStats) -> Iterator[Example]:
    """The user turns (agent_1) of Topical-Chat conversations that ask something (contain "?")."""
    from tfchat.data.dialogues import read_topical_chat

    for _, _, messages in read_topical_chat(path, stats):
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if m.get("role") == "user" and isinstance(content, str) and "?" in content:
                yield Example(" ".join(content.split()), (), "topical-chat-questions")


def _read_topical_chat_tag(name: str) -> Callable[[str, ReadStats], Iterator[Example]]:
    def read(path: str, stats: ReadStats) -> Iterator[Example]:
        from tfchat.data import dialogues

        for conversation in dialogues.read_conversations("topical-chat", path, stats):
            split = dialogues.split_of(conversation)
            for m in conversation:
                value = (m.get("tags") or {}).get(name)
                if value:
                    yield Example(" ".join(m["content"].split()), (value,), f"topical-chat-{name}", split)
    read.__doc__ = f"Topical-Chat turns labelled with their {name} tag, in their conversation's split."
    return read


read_topical_chat_style = _read_topical_chat_tag("style")
read_topical_chat_topic = _read_topical_chat_tag("topic")


# Examples per routing intent: about CLINC150's 100-150 per intent, so no intent dominates the softmax.
ROUTING_PER_INTENT = 150
OUT_OF_SCOPE = "oos"


def read_topical_chat_intents(path: str, stats: ReadStats) -> Iterator[Example]:
    """Routing intents from Topical-Chat's user turns (agent_1) and their `knowledge_source` annotations."""
    try:
        with open_text(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, EOFError) as e:
        raise ValueError(f"{path}: not a Topical-Chat JSON file ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a Topical-Chat JSON file (expected an object of conversations)")
    found: dict[str, list[str]] = {"knowledge_question": [], "chit_chat": []}
    for conv in data.values():
        for turn in (conv.get("content") or []) if isinstance(conv, dict) else []:
            stats.read += 1
            text = " ".join(str(turn.get("message") or "").split()) if isinstance(turn, dict) else ""
            sources = turn.get("knowledge_source") or [] if isinstance(turn, dict) else []
            if not text or turn.get("agent") != "agent_1":
                continue
            if "?" in text and any(str(s).startswith("FS") for s in sources):
                found["knowledge_question"].append(text)
            elif list(sources) == ["Personal Knowledge"]:
                found["chit_chat"].append(text)
    for intent, texts in found.items():
        # A deterministic, content-based choice (not file order): the same texts on every machine.
        for text in sorted(set(texts), key=lambda t: hashlib.sha256(t.encode()).digest())[:ROUTING_PER_INTENT]:
            yield Example(text, (intent,), "topical-chat-intents")


def read_lines(path: str, stats: ReadStats) -> Iterator[Example]:
    source = os.path.basename(path).split(".")[0]
    with open_text(path) as f:
        for line in f:
            if line.strip() and not line.lstrip().startswith("#"):
                stats.read += 1
                yield Example(line.strip(), (), source)


CONVERTERS: dict[str, Callable[[str, ReadStats], Iterator[Example]]] = {
    "davidson": read_davidson,
    "toxigen": read_toxigen,
    "convabuse": read_convabuse,
    "hatecheck": read_hatecheck,
    "simplesafetytests": read_simplesafetytests,
    "harmbench": read_harmbench,
    "jailbreakbench": read_jailbreakbench,
    "advbench": read_advbench,
    "cold": read_cold,
    "clinc150": read_clinc150,
    "topical-chat-questions": read_topical_chat_questions,
    "topical-chat-intents": read_topical_chat_intents,
    "topical-chat-style": read_topical_chat_style,
    "topical-chat-topic": read_topical_chat_topic,
    "lines": read_lines,
    "labelled": read_labelled_jsonl,
}
FORMATS = tuple(CONVERTERS)


# ------------------------------------------------------------------ benign text from other sources

# Paragraphs shorter than this are headings or list stubs; longer ones are cut (a classifier sees messages).
MIN_PARAGRAPH, MAX_PARAGRAPH = 40, 1000


def paragraphs(document: str) -> list[str]:
    """A document's paragraphs (blank-line separated) of at least MIN_PARAGRAPH characters, cut to MAX_PARAGRAPH."""
    out = []
    for p in re.split(r"\n\s*\n", document):
        p = " ".join(p.split())
        if len(p) >= MIN_PARAGRAPH:
            out.append(p[:MAX_PARAGRAPH].rsplit(" ", 1)[0] if len(p) > MAX_PARAGRAPH else p)
    return out


def read_benign(spec: str, stats: ReadStats) -> Iterator[Example]:
    """`benign:SPEC`: labelled SPEC without labels, a dialogue source's messages, or a text source's paragraphs."""
    fmt, sep, _ = spec.partition(":")
    if (sep and fmt in CONVERTERS) or spec in BUNDLED:
        for e in _read(spec, stats):
            # CLINC150's part splits belong to its intents: as benign text its rows split by hash, as before.
            yield dataclasses.replace(e, labels=(), split="" if fmt == "clinc150" else e.split)
        return
    from tfchat.data import dialogues

    if dialogues.is_dialogue_source(spec):
        for fmt, path in dialogues.parse_dialogue_source(spec):
            for conversation in dialogues.read_conversations(fmt, path, stats):
                for m in conversation:
                    yield Example(" ".join(m["content"].split()), (), fmt)
        return
    from tfchat.data import sources

    name = "wikipedia" if spec == sources.SAMPLE_NAME else os.path.basename(spec).split(".")[0]
    for doc in sources.cached_documents(spec):
        for p in paragraphs(doc):
            yield Example(p, (), name)


def read_counterfactual(spec: str) -> Iterator[Example]:
    """`counterfactual:SPEC`: benign requests in the frames of SPEC's harmful requests (training split only)."""
    from tfchat.data import counterfactual

    made = counterfactual.counterfactuals(load_examples(spec))
    if not made:
        raise ValueError(f"counterfactual:{spec}: no frame shared by two harmful requests "
                         f"(from {', '.join(counterfactual.REQUEST_SOURCES)}) with benign text to fill it")
    yield from made


# ------------------------------------------------------------------ sources and bundles

BUNDLED = {
    "moderation-sample": ("labelled:moderation-train.jsonl.gz", "benign:wikipedia-sample", "benign:dialogues-sample"),
    "moderation-requests": ("labelled:moderation-requests.jsonl.gz",),
    "moderation-hatecheck": ("labelled:moderation-hatecheck.jsonl.gz",),
    # Intents: CLINC150 train (+ val, held out) and the two routing intents; its test parts are `intent-test`.
    "intent-sample": ("clinc150:clinc150-data-full.json.xz@train,oos_train,val,oos_val",
                      "topical-chat-intents:topical-chat-valid-freq.json.gz"),
    "intent-test": ("clinc150:clinc150-data-full.json.xz@test,oos_test",),
    # Control tags: the Topical-Chat files of `chat-sample` (tfchat.data.dialogues), turn by turn.
    "style-sample": ("topical-chat-style:topical-chat-valid-freq.json.gz",
                     "topical-chat-style:topical-chat-valid-rare.json.xz"),
    "topic-sample": ("topical-chat-topic:topical-chat-valid-freq.json.gz",
                     "topical-chat-topic:topical-chat-valid-rare.json.xz"),
}


def read_labelled_source(spec: str, stats: ReadStats | None = None) -> Iterator[Example]:
    """Examples of one source: a bundled name, `FORMAT:PATH`, `benign:SPEC`, `counterfactual:SPEC` or a JSONL path.

    Raises:
        ValueError / FileNotFoundError: naming the source, for a bad name or one with no usable example.
    """
    stats = stats if stats is not None else ReadStats()
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a labelled source must be a non-empty string, got {spec!r}")
    kept_before = stats.total_kept
    for e in _read(spec, stats):
        stats.kept[e.resolved_split()] += 1
        yield e
    if stats.total_kept == kept_before:
        first = "; ".join(stats.first_problems.values()) or "it holds no records"
        raise ValueError(f"{spec}: no usable examples ({stats.summary()}; first problem: {first})")


def _read(spec: str, stats: ReadStats) -> Iterator[Example]:
    if spec in BUNDLED:
        for part in BUNDLED[spec]:
            fmt, _, name = part.partition(":")
            if fmt == "benign":
                yield from _read(part, stats)
            else:  # FORMAT:FILE[@PARTS] of a bundled file
                file, at, parts = name.partition("@")
                yield from _read(f"{fmt}:{io.resource_path(file)}{at}{parts}", stats)
        return
    fmt, sep, path = spec.partition(":")
    if sep and fmt == "benign":
        yield from read_benign(path, stats)
        return
    if sep and fmt == "counterfactual":
        yield from read_counterfactual(path)
        return
    if not (sep and fmt in CONVERTERS):
        if sep and not os.path.exists(spec) and os.path.exists(path.partition("@")[0]):  # FORMAT:FILE, FORMAT unknown
            raise ValueError(f"{spec}: unknown format {fmt!r}; formats: {', '.join(FORMATS)}, benign, counterfactual")
        fmt, path = "labelled", spec
    if not os.path.exists(path.partition("@")[0] if fmt == "clinc150" else path):
        hint = "" if sep else (f"; a source is a bundled set ({', '.join(BUNDLED)}), FORMAT:PATH with FORMAT one of "
                               f"{', '.join(FORMATS)}, benign:SOURCE, counterfactual:SOURCE, or a labelled JSONL file "
                               "(write one from a public dataset with `python -m training.convert_labelled`)")
        raise FileNotFoundError(f"{path}: no such file or directory{hint}")
    try:
        yield from CONVERTERS[fmt](path, stats)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason})") from None


def load_examples(sources: str | Sequence[str], stats: ReadStats | None = None) -> list[Example]:
    """Every example of one or several sources, duplicates (same text and labels) dropped."""
    stats = stats if stats is not None else ReadStats()
    names = [sources] if isinstance(sources, str) else list(sources)
    seen: set = set()
    out = []
    for name in names:
        for e in read_labelled_source(name, stats):
            key = (e.text, e.labels)
            if key in seen:
                stats.skipped["duplicate"] += 1
                continue
            seen.add(key)
            out.append(e)
    log.info("labelled %s: %d examples (%s)", ", ".join(names), len(out), stats.summary())
    return out


@dataclasses.dataclass(frozen=True)
class Task:
    """What `training.classify --task NAME` trains: label kind, default data, label order, implied labels."""

    name: str
    multi_label: bool
    default_data: str | None = None
    preferred_labels: tuple[str, ...] = ()
    # Added to every example that has any label (moderation: `flagged`).
    implied: str | None = None
    # Single-label: the label predicted when no other scores at least the stored threshold (out of scope).
    fallback: str | None = None

    def prepare(self, examples: Sequence[Example]) -> tuple[list[Example], list[str]]:
        """The examples with implied labels added, and the label vocabulary (checked for single-label)."""
        if self.implied:
            examples = [dataclasses.replace(e, labels=tuple(dict.fromkeys([*e.labels, self.implied])))
                        if e.labels and self.implied not in e.labels else e for e in examples]
        examples = list(examples)
        if not self.multi_label:
            check_single_label(examples)
        labels = label_vocabulary(examples, self.preferred_labels)
        if not labels:
            raise ValueError(f"the {self.name} data has no labels at all: every example is unlabelled")
        if not self.multi_label and len(labels) < 2:
            raise ValueError(f"single-label data needs at least two labels, found only {labels}")
        return examples, labels


TASKS = {
    "moderation": Task("moderation", True, "moderation-sample", MODERATION_LABELS, implied=FLAGGED),
    "multi-label": Task("multi-label", True),
    "single-label": Task("single-label", False),
    "intent": Task("intent", False, "intent-sample", fallback=OUT_OF_SCOPE),
    "style": Task("style", False, "style-sample"),
    "topic": Task("topic", False, "topic-sample"),
}


def targets(examples: Sequence[Example], labels: Sequence[str]) -> np.ndarray:
    """0/1 float32 targets [N, L] of examples over `labels` (labels outside the list are ignored)."""
    index = {label: j for j, label in enumerate(labels)}
    out = np.zeros([len(examples), len(labels)], np.float32)
    for i, e in enumerate(examples):
        for label in e.labels:
            if label in index:
                out[i, index[label]] = 1.0
    return out


def label_vocabulary(examples: Iterable[Example], preferred: Sequence[str] = ()) -> list[str]:
    """The labels that occur, `preferred` ones first in their order, then the rest sorted."""
    seen = {label for e in examples for label in e.labels}
    return [x for x in preferred if x in seen] + sorted(seen - set(preferred))


def check_single_label(examples: Sequence[Example]) -> None:
    """Raises ValueError naming the first example that does not have exactly one label."""
    for e in examples:
        if len(e.labels) != 1:
            raise ValueError(f"single-label data needs exactly one label per example; {e.source or 'an example'} has "
                             f"{list(e.labels)} for {e.text[:60]!r}")


def write_labelled_jsonl(examples: Iterable[Example], path: str) -> int:
    """Writes labelled JSONL atomically (`.gz` compresses). Returns the count."""
    return io.write_jsonl((e.to_json() for e in examples), path)
