"""Control tags: named labels (`{"topic": "music", "style": "happy"}`) as control ids in the chat template.

A model trained with tags has a tag vocabulary, stored with it (the model
directory's tfchat.json and the SavedModel metadata, key "tags"):

    {"topic": ["books", "fashion", ...], "style": ["angry", "curious", ...]}

Each (name, value) pair gets one of the tokenizer's reserved
`<|control_i|>` ids, in that order: the first name's values first. A
rendered reply is preceded by the ids of its tags, names in vocabulary
order (CTRL-style control codes, Keskar et al. 2019), so the model learns to
condition on them; they are never in the loss, and since encoding text
never produces a control id, no user text can forge one. An unknown name or
value is a `ValueError`, never silently ignored.

Example:

>>> from tfchat.text.special_tokens import SpecialIds
>>> special = SpecialIds({"eot": 2, "system": 3, "user": 4, "assistant": 5, "end": 6,
...                       **{f"control_{i}": 10 + i for i in range(32)}}, pad=0)
>>> tags = TagVocabulary({"topic": ["music", "sports"], "style": ["happy", "sad"]}, special)
>>> tags.ids({"style": "sad", "topic": "music"})
[10, 13]
>>> tags.ids({"topic": "cooking"})
Traceback (most recent call last):
...
ValueError: unknown topic 'cooking'; known: music, sports
"""

from __future__ import annotations

from typing import Mapping, Sequence

from tfchat.text.special_tokens import SpecialIds


def check_tags(vocabulary: Mapping[str, Sequence[str]], tags: Mapping[str, str]) -> None:
    """Raises ValueError naming the first name or value of `tags` that `vocabulary` ({name: [values]}) lacks;
    a None value means "untagged for that name"."""
    unknown = sorted(set(tags) - set(vocabulary))
    if unknown:
        raise ValueError(f"unknown tag {unknown[0]!r}; known: {', '.join(vocabulary)}")
    for name, values in vocabulary.items():
        if tags.get(name) is not None and tags[name] not in values:
            raise ValueError(f"unknown {name} {tags[name]!r}; known: {', '.join(values)}")


class TagVocabulary:
    """Tag names and their values, mapped onto a tokenizer's reserved control ids."""

    def __init__(self, tags: Mapping[str, Sequence[str]], special: SpecialIds):
        self.tags = {str(name): [str(v) for v in values] for name, values in tags.items()}
        pairs = [(name, value) for name, values in self.tags.items() for value in values]
        if len(set(pairs)) != len(pairs):
            raise ValueError("a tag vocabulary lists a value twice under one name")
        if len(pairs) > len(special.controls):
            raise ValueError(f"{len(pairs)} tag values need as many control ids; the tokenizer has "
                             f"{len(special.controls)} (a tokenizer trained before tfchat 0.2 has none)")
        self._ids = {pair: special.controls[i] for i, pair in enumerate(pairs)}

    def ids(self, tags: Mapping[str, str] | None) -> list[int]:
        """Control ids for `tags` ({name: value}), in vocabulary order; None or {} gives []."""
        if not tags:
            return []
        if not isinstance(tags, Mapping):
            raise ValueError(f"tags must be an object of name: value, got {type(tags).__name__}")
        check_tags(self.tags, tags)
        return [self._ids[(name, tags[name])] for name in self.tags if tags.get(name) is not None]

    def to_dict(self) -> dict[str, list[str]]:
        return {name: list(values) for name, values in self.tags.items()}

    @classmethod
    def from_dict(cls, tags: Mapping[str, Sequence[str]] | None, special: SpecialIds) -> "TagVocabulary | None":
        """None for a model without tags."""
        return cls(tags, special) if tags else None
