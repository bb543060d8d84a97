"""Chinese data: text helpers, the document filter, zhwiki dumps and extracts, the bundled sources, mixtures,
script conversion, KdConv and LCCC, the tokenizer's character coverage, and the commands on Chinese data."""

import bz2
import collections
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfchat.data import dialogues, mixture, sources, wikiextractor, wikipedia
from tfchat.data.batches import pretrain_dataset
from tfchat.data.filters import DocumentFilter, effective_length
from tfchat.data.io import ReadStats
from tfchat.text import chinese
from tfchat.text.tokenizer import character_coverage_for, load_tokenizer, train_tokenizer

TRADITIONAL = "漢語維基百科是一個自由的百科全書，任何人都可以編輯。它的內容涵蓋歷史、科學、藝術與體育。"
SIMPLIFIED = "汉语维基百科是一个自由的百科全书，任何人都可以编辑。它的内容涵盖历史、科学、艺术与体育。"


def texts(ds) -> list[str]:
    return [t.decode("utf-8") for t in ds.as_numpy_iterator()]


# ------------------------------------------------------------------ text helpers


def test_join_characters_undoes_lccc_spacing():
    assert chinese.join_characters("为 什 么 听 一 面 之 辞 就 相 信 ？") == "为什么听一面之辞就相信？"
    assert chinese.join_characters("打 包 2 斤 牛 油 ， 买 H T C 的 吧 ！") == "打包2斤牛油，买HTC的吧！"
    # A real space, spelt as a run of spaces by character spacing, stays one space.
    assert chinese.join_characters("我 喜 欢 i P h o n e   1 2 和 N B A") == "我喜欢iPhone 12和NBA"
    assert chinese.join_characters("h e l l o   w o r l d") == "hello world"
    assert chinese.join_characters("  你 好  ") == "你好"


def test_units_spaced_and_script():
    assert chinese.units("我喜欢NBA和iPhone 12！") == ["我", "喜", "欢", "NBA", "和", "iPhone", "12", "！"]
    assert chinese.spaced("你好，world!") == "你 好 ， world!"
    assert chinese.units("𠀀𠀁") == ["𠀀", "𠀁"]  # Extension B: outside the Basic Multilingual Plane
    assert chinese.script_of(TRADITIONAL) == "traditional" and chinese.script_of(SIMPLIFIED) == "simplified"
    assert chinese.script_of("Wikipedia 2024") is None
    assert chinese.convert_script(TRADITIONAL, "t2s") == SIMPLIFIED
    assert chinese.convert_script(SIMPLIFIED, "s2t") == TRADITIONAL
    assert chinese.is_chinese(SIMPLIFIED) and not chinese.is_chinese("An English sentence with 中文 inside it.")
    with pytest.raises(ValueError, match="unknown script conversion"):
        chinese.convert_script("x", "s2x")


# ------------------------------------------------------------------ the filter


def test_stub_threshold_weighs_han_characters():
    keep = DocumentFilter(min_chars=500)
    assert effective_length("漢" * 10 + "abc") == 33
    assert keep.check("漢語" * 60) == "stub"  # 120 characters: a stub in any script
    assert keep.check(("維基百科是自由的百科全書。" * 15)[:180]) is None  # 180 Han characters: a short article
    assert keep.check("An English stub. " * 12) == "stub"  # 204 characters of English


def test_near_duplicates_in_chinese_are_caught_by_character_shingles():
    keep = DocumentFilter(min_chars=10)
    article = "".join(chinese.convert_script(SIMPLIFIED, "s2t") + s for s in "一二三四五六七八")
    assert keep.check(article) is None
    # One character changed: a Chinese paragraph has no spaces, so word shingles would see a new document.
    assert keep.check(article.replace("自由", "開放", 1)) == "near-duplicate"
    assert keep.check("北京市是中華人民共和國的首都，位於華北平原的北部，歷史悠久，文化燦爛。" * 3) is None


# ------------------------------------------------------------- zhwiki dumps


def _page(title, text, ns=0, page_id=1, redirect=None):
    redirect_el = f'<redirect title="{redirect}" />' if redirect else ""
    return (f"<page><title>{title}</title><ns>{ns}</ns><id>{page_id}</id>{redirect_el}"
            f"<revision><id>{page_id}0</id><text xml:space=\"preserve\">{text}</text></revision></page>")


