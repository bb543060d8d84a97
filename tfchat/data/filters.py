"""Document filters for pretraining text: stubs out, near-duplicates out.

* stubs: documents shorter than `min_chars` characters. Wikipedia has many one-line stubs ("X is a village in Y")
  that teach the model little but templates;
* near-duplicates: a document whose word 5-gram set has an estimated Jaccard
  similarity of at least `threshold` with a document kept before it
  (MinHash with 64 permutations and LSH from `datasketch`; Broder 1997).
  This simplifies full pairwise Jaccard to an LSH query per document, so a
  pair is caught with high probability, not certainty.

The filter is applied once, when a source is extracted into its cache; the
counts of what it drops are kept in the cache's statistics ("stub",
"near-duplicate").

Example:

>>> keep = DocumentFilter(min_chars=10)
>>> text = "The quick brown fox jumps over the lazy dog near the river bank today"
>>> [keep.check(t) for t in ["short", text, text + "."]]
['stub', None, 'near-duplicate']
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+")


class DocumentFilter:
    """`check(text)` returns why to drop a document ("stub", "near-duplicate") or None, remembering kept ones."""

    def __init__(self, min_chars: int = 500, threshold: float = 0.8, shingle: int = 5, num_perm: int = 64):
        from datasketch import MinHashLSH

        self.min_chars, self.shingle, self.num_perm = min_chars, shingle, num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.kept = 0

    def check(self, text: str) -> str | None:
        if len(text) < self.min_chars:
            return "stub"
        from datasketch import MinHash

        words = _WORD.findall(text.lower())
        n = self.shingle
        shingles = {" ".join(words[i:i + n]).encode() for i in range(max(len(words) - n + 1, 1))}
        signature = MinHash(num_perm=self.num_perm)
        signature.update_batch(list(shingles))
        if self.lsh.query(signature):
            return "near-duplicate"
        self.lsh.insert(str(self.kept), signature)
        self.kept += 1
        return None
