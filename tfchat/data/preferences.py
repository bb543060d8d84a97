"""Preference pairs: a prompt conversation, a chosen reply and a rejected reply.

The canonical format is preference JSONL, one pair per line:

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ..., {"role": "user", ...}],
     "chosen":   {"role": "assistant", "content": "the better reply"},
     "rejected": {"role": "assistant", "content": "the worse reply"}}

`messages` is the conversation so far (earlier assistant turns are context,
never trained on); it ends with the user turn both replies answer. `chosen`
and `rejected` may also be plain strings. Readers convert public datasets to
it (`python -m training.convert_dialogues --format hh-rlhf|oasst-pairs|preferences`):

- `hh-rlhf`: Anthropic HH-RLHF JSONL (`{"chosen": "\\n\\nHuman: ...\\n\\nAssistant:
  ...", "rejected": ...}`). Both transcripts are split into turns at the
  `\\n\\nHuman: ` / `\\n\\nAssistant: ` markers (each turn stripped); their
  longest common prefix of turns is the prompt (every earlier turn kept as
  multi-turn context), and each must then have exactly one more turn, an
  assistant reply. A pair whose transcripts differ before the final assistant
  reply (5 of the 2,312 harmless-base pairs), or with an empty reply, is
  skipped and counted.
- `oasst` (alias `oasst-pairs`): OpenAssistant message trees (one tree per line). Under every
  user message, each two assistant replies with different `rank` give a pair
  (the lower rank is chosen); replies with equal rank are ties, skipped and
  counted, and unranked, deleted or review-failed replies take part in no
  pair. The context is the path from the root to that user message, so
  follow-up turns deep in a tree give pairs too.
- `messages` (alias `preferences`): preference JSONL itself.

Structural problems are errors, because a file that breaks its own format
should be fixed rather than silently thinned: a line that is not JSON, or
lacks the fields of its format, raises a `ValueError` naming `path:line`.
Data that is well formed but cannot make a pair (ties, identical replies,
transcripts that differ early, empty replies) is skipped and counted in
`ReadStats`, the first few with a warning naming `path:line`.

A source is named as for the other readers: a bundled sample
(`preferences-sample` = `hh-rlhf-sample` + `oasst-pairs-sample`), a path
whose format is recognised from its first record, or `FORMAT:PATH`.

The held-out split is by prompt (every pair of one prompt lands on the same
side) and takes `VALIDATION_PERCENT` = 20% of prompts, not the 5% of
documents and conversations: preference sets are small, and a held-out
accuracy on 5% of the 2,312 hh-rlhf pairs would be +-4.6 points (one
standard error), too coarse to tell a model from the length baseline.

Example:

>>> pairs = load_pairs("hh-rlhf-sample")
>>> pairs[0].messages[-1]["role"], type(pairs[0].chosen).__name__
('user', 'str')
>>> split_of(pairs[0]) in ("train", "validation")
True
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Iterable, Iterator, Sequence

from tfchat.data import dialogues, io
from tfchat.data.io import ReadStats

log = logging.getLogger(__name__)

FORMATS = ("hh-rlhf", "oasst", "messages")
# The names `training.convert_dialogues` uses, beside its conversation formats.
ALIASES = {"oasst-pairs": "oasst", "preferences": "messages"}
VALIDATION_PERCENT = 20
SAMPLES = {
    "hh-rlhf-sample": (("hh-rlhf", "hh-rlhf-harmless-base-test.jsonl.gz"),),
    "oasst-pairs-sample": (("oasst", "oasst1-en-100-trees.jsonl.gz"),),
}
SAMPLES["preferences-sample"] = SAMPLES["hh-rlhf-sample"] + SAMPLES["oasst-pairs-sample"]
DEFAULT_SOURCE = "preferences-sample"


@dataclasses.dataclass(frozen=True)
class Pair:
    """A prompt conversation (ending with a user turn) and two assistant replies to it.

    Attributes:
        messages: `[{"role", "content"}, ...]`, the context both replies follow.
        chosen, rejected: the better and the worse reply.
        source: the format it was read from ("hh-rlhf", "oasst", "messages"), for per-source figures.
    """

    messages: list
    chosen: str
    rejected: str
    source: str = "messages"

    def to_json(self) -> dict:
        return {"messages": self.messages, "chosen": {"role": "assistant", "content": self.chosen},
                "rejected": {"role": "assistant", "content": self.rejected}}

    @property
    def prompt_key(self) -> str:
        return json.dumps(self.messages, ensure_ascii=False, sort_keys=True)


def split_of(pair: Pair) -> str:
    """'train' or 'validation', by the pair's prompt (`VALIDATION_PERCENT`% held out)."""
    return io.split_of(pair.prompt_key, VALIDATION_PERCENT)