def _escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


ZH_ARTICLE = _escape(
    "{{NoteTA|G1=IT}}\n'''軟體'''（{{lang-en|Software}}）是-{zh-hans:计算机;zh-hant:電腦;}-程式與"
    "-{H|zh-cn:鼠标;zh-tw:滑鼠;}-資料的集合，見{{le|作業系統|Operating system}}。<ref>書</ref>"
    "[[File:Software.png|thumb|軟體]][[文件:X.jpg|縮圖]]\n\n"
    "== 歷史 ==\n-{A|zh-hans:软件;zh-hant:軟體}-一詞出現於1950年代（{{bd|1950年}}）。[[分類:軟體]]\n\n"
    "== 參考文獻 ==\n* 某書\n\n== 外部連結 ==\n* [http://example.com 網站]\n[[en:Software]]"
)
ZH_SIMPLIFIED = _escape("'''北京市'''是-{zh-hans:中华人民共和国;zh-hant:中華人民共和國}-的首都。[[Category:城市]]")


def _zh_dump(path):
    xml = ("<mediawiki xmlns=\"http://www.mediawiki.org/xml/export-0.10/\" xml:lang=\"zh\"><siteinfo>"
           "<sitename>维基百科</sitename><namespaces><namespace key=\"6\">File</namespace>"
           "<namespace key=\"14\">Category</namespace><namespace key=\"10\">Template</namespace></namespaces></siteinfo>"
           + _page("軟體", ZH_ARTICLE, page_id=1) + _page("北京市", ZH_SIMPLIFIED, page_id=2)
           + _page("软件", "#重定向 [[軟體]]", page_id=3) + _page("Template:Lang", "{{{1}}}", ns=10, page_id=4)
           + _page("北京", "#REDIRECT [[北京市]]", page_id=5, redirect="北京市") + "</mediawiki>")
    with bz2.open(path, "wt", encoding="utf-8") as f:
        f.write(xml)
    return str(path)


def test_zhwiki_dump_keeps_one_variant_and_the_script_as_written(tmp_path):
    stats = wikipedia.DumpStats()
    articles = {a.title: a.text for a in wikipedia.read_dump(_zh_dump(tmp_path / "zhwiki-pages-articles.xml.bz2"),
                                                               stats)}
    assert list(articles) == ["軟體", "北京市"]
    assert (stats.redirects, stats.other_namespace) == (2, 1)
    assert articles["軟體"] == "軟體（Software）是電腦程式與資料的集合，見作業系統。\n\n歷史\n\n軟體一詞出現於1950年代。"
    assert articles["北京市"] == "北京市是中华人民共和国的首都。"  # the Simplified article gets the zh-hans variant
    for text in articles.values():
        assert "-{" not in text and "}-" not in text and "（）" not in text


def test_zhwiki_dump_as_a_pretraining_source(tmp_path, cache):
    path = _zh_dump(tmp_path / "zhwiki-pages-articles.xml.bz2")
    stats = sources.source_stats(path, cache)["stats"]
    assert sum(stats["kept"].values()) == 2 and stats["skipped"]["redirect"] == 2
    converted = sources.documents_dataset(path, sources.split_of("軟體"), cache_dir=cache, convert_script="t2s")
    assert any(t.startswith("软体") for t in texts(converted))
    assert sources.cache_path(path, cache) != sources.cache_path(sources.parse_source(path, convert_script="t2s"), cache)


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache")


def test_wikiextractor_removes_full_width_empty_parentheses():
    text = f'<doc id="1" url="u" title="東富山站">\n東富山站\n\n東富山站（）是車站（，）。{TRADITIONAL}\n</doc>\n'
    import io

    [doc] = wikiextractor.parse_docs(io.StringIO(text))
    assert doc.text == f"東富山站\n\n東富山站是車站。{TRADITIONAL}"


# ------------------------------------------------------------ bundled sources


