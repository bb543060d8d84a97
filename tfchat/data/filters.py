"""Document filters for pretraining text: stubs out, near-duplicates out.

* stubs: documents shorter than `min_chars` characters. Wikipedia has many one-line stubs ("X is a village in Y")
  that teach the model little but templates. A Han character counts as `CJK_WEIGHT` characters: it carries
  about three times the information of an English letter (xz needs 8.1 bits per character of held-out
  `zhwiki-sample` text and 2.6 of `enwiki-2018` text: `xz_bits_per_char` of `python -m benchmarks.tokenizers`),
  so the default 500 means about 170 characters of Chinese, a short paragraph, like 500 of English;
* near-duplicates: a document whose 5-gram set of words (Han characters one by one, `tfchat.text.chinese.units`)
  has an estimated Jaccard similarity of at least `threshold` with a document kept before it
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
>>> effective_length("Wikipedia"), effective_length("维基百科")
(9, 12)
"""

from __future__ import annotations

from tfchat.text import chinese

# What a Han character counts for in `min_chars` (see the module docstring).
CJK_WEIGHT = 3


class DocumentFilter:
    """`check(text)` returns why to drop a document ("stub", "near-duplicate") or None, remembering kept ones."""

    def __init__(self, min_chars: int = 500, threshold: float = 0.8, shingle: int = 5, num_perm: int = 64):
        from datasketch import MinHashLSH

        self.min_chars, self.shingle, self.num_perm = min_chars, shingle, num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.kept = 0

    def check(self, text: str) -> str | None:
        if effective_length(text) < self.min_chars:
            return "stub"
        from datasketch import MinHash

        words = chinese.units(text.lower())
        n = self.shingle
        shingles = {" ".join(words[i:i + n]).encode() for i in range(max(len(words) - n + 1, 1))}
        signature = MinHash(num_perm=self.num_perm)
        signature.update_batch(list(shingles))
        if self.lsh.query(signature):
            return "near-duplicate"
        self.lsh.insert(str(self.kept), signature)
        self.kept += 1
        return None


def effective_length(text: str) -> int:
    """Characters, each Han character counted `CJK_WEIGHT` times."""
    return len(text) + (CJK_WEIGHT - 1) * chinese.cjk_count(text)
