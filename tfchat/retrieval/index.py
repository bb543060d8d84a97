"""The knowledge index: BM25 search over passages, saved in a directory, loaded with clear errors.

BM25 (Robertson and Zaragoza 2009, "The Probabilistic Relevance Framework:
BM25 and Beyond") scores a passage by the query terms it contains, each
weighted by its rarity (IDF) and saturated by term frequency (`k1`) with
length normalisation (`b`). The index is `bm25s` (Lù 2024: eager sparse
scoring, milliseconds per query over millions of passages). Terms
(`terms`): lower-cased words of two or more characters, English stop words
removed, Snowball-stemmed ("volcanoes" matches "volcano"); Chinese, which
has no spaces, is split into character bigrams (the standard CJK indexing
unit of Lucene's CJKAnalyzer), so one index serves both languages.

On disk (`KnowledgeIndex.save(dir)`, written atomically: a reader sees the
old index or the new one):

    DIR/index/index.json        format, version, passage count, sources, term settings
    DIR/index/passages.jsonl.gz one passage per line: {"title", "text", "source"}
    DIR/index/bm25/             the bm25s index (sparse matrix, vocabulary, parameters)

`KnowledgeIndex.load(DIR)` accepts the run directory or its `index/`; a
missing, half-written or foreign directory is a `ValueError` /
`FileNotFoundError` that says what is wrong and the command that rebuilds it.

Example:

>>> from tfchat.retrieval.passages import Passage
>>> index = KnowledgeIndex.build([Passage("Etna", "Etna is an active volcano in Sicily."),
...                               Passage("Oslo", "Oslo is the capital of Norway.")])
>>> [hit.passage.title for hit in index.search("which volcanoes are active?", k=1)]
['Etna']
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import shutil
from typing import Iterable, Sequence

import numpy as np

from tfchat import atomic
from tfchat.data import io
from tfchat.retrieval.passages import Passage

log = logging.getLogger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs each indexing stage at DEBUG

FORMAT, VERSION = "tfchat-knowledge-index", 1
SUBDIR = "index"
INDEX_FILE, PASSAGES_FILE, BM25_DIR = "index.json", "passages.jsonl.gz", "bm25"
K1, B = 1.5, 0.75  # the bm25s (and Lucene) defaults
REBUILD = "python -m training.index --out {dir}"

_WORD = re.compile(r"[\u3400-\u9fff]+|\w\w+")
_CJK = re.compile(r"[\u3400-\u9fff]")


@functools.lru_cache(maxsize=1)
def _stemmer_and_stopwords():
    import Stemmer
    from bm25s.stopwords import STOPWORDS_EN

    return Stemmer.Stemmer("english"), frozenset(STOPWORDS_EN)


def terms(text: str) -> list[str]:
    """The index terms of a text (see the module docstring)."""
    stemmer, stopwords = _stemmer_and_stopwords()
    out = []
    for word in _WORD.findall(text.lower()):
        if _CJK.match(word):
            out.extend(word[i:i + 2] for i in range(max(len(word) - 1, 1)))
        elif word not in stopwords:
            out.append(word)
    latin = [w for w in out if not _CJK.match(w)]
    stemmed = iter(stemmer.stemWords(latin))
    return [w if _CJK.match(w) else next(stemmed) for w in out]


@dataclasses.dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float
    rank: int

    def to_json(self) -> dict:
        return {**self.passage.to_json(), "score": round(self.score, 4), "rank": self.rank}


class KnowledgeIndex:
    """Passages and their BM25 index. `build(passages)`, `load(dir)`, `search(query, k)`, `save(dir)`."""

    def __init__(self, retriever, passages: Sequence[Passage], info: dict):
        self._retriever = retriever
        self.passages = list(passages)
        self.info = info

    def __len__(self) -> int:
        return len(self.passages)

    @classmethod
    def build(cls, passages: Iterable[Passage], sources: Sequence[str] = (), **info) -> "KnowledgeIndex":
        import bm25s

        passages = list(passages)
        if not passages:
            raise ValueError(f"no passages to index{' in ' + ', '.join(sources) if sources else ''}")
        retriever = bm25s.BM25(k1=K1, b=B)
        # The title is part of what a passage is about ("Etna" finds the passages of the article Etna).
        retriever.index([terms(f"{p.title} {p.text}") for p in passages], show_progress=False)
        return cls(retriever, passages, {"format": FORMAT, "version": VERSION, "passages": len(passages),
                                         "sources": list(sources), "k1": K1, "b": B, **info})

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The `k` best passages for `query` (fewer when fewer share a term with it), best first."""
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: Sequence[str], k: int = 5) -> list[list[Hit]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, len(self.passages))
        query_terms = [terms(q) or ["\x00"] for q in queries]  # a query with no term matches nothing
        ids, scores = self._retriever.retrieve(query_terms, k=k, show_progress=False, n_threads=1)
        return [[Hit(self.passages[int(i)], float(s), r) for r, (i, s) in enumerate(zip(row_ids, row_scores))
                 if s > 0] for row_ids, row_scores in zip(np.asarray(ids), np.asarray(scores))]

    def save(self, directory: str) -> str:
        """Writes the index to `directory/index/` atomically; returns that path."""
        final = os.path.join(directory, SUBDIR)
        os.makedirs(directory, exist_ok=True)
        atomic.remove_stale_temps(directory, SUBDIR)
        tmp = atomic.temp_path(final)
        try:
            os.makedirs(tmp)
            self._retriever.save(os.path.join(tmp, BM25_DIR), show_progress=False)
            io.write_jsonl((p.to_json() for p in self.passages), os.path.join(tmp, PASSAGES_FILE))
            atomic.write_json(os.path.join(tmp, INDEX_FILE), self.info)
            old = None
            if os.path.exists(final):
                old = atomic.temp_path(final)
                os.replace(final, old)
            os.replace(tmp, final)
            if old:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    @classmethod
    def load(cls, directory: str) -> "KnowledgeIndex":
        """The index in `directory` (a run directory of `training.index`, or its `index/`).

        Raises:
            FileNotFoundError: no index there. ValueError: a corrupt, foreign or newer index.
        """
        import bm25s

        path = resolve_index_dir(directory)
        rebuild = REBUILD.format(dir=directory)
        try:
            with open(os.path.join(path, INDEX_FILE), encoding="utf-8") as f:
                info = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{directory}: corrupt knowledge index ({INDEX_FILE}: {e}); rebuild it: {rebuild}") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise ValueError(f"{directory}: not a knowledge index ({INDEX_FILE} has no format {FORMAT!r}); "
                             f"build one: {rebuild}")
        if info.get("version", 0) > VERSION:
            raise ValueError(f"{directory}: knowledge index version {info.get('version')} is newer than this "
                             f"tfchat reads ({VERSION}); upgrade tfchat or rebuild it: {rebuild}")
        try:
            stats = io.ReadStats()
            passages = [Passage(str(o["title"]), str(o["text"]), str(o.get("source", "")))
                        for _, o in io.iter_jsonl(os.path.join(path, PASSAGES_FILE), stats)]
            if sum(stats.skipped.values()) or len(passages) != info.get("passages"):
                raise ValueError(f"{len(passages)} readable passages, the index holds {info.get('passages')}")
            retriever = bm25s.BM25.load(os.path.join(path, BM25_DIR), show_progress=False)
            if retriever.scores["num_docs"] != len(passages):
                raise ValueError(f"the BM25 matrix has {retriever.scores['num_docs']} passages, not {len(passages)}")
        except (OSError, EOFError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{directory}: corrupt knowledge index ({e}); rebuild it: {rebuild}") from None
        return cls(retriever, passages, info)


def resolve_index_dir(directory: str) -> str:
    """`directory/index` or `directory` itself, whichever holds an index; FileNotFoundError otherwise."""
    for path in (os.path.join(directory, SUBDIR), directory):
        if os.path.isfile(os.path.join(path, INDEX_FILE)) or os.path.isdir(os.path.join(path, BM25_DIR)):
            return path
    raise FileNotFoundError(f"no knowledge index in {directory}; build one with: {REBUILD.format(dir=directory)}")


def knowledge_text(hits: Sequence[Hit]) -> str:
    """The text of the chat template's knowledge segment for retrieved passages: one per paragraph, best first."""
    return "\n\n".join(hit.passage.render() for hit in hits)
