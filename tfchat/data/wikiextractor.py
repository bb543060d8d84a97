"""Reader for WikiExtractor output: the plain-text format many users already have from their own dumps.

`python -m wikiextractor.WikiExtractor dump.xml.bz2` writes folders of files
(`text/AA/wiki_00`, ...), each a run of documents:

    <doc id="12" url="https://en.wikipedia.org/wiki?curid=12" title="Anarchism">
    Anarchism

    Anarchism is a political philosophy ...
    History.
    ...
    </doc>

Each document becomes "Title\\n\\nparagraph\\n\\nparagraph...", the layout the
dump reader (`tfchat.data.wikipedia`) gives: HTML entities are unescaped, the
empty parentheses WikiExtractor leaves where templates were (`Paris () is`,
`北京（）是`) are removed, and paragraphs are separated by a blank line. Files are streamed
line by line (plain, .gz, .bz2 or .xz), so a directory of many GB never sits
in memory. A truncated last document is counted and skipped.

Example:

>>> import io
>>> text = '<doc id="1" url="u" title="Albedo">\\nAlbedo\\n\\nAlbedo () is the fraction of light &amp; heat.\\n</doc>\\n'
>>> [(d.title, d.text) for d in parse_docs(io.StringIO(text))]
[('Albedo', 'Albedo\\n\\nAlbedo is the fraction of light & heat.')]
"""

from __future__ import annotations

import dataclasses
import html
import re
from typing import Iterable, Iterator, TextIO

_DOC_START = re.compile(r'<doc id="([^"]*)"[^>]*?title="([^"]*)"[^>]*>\s*$')
# "()", and Chinese text's full-width "（）", "（，）": what removed templates leave.
_EMPTY_PARENS = re.compile(r"\s*[(（](?:\s|[,;:，；：、])*[)）]")


@dataclasses.dataclass(frozen=True)
class ExtractedDoc:
    doc_id: str
    title: str
    text: str  # "Title\n\nparagraph\n\nparagraph..."


def looks_like_wikiextractor(first_line: str) -> bool:
    """True when a file's first non-blank line opens a WikiExtractor document."""
    return bool(_DOC_START.match(first_line.strip()))


def clean(lines: Iterable[str]) -> str:
    paragraphs = []
    for line in lines:
        line = _EMPTY_PARENS.sub("", html.unescape(line)).strip()
        if line:
            paragraphs.append(line)
    return "\n\n".join(paragraphs)


def parse_docs(stream: TextIO, errors: list | None = None) -> Iterator[ExtractedDoc]:
    """Yields the documents of one WikiExtractor file; problems (a doc never closed) go to `errors`."""
    current, lines = None, []
    for line in stream:
        if current is None:
            match = _DOC_START.match(line.strip())
            if match:
                current, lines = (match.group(1), html.unescape(match.group(2))), []
            continue
        if line.strip() == "</doc>":
            doc_id, title = current
            body = lines[1:] if lines and lines[0].strip() == title else lines  # the title repeats as line 1
            yield ExtractedDoc(doc_id, title, clean([title, *body]))
            current = None
            continue
        lines.append(line)
    if current is not None and errors is not None:
        errors.append(f"document {current[0]} ({current[1]!r}) is not closed: the file looks truncated")
