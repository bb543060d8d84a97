"""MediaWiki dump reader and wiki markup cleaning."""

from __future__ import annotations

import bz2
import logging

import pytest

from tfchat.data import sources, wikipedia

NS = "http://www.mediawiki.org/xml/export-0.11/"


def page(title, text, ns=0, page_id=1, redirect=None):
    redirect_el = f'<redirect title="{redirect}" />' if redirect else ""
    return (
        f"<page><title>{title}</title><ns>{ns}</ns><id>{page_id}</id>{redirect_el}"
        f"<revision><id>9{page_id}</id><text bytes=\"1\" xml:space=\"preserve\">{text}</text></revision></page>\n"
    )


def header(xmlns=NS):
    attr = f' xmlns="{xmlns}"' if xmlns else ""
    return (
        f'<mediawiki{attr} version="0.11" xml:lang="en"><siteinfo><sitename>Test</sitename><namespaces>'
        '<namespace key="0" case="first-letter" /><namespace key="1" case="first-letter">Talk</namespace>'
        '<namespace key="6" case="first-letter">Datei</namespace>'
        '<namespace key="14" case="first-letter">Kategorie</namespace></namespaces></siteinfo>\n'
    )


PAGES = [
    page("Albedo", "'''Albedo''' is the [[reflection|reflectivity]] of a surface.{{cite web|url=x}}&lt;ref&gt;A book&lt;/ref&gt;\n\n"
         "== History ==\nIt was measured in [[1760]].\n\n[[Datei:Sun.png|thumb|The Sun]][[Kategorie:Optics]][[de:Albedo]]", page_id=1),
    page("Reflectivity", "#REDIRECT [[Albedo]]", page_id=2, redirect="Albedo"),
    page("Talk:Albedo", "Discussion here.", ns=1, page_id=3),
    page("北京", "'''北京'''是中华人民共和国的首都。\n\n== 历史 ==\n北京有三千多年的历史。", page_id=4),
    page("Stub", "{{Infobox thing|name=x}}\n[[Category:Stubs]]", page_id=5),
]
FOOTER = "</mediawiki>\n"


def write_dump(path, pages=PAGES, xmlns=NS, multistream=False):
    xml = header(xmlns) + "".join(pages) + FOOTER
    if str(path).endswith(".bz2"):
        if multistream:  # like *-multistream.xml.bz2: header, pages and footer in separate streams
            parts = [header(xmlns)] + list(pages) + [FOOTER]
            data = b"".join(bz2.compress(p.encode("utf-8")) for p in parts)
        else:
            data = bz2.compress(xml.encode("utf-8"))
        path.write_bytes(data)
    else:
        path.write_text(xml, encoding="utf-8")
    return str(path)


def test_real_sample_reads_clean_articles():
    path = sources.resource_path(sources.SAMPLE_FILE)
    stats = wikipedia.DumpStats()
    articles = []
    for article in wikipedia.read_dump(path, stats):
        articles.append(article)
        if len(articles) == 3:
            break
    assert [a.title for a in articles] == ["Anarchism", "Autism", "Albedo"]
    text = articles[0].text
    assert text.startswith("Anarchism is a political philosophy")
    for markup in ("{{", "}}", "[[", "]]", "<ref", "'''", "==", "thumb|"):
        assert markup not in text, markup
    lines = text.split("\n")
    assert "History" in lines  # headings kept as plain lines
    assert "" in lines  # paragraphs separated by blank lines
    assert "External links" not in lines and "References" not in lines  # boilerplate dropped
    assert stats.redirects >= 1 and stats.articles == 3  # AccessibleComputing etc. come first


@pytest.mark.parametrize("name,multistream", [("dump.xml", False), ("dump.xml.bz2", False), ("dump-multistream.xml.bz2", True)])
def test_small_dump_namespaces_redirects_and_chinese(tmp_path, name, multistream):
    path = write_dump(tmp_path / name, multistream=multistream)
    stats = wikipedia.DumpStats()
    articles = list(wikipedia.read_dump(path, stats))
    assert [a.title for a in articles] == ["Albedo", "北京"]
    assert (stats.pages, stats.redirects, stats.other_namespace, stats.empty) == (5, 1, 1, 1)
    albedo = articles[0].text
    assert albedo == "Albedo is the reflectivity of a surface.\n\nHistory\n\nIt was measured in 1760."
    assert articles[1].text == "北京是中华人民共和国的首都。\n\n历史\n\n北京有三千多年的历史。"
    assert articles[1].page_id == "4"


