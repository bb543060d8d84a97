"""Evaluation metrics: perplexity, bits per byte, minimal pairs, BLEU and ROUGE-L.

Pure functions of numbers, token ids or strings; log-probabilities come from
`tfchat.eval.logprobs`, and `tfchat.eval.evaluate` orchestrates both.

Definitions (natural logs throughout):

- loss = total nats / N, the mean cross-entropy over the N evaluated target
  tokens; perplexity = exp(loss).
- bits per byte = total nats / ln 2 / B, where B is the number of UTF-8 bytes
  of the text those same N target tokens decode to: the sum over targets of
  `token_byte_lengths(tokenizer)[id]`, the bytes each id contributes to a
  decoded string (control ids such as `<|endoftext|>`, `<|end|>`, the role
  markers and padding contribute 0 bytes, but the nats spent predicting them
  are counted). Unlike perplexity it does not depend on how finely a
  tokenizer cuts text, so models with different tokenizers compare.
- minimal pairs (BLiMP's JSONL format, `sentence_good` / `sentence_bad`): a
  sentence's score is its total log-probability `log p(ids | <|endoftext|>)`
  with ids = `tokenizer.encode(sentence)`; a pair is right when the good
  sentence scores strictly higher.
- BLEU: corpus BLEU-4 of `keras_hub.metrics.Bleu` (SacreBLEU's 13a
  tokenization, no smoothing), in [0, 1].
- ROUGE-L: mean over pairs of the LCS F1 of `keras_hub.metrics.RougeL`
  (backed by the `rouge-score` package, which lowercases and keeps runs of
  a-z and 0-9 as tokens).
- Chinese (`tokenize="zh"`, or "auto" when the references are Chinese,
  `tfchat.text.chinese.is_chinese`): both are computed on characters, as
  Chinese evaluation does (Chinese has no spaces between words, and the
  usual tokenizers see a whole sentence as one word): BLEU on text with a
  space around every Han character and CJK punctuation mark (SacreBLEU's
  `zh` tokenizer), ROUGE-L on the sequence of Han characters and other
  words (CJK punctuation dropped like other punctuation), each Han character
  handed to rouge-score as an ASCII token of its code point.
- knowledge F1 (Dinan et al. 2019, "Wizard of Wikipedia"; Gopalakrishnan et
  al. 2019, "Topical-Chat"): mean over pairs of the unigram F1 between a reply
  and the knowledge it was given, after SQuAD's normalisation (lower case,
  punctuation and the articles a/an/the removed); how much of the passage the
  reply uses.

Example:

>>> round(perplexity(math.log(20.0)), 6)
20.0
>>> bits_per_byte(total_nats=8 * math.log(2), total_bytes=4)  # 8 bits over 4 bytes
2.0
>>> round(rouge_l(["the cat sat on the mat"], ["the cat on mat"]), 4)
0.8
>>> round(rouge_l(["我们去公园散步吧"], ["我们去公园吧"]), 4)  # characters: LCS 6 of 8 and 6
0.8571
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import numpy as np

from tfchat.data.io import ReadStats, iter_jsonl
from tfchat.text import chinese

LN2 = math.log(2.0)
TOKENIZATIONS = ("auto", "13a", "zh")


# ------------------------------------------------------------ loss -> numbers


def perplexity(loss: float) -> float:
    """exp(mean nats per token); inf when it overflows, nan for a nan loss."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def bits_per_byte(total_nats: float, total_bytes: float) -> float:
    """Total nats / ln 2 / total UTF-8 bytes (nan when there are no bytes)."""
    if total_bytes <= 0:
        return math.nan
    return total_nats / LN2 / total_bytes


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes each id contributes to decoded text: int64 [vocab_size] (see `Tokenizer.byte_lengths`)."""
    return tokenizer.byte_lengths()


# -------------------------------------------------------------- minimal pairs


@dataclasses.dataclass(frozen=True)
class MinimalPair:
    good: str
    bad: str


def read_minimal_pairs(path: str) -> list[MinimalPair]:
    """Reads BLiMP-style JSONL: one `{"sentence_good": str, "sentence_bad": str, ...}` per line.

    Other keys (UID, pair_id, ...) are ignored; blank lines are skipped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming `path:line` for a malformed line, or `path` when it
            holds no pair.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such minimal-pair file")
    pairs = []
    try:
        for where, obj in iter_jsonl(path, ReadStats(), strict=True):
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object with sentence_good and sentence_bad")
            for key in ("sentence_good", "sentence_bad"):
                if not isinstance(obj.get(key), str) or not obj[key].strip():
                    raise ValueError(f"{where}: {key!r} missing or not a non-empty string")
            pairs.append(MinimalPair(obj["sentence_good"], obj["sentence_bad"]))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason})") from None
    if not pairs:
        raise ValueError(f"{path}: no minimal pairs (expected JSONL lines with sentence_good and sentence_bad)")
    return pairs