def test_zhwiki_sample_is_bundled_with_both_splits_and_both_scripts():
    source = sources.parse_source("zhwiki-sample")
    assert source.files[0][1] == "wikiextractor" and os.path.isfile(source.files[0][0])
    stats = sources.source_stats("zhwiki-sample")["stats"]
    assert stats["read"] == 6100 and not stats["skipped"]  # vendored already filtered
    assert stats["kept"]["validation"] > 200 and stats["kept"]["train"] > 5000
    docs = texts(sources.documents_dataset("zhwiki-sample", "validation"))
    assert len(docs) == stats["kept"]["validation"]
    scripts = collections.Counter(chinese.script_of(d) for d in docs)
    assert scripts["traditional"] > scripts["simplified"] > 50  # kept as written, about 2:1


def test_dialogues_sample_zh_has_knowledge_and_no_character_spacing():
    stats = ReadStats()
    conversations = dialogues.load_conversations("dialogues-sample-zh", stats)
    assert len(conversations) == 14_300 and not stats.skipped
    kdconv = conversations[:900]
    assert sum(1 for c in kdconv for m in c if m.get("knowledge")) > 5000
    assert all(m["role"] in ("user", "assistant") and m["content"] == m["content"].strip()
               for c in conversations for m in c)
    lccc = [m["content"] for c in conversations[900:] for m in c]
    assert sum(" " in t for t in lccc) == 0  # no real spaces survive in this sample
    assert sum(chinese.is_chinese(t) for t in lccc) > 0.9 * len(lccc)
    assert {dialogues.split_of(c) for c in conversations} == {"train", "validation"}


# ------------------------------------------------------------------ mixtures


def test_parse_mixture():
    assert mixture.parse_mixture("a:3,b:1") == [("a", 0.75), ("b", 0.25)]
    assert mixture.parse_mixture("tfds:wiki40b/en:0.5, x.jsonl") == [("tfds:wiki40b/en", 0.5 / 1.5), ("x.jsonl", 1 / 1.5)]
    assert mixture.parse_mixture("hf:org/set:2") == [("hf:org/set:2", 1.0)]  # one source: no weight
    for bad, message in (("a,,b", "empty source"), ("a:0,b", "positive"), ("a,a:2", "twice")):
        with pytest.raises(ValueError, match=message):
            mixture.parse_mixture(bad)


def _jsonl(path, docs):
    path.write_text("".join(json.dumps({"id": k, "text": t}, ensure_ascii=False) + "\n" for k, t in docs.items()),
                    encoding="utf-8")
    return str(path)


@pytest.fixture
def two_sources(tmp_path):
    en = _jsonl(tmp_path / "en.jsonl", {f"e{i}": f"Article {i}. " + "The quick brown fox jumps. " * 4 for i in range(200)})
    zh = _jsonl(tmp_path / "zh.jsonl", {f"z{i}": f"第{i}篇。" + TRADITIONAL for i in range(200)})
    return en, zh


