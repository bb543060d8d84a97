"""Dialogue datasets, converted to one canonical format.

The canonical format is messages-JSONL: one conversation per line,

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}

(other keys are ignored, except `"tags"` and `"knowledge"`). `"tags"`, on the
conversation or on an assistant message, names what a reply is like, e.g.
`{"topic": "music", "style": "happy"}` (strings): a tagged model learns to
condition on them (`tfchat.text.control_tags`); conversation tags apply to
every assistant message, a message's own tags win. `"knowledge"` is text the conversation is
grounded in, rendered into the chat template's knowledge segment, never
trained on). A message may carry `knowledge` too, the facts its speaker
used, as `[subject, relation, object]` triples of strings (KdConv's `attrs`:
`[["恋恋笔记本", "导演", "尼克·卡索维茨"]]`; an `Information` relation holds
a passage about the subject), kept for evaluation; the chat template does
not render them. Readers convert public datasets to it:

- `oasst`: OpenAssistant message trees (one tree per JSONL line). From the
  prompt we follow the best-ranked reply (lowest `rank`; unranked replies
  after ranked ones, in file order) at every level, giving one thread per
  tree. prompter -> user, assistant -> assistant. Deleted messages (and ones
  that failed review) are never followed.
- `topical-chat`: `{id: {"content": [{"agent", "message", ...}]}}`. Every
  conversation opens with agent_1 and the agents alternate, so agent_1 is the
  user and agent_2, who replies to agent_1, is the assistant. Every message
  is tagged with its `style` (the turn's self-annotated sentiment:
  `curious`, `neutral`, `surprised`, `happy`, `sad`, `disgusted`, `angry`,
  `fearful`) and the conversation's `topic` (the topic most of its
  reading-set entities have in `topical-chat-entity-to-topic.json`: movies,
  sci_tech, music, sports, entertainment_general, books, politics, fashion;
  none when no reading sets lie beside the file).
- `topical-chat-grounded`: Topical-Chat with its knowledge, for grounded
  fine-tuning: one example per assistant reply (the reply and up to
  `GROUNDED_CONTEXT` messages before it), grounded in the Wikipedia lead
  sections of the reading-set entities (`FS1`..`FS3`) that the reply's
  `knowledge_source` annotation cites (no knowledge when it cites none).
  The reading sets and `wiki.json` are found beside the conversations
  (`topical-chat-reading-sets-SPLIT.json`, or the repository's
  `reading_sets/pre-build/SPLIT.json`); examples of one conversation share
  its split. `topical-chat-grounded` alone names the bundled `valid_freq`.
- `cornell`: Cornell Movie-Dialogs (`movie_lines.txt` and
  `movie_conversations.txt`, ` +++$+++ `-separated, ISO-8859-1). The
  character who speaks first is the user, the other the assistant;
  consecutive lines of one speaker are joined.
- `dolly`: databricks-dolly-15k, from TFDS (`tfds:databricks_dolly`) or its
  JSONL file: user = instruction (+ blank line + context), assistant = response.
- `kdconv`: KdConv, Chinese knowledge-grounded conversations
  (`[{"name", "messages": [{"message", "attrs": [{"name", "attrname", "attrvalue"}]}]}]`):
  the first speaker is the user, the speakers alternate, each turn's `attrs`
  become its `knowledge` triples (subject = `name`).
- `lccc`: LCCC, short Chinese open-domain conversations, stored with a space
  between characters: JSON `{"train"|"valid"|"test": [[utterance, ...]]}`
  (every split is read; the held-out split is tfchat's own) or text lines
  `post<TAB>response`; the spacing is undone with
  `tfchat.text.chinese.join_characters` (the sample has no real spaces left:
  "w e l c o m e t o S H" becomes "welcometoSH"), the first speaker is the user.
- `messages`: messages-JSONL itself; records in the other row shapes below
  are read too.
- `table`: Parquet files or a Hugging Face dataset (`hf:NAME[:CONFIG][@SPLIT]`,
  see `tfchat.data.tables`), one conversation per row.

Rows (JSONL records, table rows) hold a conversation in one of these shapes,
recognised by their column names unless `Columns` names them:

- a messages column (`messages`, `conversations` or `conversation`): a list
  of OpenAI-style `{"role", "content"}` or ShareGPT-style `{"from", "value"}`
  messages; ShareGPT's `human`/`gpt` (and `prompter`, `model`, `chatgpt`,
  `bard`, `bing`) map to user/assistant, content given as a list of
  `{"type": "text", "text"}` parts is joined;
- one exchange per row: Alpaca's `instruction` (+ `input`) -> `output`,
  Dolly's `instruction` (+ `context`) -> `response`, `prompt` -> `response`,
  `prompt` -> `completion`, `question` -> `answer` (a non-empty `input` or
  `context` follows the instruction after a blank line).

The oasst, topical-chat and cornell readers cut a thread that ends on a user
turn after its last assistant reply (nothing to learn from that turn).
Every file may be gzip/bz2-compressed (`.gz`, `.bz2`). Every conversation is
validated (`validate`): a record that is not JSON, lacks roles or content,
has an unknown role, empty content, a system message other than the first,
or no assistant turn is skipped with a counted warning naming the file and
line; if nothing usable is left, a `ValueError` names the file.

A source is named `FORMAT:PATH` (e.g. `oasst:trees.jsonl.gz`), a bare path
(messages-JSONL), a table (`hf:...`, `*.parquet`), `tfds:databricks_dolly`, or
`dialogues-sample` (the bundled OASST sample and Topical-Chat `valid_freq`),
`chat-sample` (the default fine-tuning data: `dialogues-sample` and
Topical-Chat `valid_rare`, tagged with topic and style), `dialogues-sample-zh` (the bundled KdConv and LCCC
samples: 900 + 13,400 Chinese conversations, Simplified script), or
`grounded-sample` (the bundled OASST sample and Topical-Chat with its
knowledge, for models that answer from retrieved passages).

Example:

>>> stats = ReadStats()
>>> conversations = load_conversations("dialogues-sample", stats)
>>> conversations[0][0]["role"]
'user'
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import logging
import os
from typing import Iterable, Iterator, Sequence

from tfchat.data import io, tables
from tfchat.data.io import ReadStats, open_text
from tfchat.data.tables import Columns
from tfchat.text import chinese
from tfchat.text.special_tokens import ROLES

log = logging.getLogger(__name__)

Message = dict  # {"role": str, "content": str}
Conversation = list  # list[Message]


class Grounded(list):
    """A conversation (a list of messages) with the `knowledge` text it is grounded in, and the `key` that
    decides its split (examples cut from one source conversation share it)."""

    def __init__(self, messages=(), knowledge: str = "", key: str = ""):
        super().__init__(messages)
        self.knowledge, self.key = knowledge, key


def knowledge_of(conversation: Conversation) -> str:
    """The knowledge a conversation is grounded in ("" for none)."""
    return getattr(conversation, "knowledge", "") or ""


FORMATS = ("oasst", "topical-chat", "topical-chat-grounded", "cornell", "dolly", "kdconv", "lccc", "messages", "table")
SAMPLE_NAME = "dialogues-sample"
SAMPLE_FILES = (
    ("oasst", "oasst1-en-100-trees.jsonl.gz"),
    ("topical-chat", "topical-chat-valid-freq.json.gz"),
)
SAMPLE_NAME_ZH = "dialogues-sample-zh"
SAMPLE_FILES_ZH = (
    ("kdconv", "kdconv-film-music-travel.json.xz"),
    ("lccc", "lccc-toy-data.json.xz"),
    ("lccc", "lccc-toy-pairs.txt.xz"),
)
GROUNDED_NAME = "grounded-sample"
GROUNDED_FILES = (
    ("oasst", "oasst1-en-100-trees.jsonl.gz"),
    ("topical-chat-grounded", "topical-chat-valid-freq.json.gz"),
)
# Topical-Chat's entity -> topic map (a bundled resource), for the reader's topic tags.
TOPICAL_CHAT_TOPICS = "topical-chat-entity-to-topic.json"
# Messages before each reply in a grounded example: short windows leave a small model's context to knowledge.
GROUNDED_CONTEXT = 3
# The default fine-tuning data: dialogues-sample and Topical-Chat valid_rare, whose conversations spread over all
# 8 topics (valid_freq's are 81% sports), so that topic tags have something to learn from.
CHAT_NAME = "chat-sample"
CHAT_FILES = SAMPLE_FILES + (("topical-chat", "topical-chat-valid-rare.json.xz"),)
BUNDLED = {SAMPLE_NAME: SAMPLE_FILES, CHAT_NAME: CHAT_FILES, SAMPLE_NAME_ZH: SAMPLE_FILES_ZH, GROUNDED_NAME: GROUNDED_FILES,
           "topical-chat-grounded": (("topical-chat-grounded", "topical-chat-valid-freq.json.gz"),)}


def default_dialogue_source() -> str:
    """The default fine-tuning data: the bundled OASST + Topical-Chat samples (`chat-sample`)."""
    return CHAT_NAME


def tag_values(conversations: Iterable[Conversation]) -> dict[str, list[str]]:
    """The tags of the assistant messages, {name: sorted values}, names sorted: a tag vocabulary's data."""
    found: dict[str, set] = {}
    for conversation in conversations:
        for m in conversation:
            if m.get("role") == "assistant":
                for name, value in (m.get("tags") or {}).items():
                    found.setdefault(name, set()).add(value)
    return {name: sorted(found[name]) for name in sorted(found)}


