"""Dialogue datasets, converted to one canonical format.

The canonical format is messages-JSONL: one conversation per line,

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}

(other keys are ignored). Readers convert public datasets to it:

- `oasst`: OpenAssistant message trees (one tree per JSONL line). From the
  prompt we follow the best-ranked reply (lowest `rank`; unranked replies
  after ranked ones, in file order) at every level, giving one thread per
  tree. prompter -> user, assistant -> assistant. Deleted messages (and ones
  that failed review) are never followed.
- `topical-chat`: `{id: {"content": [{"agent", "message", ...}]}}`. Every
  conversation opens with agent_1 and the agents alternate, so agent_1 is the
  user and agent_2, who replies to agent_1, is the assistant.
- `cornell`: Cornell Movie-Dialogs (`movie_lines.txt` and
  `movie_conversations.txt`, ` +++$+++ `-separated, ISO-8859-1). The
  character who speaks first is the user, the other the assistant;
  consecutive lines of one speaker are joined.
- `dolly`: databricks-dolly-15k, from TFDS (`tfds:databricks_dolly`) or its
  JSONL file: user = instruction (+ blank line + context), assistant = response.
- `messages`: messages-JSONL itself.

The oasst, topical-chat and cornell readers cut a thread that ends on a user
turn after its last assistant reply (nothing to learn from that turn).
Every file may be gzip/bz2-compressed (`.gz`, `.bz2`). Every conversation is
validated (`validate`): a record that is not JSON, lacks roles or content,
has an unknown role, empty content, a system message other than the first,
or no assistant turn is skipped with a counted warning naming the file and
line; if nothing usable is left, a `ValueError` names the file.

A source is named `FORMAT:PATH` (e.g. `oasst:trees.jsonl.gz`), a bare path
(messages-JSONL), `tfds:databricks_dolly`, or `dialogues-sample` (the bundled
OASST and Topical-Chat samples, the default fine-tuning data).

Example:

>>> stats = ReadStats()
>>> conversations = load_conversations("dialogues-sample", stats)
>>> conversations[0][0]["role"]
'user'
"""

from __future__ import annotations

import ast
import json
import logging
import os
from typing import Iterable, Iterator, Sequence

from tfchat.data import io
from tfchat.data.io import ReadStats, open_text
from tfchat.text.special_tokens import ROLES

log = logging.getLogger(__name__)

Message = dict  # {"role": str, "content": str}
Conversation = list  # list[Message]

FORMATS = ("oasst", "topical-chat", "cornell", "dolly", "messages")
SAMPLE_NAME = "dialogues-sample"
SAMPLE_FILES = (
    ("oasst", "oasst1-en-100-trees.jsonl.gz"),
    ("topical-chat", "topical-chat-valid-freq.json.gz"),
)
def default_dialogue_source() -> str:
    """The default fine-tuning data: the bundled OASST + Topical-Chat samples."""
    return SAMPLE_NAME


# ------------------------------------------------------------------ validation


def validate(messages) -> str | None:
    """Returns why a conversation is unusable ("reason (detail)"), or None."""
    if not isinstance(messages, list) or not messages:
        return "no messages"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"message not an object (message {i})"
        if "role" not in message or "content" not in message:
            return f"message lacks role or content (message {i})"
        if message["role"] not in ROLES:
            return f"unknown role (message {i}: {message['role']!r})"
        if not isinstance(message["content"], str) or not message["content"].strip():
            return f"empty content (message {i})"
        if message["role"] == "system" and i > 0:
            return f"system message not first (message {i})"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn"
    return None


# --------------------------------------------------------------------- files


def _jsonl(path: str, stats: ReadStats) -> Iterator[tuple[str, object]]:
    """Yields (where, parsed object) per non-blank line; bad JSON is skipped."""
    try:
        yield from io.iter_jsonl(path, stats)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        stats.skip(path, path, f"unreadable ({e})")


# --------------------------------------------------------------------- readers
# Each reader yields (where, path, messages); `read_conversations` validates.


def _trim_trailing_user(messages: list) -> list:
    # A thread ending on a user turn teaches nothing after the last reply.
    # (A conversation with no reply at all stays whole, to be counted as such.)
    end = len(messages)
    while end > 0 and isinstance(messages[end - 1], dict) and messages[end - 1].get("role") == "user":
        end -= 1
    return messages[:end] if end > 0 else messages


def read_messages_jsonl(path: str, stats: ReadStats) -> Iterator[tuple[str, str, object]]:
    for where, obj in _jsonl(path, stats):
        messages = obj.get("messages") if isinstance(obj, dict) else None
        if messages is None:
            stats.skip(path, where, 'no "messages" list')
            continue
        yield where, path, messages


