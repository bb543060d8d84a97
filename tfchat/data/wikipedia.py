"""Streaming reader for MediaWiki XML dumps, wiki markup -> clean prose.

Reads `*-pages-articles*.xml.bz2` dumps (multistream dumps too: they are
concatenated bz2 streams, which `bz2` decodes as one), `.xml.gz` and plain
`.xml`, without loading the file into memory: `iterparse` plus clearing each
finished `<page>` keeps memory flat on a 20 GB dump.

Only main-namespace (ns 0) articles are kept; redirects are skipped. The
markup is parsed with mwparserfromhell and reduced to prose: templates,
references, tables, files/images, categories, interlanguage links, math and
comments are removed; links become their visible text; headings stay as plain
lines; paragraphs stay separated by a blank line. Boilerplate sections
("References", "External links", "See also", ...; in Chinese "参考文献",
"外部連結", ...) are dropped.

Chinese Wikipedia's language-conversion markup keeps the text of one
variant: `-{zh-hans:软件;zh-hant:軟體;}-` becomes the variant of the script
the article is written in (Simplified or Traditional, `tfchat.text.chinese.script_of`), `-{text}-`
becomes `text`, and hidden conversion rules (`-{H|...}-`, `-{T|...}-`) go.

Bad input never ends in a deep stack trace: a truncated/corrupt file yields
the articles read before the damage, counts and logs the problem; a file with
nothing usable (not XML, not a MediaWiki dump, no articles) raises a
`ValueError` naming the file.

Example:

>>> text = wikitext_to_text("'''Albedo''' is [[reflection|reflectivity]].<ref>x</ref>")
>>> text
'Albedo is reflectivity.'
>>> for article in read_dump("enwiki-pages-articles.xml.bz2"):  # doctest: +SKIP
...     print(article.title, len(article.text))
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import logging
import re
import xml.etree.ElementTree as ET
import zlib
from typing import IO, Iterator

import mwparserfromhell
from mwparserfromhell.nodes import (
    Argument,
    Comment,
    ExternalLink,
    Heading,
    HTMLEntity,
    Tag,
    Template,
    Text,
    Wikilink,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Article:
    """One main-namespace article: `text` is clean prose without the title."""

    page_id: str
    title: str
    text: str


@dataclasses.dataclass
class DumpStats:
    """What a dump read saw. `articles` were yielded; the rest were skipped."""

    pages: int = 0
    articles: int = 0
    redirects: int = 0
    other_namespace: int = 0
    empty: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def skipped(self) -> int:
        return self.redirects + self.other_namespace + self.empty


# ---------------------------------------------------------------- reading XML


def open_binary(path: str) -> tuple[IO[bytes], IO[bytes]]:
    """Opens `path`, decompressing .bz2/.gz. Returns (stream, raw file).

    The raw file's `tell()` gives compressed bytes read, for progress bars.
    """
    raw = open(path, "rb")
    if path.endswith(".bz2"):
        return bz2.BZ2File(raw), raw  # multistream: all streams, in order
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw), raw
    return raw, raw


def _local(tag: str) -> str:
    # "{http://www.mediawiki.org/xml/export-0.10/}page" -> "page": any export version.
    return tag.rsplit("}", 1)[-1]


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    for child in elem:
        if _local(child.tag) == name:
            return child
    return None


# Links that are not text: files and categories, by their English names and Chinese Wikipedia's aliases (a
# dump's <siteinfo> lists each namespace's own name only).
DROP_LINK_PREFIXES = frozenset({"file", "image", "media", "category", "文件", "檔案", "档案", "图像", "圖像", "媒体",
                                "媒體", "分类", "分類"})


class _Namespaces:
    """Main-namespace test and localized File/Category prefixes from <siteinfo>."""

    def __init__(self):
        self.names: dict[str, int] = {}  # lowercased prefix -> key
        self.drop_link_prefixes = set(DROP_LINK_PREFIXES)

    def read_siteinfo(self, siteinfo: ET.Element) -> None:
        namespaces = _child(siteinfo, "namespaces")
        for ns in namespaces if namespaces is not None else ():
            name = (ns.text or "").strip().lower()
            key = int(ns.get("key", "0"))
            if name:
                self.names[name] = key
                if key in (-2, 6, 14):  # Media, File, Category in the wiki's language
                    self.drop_link_prefixes.add(name)

    def is_main(self, page: ET.Element, title: str) -> bool:
        ns = _child(page, "ns")
        if ns is not None and (ns.text or "").strip():
            return ns.text.strip() == "0"
        # Exports before 0.5 have no <ns>: fall back to the title's prefix.
        prefix = title.split(":", 1)[0].strip().lower() if ":" in title else ""
        return self.names.get(prefix, 0) == 0


_REDIRECT_RE = re.compile(r"^\s*#\s*(redirect|重定向)", re.IGNORECASE)


def iter_pages(
    path: str, stats: DumpStats | None = None, progress=None
) -> Iterator[tuple[str, str, str, frozenset[str]]]:
    """Yields (page_id, title, wikitext, link prefixes to drop) of articles.

    Only main-namespace, non-redirect pages; the prefixes are the wiki's own
    names for File/Category links (from <siteinfo>) for `wikitext_to_text`.

    Args:
        path: dump file (.xml, .xml.bz2, .xml.gz).
        stats: filled in as pages are read.
        progress: optional tqdm bar; advanced by compressed bytes read.

    Raises:
        ValueError: naming `path` when it is not XML or not a MediaWiki dump.
    """
    stats = stats if stats is not None else DumpStats()
    namespaces = _Namespaces()
    stream, raw = open_binary(path)
    root = None
    last_pos = 0
    try:
        for event, elem in ET.iterparse(stream, events=("start", "end")):
            if root is None:
                root = elem
                if _local(elem.tag) != "mediawiki":
                    raise ValueError(
                        f"{path}: not a MediaWiki XML dump (root element is <{_local(elem.tag)}>, "
                        "expected <mediawiki>)"
                    )
                continue
            if event != "end":
                continue
            name = _local(elem.tag)
            if name == "siteinfo":
                namespaces.read_siteinfo(elem)
            elif name == "page":
                stats.pages += 1
                page = _read_page(elem, namespaces, stats)
                # Drop the finished page from the tree: memory stays flat.
                elem.clear()
                root.clear()
                if page is not None:
                    yield (*page, frozenset(namespaces.drop_link_prefixes))
                if progress is not None:
                    pos = raw.tell()
                    progress.update(pos - last_pos)
                    last_pos = pos
    except ET.ParseError as e:
        if root is None:
            raise ValueError(f"{path}: not an XML file ({e})") from None
        _record_error(stats, path, f"XML parse error after {stats.pages} pages: {e}")
    except (EOFError, OSError, zlib.error) as e:
        # bz2/gzip raise EOFError on a truncated file, OSError on corrupt data.
        if root is None and stats.pages == 0 and not isinstance(e, EOFError):
            raise ValueError(f"{path}: cannot be read as a compressed XML dump ({e})") from None
        _record_error(stats, path, f"truncated or corrupt after {stats.pages} pages: {e}")
    finally:
        stream.close()
        raw.close()


def _record_error(stats: DumpStats, path: str, message: str) -> None:
    stats.errors.append(message)
    log.warning("%s: %s; keeping the %d pages read before it", path, message, stats.pages)


def _read_page(page: ET.Element, namespaces: _Namespaces, stats: DumpStats):
    title_el = _child(page, "title")
    title = (title_el.text or "").strip() if title_el is not None else ""
    if not namespaces.is_main(page, title):
        stats.other_namespace += 1
        return None
    revision = None
    for child in page:  # the last revision is the current one
        if _local(child.tag) == "revision":
            revision = child
    text_el = _child(revision, "text") if revision is not None else None
    wikitext = (text_el.text or "") if text_el is not None else ""
    if _child(page, "redirect") is not None or _REDIRECT_RE.match(wikitext):
        stats.redirects += 1
        return None
    id_el = _child(page, "id")
    page_id = (id_el.text or "").strip() if id_el is not None else ""
    return page_id, title, wikitext


def read_dump(path: str, stats: DumpStats | None = None, progress=None) -> Iterator[Article]:
    """Yields the articles of a MediaWiki dump as clean prose.

    Pages that are empty once the markup is removed are skipped and counted
    (`stats.empty`). A truncated file yields the articles read before the
    damage (`stats.errors` says where).

    Raises:
        ValueError: naming `path` when it yields no article at all.

    Example:

    >>> stats = DumpStats()
    >>> titles = [a.title for a in read_dump("dump.xml.bz2", stats)]  # doctest: +SKIP
    >>> stats.articles, stats.redirects                                # doctest: +SKIP
    (106, 99)
    """
    stats = stats if stats is not None else DumpStats()
    for page_id, title, wikitext, prefixes in iter_pages(path, stats, progress):
        try:
            text = wikitext_to_text(wikitext, prefixes)
        except Exception as e:  # mwparserfromhell is robust, but a dump is big
            text = ""
            log.warning("%s: page %r could not be parsed (%s); skipped", path, title, e)
        if not text:
            stats.empty += 1
            continue
        stats.articles += 1
        yield Article(page_id=page_id, title=title, text=text)
    if stats.articles == 0:
        detail = "; ".join(stats.errors) or (
            f"{stats.pages} pages: {stats.redirects} redirects, {stats.other_namespace} outside "
            f"the main namespace, {stats.empty} empty"
        )
        raise ValueError(f"{path}: no usable articles ({detail})")


# ------------------------------------------------------------ markup -> text

# Tags whose content is not prose.
_DROP_TAGS = {
    "ref", "references", "math", "chem", "ce", "gallery", "timeline", "imagemap", "score",
    "graph", "mapframe", "maplink", "templatedata", "templatestyles", "indicator", "table",
    "hiero", "inputbox", "categorytree", "syntaxhighlight", "source",
}
# Boilerplate sections: lists of links and citations, not prose.
_DROP_SECTIONS = {
    "see also", "references", "external links", "further reading", "notes", "bibliography",
    "sources", "citations", "footnotes", "notes and references", "references and notes",
    "works cited", "links",
    # Chinese Wikipedia, Simplified and Traditional
    "参见", "參見", "参考", "參考", "参考文献", "參考文獻", "参考资料", "參考資料", "外部链接", "外部連結", "外部鏈接",
    "注释", "註釋", "注釋", "脚注", "腳註", "延伸阅读", "延伸閱讀", "相关条目", "相關條目", "扩展阅读", "擴展閱讀",
    "来源", "來源", "引用", "资料来源", "資料來源",
}
# A few inline templates that carry the sentence's words: keep them.
_KEEP_TEMPLATE_ARG = {"nowrap": 1, "nobr": 1, "small": 1, "smaller": 1, "abbr": 1, "ill": 1, "sic": 1,
                      "le": 1, "tsl": 3}  # Chinese Wikipedia: {{le|中文名|English name}}, {{tsl|en|English|中文}}
_LANG_CODE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]+)*$|^simple$")
_HEADING = "\x00H"  # sentinel marking heading lines between the two passes


def wikitext_to_text(wikitext: str, drop_link_prefixes: frozenset[str] | set[str] | None = None) -> str:
    """Reduces wiki markup to clean prose (see the module docstring).

    Example:

    >>> wikitext_to_text("== History ==\\nSee [[File:a.png|thumb|x]]{{cite web|url=u}} [[Paris]].")
    'History\\n\\nSee Paris.'
    """
    prefixes = drop_link_prefixes or DROP_LINK_PREFIXES
    if "-{" in wikitext:
        wikitext = language_conversion(wikitext)
    raw = _strip(mwparserfromhell.parse(wikitext), prefixes)
    return _tidy(raw)


# -{...}- language-conversion markup (https://www.mediawiki.org/wiki/Writing_systems/Syntax).
_CONVERSION = re.compile(r"-\{(?!\{)(.*?)\}-", re.DOTALL)
_VARIANT = re.compile(r"(?:^|;)\s*(zh(?:-[a-z]+)?)\s*:", re.IGNORECASE)
_FLAG = re.compile(r"[AHTRDN-]|zh(?:-[a-z]+)?", re.IGNORECASE)
_HIDDEN_FLAGS = {"H", "T", "-"}
# Variants by script, in order of preference.
VARIANTS = {
    "simplified": ("zh-hans", "zh-cn", "zh-sg", "zh-my", "zh"),
    "traditional": ("zh-hant", "zh-tw", "zh-hk", "zh-mo", "zh"),
}


def language_conversion(wikitext: str, script: str | None = None) -> str:
    """Replaces `-{...}-` markup by the text of one variant (see the module docstring).

    Args:
        script: "simplified" or "traditional" (default: the script of `wikitext`; Simplified when unknown).

    Example:

    >>> language_conversion("-{zh-hans:软件;zh-hant:軟體;}-是程式", "traditional")
    '軟體是程式'
    """
    from tfchat.text import chinese

    if script is None:
        script = chinese.script_of(_CONVERSION.sub("", wikitext)) or "simplified"
    preference = VARIANTS[script]

    def replace(match: re.Match) -> str:
        body = match.group(1)
        flags, bar, rest = body.partition("|")
        flag_list = [f.strip() for f in flags.split(";") if f.strip()]
        if bar and flag_list and all(_FLAG.fullmatch(f) for f in flag_list):
            upper = {f.upper() for f in flag_list}
            if upper & _HIDDEN_FLAGS and "A" not in upper:
                return ""  # a conversion rule for the rest of the page, not text
            body = rest
        found = list(_VARIANT.finditer(body))
        if not found or body[: found[0].start()].strip():
            return body  # -{text}-: shown as written
        texts = {}
        for m, end in zip(found, [f.start() for f in found[1:]] + [len(body)]):
            texts.setdefault(m.group(1).lower(), body[m.end():end].strip().rstrip(";").strip())
        return next((texts[v] for v in preference if v in texts), next(iter(texts.values())))

    return _CONVERSION.sub(replace, wikitext)


def _strip(code, prefixes) -> str:
    out = []
    for node in code.nodes:
        if isinstance(node, Text):
            out.append(node.value)
        elif isinstance(node, Heading):
            title = _strip(node.title, prefixes).strip()
            out.append(f"\n{_HEADING}{node.level}:{title}\n")
        elif isinstance(node, Wikilink):
            out.append(_link_text(node, prefixes))
        elif isinstance(node, Tag):
            out.append(_tag_text(node, prefixes))
        elif isinstance(node, ExternalLink):
            out.append(_strip(node.title, prefixes) if node.title else "")
        elif isinstance(node, HTMLEntity):
            out.append(node.normalize())
        elif isinstance(node, Template):
            out.append(_template_text(node, prefixes))
        elif isinstance(node, (Comment, Argument)):
            continue
    return "".join(out)


def _link_text(link: Wikilink, prefixes) -> str:
    title = str(link.title).strip()
    if title.startswith(":"):  # [[:Category:X]] is a visible link, not a category tag
        title = title[1:]
    elif ":" in title:
        prefix = title.split(":", 1)[0].strip().lower()
        if prefix in prefixes:  # files, images, categories
            return ""
        if link.text is None and _LANG_CODE.match(prefix):  # [[de:Albedo]] interlanguage link
            return ""
    if link.text is not None:
        return _strip(link.text, prefixes)
    return title.split("#", 1)[0] if not title.startswith("#") else title[1:]


def _tag_text(tag: Tag, prefixes) -> str:
    name = str(tag.tag).strip().lower()
    if name in _DROP_TAGS or tag.wiki_markup == "{|":
        return ""
    if name == "br":
        return "\n"
    if tag.contents is None:
        return ""
    return _strip(tag.contents, prefixes)


def _template_text(template: Template, prefixes) -> str:
    name = str(template.name).strip().lower()
    params = [p for p in template.params if not p.showkey]
    pick = None
    if name in _KEEP_TEMPLATE_ARG:
        pick = _KEEP_TEMPLATE_ARG[name]
    elif name == "lang":  # {{lang|fr|bonjour}}
        pick = 2
    elif name.startswith(("lang-", "link-")):  # {{lang-fr|bonjour}}, {{link-en|中文名|English name}}
        pick = 1
    elif name in ("convert", "cvt") and len(params) >= 2:  # {{convert|5|km|mi}} -> "5 km"
        return f"{_strip(params[0].value, prefixes).strip()} {_strip(params[1].value, prefixes).strip()}"
    if pick is None or len(params) < pick:
        return ""
    return _strip(params[pick - 1].value, prefixes).strip()


_EMPTY_PARENS = re.compile(r"\s*[(（]\s*[,;:，；：、]?\s*[)）]|\s*\[\s*\]")
_OPEN_PAREN_JUNK = re.compile(r"([(（])\s*[,;:，；：、]\s*")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?%)])")
_SPACES = re.compile(r"[ \t\u00a0]{2,}")
_MAGIC = re.compile(r"__[A-Z]+__")
_LIST_MARK = re.compile(r"^[*#:;]+\s*")
# Fallbacks for markup mwparserfromhell leaves as text (malformed tables/refs).
_RAW_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.IGNORECASE | re.DOTALL)
_RAW_TAG = re.compile(r"</?[a-zA-Z][^<>\n]*>")
_RAW_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_RAW_LINK = re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]]*)\]\]")
_TABLE_LINE = re.compile(r"^\s*(\{\||\|\}|\|-|\|\+|\||!)")


def _strip_raw_markup(text: str) -> str:
    text = _RAW_REF.sub("", text)
    for _ in range(5):  # nested templates, innermost first
        text, n = _RAW_TEMPLATE.subn("", text)
        if not n:
            break
    text = _RAW_LINK.sub(r"\1", text)
    return _RAW_TAG.sub("", text)


def _tidy(raw: str) -> str:
    """Second pass: lines, paragraphs, headings; drops boilerplate sections."""
    items: list[tuple[int, str]] = []  # (heading level or 0 for text, line); "" = paragraph break
    skip_level = 0
    for line in _strip_raw_markup(_MAGIC.sub("", raw)).split("\n"):
        if _TABLE_LINE.match(line):
            continue
        if line.startswith(_HEADING):
            level_str, title = line[len(_HEADING):].split(":", 1)
            level = int(level_str)
            if skip_level and level > skip_level:
                continue
            skip_level = level if title.strip().lower() in _DROP_SECTIONS else 0
            if not skip_level and title.strip():
                items.append((level, _clean_line(title)))
            continue
        if skip_level:
            continue
        line = _clean_line(_LIST_MARK.sub("", line.strip()))
        if not any(ch.isalnum() for ch in line):  # leftovers like "|}" or "."
            line = ""
        items.append((0, line))
    # Keep a heading only when some text follows before the next heading of
    # its level or above: removed templates/tables leave empty sections.
    kept: list[tuple[int, str]] = []
    for i, (level, line) in enumerate(items):
        if level:
            has_text = False
            for later_level, later in items[i + 1:]:
                if later_level and later_level <= level:
                    break
                if not later_level and later:
                    has_text = True
                    break
            if not has_text:
                continue
        kept.append((level, line))
    out: list[str] = []
    for level, line in kept:
        if level or not line:  # headings stand alone, blank lines separate paragraphs
            if out and out[-1] != "":
                out.append("")
            if level:
                out.extend([line, ""])
        else:
            out.append(line)
    return "\n".join(out).strip()


def _clean_line(line: str) -> str:
    line = _EMPTY_PARENS.sub("", line)
    line = _OPEN_PAREN_JUNK.sub(r"\1", line)
    line = _SPACES.sub(" ", line)
    line = _SPACE_BEFORE_PUNCT.sub(r"\1", line)
    return line.strip()