def test_dump_without_xml_namespace(tmp_path):
    path = write_dump(tmp_path / "old.xml", xmlns=None)
    assert [a.title for a in wikipedia.read_dump(path)] == ["Albedo", "北京"]


def test_wikitext_cleaning():
    wikitext = (
        "{{Infobox|a=b}}'''Paris''' ({{lang-fr|Paris}}) is the [[capital city|capital]] of [[France]]"
        "<ref name=x>Cite</ref><ref name=y/>, about {{convert|105|km2}}.&nbsp;See [http://example.org the site].\n"
        "{| class=\"wikitable\"\n| cell || cell\n|}\n"
        "* A [[List item]]\n<!-- hidden -->__NOTOC__\n"
        "[[File:Paris.jpg|thumb|A [[caption]]]]\n[[Category:Cities]]\n[[fr:Paris]]\n"
        "== See also ==\n* [[Lyon]]\n== Culture ==\nArt &amp; music.<math>x^2</math>\n"
    )
    text = wikipedia.wikitext_to_text(wikitext)
    assert text.split("\n") == [
        "Paris (Paris) is the capital of France, about 105 km2.\u00a0See the site.",
        "",  # the removed table ended the paragraph
        "A List item",
        "",
        "Culture",
        "",
        "Art & music.",
    ]


def _dump_bytes(n_pages: int) -> bytes:
    # Multistream, 10 pages per bz2 stream: bz2 decodes whole blocks/streams
    # only, so a cut file yields the streams before the cut.
    pages = [page(f"Article {i}", f"Article number {i} has some text. " * 20, page_id=i + 1) for i in range(n_pages)]
    chunks = [header()] + ["".join(pages[i:i + 10]) for i in range(0, n_pages, 10)] + [FOOTER]
    return b"".join(bz2.compress(c.encode("utf-8")) for c in chunks)


def test_truncated_bz2_keeps_what_was_read(tmp_path, caplog):
    data = _dump_bytes(300)
    path = tmp_path / "cut.xml.bz2"
    path.write_bytes(data[: len(data) * 2 // 3])
    stats = wikipedia.DumpStats()
    with caplog.at_level(logging.WARNING):
        articles = list(wikipedia.read_dump(str(path), stats))
    assert 0 < len(articles) < 300
    assert [a.title for a in articles] == [f"Article {i}" for i in range(len(articles))]
    assert len(stats.errors) == 1 and "truncated" in stats.errors[0]
    assert str(path) in caplog.text and "truncated" in caplog.text


def test_truncated_to_nothing_names_the_file(tmp_path):
    path = tmp_path / "tiny.xml.bz2"
    path.write_bytes(_dump_bytes(5)[:40])
    with pytest.raises(ValueError, match="tiny.xml.bz2"):
        list(wikipedia.read_dump(str(path)))


def test_not_a_mediawiki_dump(tmp_path):
    path = tmp_path / "feed.xml"
    path.write_text("<rss><channel><title>x</title></channel></rss>", encoding="utf-8")
    with pytest.raises(ValueError, match=r"feed\.xml: not a MediaWiki XML dump"):
        list(wikipedia.read_dump(str(path)))
    path = tmp_path / "junk.xml"
    path.write_text("this is not xml at all", encoding="utf-8")
    with pytest.raises(ValueError, match=r"junk\.xml: not an XML file"):
        list(wikipedia.read_dump(str(path)))


def test_dump_with_only_redirects_is_an_error(tmp_path):
    path = write_dump(tmp_path / "r.xml", pages=[PAGES[1], PAGES[2]])
    with pytest.raises(ValueError, match=r"r\.xml: no usable articles .*1 redirects"):
        list(wikipedia.read_dump(path))
