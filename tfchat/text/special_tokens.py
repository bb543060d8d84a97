"""The special-token registry: every control id tfchat puts into a sequence, named once.

Special tokens are *control* ids: encoding text never produces them (the text
"<|user|>" is ordinary characters), so user input cannot forge a turn
marker, a knowledge segment or a control tag. Every stage that builds or
reads sequences (the chat template, pretraining batches, evaluation, export,
the server) asks this module for them:

| name | piece | where it goes |
|---|---|---|
| `eot` | `<|endoftext|>` | before every document and every conversation (`document`) |
| `system`, `user`, `assistant` | `<|system|>` ... | before a message of that role (`role_id`) |
| `end` | `<|end|>` | after every message; with `eot`, what stops generation (`stop_ids`) |
| `knowledge` | `<|knowledge|>` | opens a retrieved-knowledge segment (closed by `end`) |
| `control_0` .. `control_31` | `<|control_0|>` ... | reserved for control tags (topic, style) |

A new SentencePiece tokenizer gets every piece (in this order, after
`<|pad|>` and `<unk>`); a tokenizer trained before the knowledge and control
pieces existed, or GPT-2's, has the core five and reports the others as
missing (`SpecialIds.has`).

Example:

>>> ids = SpecialIds({"eot": 2, "system": 3, "user": 4, "assistant": 5, "end": 6}, pad=0)
>>> ids.document([10, 11]), ids.stop_ids, ids.role_id("user")
([2, 10, 11], (6, 2), 4)
>>> ids.has("knowledge")
False
"""

from __future__ import annotations

from typing import Mapping, Sequence

ROLES = ("system", "user", "assistant")
CORE = ("eot", *ROLES, "end")
NUM_CONTROL = 32
CONTROLS = tuple(f"control_{i}" for i in range(NUM_CONTROL))
OPTIONAL = ("knowledge", *CONTROLS)
NAMES = CORE + OPTIONAL

PIECES: dict[str, str] = {name: ("<|endoftext|>" if name == "eot" else f"<|{name}|>") for name in NAMES}
PAD_PIECE = "<|pad|>"


class SpecialIds:
    """A tokenizer's special ids, resolved from the registry.

    Attributes:
        eot, system, user, assistant, end, pad: ids every tokenizer has.
        knowledge: id or None; controls: the reserved control-tag ids (maybe empty).
    """

    def __init__(self, ids: Mapping[str, int], pad: int):
        missing = [name for name in CORE if name not in ids]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {[PIECES[n] for n in missing]}")
        unknown = sorted(set(ids) - set(NAMES))
        if unknown:
            raise ValueError(f"unknown special tokens {unknown}")
        self._ids = {name: int(ids[name]) for name in NAMES if name in ids}
        self.pad = int(pad)
        self.eot, self.system, self.user = self._ids["eot"], self._ids["system"], self._ids["user"]
        self.assistant, self.end = self._ids["assistant"], self._ids["end"]
        self.knowledge = self._ids.get("knowledge")
        self.controls = tuple(self._ids[name] for name in CONTROLS if name in self._ids)

    def has(self, name: str) -> bool:
        return name in self._ids

    def __getitem__(self, name: str) -> int:
        if name not in self._ids:
            raise KeyError(f"this tokenizer has no {PIECES.get(name, name)} token (trained before it existed?)")
        return self._ids[name]

    @property
    def stop_ids(self) -> tuple[int, int]:
        """What ends a generated reply or continuation: end of turn, end of text."""
        return (self.end, self.eot)

    def role_id(self, role: str) -> int:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        return self._ids[role]

    def document(self, ids: Sequence[int]) -> list[int]:
        """A document as the model sees it in pretraining: `<|endoftext|>` then its ids."""
        return [self.eot, *ids]

    def all_ids(self) -> list[int]:
        return sorted({*self._ids.values(), self.pad})

    def to_dict(self) -> dict[str, int]:
        """{name: id}, `pad` included (stored in tokenizer.json and export metadata)."""
        return {**self._ids, "pad": self.pad}

    @classmethod
    def from_dict(cls, ids: Mapping[str, int]) -> "SpecialIds":
        ids = dict(ids)
        return cls(ids, ids.pop("pad", ids.get("eot")))