def minimal_pair_accuracy(good_log_probs: Sequence[float], bad_log_probs: Sequence[float]) -> float:
    """Fraction of pairs whose good sentence is strictly more likely (a tie is wrong)."""
    good, bad = np.asarray(good_log_probs, np.float64), np.asarray(bad_log_probs, np.float64)
    if good.shape != bad.shape or good.size == 0:
        raise ValueError(f"need as many good as bad scores, at least one; got {good.shape} and {bad.shape}")
    return float(np.mean(good > bad))


# --------------------------------------------------------------- BLEU, ROUGE-L


def metric_tokenization(references: Sequence[str], tokenize: str = "auto") -> str:
    """"zh" (characters) or "13a" (words): `tokenize`, or for "auto" "zh" when the references are Chinese."""
    if tokenize not in TOKENIZATIONS:
        raise ValueError(f"tokenize must be one of {TOKENIZATIONS}, got {tokenize!r}")
    if tokenize != "auto":
        return tokenize
    return "zh" if chinese.is_chinese("".join(references)[:100_000]) else "13a"


def bleu(references: Sequence[str], hypotheses: Sequence[str], max_order: int = 4, tokenize: str = "auto") -> float:
    """Corpus BLEU of `hypotheses` against one reference each (keras-hub, SacreBLEU 13a tokens; Chinese: characters,
    see the module docstring), in [0, 1]."""
    import keras_hub

    _check_pairs(references, hypotheses)
    if metric_tokenization(references, tokenize) == "zh":
        references, hypotheses = [chinese.spaced(r) for r in references], [chinese.spaced(h) for h in hypotheses]
    if not any(h.strip() for h in hypotheses) or not any(r.strip() for r in references):
        # keras-hub divides by the total hypothesis and reference lengths; with
        # nothing on one side no n-gram matches, so BLEU is 0.
        return 0.0
    metric = keras_hub.metrics.Bleu(max_order=max_order)
    metric.update_state([[r] for r in references], list(hypotheses))
    return float(metric.result())


def rouge_l(references: Sequence[str], hypotheses: Sequence[str], tokenize: str = "auto") -> float:
    """Mean ROUGE-L F1 over (reference, hypothesis) pairs (Chinese: over characters, see the module docstring),
    in [0, 1]."""
    import keras_hub

    _check_pairs(references, hypotheses)
    if metric_tokenization(references, tokenize) == "zh":
        references, hypotheses = [_rouge_units(r) for r in references], [_rouge_units(h) for h in hypotheses]
    metric = keras_hub.metrics.RougeL()
    metric.update_state(list(references), list(hypotheses))
    return float(metric.result()["f1_score"])


def _rouge_units(text: str) -> str:
    """Han characters as ASCII tokens rouge-score keeps ("cjk4f60"), other words as they are; CJK punctuation goes."""
    return " ".join(f"cjk{ord(u):x}" if chinese.CJK.match(u) else u for u in chinese.units(text) if u.isalnum())


def _normalized_words(text: str) -> list[str]:
    import re
    import string

    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def unigram_f1(hypothesis: str, reference: str) -> float:
    """Unigram F1 of two texts after SQuAD's normalisation (0 when either is empty)."""
    import collections

    hyp, ref = _normalized_words(hypothesis), _normalized_words(reference)
    common = sum((collections.Counter(hyp) & collections.Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(hyp), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def knowledge_f1(replies: Sequence[str], knowledge: Sequence[str]) -> float:
    """Mean unigram F1 between each reply and the knowledge it was given."""
    _check_pairs(knowledge, replies)
    return float(np.mean([unigram_f1(r, k) for r, k in zip(replies, knowledge)]))


def _check_pairs(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"need one hypothesis per reference, at least one; got {len(references)} and {len(hypotheses)}")
