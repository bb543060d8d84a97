"""Chinese text helpers shared by the readers, the document filter, the metrics and (later) the knowledge index.

* `CJK` / `cjk_count(text)` / `cjk_share(text)`: Han characters (the CJK
  Unified Ideographs blocks, their extensions and compatibility ideographs).
  Kana and Hangul are not counted: the Chinese-specific rules below are
  about Han text.
* `is_chinese(text)`: at least `CHINESE_SHARE` of the letters are Han
  characters: how commands choose Chinese sample prompts.
* `units(text)`: the units a length or an n-gram is counted in: every Han
  character (and CJK punctuation mark) on its own, every other run of word
  characters as one word. "我喜欢NBA和iPhone 12" -> 我 喜 欢 NBA 和 iPhone 12.
* `spaced(text)`: `units` joined with spaces (punctuation kept): the
  character-level tokenization Chinese BLEU and ROUGE are computed on
  (SacreBLEU's `zh` tokenizer does the same).
* `join_characters(text)`: undoes the character-by-character spacing of
  corpora such as LCCC ("你 好 ， 世 界" -> "你好，世界"): a single space only
  separates characters and goes; a run of two or more spaces is where the
  text had a real space ("i P h o n e   1 2" -> "iPhone 12").
* `convert_script(text, config)`: Simplified <-> Traditional conversion with
  OpenCC (`s2t`, `t2s`, Taiwan and Hong Kong standards, `...p` with phrases).
* `script_of(text)`: "traditional", "simplified" or None (no character that
  differs between the two), by counting the characters OpenCC would change.

Example:

>>> units("我喜欢NBA和iPhone 12！")
['我', '喜', '欢', 'NBA', '和', 'iPhone', '12', '！']
>>> join_characters("我 喜 欢 i P h o n e   1 2 ！")
'我喜欢iPhone 12！'
>>> convert_script("汉语维基百科", "s2t")
'漢語維基百科'
>>> script_of("漢語維基百科是自由的百科全書"), script_of("汉语维基百科"), script_of("Wikipedia")
('traditional', 'simplified', None)
"""

from __future__ import annotations

import collections
import functools
import re

# Han ideographs: Extension A, the URO, compatibility ideographs, Extensions B-H (planes 2 and 3).
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
# CJK and full-width punctuation: 、。〈〉《》「」『』【】〔〕〖〗〜 and ！，．：；？（）etc.
_CJK_PUNCT = "\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
CJK = re.compile(f"[{_HAN}]")
_UNIT = re.compile(f"[{_HAN}{_CJK_PUNCT}]|[^\\W{_HAN}]+")
_SPACED_PUNCT = re.compile(f"([{_HAN}{_CJK_PUNCT}])")
_LETTER = re.compile(r"[^\W\d_]")
# Below this share of Han characters among the letters, text is not treated as Chinese.
CHINESE_SHARE = 0.3
# OpenCC's configurations (opencc/config/*.json), by what they convert.
SCRIPT_CONVERSIONS = {
    "s2t": "Simplified to Traditional",
    "t2s": "Traditional to Simplified",
    "s2tw": "Simplified to Traditional (Taiwan standard)",
    "tw2s": "Traditional (Taiwan standard) to Simplified",
    "s2twp": "Simplified to Traditional (Taiwan standard, with Taiwanese phrases)",
    "tw2sp": "Traditional (Taiwan standard) to Simplified, with mainland phrases",
    "s2hk": "Simplified to Traditional (Hong Kong standard)",
    "hk2s": "Traditional (Hong Kong standard) to Simplified",
}


def cjk_count(text: str) -> int:
    """Number of Han characters in `text`."""
    return len(CJK.findall(text))


def cjk_share(text: str) -> float:
    """Han characters / letters (0 when there is no letter)."""
    letters = len(_LETTER.findall(text))
    return cjk_count(text) / letters if letters else 0.0


def is_chinese(text: str) -> bool:
    """True when at least `CHINESE_SHARE` of the letters are Han characters."""
    return cjk_share(text) >= CHINESE_SHARE


def units(text: str) -> list[str]:
    """Han characters and CJK punctuation one by one, other word-character runs whole (see the module docstring)."""
    return _UNIT.findall(text)


def spaced(text: str) -> str:
    """Spaces around every Han character and CJK punctuation mark; other text as it is (whitespace collapsed)."""
    return " ".join(_SPACED_PUNCT.sub(r" \1 ", text).split())


_SEPARATOR = re.compile(r"(?<=\S) (?=\S)")
_REAL_SPACE = re.compile(r" {2,}")


def join_characters(text: str) -> str:
    """Removes the spaces of character-by-character spaced text (see the module docstring)."""
    return _REAL_SPACE.sub(" ", _SEPARATOR.sub("", text)).strip()


@functools.lru_cache(maxsize=None)
def _converter(config: str):
    if config not in SCRIPT_CONVERSIONS:
        raise ValueError(f"unknown script conversion {config!r}; expected one of {', '.join(SCRIPT_CONVERSIONS)}")
    try:
        import opencc
    except ImportError as e:
        raise ImportError("converting between Simplified and Traditional needs OpenCC: pip install opencc") from e
    return opencc.OpenCC(config)


def convert_script(text: str, config: str) -> str:
    """`text` converted by OpenCC configuration `config` (a key of `SCRIPT_CONVERSIONS`)."""
    return _converter(config).convert(text)


def check_conversion(config: str | None) -> None:
    """Raises a one-line ValueError/ImportError for an unknown conversion or a missing OpenCC, before any work."""
    if config is not None:
        _converter(config)


def script_of(text: str) -> str | None:
    """"traditional" or "simplified": which of the two has more of `text`'s Han characters; None when neither."""
    counts = collections.Counter(CJK.findall(text))
    if not counts:
        return None
    chars = list(counts)
    joined = "\n".join(chars)  # one character per line: OpenCC's phrase rules cannot join neighbours
    pairs = zip(chars, convert_script(joined, "t2s").split("\n"), convert_script(joined, "s2t").split("\n"))
    traditional = simplified = 0
    for char, to_simplified, to_traditional in pairs:
        traditional += counts[char] * (to_simplified != char)
        simplified += counts[char] * (to_traditional != char)
    if traditional == simplified:
        return None
    return "traditional" if traditional > simplified else "simplified"