# ------------------------------------------------------------------ validation


def prompt_problem(messages) -> str | None:
    """Why `messages` cannot be a prompt ("reason (detail)"), or None."""
    reason = dialogues.validate(messages, need_reply=False)
    if reason is None and messages[-1]["role"] != "user":
        reason = "prompt does not end with a user message"
    return reason


def _reply_text(reply) -> str | None:
    """A reply given as a string or `{"role": "assistant", "content": str}`; None if neither."""
    if isinstance(reply, dict) and reply.get("role", "assistant") == "assistant":
        reply = reply.get("content")
    return reply if isinstance(reply, str) else None


def _make_pair(messages: list, chosen: str, rejected: str, source: str, where: str, path: str,
               stats: ReadStats) -> Pair | None:
    """The pair, or None after counting why it is unusable."""
    reason = prompt_problem(messages)
    if reason is None and (not chosen.strip() or not rejected.strip()):
        reason = "empty reply"
    if reason is None and chosen.strip() == rejected.strip():
        reason = "identical replies"
    if reason:
        stats.skip(path, where, reason)
        return None
    stats.kept["pairs"] += 1
    return Pair([{"role": m["role"], "content": m["content"]} for m in messages], chosen, rejected, source)


# --------------------------------------------------------------------- readers


def read_messages(path: str, stats: ReadStats) -> Iterator[Pair]:
    for where, obj in io.iter_jsonl(path, stats, strict=True):
        if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
            raise ValueError(f'{where}: not a preference record (expected {{"messages": [...], "chosen": ..., '
                             f'"rejected": ...}})')
        chosen, rejected = _reply_text(obj.get("chosen")), _reply_text(obj.get("rejected"))
        if chosen is None or rejected is None:
            raise ValueError(f'{where}: "chosen" and "rejected" must each be {{"role": "assistant", "content": str}} '
                             "or a string")
        reason = prompt_problem(obj["messages"])
        if reason:
            raise ValueError(f"{where}: bad prompt: {reason}")
        pair = _make_pair(obj["messages"], chosen, rejected, "messages", where, path, stats)
        if pair:
            yield pair