def test_mixed_pretraining_windows_follow_the_weights(two_sources, cache, data_tokenizer):
    en, zh = two_sources
    spec = f"{en}:0.8,{zh}:0.2"

    def windows(**kw):
        ds = pretrain_dataset(spec, data_tokenizer, 16, 8, seed=3, cache_dir=cache, **kw)
        return np.concatenate([b["token_ids"].numpy() for b in ds.take(40)])

    first = windows()
    np.testing.assert_array_equal(first, windows())  # deterministic: a resumed run replays it
    han = np.array([chinese.cjk_count(data_tokenizer.decode(w.tolist())) > 0 for w in first])
    assert 0.1 < han.mean() < 0.3  # about 20% of the windows (of the tokens) are Chinese
    # Each input pipeline reads its own part of every source.
    everything = texts(sources.documents_dataset(spec, cache_dir=cache))
    parts = [texts(sources.documents_dataset(spec, cache_dir=cache, input_context=tf.distribute.InputContext(2, i, 2)))
             for i in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(everything) and not set(parts[0]) & set(parts[1])
    assert all(any(chinese.is_chinese(t) for t in p) and not all(chinese.is_chinese(t) for t in p) for p in parts)


def test_mixed_documents_are_checkpointable(two_sources, cache, tmp_path):
    en, zh = two_sources
    it = iter(sources.documents_dataset(f"{en},{zh}", cache_dir=cache, seed=1))
    next(it)
    ckpt = tf.train.Checkpoint(iterator=it)
    saved = ckpt.save(str(tmp_path / "ckpt" / "it"))
    expected = [next(it).numpy() for _ in range(8)]
    ckpt.restore(saved)
    assert [next(it).numpy() for _ in range(8)] == expected
    assert any(chinese.is_chinese(t.decode()) for t in expected) and not all(chinese.is_chinese(t.decode()) for t in expected)


def test_convert_script_of_text_and_tables(tmp_path, cache):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = _jsonl(tmp_path / "zh.jsonl", {f"z{i}": TRADITIONAL for i in range(60)})
    kept = texts(sources.documents_dataset(path, cache_dir=cache))
    converted = texts(sources.documents_dataset(path, cache_dir=cache, convert_script="t2s"))
    assert set(kept) == {TRADITIONAL} and set(converted) == {SIMPLIFIED} and len(kept) == len(converted)
    pq.write_table(pa.table({"id": [f"z{i}" for i in range(60)], "text": [TRADITIONAL] * 60}), tmp_path / "zh.parquet")
    table = texts(sources.documents_dataset(str(tmp_path / "zh.parquet"), convert_script="t2s"))
    assert set(table) == {SIMPLIFIED} and len(table) == len(kept)
    with pytest.raises(ValueError, match="not to TFDS"):
        sources.parse_source("tfds:wikipedia/20230601.zh", convert_script="t2s")
    with pytest.raises(ValueError, match="unknown script conversion"):
        sources.documents_dataset(path, cache_dir=cache, convert_script="zh2en")


# ------------------------------------------------------------ KdConv and LCCC


KDCONV = [{"name": "恋恋笔记本", "messages": [
    {"message": "知道恋恋笔记本这部电影吗？"},
    {"message": "知道呀，导演是尼克·卡索维茨。",
     "attrs": [{"name": "恋恋笔记本", "attrname": "导演", "attrvalue": "尼克·卡索维茨"}]},
    {"message": "是哪年上映的呀？"},
    {"message": "2004年06月25日。", "attrs": [{"name": "恋恋笔记本", "attrname": "上映时间", "attrvalue": "2004年06月25日"}]},
    {"message": "谢谢！"},
]}, {"name": "x", "messages": "not a list"}]


def test_kdconv_keeps_each_turns_knowledge(tmp_path):
    path = tmp_path / "film_dev.json"
    path.write_text(json.dumps(KDCONV, ensure_ascii=False), encoding="utf-8")
    stats = ReadStats()
    [conversation] = dialogues.load_conversations(f"kdconv:{path}", stats)
    assert [m["role"] for m in conversation] == ["user", "assistant", "user", "assistant"]  # trailing user cut
    assert conversation[1]["knowledge"] == [["恋恋笔记本", "导演", "尼克·卡索维茨"]]
    assert "knowledge" not in conversation[0] and stats.skipped['no "messages" list'] == 1
    # The knowledge survives messages-JSONL (convert_dialogues' output) and script conversion.
    out = tmp_path / "out.jsonl"
    dialogues.write_messages_jsonl([conversation], str(out))
    assert dialogues.load_conversations(str(out)) == [conversation]
    traditional = dialogues.convert_script(conversation, "s2t")
    assert traditional[1]["knowledge"] == [["戀戀筆記本", "導演", "尼克·卡索維茨"]]
    assert dialogues.validate([{"role": "user", "content": "a", "knowledge": [["x", "y"]]},
                               {"role": "assistant", "content": "b"}]).startswith("knowledge")


def test_lccc_json_and_pairs_are_despaced(tmp_path):
    data = {"train": [["你 去 那 儿 竟 然 不 喊 我", "道 歉 ！ ！", "领 个 搓 衣 板 去 吧"]],
            "valid": [["只 有 一 句"]], "test": [["买 H T C 的 吧", "i P h o n e   1 2 更 好"]]}
    (tmp_path / "lccc.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "pairs.txt").write_text("小 红 酒 不 断 啊\t我 看 家 里 有 几 箱\n\n只有一列\n", encoding="utf-8")
    stats = ReadStats()
    got = dialogues.load_conversations([f"lccc:{tmp_path / 'lccc.json'}", f"lccc:{tmp_path / 'pairs.txt'}"], stats)
    assert got == [
        [{"role": "user", "content": "你去那儿竟然不喊我"}, {"role": "assistant", "content": "道歉！！"}],
        [{"role": "user", "content": "买HTC的吧"}, {"role": "assistant", "content": "iPhone 12更好"}],
        [{"role": "user", "content": "小红酒不断啊"}, {"role": "assistant", "content": "我看家里有几箱"}],
    ]
    assert stats.skipped["no assistant turn"] == 2


def test_bad_chinese_dialogue_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json: not a KdConv JSON file"):
        dialogues.load_conversations(f"kdconv:{bad}")
    with pytest.raises(ValueError, match="bad.json: not an LCCC JSON file"):
        dialogues.load_conversations(f"lccc:{bad}")


# ------------------------------------------------------------------ tokenizer


def _zipf_chinese(n_chars: int, length: int, seed: int = 0) -> list[str]:
    chars = [chr(0x4E00 + i) for i in range(n_chars)]
    p = np.arange(1, n_chars + 1) ** -1.5  # thousands of characters, a few hundred of them frequent
    draws = np.random.default_rng(seed).choice(n_chars, size=length, p=p / p.sum())
    text = "".join(chars[i] for i in draws)
    return [text[i:i + 200] for i in range(0, length, 200)]


def test_character_coverage_fits_chinese_into_a_small_vocabulary(tmp_path):
    english = collections.Counter("The quick brown fox jumps over the lazy dog. " * 100)
    assert character_coverage_for(english, 1024) == (0.9995, len(english))
    coverage, needed = character_coverage_for(collections.Counter("".join(_zipf_chinese(3000, 200_000))), 1024)
    assert 0.98 <= coverage < 0.9995 and needed <= 1024 - 300
    with pytest.raises(ValueError, match="use a vocab_size of at least"):
        character_coverage_for(collections.Counter("".join(_zipf_chinese(3000, 200_000))), 512)
    docs = _zipf_chinese(1500, 100_000)
    tok = train_tokenizer(docs, vocab_size=1024)  # with SentencePiece's 0.9995 its characters would not fit
    settings = tok.training["settings"]
    assert settings["character_coverage"] < 0.9995 and tok.training["han_share"] > 0.99
    assert tok.decode(tok.encode(docs[-1])) == docs[-1]  # rare characters fall back to bytes
    tok.record_training({**tok.training, "data": "zipf"})
    tok.save(str(tmp_path / "tok"))
    assert load_tokenizer(str(tmp_path / "tok")).training == tok.training
    assert json.load(open(tmp_path / "tok" / "tokenizer.json"))["training"]["data"] == "zipf"


# ------------------------------------------------------------------ commands


def test_pretrain_and_finetune_commands_on_chinese_data(two_sources, tmp_path):
    from tfchat.checkpoint.model_dir import load_model
    from training import finetune, pretrain

    en, zh = two_sources
    small = ["--seq-len", "32", "--batch-size", "4", "--eval-batches", "2", "--warmup-steps", "1", "--no-progress",
             "--precision", "fp32", "--steps", "3", "--eval-every", "3"]
    out = str(tmp_path / "zh")
    assert pretrain.main([*small, "--preset", "tiny", "--vocab-size", "512", "--data", f"{zh}:0.7,{en}:0.3",
                          "--convert-script", "t2s", "--out", out]) == 0
    model = load_model(out)
    training = model.tokenizer.training
    assert training["data"] == f"{zh}:0.7,{en}:0.3" and training["convert_script"] == "t2s"
    assert training["han_share"] > 0.1 and model.metadata["convert_script"] == "t2s"
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("".join(f"你 好 {i}\t你 好 ， 我 是 第 {i} 个\n" for i in range(100)), encoding="utf-8")
    chat = str(tmp_path / "zh-chat")
    assert finetune.main([*small, "--from", out, "--data", f"lccc:{pairs}", "--out", chat]) == 0
    assert load_model(chat).metadata["job"] == "finetune"
    with pytest.raises(SystemExit) as e:
        pretrain.parser().parse_args(["--convert-script", "zh2en"])
    assert e.value.code == 2