# ------------------------------------------------------------------ validation


def validate(messages, need_reply: bool = True) -> str | None:
    """Returns why a conversation is unusable ("reason (detail)"), or None; `need_reply=False` accepts one
    without an assistant turn (the prompt of a preference pair)."""
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
        if "knowledge" in message and not _is_triples(message["knowledge"]):
            return f"knowledge is not a list of [subject, relation, object] strings (message {i})"
        if "tags" in message and not _is_tags(message["tags"]):
            return f"tags is not an object of name: value strings (message {i})"
    if need_reply and not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn"
    return None


def _is_triples(knowledge) -> bool:
    return isinstance(knowledge, list) and all(
        isinstance(t, list) and len(t) == 3 and all(isinstance(x, str) for x in t) for t in knowledge)


def _is_tags(tags) -> bool:
    return isinstance(tags, dict) and all(isinstance(k, str) and k and isinstance(v, str) and v
                                          for k, v in tags.items())


def _canonical(message: dict) -> Message:
    """role and content, and knowledge and tags when there are some."""
    out = {"role": message["role"], "content": message["content"]}
    for key in ("knowledge", "tags"):
        if message.get(key):
            out[key] = message[key]
    return out


def with_conversation_tags(messages: list, tags) -> list:
    """Conversation-level `tags` applied to every assistant message (a message's own tags win); a value that
    is not an object is left on the messages for `validate` to name."""
    if not tags:
        return messages
    out = []
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "assistant":
            own = m.get("tags", {})
            m = {**m, "tags": {**tags, **own} if isinstance(tags, dict) and isinstance(own, dict) else tags}
        out.append(m)
    return out