_HH_MARKER = re.compile(r"\n\n(Human|Assistant): ?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def hh_turns(transcript: str) -> list[dict] | None:
    """`"\\n\\nHuman: ...\\n\\nAssistant: ..."` -> messages (contents stripped); None if it does not start with a turn."""
    parts = _HH_MARKER.split(transcript)
    if parts[0].strip() or len(parts) < 3:
        return None
    return [{"role": _HH_ROLES[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def read_hh_rlhf(path: str, stats: ReadStats) -> Iterator[Pair]:
    for where, obj in io.iter_jsonl(path, stats, strict=True):
        if not isinstance(obj, dict) or not isinstance(obj.get("chosen"), str) or not isinstance(obj.get("rejected"), str):
            raise ValueError(f'{where}: not an hh-rlhf record (expected {{"chosen": str, "rejected": str}})')
        chosen, rejected = hh_turns(obj["chosen"]), hh_turns(obj["rejected"])
        if chosen is None or rejected is None:
            stats.skip(path, where, 'not a transcript (must start with "\\n\\nHuman: ")')
            continue
        n = 0  # longest common prefix of turns
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        if chosen == rejected:
            stats.skip(path, where, "identical replies")
            continue
        if not (len(chosen) == len(rejected) == n + 1 and chosen[n]["role"] == rejected[n]["role"] == "assistant"):
            stats.skip(path, where, f"transcripts differ before the final assistant reply (turn {n + 1})")
            continue
        pair = _make_pair(chosen[:n], chosen[n]["content"], rejected[n]["content"], "hh-rlhf", where, path, stats)
        if pair:
            yield pair


_OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def _usable(node) -> bool:
    return isinstance(node, dict) and not node.get("deleted") and node.get("review_result") is not False


def read_oasst(path: str, stats: ReadStats) -> Iterator[Pair]:
    for where, tree in io.iter_jsonl(path, stats, strict=True):
        root = tree.get("prompt") if isinstance(tree, dict) else None
        if not isinstance(root, dict):
            raise ValueError(f'{where}: not an OpenAssistant message tree (expected {{"prompt": {{...}}}})')
        if not _usable(root):
            stats.skip(path, where, "deleted prompt")
            continue
        stack = [(root, [])]  # (node, the messages before it)
        while stack:
            node, before = stack.pop()
            text = node.get("text")
            if not isinstance(text, str) or node.get("role") not in _OASST_ROLES:
                stats.skip(path, where, f"malformed message ({node.get('message_id')})")
                continue
            path_here = before + [{"role": _OASST_ROLES[node["role"]], "content": text}]
            replies = [r for r in node.get("replies") or [] if _usable(r)]
            if node["role"] == "prompter":
                ranked = [r for r in replies if r.get("role") == "assistant" and isinstance(r.get("rank"), int)
                          and isinstance(r.get("text"), str)]
                stats.skipped["unranked reply"] += sum(r.get("role") == "assistant" for r in replies) - len(ranked)
                ranked.sort(key=lambda r: r["rank"])
                for i, better in enumerate(ranked):
                    for worse in ranked[i + 1:]:
                        if better["rank"] == worse["rank"]:
                            stats.skipped["tie"] += 1  # expected in ranked data: counted, not warned about
                            continue
                        pair = _make_pair(path_here, better["text"], worse["text"], "oasst",
                                          f"{where} ({better.get('message_id')})", path, stats)
                        if pair:
                            yield pair
            stack.extend((r, path_here) for r in reversed(replies))


READERS = {"hh-rlhf": read_hh_rlhf, "oasst": read_oasst, "messages": read_messages}


def read_pairs(format: str, path: str, stats: ReadStats | None = None) -> Iterator[Pair]:
    """Yields the usable pairs of one file.

    Raises:
        ValueError: a malformed line (naming `path:line`), an unknown format,
            or a file with no usable pair.
        FileNotFoundError: no such file.
    """
    format = ALIASES.get(format, format)
    if format not in READERS:
        raise ValueError(f"unknown preference format {format!r}; expected one of {', '.join(FORMATS)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    stats = stats if stats is not None else ReadStats()
    kept_before = stats.kept["pairs"]
    try:
        yield from READERS[format](path, stats)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({e})") from None
    if stats.kept["pairs"] == kept_before:
        first = stats.first_problems.get(path, "the file holds no records")
        raise ValueError(f"{path}: no usable {format} preference pairs ({stats.summary()}; first problem: {first})")


def sniff_format(path: str) -> str:
    """The format of a preference file, from its first record."""
    try:
        with io.open_text(path) as f:
            line = next((line for line in f if line.strip()), "")
        record = json.loads(line)
    except (OSError, EOFError, UnicodeDecodeError, ValueError, RecursionError):
        record = None
    if isinstance(record, dict):
        if "messages" in record and "chosen" in record:
            return "messages"
        if isinstance(record.get("chosen"), str) and isinstance(record.get("rejected"), str):
            return "hh-rlhf"
        if isinstance(record.get("prompt"), dict):
            return "oasst"
    raise ValueError(f"{path}: not a preference file tfchat recognises (preference JSONL, hh-rlhf JSONL or "
                     f"OpenAssistant trees); name its format as FORMAT:PATH with FORMAT one of {', '.join(FORMATS)}")


def parse_source(source: str) -> list[tuple[str, str]]:
    """A bundled sample name, `FORMAT:PATH` or a path -> [(format, path)]."""
    if source in SAMPLES:
        return [(fmt, io.resource_path(name)) for fmt, name in SAMPLES[source]]
    fmt, sep, path = source.partition(":")
    fmt = ALIASES.get(fmt, fmt)
    if sep and fmt in READERS:
        return [(fmt, path)]
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{source}: no such file, and not a bundled sample ({', '.join(SAMPLES)}); "
                                "write preference JSONL with `python -m training.convert_dialogues --format hh-rlhf`")
    return [(sniff_format(source), source)]


def load_pairs(source: str | Sequence[str], stats: ReadStats | None = None) -> list[Pair]:
    """Reads one or several preference sources (see the module docstring)."""
    stats = stats if stats is not None else ReadStats()
    names = [source] if isinstance(source, str) else list(source)
    pairs: list[Pair] = []
    for name in names:
        for fmt, path in parse_source(name):
            pairs.extend(read_pairs(fmt, path, stats))
    log.info("preferences %s: %d pairs; %s", ", ".join(names), len(pairs), stats.summary())
    return pairs


def in_split(pairs: Iterable[Pair], split: str) -> list[Pair]:
    """The pairs of `split` ("train", "validation" or "all")."""
    return list(pairs) if split == "all" else [p for p in pairs if split_of(p) == split]


def write_pairs(pairs: Iterable[Pair], path: str) -> int:
    """Writes preference JSONL atomically. Returns the count."""
    return io.write_jsonl((p.to_json() for p in pairs), path)
