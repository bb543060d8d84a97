"""The dialogue manager: per user turn, recognise the intent, then answer from a template, from retrieved
knowledge, from the model alone, or refuse.

The routing table (first matching row wins; `Decision.route`):

| route | when | the reply |
|---|---|---|
| `refuse` | a content filter is configured and flags the user's message | the rules' refusal, no generation |
| `template` | the intent has a template in the rules and the classifier's confidence is at least `min_confidence` | the filled template, no generation |
| `retrieve` | the intent is in the rules' `retrieve` list (by default `knowledge_question`, out-of-scope `oos`, `definition`, `fun_fact`, `meaning_of_life`), an index is configured and it finds a passage | the model, with the top-k passages in the chat template's knowledge segment |
| `generate` | anything else (chit-chat, other intents, no classifier, nothing retrieved) | the model alone |

Without an intent classifier every turn is a candidate for retrieval (with
an index) and none gets a template. The intent is that of the user's last
message; the retrieval query is that message with the `QUERY_MESSAGES - 1`
messages before it (a follow-up such as "how tall is it?" names its entity
earlier: on held-out Topical-Chat this finds the entity a reply drew on
twice as often as the last message alone, `tfchat/eval/knowledge.py`).
`Decision.to_json()` is what the server returns to clients (the OpenAI
route's `tfchat` extension field and its `sources`).

Example:

>>> manager = DialogueManager.load(intent="runs/intent", index="runs/index")        # doctest: +SKIP
>>> manager.decide([{"role": "user", "content": "who wrote animal farm?"}]).route  # doctest: +SKIP
'retrieve'
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping, Sequence

from tfchat.dialogue.rules import Rules

log = logging.getLogger(__name__)

ROUTES = ("refuse", "template", "retrieve", "generate")
DEFAULT_K = 3
QUERY_MESSAGES = 3
WIKIPEDIA_SOURCES = ("wikipedia-sample", "topical-chat-wiki")


@dataclasses.dataclass
class Decision:
    route: str
    intent: str | None = None
    confidence: float | None = None
    reply: str | None = None  # template and refuse: the whole reply
    knowledge: str | None = None  # retrieve: the knowledge segment's text
    sources: list = dataclasses.field(default_factory=list)  # retrieve: [{title, snippet, url?, score}]

    def to_json(self) -> dict:
        out = {"route": self.route, "intent": self.intent, "sources": self.sources}
        if self.confidence is not None:
            out["confidence"] = round(self.confidence, 4)
        return out


def source_of(hit) -> dict:
    """How a retrieved passage is shown to a client: title, snippet, score and, for Wikipedia, its URL."""
    p = hit.passage
    out = {"title": p.title, "snippet": p.text if len(p.text) <= 240 else p.text[:240].rsplit(" ", 1)[0] + " ...",
           "score": round(hit.score, 3)}
    if p.source in WIKIPEDIA_SOURCES and p.title:
        out["url"] = "https://en.wikipedia.org/wiki/" + p.title.replace(" ", "_")
    return out


def retrieval_query(messages: Sequence[Mapping[str, str]], n: int = QUERY_MESSAGES) -> str:
    """The text searched for the conversation's last user message: it and the `n - 1` messages before it
    (system messages left out)."""
    turns = [m for m in messages if isinstance(m, Mapping) and m.get("role") in ("user", "assistant")
             and isinstance(m.get("content"), str)]
    last = max((i for i, m in enumerate(turns) if m["role"] == "user"), default=None)
    return "" if last is None else " ".join(m["content"] for m in turns[max(0, last - n + 1):last + 1])


class DialogueManager:
    """Routes user turns (see the module docstring). All parts are optional.

    Args:
        intents: a `tfchat.inference.classifier.TextClassifier` trained with `--task intent`.
        index: a `tfchat.retrieval.index.KnowledgeIndex`.
        rules: `Rules` (default: the bundled rules file).
        content_filter: a `tfchat.inference.classifier.ContentFilter`.
        k: passages put into the prompt.
    """

    def __init__(self, intents=None, index=None, rules: Rules | None = None, content_filter=None, k: int = DEFAULT_K):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.intents, self.index, self.content_filter, self.k = intents, index, content_filter, k
        self.rules = rules or Rules.load()

    @classmethod
    def load(cls, intent: str | None = None, index: str | None = None, rules: str | None = None,
             content_filter: str | None = None, k: int = DEFAULT_K) -> "DialogueManager":
        """From paths: an intent classifier run, a knowledge index run, a rules file, a moderation classifier."""
        from tfchat.inference.classifier import ContentFilter, TextClassifier
        from tfchat.retrieval.index import KnowledgeIndex

        classifier = TextClassifier.load(intent) if intent else None
        if classifier is not None and classifier.multi_label:
            raise ValueError(f"{intent}: a multi-label classifier is no intent classifier; train one with "
                             "python -m training.classify --task intent")
        return cls(classifier, KnowledgeIndex.load(index) if index else None, Rules.load(rules),
                   ContentFilter.load(content_filter) if content_filter else None, k)

    def classify(self, text: str) -> tuple[str | None, float | None]:
        """(intent, confidence) of a user message; (None, None) without a classifier."""
        if self.intents is None:
            return None, None
        scores = self.intents.scores([text])
        confidence = float(scores[0].max())
        fallback = getattr(self.intents, "fallback", None)
        if fallback:  # a confidence below the threshold means out of scope
            from tfchat.eval.classification import predict_with_fallback

            best = int(predict_with_fallback(scores, self.intents.labels, *fallback)[0])
            return self.intents.labels[best], confidence
        return self.intents.labels[int(scores[0].argmax())], confidence

    def decide(self, messages: Sequence[Mapping[str, str]]) -> Decision:
        """The route for the conversation's last user message (`generate` when there is none)."""
        text = next((m.get("content") for m in reversed(messages)
                     if isinstance(m, Mapping) and m.get("role") == "user" and isinstance(m.get("content"), str)), None)
        if not text or not text.strip():
            return Decision("generate")
        if self.content_filter is not None and self.content_filter.flag_texts([text])[0]:
            return Decision("refuse", reply=self.rules.refusal)
        intent, confidence = self.classify(text)
        if intent is not None and (confidence or 0.0) >= self.rules.min_confidence:
            reply = self.rules.reply(intent, text)
            if reply is not None:
                return Decision("template", intent, confidence, reply=reply)
        if self.index is not None and (intent is None or intent in self.rules.retrieve):
            hits = self.index.search(retrieval_query(messages), self.k)
            if hits:
                from tfchat.retrieval.index import knowledge_text

                return Decision("retrieve", intent, confidence, knowledge=knowledge_text(hits),
                                sources=[source_of(h) for h in hits])
        return Decision("generate", intent, confidence)