# ------------------------------------------------------------------ row shapes

ROLE_ALIASES = {"human": "user", "prompter": "user", "gpt": "assistant", "model": "assistant",
                "chatgpt": "assistant", "bard": "assistant", "bing": "assistant"}
MESSAGES_COLUMNS = ("messages", "conversations", "conversation")
# (prompt, response, context appended to the prompt), in the order they are tried.
EXCHANGE_COLUMNS = (("instruction", "output", "input"), ("instruction", "response", "context"),
                    ("prompt", "response", None), ("prompt", "completion", None), ("question", "answer", None))


@dataclasses.dataclass(frozen=True)
class RowShape:
    """Where a row holds its conversation: a `messages` column, or `prompt` (+ `context`) -> `response`."""

    messages: str | None = None
    prompt: str | None = None
    response: str | None = None
    context: str | None = None

    @property
    def columns(self) -> list[str]:
        return [c for c in (self.messages, self.prompt, self.context, self.response) if c]


def row_shape(names, columns: Columns | None = None) -> RowShape | None:
    """The shape of rows with these column names (`columns` names them; else recognised); None if none fits."""
    names, columns = set(names), columns or Columns()
    if columns.prompt:
        return RowShape(prompt=columns.prompt, response=columns.response) \
            if {columns.prompt, columns.response} <= names else None
    if columns.messages:
        return RowShape(messages=columns.messages) if columns.messages in names else None
    for name in MESSAGES_COLUMNS:
        if name in names:
            return RowShape(messages=name)
    for prompt, response, context in EXCHANGE_COLUMNS:
        if prompt in names and response in names:
            return RowShape(prompt=prompt, response=response, context=context if context in names else None)
    return None