def read_oasst(path: str, stats: ReadStats) -> Iterator[tuple[str, str, object]]:
    roles = {"prompter": "user", "assistant": "assistant"}
    for where, tree in _jsonl(path, stats):
        node = tree.get("prompt") if isinstance(tree, dict) else None
        if not isinstance(node, dict):
            stats.skip(path, where, 'not an OASST message tree (no "prompt")')
            continue
        if node.get("deleted"):
            stats.skip(path, where, "deleted prompt")
            continue
        messages = []
        while node is not None:
            messages.append({"role": roles.get(node.get("role"), node.get("role")), "content": node.get("text")})
            replies = [
                (r.get("rank") is None, r.get("rank") or 0, i, r)
                for i, r in enumerate(node.get("replies") or [])
                if isinstance(r, dict) and not r.get("deleted") and r.get("review_result") is not False
            ]
            node = min(replies, key=lambda x: x[:3])[3] if replies else None
        yield where, path, _trim_trailing_user(messages)


def read_topical_chat(path: str, stats: ReadStats) -> Iterator[tuple[str, str, object]]:
    agents = {"agent_1": "user", "agent_2": "assistant"}
    try:
        with open_text(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a Topical-Chat JSON file ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a Topical-Chat JSON file (expected an object of conversations)")
    for conv_id, conv in data.items():
        stats.read += 1
        where = f"{path}:{conv_id}"
        turns = conv.get("content") if isinstance(conv, dict) else None
        if not isinstance(turns, list):
            stats.skip(path, where, 'no "content" list')
            continue
        messages = []
        for t in turns:
            t = t if isinstance(t, dict) else {}
            messages.append({"role": agents.get(t.get("agent"), t.get("agent")), "content": t.get("message")})
        yield where, path, _trim_trailing_user(messages)


_CORNELL_SEP = " +++$+++ "


def _find(directory: str, name: str) -> str:
    for candidate in (name, name + ".gz", name + ".bz2"):
        path = os.path.join(directory, candidate)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{directory}: no {name} (Cornell Movie-Dialogs needs movie_lines.txt and movie_conversations.txt)")


def read_cornell(path: str, stats: ReadStats) -> Iterator[tuple[str, str, object]]:
    """`path`: the corpus directory, or either of its two files."""
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    lines_path = _find(directory, "movie_lines.txt")
    convs_path = _find(directory, "movie_conversations.txt")
    lines: dict[str, tuple[str, str]] = {}
    with open_text(lines_path, "iso-8859-1") as f:
        for lineno, row in enumerate(f, 1):
            row = row.rstrip("\r\n")
            if not row:
                continue
            parts = row.split(_CORNELL_SEP)
            if len(parts) != 5:
                stats.skip(lines_path, f"{lines_path}:{lineno}", "malformed line (expected 5 fields)")
                continue
            lines[parts[0].strip()] = (parts[1].strip(), parts[4].strip())
    with open_text(convs_path, "iso-8859-1") as f:
        for lineno, row in enumerate(f, 1):
            if not row.strip():
                continue
            stats.read += 1
            where = f"{convs_path}:{lineno}"
            parts = row.rstrip("\r\n").split(_CORNELL_SEP)
            try:
                line_ids = ast.literal_eval(parts[3]) if len(parts) == 4 else None
            except (ValueError, SyntaxError):
                line_ids = None
            if not isinstance(line_ids, list):
                stats.skip(convs_path, where, "malformed conversation (expected 4 fields)")
                continue
            missing = [i for i in line_ids if i not in lines]
            if missing:
                stats.skip(convs_path, where, "refers to missing lines")
                continue
            messages: list[dict] = []
            first_speaker = lines[line_ids[0]][0] if line_ids else None
            for line_id in line_ids:
                speaker, text = lines[line_id]
                role = "user" if speaker == first_speaker else "assistant"
                if messages and messages[-1]["role"] == role:
                    messages[-1]["content"] += "\n" + text
                else:
                    messages.append({"role": role, "content": text})
            yield where, convs_path, _trim_trailing_user(messages)


def _dolly_messages(instruction: str, context: str, response: str) -> list[dict]:
    user = instruction.strip()
    if context and context.strip():
        user += "\n\n" + context.strip()
    return [{"role": "user", "content": user}, {"role": "assistant", "content": response}]


def read_dolly(path: str, stats: ReadStats) -> Iterator[tuple[str, str, object]]:
    """`path`: `tfds:databricks_dolly[:split]` or the databricks-dolly-15k JSONL."""
    if path.startswith("tfds:"):
        import tensorflow_datasets as tfds

        name, _, split = path[len("tfds:"):].partition(":")
        dataset = tfds.load(name or "databricks_dolly", split=split or "train", shuffle_files=False)
        for i, ex in enumerate(tfds.as_numpy(dataset)):
            stats.read += 1
            text = {k: ex[k].decode("utf-8") for k in ("instruction", "context", "response")}
            yield f"{path}[{i}]", path, _dolly_messages(**text)
        return
    for where, obj in _jsonl(path, stats):
        if not isinstance(obj, dict) or not all(isinstance(obj.get(k, ""), str) for k in ("instruction", "context", "response")):
            stats.skip(path, where, "not a dolly record (instruction/context/response)")
            continue
        yield where, path, _dolly_messages(obj.get("instruction", ""), obj.get("context", ""), obj.get("response", ""))


READERS = {
    "oasst": read_oasst,
    "topical-chat": read_topical_chat,
    "cornell": read_cornell,
    "dolly": read_dolly,
    "messages": read_messages_jsonl,
}


def read_conversations(format: str, path: str, stats: ReadStats | None = None) -> Iterator[Conversation]:
    """Yields the valid conversations of one file in canonical form.

    Raises:
        ValueError: naming `path` when no usable conversation is left.
    """
    if format not in READERS:
        raise ValueError(f"unknown dialogue format {format!r}; expected one of {FORMATS}")
    if not path.startswith("tfds:") and not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    stats = stats if stats is not None else ReadStats()
    kept_before = stats.total_kept
    for where, file, messages in READERS[format](path, stats):
        reason = validate(messages)
        if reason:
            stats.skip(file, where, reason)
            continue
        stats.kept["conversations"] += 1
        yield [{"role": m["role"], "content": m["content"]} for m in messages]
    if stats.total_kept == kept_before:
        first = "; ".join(stats.first_problems.values()) or "the file holds no records"
        raise ValueError(f"{path}: no usable {format} conversations ({stats.summary()}; first problem: {first})")


def parse_dialogue_source(source: str) -> list[tuple[str, str]]:
    """`FORMAT:PATH`, a path, `tfds:databricks_dolly` or `dialogues-sample` -> [(format, path)]."""
    if source == SAMPLE_NAME:
        return [(fmt, io.resource_path(name)) for fmt, name in SAMPLE_FILES]
    if source.startswith("tfds:"):
        name = source[len("tfds:"):].split(":")[0].split("/")[0]
        if name != "databricks_dolly":
            raise ValueError(f"{source}: the only TFDS dialogue dataset supported is databricks_dolly")
        return [("dolly", source)]
    fmt, sep, path = source.partition(":")
    if sep and fmt in READERS:
        return [(fmt, path)]
    return [("messages", source)]


def load_conversations(
    source: str | Sequence[str], stats: ReadStats | None = None
) -> list[Conversation]:
    """Reads one or several dialogue sources (see the module docstring)."""
    stats = stats if stats is not None else ReadStats()
    names = [source] if isinstance(source, str) else list(source)
    conversations: list[Conversation] = []
    for name in names:
        for fmt, path in parse_dialogue_source(name):
            conversations.extend(read_conversations(fmt, path, stats))
    log.info("dialogues %s: %s", ", ".join(names), stats.summary())
    return conversations


def is_dialogue_source(source: str) -> bool:
    """True for `dialogues-sample`, `tfds:databricks_dolly`, `FORMAT:PATH` with a dialogue FORMAT, or a
    file whose first non-blank line is a JSON object with a "messages" key (messages-JSONL)."""
    if source == SAMPLE_NAME or source.startswith("tfds:databricks_dolly"):
        return True
    fmt, sep, _ = source.partition(":")
    if sep and fmt in READERS:
        return True
    if os.path.isfile(source):
        try:
            with open_text(source) as f:
                record = json.loads(next((line for line in f if line.strip()), ""))
        except (OSError, EOFError, UnicodeDecodeError, ValueError):
            return False  # not JSONL at all: the text reader judges it
        return isinstance(record, dict) and "messages" in record
    return False


def split_of(conversation: Conversation) -> str:
    """'train' or 'validation', a deterministic function of the conversation's content."""
    key = json.dumps(conversation, ensure_ascii=False, sort_keys=True)
    return io.split_of(key)


def write_messages_jsonl(conversations: Iterable[Conversation], path: str) -> int:
    """Writes messages-JSONL atomically (temp file, then rename). Returns the count."""
    return io.write_jsonl(({"messages": c} for c in conversations), path)
