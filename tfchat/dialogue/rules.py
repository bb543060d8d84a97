"""Dialogue rules: which intents retrieve knowledge, fixed replies and templates with slots, the refusal.

The rules are a JSON file (the bundled default is
`tfchat/resources/dialogue-rules.json`):

    {
      "format": "tfchat-dialogue-rules", "version": 1,
      "slots": {"assistant_name": "tfchat"},            # your own slot values
      "refusal": "Sorry, I can't help with that.",      # the `refuse` route's reply
      "min_confidence": 0.5,                            # below it, an intent's template is not used
      "retrieve": ["knowledge_question", "oos"],        # intents answered from the knowledge base
      "templates": {"greeting": ["Hello!", "Hi there!"], # intent -> replies (one is picked)
                    "date": ["Today is {weekday}, {date}."]}
    }

A template is `str.format` text whose `{slots}` are filled from `slots`
and from the built-in ones: `date` (2026-11-26), `time` (14:05),
`weekday` (Thursday), `timezone` (UTC) of the server's clock, and
`user_text` (the message being answered). An unknown slot is an error when
the rules are loaded, not when a user hits the template. A reply is chosen
among an intent's templates by a hash of the user's message, so the same
question gets the same answer.

Example:

>>> rules = Rules.from_dict({"templates": {"greeting": ["Hi, I am {assistant_name}."]},
...                          "slots": {"assistant_name": "Ada"}})
>>> rules.reply("greeting", "hello")
'Hi, I am Ada.'
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import string
from typing import Callable, Mapping

from tfchat.data import io

FORMAT, VERSION = "tfchat-dialogue-rules", 1
BUILTIN_SLOTS = ("date", "time", "weekday", "timezone", "user_text")
DEFAULT_FILE = "dialogue-rules.json"


@dataclasses.dataclass(frozen=True)
class Rules:
    templates: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    retrieve: frozenset = frozenset()
    slots: Mapping[str, str] = dataclasses.field(default_factory=dict)
    refusal: str = "Sorry, I can't help with that."
    min_confidence: float = 0.5
    clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now().astimezone()

    @classmethod
    def load(cls, path: str | None = None) -> "Rules":
        """The rules in a JSON file (default: the bundled one). ValueError names what is wrong."""
        path = path or io.resource_path(DEFAULT_FILE)
        try:
            with io.open_text(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"dialogue rules not found: {path}") from None
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a JSON rules file ({e})") from None
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_dict(cls, data) -> "Rules":
        if not isinstance(data, dict):
            raise ValueError("dialogue rules must be a JSON object")
        if data.get("format", FORMAT) != FORMAT or data.get("version", VERSION) > VERSION:
            raise ValueError(f"not {FORMAT} version <= {VERSION} (format {data.get('format')!r}, "
                             f"version {data.get('version')!r})")
        unknown = sorted(set(data) - {"format", "version", "slots", "refusal", "min_confidence", "retrieve", "templates"})
        if unknown:
            raise ValueError(f"unknown keys {unknown}")
        slots = data.get("slots", {})
        if not isinstance(slots, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in slots.items()):
            raise ValueError('"slots" must map names to strings')
        templates = {}
        for intent, replies in (data.get("templates") or {}).items():
            replies = [replies] if isinstance(replies, str) else replies
            if not isinstance(replies, list) or not replies or not all(isinstance(r, str) and r.strip() for r in replies):
                raise ValueError(f'templates["{intent}"] must be a non-empty string or list of them')
            for reply in replies:
                missing = [name for _, name, _, _ in string.Formatter().parse(reply)
                           if name is not None and name not in slots and name not in BUILTIN_SLOTS]
                if missing:
                    raise ValueError(f'templates["{intent}"]: unknown slot {{{missing[0]}}} (known: '
                                     f"{', '.join([*BUILTIN_SLOTS, *slots])})")
            templates[intent] = tuple(replies)
        retrieve = data.get("retrieve", [])
        if not isinstance(retrieve, list) or not all(isinstance(x, str) for x in retrieve):
            raise ValueError('"retrieve" must be a list of intent names')
        refusal = data.get("refusal", cls.refusal)
        confidence = data.get("min_confidence", cls.min_confidence)
        if not isinstance(refusal, str) or not refusal.strip():
            raise ValueError('"refusal" must be a non-empty string')
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 <= confidence <= 1:
            raise ValueError('"min_confidence" must be a number in [0, 1]')
        return cls(templates, frozenset(retrieve), dict(slots), refusal, float(confidence))

    def reply(self, intent: str, user_text: str) -> str | None:
        """The filled template of `intent` for `user_text`, or None when the intent has none."""
        replies = self.templates.get(intent)
        if not replies:
            return None
        now = self.clock()
        pick = int.from_bytes(hashlib.sha256(user_text.encode("utf-8")).digest()[:4], "big") % len(replies)
        values = {"date": now.strftime("%Y-%m-%d"), "time": now.strftime("%H:%M"), "weekday": now.strftime("%A"),
                  "timezone": now.tzname() or "local time", "user_text": user_text, **self.slots}
        return replies[pick].format(**values)
