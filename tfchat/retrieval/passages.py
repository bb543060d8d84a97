"""Knowledge-base passages: documents of text sources split into short titled passages.

A passage is what retrieval returns and what goes into the chat template's
knowledge segment: a few sentences of one document with its title, about
`MAX_WORDS` words (Karpukhin et al. 2020, "Dense Passage Retrieval", split
Wikipedia into 100-word passages; shorter ones fit a small model's context
next to the dialogue). Splitting, per document:

1. paragraphs (blank-line separated); a leading line equal to the title is
   dropped (dump documents start with it);
2. consecutive paragraphs are joined while the passage stays within
   `max_words`; a paragraph longer than that is cut at sentence ends (a
   sentence longer than that at word boundaries);
3. passages under `MIN_WORDS` words (headings, list stubs) are dropped.

Sources (`read_passages`): every text source of `tfchat.data.sources` (the
bundled `wikipedia-sample`, dumps, WikiExtractor output, `.txt`, `.jsonl`:
anything `training.pretrain --data` reads; the document id, an article
title for Wikipedia, is the title), and `topical-chat-wiki`: the bundled
Wikipedia lead sections of the 165 entities of Topical-Chat's validation reading sets, one
passage each, titled by the entity.

Example:

>>> [p.text for p in split_document("Cats", "Cats\\n\\nCats purr. They sleep a lot.", max_words=3, min_words=1)]
['Cats purr.', 'They sleep a', 'lot.']
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Iterator, Sequence

from tfchat.data import io
from tfchat.data.io import ReadStats, open_text

MAX_WORDS = 100
MIN_WORDS = 8
TOPICAL_CHAT_WIKI = "topical-chat-wiki"
DEFAULT_SOURCES = ("wikipedia-sample", TOPICAL_CHAT_WIKI)

# A sentence ends at . ! ? (or their CJK forms) followed by space or the end.
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])")


@dataclasses.dataclass(frozen=True)
class Passage:
    """One retrievable unit: `title` (its document), `text`, `source` (the source spec it came from)."""

    title: str
    text: str
    source: str = ""

    def to_json(self) -> dict:
        return {"title": self.title, "text": self.text, "source": self.source}

    def render(self) -> str:
        """How the passage reads in a prompt's knowledge segment: its title, then its text."""
        return f"{self.title}: {self.text}" if self.title else self.text


def _words(text: str) -> int:
    # CJK text has no spaces: count its characters as words (a 100-"word" Chinese passage is ~100 characters).
    return len(text.split()) + len(re.findall(r"[\u3400-\u9fff]", text))


def _pack(pieces, max_words: int) -> list[str]:
    """Consecutive pieces joined (with a space) while the result has at most `max_words` words."""
    out, current = [], ""
    for piece in pieces:
        joined = f"{current} {piece}" if current else piece
        if current and _words(joined) > max_words:
            out.append(current)
            current = piece
        else:
            current = joined
    return out + [current] if current else out


def _sentences(paragraph: str, max_words: int):
    """A paragraph's sentences; one longer than `max_words` is cut at words (a spaceless CJK run at characters)."""
    for sentence in filter(None, (s.strip() for s in _SENTENCE_END.split(paragraph))):
        while _words(sentence) > max_words:
            words = sentence.split()
            if len(words) > 1:
                yield " ".join(words[:max_words])
                sentence = " ".join(words[max_words:])
            else:
                yield sentence[:max_words]
                sentence = sentence[max_words:]
        if sentence:
            yield sentence


def split_document(title: str, text: str, max_words: int = MAX_WORDS, min_words: int = MIN_WORDS,
                   source: str = "") -> list[Passage]:
    """A document's passages (see the module docstring)."""
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    paragraphs = [p for p in paragraphs if p]
    if paragraphs and title and paragraphs[0] == title.strip():
        paragraphs = paragraphs[1:]
    pieces = (piece for p in paragraphs
              for piece in ([p] if _words(p) <= max_words else _pack(_sentences(p, max_words), max_words)))
    return [Passage(title, p, source) for p in _pack(pieces, max_words) if _words(p) >= min_words]


READING_SETS = ("topical-chat-reading-sets-valid-freq.json.xz", "topical-chat-reading-sets-valid-rare.json.xz")


def topical_chat_leads(reading_sets: Sequence[str] = (), wiki: str | None = None) -> dict[str, str]:
    """{entity: shortened Wikipedia lead section} of the entities in Topical-Chat reading sets (default: the
    bundled `valid_freq` and `valid_rare` reading sets, 165 entities, and `topical-chat-wiki.json`)."""
    wiki = wiki or io.resource_path("topical-chat-wiki.json.xz")
    texts = _wiki_texts(wiki)
    sets = {}
    for path in reading_sets or [io.resource_path(name) for name in READING_SETS]:
        with open_text(path) as f:
            sets.update(json.load(f))
    leads: dict[str, str] = {}
    for conversation in sets.values():
        for agent in ("agent_1", "agent_2"):
            for key, fact in (conversation.get(agent) or {}).items():
                if not key.startswith("FS") or not isinstance(fact, dict):
                    continue
                lead = texts.get(fact.get("shortened_wiki_lead_section"))
                if fact.get("entity") and lead and fact["entity"] not in leads:
                    leads[fact["entity"]] = lead
    return leads


def _wiki_texts(path: str) -> dict[int, str]:
    """{section id: text} of Topical-Chat's `wiki.json` (`{kind: {text: id}}`)."""
    with open_text(path) as f:
        data = json.load(f)
    return {i: text for sections in data.values() for text, i in sections.items()}


def read_passages(sources: str | Sequence[str], max_words: int = MAX_WORDS, min_words: int = MIN_WORDS,
                  stats: ReadStats | None = None) -> Iterator[Passage]:
    """The passages of text sources (see the module docstring), in source order.

    Raises:
        ValueError / FileNotFoundError: naming a source that is missing or has no usable document.
    """
    from tfchat.data import sources as text_sources

    stats = stats if stats is not None else ReadStats()
    for spec in [sources] if isinstance(sources, str) else list(sources):
        if spec == TOPICAL_CHAT_WIKI:
            for entity, lead in topical_chat_leads().items():
                stats.read += 1
                yield from split_document(entity, lead, max_words, min_words, spec)
            continue
        for doc in text_sources.iter_documents(spec, stats):
            # A JSONL record without id or title is named by its hash: its first line is a better title.
            title = doc.id if not re.fullmatch(r"[0-9a-f]{64}", doc.id) else doc.text.split("\n", 1)[0][:80]
            title = title[:-4] if title.endswith(".txt") else title
            yield from split_document(title, doc.text, max_words, min_words, spec)