def _shape_error(where: str, names, columns: Columns | None) -> ValueError:
    columns = columns or Columns()
    listing = ", ".join(names)
    if columns.prompt or columns.messages:
        missing = [c for c in (columns.messages, columns.prompt, columns.response) if c and c not in names]
        return ValueError(f"{where}: no column {missing[0]!r} (columns: {listing})")
    return ValueError(
        f"{where}: no conversation columns (columns: {listing}); expected a messages column "
        f"({', '.join(MESSAGES_COLUMNS)}) or an exchange ({', '.join(f'{p}/{r}' for p, r, _ in EXCHANGE_COLUMNS)}); "
        "name them with --messages-column or --prompt-column/--response-column")


def _content(value):
    if isinstance(value, list):  # [{"type": "text", "text": ...}, ...] parts
        parts = [p.get("text") for p in value if isinstance(p, dict) and p.get("type", "text") == "text"]
        if parts and all(isinstance(p, str) for p in parts):
            return "".join(parts)
    return value


def messages_from_row(row: dict, shape: RowShape) -> list:
    """A row -> messages (not yet validated: `validate` judges them)."""
    if shape.messages is None:
        prompt, response = _content(row.get(shape.prompt)), _content(row.get(shape.response))
        context = row.get(shape.context) if shape.context else None
        if isinstance(prompt, str):
            prompt = prompt.strip()
            if isinstance(context, str) and context.strip():
                prompt += "\n\n" + context.strip()
        return with_conversation_tags([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                                      row.get("tags"))
    raw = row.get(shape.messages)
    if isinstance(raw, str):  # some sets store the list as a JSON string
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            return []
    if not isinstance(raw, list):
        return []
    messages = []
    for m in raw:
        if not isinstance(m, dict):
            messages.append(m)
            continue
        message = {}  # a missing role or content stays missing, for `validate` to name
        for key, alias in (("role", "from"), ("content", "value")):
            if key in m or alias in m:
                message[key] = m.get(key, m.get(alias))
        if isinstance(message.get("role"), str):
            message["role"] = ROLE_ALIASES.get(message["role"].lower(), message["role"].lower())
        if "content" in message:
            message["content"] = _content(message["content"])
        for key in ("knowledge", "tags"):
            if key in m:
                message[key] = m[key]
        messages.append(message)
    return _trim_trailing_user(with_conversation_tags(messages, row.get("tags")))


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


def read_messages_jsonl(path: str, stats: ReadStats, columns: Columns | None = None
                        ) -> Iterator[tuple[str, str, object]]:
    """messages-JSONL, or JSONL records in another row shape (see the module docstring)."""
    for where, obj in _jsonl(path, stats):
        shape = row_shape(obj, columns) if isinstance(obj, dict) else None
        if shape is None:
            fields = "/".join(f'"{c}"' for c in (columns.messages, columns.prompt, columns.response) if c) \
                if columns and (columns.messages or columns.prompt) else None
            stats.skip(path, where, f"no {fields} fields" if fields else 'no "messages" list')
            continue
        messages = messages_from_row(obj, shape)
        knowledge = obj.get("knowledge")
        if isinstance(knowledge, str) and knowledge.strip() and isinstance(messages, list):
            messages = Grounded(messages, knowledge.strip())
        yield where, path, messages


def read_table(spec: str, stats: ReadStats, columns: Columns | None = None) -> Iterator[tuple[str, str, object]]:
    """One conversation per row of a table (`hf:...`, Parquet); the shape is judged once, from the columns."""
    table = tables.open_table(tables.parse_table(spec), streaming=False)  # read whole at every evaluation
    shape = row_shape(table.column_names, columns)
    if shape is None:
        raise _shape_error(spec, table.column_names, columns)
    for column in (shape.messages, shape.prompt, shape.response):  # in every Parquet file, not only the first
        if column:
            table.require(column, "--messages-column or --prompt-column/--response-column")
    log.debug("%s: %s; conversations from %s", spec, table.description, ", ".join(shape.columns))
    for i, row in enumerate(table.iter_rows(shape.columns)):
        stats.read += 1
        yield f"{spec}[{i}]", spec, messages_from_row(row, shape)


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


def _read_json(path: str, what: str):
    try:
        with open_text(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not {what} ({e})") from None


def topical_chat_style(sentiment) -> str | None:
    """A Topical-Chat turn's self-annotated sentiment as a style tag: "Curious to dive deeper" -> "curious"."""
    return sentiment.split()[0].lower() if isinstance(sentiment, str) and sentiment.strip() else None


@functools.lru_cache(maxsize=1)
def _entity_topics() -> dict:
    with open_text(io.resource_path(TOPICAL_CHAT_TOPICS)) as f:
        return json.load(f)


def topical_chat_topics(path: str) -> dict[str, str]:
    """{conversation id: topic} of a Topical-Chat file: the topic (`topical-chat-entity-to-topic.json`) most of
    the conversation's reading-set entities (`FS1`..`FS3`) have, ties to the earlier entity. {} (logged) when
    no reading sets lie beside the file."""
    try:
        sets = _read_json(_reading_sets_of(path), "Topical-Chat reading sets")
    except FileNotFoundError as e:
        log.warning("%s; its conversations get style tags but no topic", e)
        return {}
    topics, out = _entity_topics(), {}
    for conv_id, agents in sets.items() if isinstance(sets, dict) else ():
        agent = (agents or {}).get("agent_1") if isinstance(agents, dict) else None
        found = [topics.get((agent.get(fs) or {}).get("entity")) for fs in ("FS1", "FS2", "FS3")] \
            if isinstance(agent, dict) else []
        found = [t for t in found if t]
        if found:
            out[conv_id] = max(found, key=lambda t: (found.count(t), -found.index(t)))
    return out


def read_topical_chat(path: str, stats: ReadStats, raw: dict | None = None) -> Iterator[tuple[str, str, object]]:
    """Topical-Chat conversations, every message tagged with its style and the conversation's topic; `raw`,
    when given, receives each conversation's annotated turns by id."""
    agents = {"agent_1": "user", "agent_2": "assistant"}
    data = _read_json(path, "a Topical-Chat JSON file")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a Topical-Chat JSON file (expected an object of conversations)")
    topics = topical_chat_topics(path)
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
            tags = {"style": topical_chat_style(t.get("sentiment")), "topic": topics.get(conv_id)}
            messages.append({"role": agents.get(t.get("agent"), t.get("agent")), "content": t.get("message"),
                             **({"tags": {k: v for k, v in tags.items() if v}} if any(tags.values()) else {})})
        if raw is not None:
            raw[conv_id] = turns
        yield where, path, _trim_trailing_user(messages)


def _beside(path: str, names: Sequence[str], what: str) -> str:
    """The first of `names` (relative to `path`'s directory, compressed or not) that exists."""
    directory = os.path.dirname(os.path.abspath(path))
    for name in names:
        for suffix in ("", ".gz", ".bz2", ".xz"):
            candidate = os.path.normpath(os.path.join(directory, name + suffix))
            if os.path.exists(candidate):
                return candidate
    raise FileNotFoundError(f"{path}: no {what} beside it (looked for {', '.join(names)}); grounded Topical-Chat "
                            "needs the conversations, their reading sets and wiki.json")


def _reading_sets_of(path: str) -> str:
    """The reading sets of a Topical-Chat conversations file (tfchat's names, or the repository's layout)."""
    split = os.path.basename(path).split(".")[0].removeprefix("topical-chat-")  # valid_freq / valid-freq
    return _beside(path, [f"topical-chat-reading-sets-{split}.json", f"../reading_sets/pre-build/{split}.json"],
                   "reading sets")


def read_topical_chat_grounded(path: str, stats: ReadStats) -> Iterator[tuple[str, str, object]]:
    """Topical-Chat replies with the lead sections their annotations cite (see the module docstring)."""
    reading_sets = _reading_sets_of(path)
    wiki = _beside(path, ["topical-chat-wiki.json", "../reading_sets/pre-build/wiki.json", "wiki.json"], "wiki.json")
    try:
        with open_text(reading_sets) as f:
            sets = json.load(f)
        with open_text(wiki) as f:
            texts = {i: text for sections in json.load(f).values() for text, i in sections.items()}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, EOFError) as e:
        raise ValueError(f"{reading_sets} or {wiki}: not Topical-Chat reading sets / wiki.json ({e})") from None
    conversations = {}
    for where, _, messages in read_topical_chat(path, stats, conversations):
        conv_id = where.rsplit(":", 1)[1]
        facts = (sets.get(conv_id) or {}).get("agent_2") or {}
        turns = conversations[conv_id]
        for i, message in enumerate(messages):
            if message.get("role") != "assistant" or i == 0:
                continue
            start = max(0, i - GROUNDED_CONTEXT)
            start += start % 2  # open on a user turn (even positions: agent_1)
            leads = []
            for key in turns[i].get("knowledge_source") or []:
                fact = facts.get(key) if isinstance(key, str) and key.startswith("FS") else None
                if isinstance(fact, dict):
                    lead = texts.get(fact.get("summarized_wiki_lead_section") or fact.get("shortened_wiki_lead_section"))
                    if lead:
                        leads.append(f"{fact.get('entity', '')}: {' '.join(lead.split())}")
            yield f"{where}#{i}", path, Grounded(messages[start:i + 1], "\n\n".join(leads), key=conv_id)


def grounded_questions(path: str | None = None) -> list[tuple[str, str]]:
    """A labelled retrieval question set from Topical-Chat (default: the bundled `valid_rare`, a split tfchat
    never fine-tunes on): every user turn (agent_1) that asks a question ("?") and whose `knowledge_source`
    cites one of its reading set's entities (`FS1`..`FS3`), with that entity: [(question, entity)], in file
    order, duplicates dropped. The question was written by a person reading the entity's Wikipedia lead, so
    a retriever should find the entity's passage for it."""
    path = path or io.resource_path("topical-chat-valid-rare.json.xz")
    reading_sets = _reading_sets_of(path)
    with open_text(path) as f:
        conversations = json.load(f)
    with open_text(reading_sets) as f:
        sets = json.load(f)
    out, seen = [], set()
    for conv_id, conv in conversations.items():
        facts = (sets.get(conv_id) or {}).get("agent_1") or {}
        for turn in conv.get("content") or []:
            text = " ".join(str(turn.get("message") or "").split())
            cited = [facts[k]["entity"] for k in turn.get("knowledge_source") or []
                     if isinstance(k, str) and k.startswith("FS") and isinstance(facts.get(k), dict)
                     and facts[k].get("entity")]
            if turn.get("agent") == "agent_1" and "?" in text and len(set(cited)) == 1 and text not in seen:
                seen.add(text)
                out.append((text, cited[0]))
    return out


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


_DOLLY = RowShape(prompt="instruction", response="response", context="context")


def read_dolly(path: str, stats: ReadStats) -> Iterator[tuple[str, str, object]]:
    """`path`: `tfds:databricks_dolly[:split]` or the databricks-dolly-15k JSONL."""
    if path.startswith("tfds:"):
        import tensorflow_datasets as tfds

        name, _, split = path[len("tfds:"):].partition(":")
        dataset = tfds.load(name or "databricks_dolly", split=split or "train", shuffle_files=False)
        for i, ex in enumerate(tfds.as_numpy(dataset)):
            stats.read += 1
            text = {k: ex[k].decode("utf-8") for k in ("instruction", "context", "response")}
            yield f"{path}[{i}]", path, messages_from_row(text, _DOLLY)
        return
    for where, obj in _jsonl(path, stats):
        if not isinstance(obj, dict) or not all(isinstance(obj.get(k, ""), str) for k in ("instruction", "context", "response")):
            stats.skip(path, where, "not a dolly record (instruction/context/response)")
            continue
        yield where, path, messages_from_row({"instruction": "", "response": "", **obj}, _DOLLY)


def _alternating(utterances: list, knowledge: list | None = None) -> list:
    """Utterances of two speakers taking turns, the first the user's; `knowledge[i]`: triples of utterance i."""
    messages = []
    for i, text in enumerate(utterances):
        message = {"role": "user" if i % 2 == 0 else "assistant", "content": text}
        if knowledge and knowledge[i]:
            message["knowledge"] = knowledge[i]
        messages.append(message)
    return _trim_trailing_user(messages)


def read_kdconv(path: str, stats: ReadStats) -> Iterator[tuple[str, str, object]]:
    data = _read_json(path, "a KdConv JSON file")
    if not isinstance(data, list):
        raise ValueError(f"{path}: not a KdConv JSON file (expected a list of dialogues)")
    for i, dialogue in enumerate(data):
        stats.read += 1
        where = f"{path}[{i}]"
        turns = dialogue.get("messages") if isinstance(dialogue, dict) else None
        if not isinstance(turns, list):
            stats.skip(path, where, 'no "messages" list')
            continue
        turns = [t if isinstance(t, dict) else {} for t in turns]
        triples = [[[a.get(k) for k in ("name", "attrname", "attrvalue")] for a in t.get("attrs") or []
                    if isinstance(a, dict)] for t in turns]
        knowledge = [[k for k in ks if all(isinstance(x, str) for x in k)] for ks in triples]  # incomplete ones go
        yield where, path, _alternating([t.get("message") for t in turns], knowledge)


def read_lccc(path: str, stats: ReadStats) -> Iterator[tuple[str, str, object]]:
    """LCCC's JSON (`{split: [[utterance, ...]]}`) or `post<TAB>response` lines (by the file's first character)."""
    with open_text(path) as f:
        first = f.read(1)
    if first and first in "{[":
        data = _read_json(path, "an LCCC JSON file")
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise ValueError(f"{path}: not an LCCC JSON file (expected {{split: [[utterance, ...]]}})")
        rows = ((f"{path}:{split}[{i}]", c) for split, convs in data.items() for i, c in enumerate(convs))
    else:
        rows = _tab_lines(path)
    for where, utterances in rows:
        stats.read += 1
        if not isinstance(utterances, list) or not all(isinstance(u, str) for u in utterances):
            stats.skip(path, where, "not a list of utterances")
            continue
        yield where, path, _alternating([chinese.join_characters(u) for u in utterances])


def _tab_lines(path: str) -> Iterator[tuple[str, list]]:
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield f"{path}:{lineno}", line.rstrip("\r\n").split("\t")


READERS = {
    "oasst": read_oasst,
    "topical-chat": read_topical_chat,
    "topical-chat-grounded": read_topical_chat_grounded,
    "cornell": read_cornell,
    "dolly": read_dolly,
    "kdconv": read_kdconv,
    "lccc": read_lccc,
    "messages": read_messages_jsonl,
    "table": read_table,
}
# Readers that take a `columns` mapping.
_COLUMN_READERS = ("messages", "table")


def read_conversations(format: str, path: str, stats: ReadStats | None = None, columns: Columns | None = None
                       ) -> Iterator[Conversation]:
    """Yields the valid conversations of one file (or table) in canonical form.

    Raises:
        ValueError: naming `path` when no usable conversation is left.
    """
    if format not in READERS:
        raise ValueError(f"unknown dialogue format {format!r}; expected one of {FORMATS}")
    if format != "table" and not path.startswith("tfds:") and not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    stats = stats if stats is not None else ReadStats()
    kept_before = stats.total_kept
    reader = functools.partial(READERS[format], columns=columns) if format in _COLUMN_READERS else READERS[format]
    for where, file, messages in reader(path, stats):
        reason = validate(messages)
        if reason:
            stats.skip(file, where, reason)
            continue
        stats.kept["conversations"] += 1
        clean = [_canonical(m) for m in messages]
        yield Grounded(clean, messages.knowledge, messages.key) if isinstance(messages, Grounded) else clean
    if stats.total_kept == kept_before:
        first = "; ".join(stats.first_problems.values()) or "the file holds no records"
        raise ValueError(f"{path}: no usable {format} conversations ({stats.summary()}; first problem: {first})")


def parse_dialogue_source(source: str) -> list[tuple[str, str]]:
    """`FORMAT:PATH`, a path, a table, `tfds:databricks_dolly` or a bundled sample -> [(format, path)]."""
    if source in BUNDLED:
        return [(fmt, io.resource_path(name)) for fmt, name in BUNDLED[source]]
    if tables.is_table_source(source):
        return [("table", source)]
    if source.startswith("tfds:"):
        name = source[len("tfds:"):].split(":")[0].split("/")[0]
        if name != "databricks_dolly":
            raise ValueError(f"{source}: the only TFDS dialogue dataset supported is databricks_dolly")
        return [("dolly", source)]
    fmt, sep, path = source.partition(":")
    if sep and fmt in READERS:
        return [(fmt, path)]
    return [("messages", source)]


def iter_conversations(
    source: str | Sequence[str], stats: ReadStats | None = None, columns: Columns | None = None
) -> Iterator[Conversation]:
    """The valid conversations of one or several dialogue sources (see the module docstring), in order."""
    stats = stats if stats is not None else ReadStats()
    for name in [source] if isinstance(source, str) else list(source):
        for fmt, path in parse_dialogue_source(name):
            yield from read_conversations(fmt, path, stats, columns)


def load_conversations(
    source: str | Sequence[str], stats: ReadStats | None = None, columns: Columns | None = None
) -> list[Conversation]:
    """Reads one or several dialogue sources (see the module docstring) into a list."""
    stats = stats if stats is not None else ReadStats()
    conversations = list(iter_conversations(source, stats, columns))
    log.info("dialogues %s: %s", source if isinstance(source, str) else ", ".join(source), stats.summary())
    return conversations


def is_dialogue_source(source: str, columns: Columns | None = None) -> bool:
    """True for a bundled sample, `tfds:databricks_dolly`, `FORMAT:PATH` with a dialogue FORMAT, or a
    file whose first non-blank line is a JSON object (or a table whose columns are) in a conversation shape."""
    if source in BUNDLED or source.startswith("tfds:databricks_dolly"):
        return True
    fmt, sep, _ = source.partition(":")
    if sep and fmt in READERS:
        return True
    if tables.is_table_source(source):
        return row_shape(tables.open_table(tables.parse_table(source)).column_names, columns) is not None
    if os.path.isfile(source):
        try:
            with open_text(source) as f:
                record = json.loads(next((line for line in f if line.strip()), ""))
        except (OSError, EOFError, UnicodeDecodeError, ValueError):
            return False  # not JSONL at all: the text reader judges it
        return isinstance(record, dict) and row_shape(record, columns) is not None
    return False


def split_of(conversation: Conversation) -> str:
    """'train' or 'validation', a deterministic function of the conversation's content (or of its `key`:
    the examples cut from one grounded conversation share a split)."""
    # Without tags: tagging a dataset must not move its conversations between splits.
    key = getattr(conversation, "key", "") or json.dumps([{k: v for k, v in m.items() if k != "tags"}
                                                           for m in conversation], ensure_ascii=False, sort_keys=True)
    return io.split_of(key)


def convert_script(conversation: Conversation, config: str) -> Conversation:
    """The conversation with its contents and knowledge converted by OpenCC (`tfchat.text.chinese.convert_script`)."""
    out = []
    for message in conversation:
        message = {**message, "content": chinese.convert_script(message["content"], config)}
        if "knowledge" in message:
            message["knowledge"] = [[chinese.convert_script(x, config) for x in t] for t in message["knowledge"]]
        out.append(message)
    return out


def write_messages_jsonl(conversations: Iterable[Conversation], path: str) -> int:
    """Writes messages-JSONL atomically (temp file, then rename). Returns the count."""
    return io.write_jsonl(({"messages": c, **({"knowledge": knowledge_of(c)} if knowledge_of(c) else {})}
                           for c in conversations), path)
