"""Naming sources, the extraction cache, splits, sharding, TFDS sources."""

from __future__ import annotations

import json
import logging
import lzma
import os

import numpy as np
import pytest
import tensorflow as tf

from tfchat.cache import CACHE_ENV
from tfchat.data import sources

from .test_wikipedia import write_dump


def texts(ds) -> list[str]:
    return [t.decode("utf-8") for t in ds.as_numpy_iterator()]


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache")


def write_txt_docs(directory, n=30):
    directory.mkdir(exist_ok=True)
    for i in range(n):
        body = f"Document {i}. " + ("中文句子。" if i % 3 == 0 else "Plain English words. ") * 5
        (directory / f"doc{i:03d}.txt").write_text(body, encoding="utf-8")
    (directory / "empty.txt").write_text("  \n", encoding="utf-8")
    return directory


def test_parse_source_forms(tmp_path):
    assert sources.parse_source("wikipedia-sample").files[0][1] == "dump"
    assert sources.parse_source("tfds:wiki40b/en").tfds_name == "wiki40b/en"
    write_txt_docs(tmp_path / "txt", n=2)
    glob = sources.parse_source(str(tmp_path / "txt" / "*.txt"))
    assert [os.path.basename(p) for p, _ in glob.files] == ["doc000.txt", "doc001.txt", "empty.txt"]
    (tmp_path / "a.jsonl.gz").write_bytes(b"")
    assert sources.parse_source(str(tmp_path / "a.jsonl.gz")).files[0][1] == "jsonl"
    with pytest.raises(FileNotFoundError, match="no such file"):
        sources.parse_source(str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match="matches no files"):
        sources.parse_source(str(tmp_path / "nothing" / "*.txt"))
    # A directory stands for every file of a known kind below it.
    folder = sources.parse_source(str(tmp_path / "txt"))
    assert [os.path.basename(p) for p, _ in folder.files] == ["doc000.txt", "doc001.txt", "empty.txt"]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.csv").write_text("a,b")
    with pytest.raises(ValueError, match="no readable files"):
        sources.parse_source(str(tmp_path / "junk"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match=r"x\.csv: unknown kind"):
        sources.parse_source(str(tmp_path / "x.csv"))


def test_wikipedia_sample_cache_counts_and_split():
    cache = None  # the session's cache (conftest points $TFCHAT_CACHE_DIR at a temp dir)
    meta = sources.source_stats("wikipedia-sample", cache)
    stats = meta["stats"]
    assert stats["read"] == 206
    assert stats["skipped"] == {"redirect": 99, "not main namespace": 1}
    assert stats["kept"]["train"] + stats["kept"]["validation"] == 106
    assert stats["kept"]["validation"] > 0
    train = texts(sources.documents_dataset("wikipedia-sample", "train", cache_dir=cache))
    valid = texts(sources.documents_dataset("wikipedia-sample", "validation", cache_dir=cache))
    assert (len(train), len(valid)) == (stats["kept"]["train"], stats["kept"]["validation"])
    assert train[0].startswith("Anarchism\n\nAnarchism is")
    titles = lambda docs: {d.split("\n", 1)[0] for d in docs}  # noqa: E731
    assert not titles(train) & titles(valid)
    for doc in valid:  # the split is a function of the title
        assert sources.split_of(doc.split("\n", 1)[0]) == "validation"
    # Second call: served from the cache, nothing re-extracted, no temp dirs left.
    directory = sources.prepare_cache("wikipedia-sample", cache)
    assert directory.startswith(os.environ[CACHE_ENV])
    mtime = os.path.getmtime(os.path.join(directory, "meta.json"))
    assert sources.prepare_cache("wikipedia-sample", cache) == directory
    assert os.path.getmtime(os.path.join(directory, "meta.json")) == mtime
    assert [n for n in os.listdir(os.path.dirname(directory)) if ".tmp-" in n] == []


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "envcache"))
    assert sources.default_cache_dir() == str(tmp_path / "envcache")


def test_txt_glob_one_document_per_file(tmp_path, cache, caplog):
    write_txt_docs(tmp_path / "txt")
    spec = str(tmp_path / "txt" / "*.txt")
    with caplog.at_level(logging.WARNING):
        meta = sources.source_stats(spec, cache)
    assert meta["stats"]["read"] == 31 and meta["stats"]["skipped"] == {"empty": 1}
    assert "empty.txt: skipped: empty" in caplog.text
    docs = texts(sources.documents_dataset(spec, "train", cache_dir=cache))
    docs += texts(sources.documents_dataset(spec, "validation", cache_dir=cache))
    assert len(docs) == 30
    assert any(d.startswith("Document 0. 中文句子。中文句子。") for d in docs)


def test_cache_key_follows_file_changes(tmp_path, cache):
    path = tmp_path / "docs.jsonl"
    doc_id = next(f"k{i}" for i in range(1000) if sources.split_of(f"k{i}") == "train")
    path.write_text(json.dumps({"id": doc_id, "text": "first version"}) + "\n", encoding="utf-8")
    first = sources.prepare_cache(str(path), cache)
    path.write_text(json.dumps({"id": doc_id, "text": "second version, longer"}) + "\n", encoding="utf-8")
    second = sources.prepare_cache(str(path), cache)
    assert first != second
    assert texts(sources.documents_dataset(str(path), "train", cache_dir=cache)) == ["second version, longer"]


def test_jsonl_bad_lines_counted(tmp_path, cache, caplog):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"id": f"d{i}", "text": f"text number {i} 文本"}) for i in range(40)]
    lines[3] = "{not json"
    lines[5] = json.dumps({"title": "no text field"})
    lines[7] = json.dumps({"text": "   "})
    lines[9] = json.dumps(["a", "list"])
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        meta = sources.source_stats(str(path), cache)
    stats = meta["stats"]
    assert stats["read"] == 40
    assert stats["skipped"] == {"not JSON": 1, 'no "text" string': 2, "empty": 1}
    assert sum(stats["kept"].values()) == 36
    assert f"{path}:4: skipped: not JSON" in caplog.text
    assert f"{path}:8: skipped: empty" in caplog.text


def test_nothing_usable_names_the_file(tmp_path, cache):
    path = tmp_path / "bad.jsonl"
    path.write_text("nope\n{}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl: no usable documents"):
        sources.prepare_cache(str(path), cache)
    assert not os.path.exists(os.path.join(cache, "documents")) or not [
        n for n in os.listdir(os.path.join(cache, "documents")) if not n.startswith(".")
    ]


def test_empty_split_is_a_clear_error(tmp_path, cache):
    path = tmp_path / "one.jsonl"
    doc_id = next(f"k{i}" for i in range(1000) if sources.split_of(f"k{i}") == "train")
    path.write_text(json.dumps({"id": doc_id, "text": "only a training document"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no documents in the 'validation' split"):
        sources.documents_dataset(str(path), "validation", cache_dir=cache)


def test_truncated_dump_in_a_glob(tmp_path, cache, caplog):
    good = write_dump(tmp_path / "a-pages-articles.xml.bz2")
    bad = tmp_path / "b-pages-articles.xml.bz2"
    bad.write_bytes(open(good, "rb").read()[:30])
    with caplog.at_level(logging.WARNING):
        meta = sources.source_stats(str(tmp_path / "*-pages-articles.xml.bz2"), cache)
    assert sum(meta["stats"]["kept"].values()) == 2
    assert any("b-pages-articles.xml.bz2" in e for e in meta["stats"]["errors"])
    assert "b-pages-articles.xml.bz2" in caplog.text


def _contexts(n):
    return [tf.distribute.InputContext(num_input_pipelines=n, input_pipeline_id=i, num_replicas_in_sync=n)
            for i in range(n)]


@pytest.mark.parametrize("shard_bytes", [1 << 30, 200])  # one shard file (by record) / many (by file)
def test_sharding_disjoint_and_complete(tmp_path, cache, monkeypatch, shard_bytes):
    monkeypatch.setattr(sources, "SHARD_BYTES", shard_bytes)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": f"doc {i}"}) + "\n" for i in range(200)),
                    encoding="utf-8")
    everything = texts(sources.documents_dataset(str(path), "train", cache_dir=cache))
    parts = [texts(sources.documents_dataset(str(path), "train", cache_dir=cache, input_context=c))
             for c in _contexts(2)]
    assert parts[0] and parts[1]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(everything)
    if shard_bytes < 1000:
        directory = sources.prepare_cache(str(path), cache)
        assert len([n for n in os.listdir(directory) if n.startswith("train-")]) > 2


def test_documents_dataset_is_checkpointable(tmp_path, cache):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": f"doc {i}"}) + "\n" for i in range(50)),
                    encoding="utf-8")
    it = iter(sources.documents_dataset(str(path), cache_dir=cache, seed=1).repeat())
    next(it)
    ckpt = tf.train.Checkpoint(iterator=it)
    saved = ckpt.save(str(tmp_path / "ckpt" / "it"))
    expected = [next(it).numpy() for _ in range(5)]
    ckpt.restore(saved)
    assert [next(it).numpy() for _ in range(5)] == expected


# ------------------------------------------------------------------ TFDS


def _mock_as_dataset(examples):
    def as_dataset(self, split, **kwargs):
        columns = {k: [ex[k] for ex in examples] for k in examples[0]}
        return tf.data.Dataset.from_tensor_slices(columns)
    return as_dataset


def test_tfds_wikipedia_mock():
    tfds = pytest.importorskip("tensorflow_datasets")
    examples = [{"title": f"Title {i}", "text": f"Body of article {i}.\n\n第二段。"} for i in range(60)]
    examples[10]["text"] = ""  # empty documents are filtered
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset(examples)):
        train = texts(sources.documents_dataset("tfds:wikipedia/20230601.en", "train"))
        valid = texts(sources.documents_dataset("tfds:wikipedia/20230601.en", "validation"))
        halves = [texts(sources.documents_dataset("tfds:wikipedia/20230601.en", "train", input_context=c))
                  for c in _contexts(2)]
    assert train[0] == "Title 0\n\nBody of article 0.\n\n第二段。"
    assert len(train) + len(valid) == 60 and valid  # the title-hash split
    assert not set(train) & set(valid)
    assert not set(halves[0]) & set(halves[1]) and sorted(halves[0] + halves[1]) == sorted(train)


def test_tfds_wiki40b_mock_cleans_markers():
    tfds = pytest.importorskip("tensorflow_datasets")
    text = ("\n_START_ARTICLE_\nAlbedo\n_START_SECTION_\nHistory\n_START_PARAGRAPH_\n"
            "First line._NEWLINE_Second line 中文.\n_START_PARAGRAPH_\nAnother paragraph.")
    examples = [{"wikidata_id": "Q1", "text": text, "version_id": "1"}]
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset(examples)):
        docs = texts(sources.documents_dataset("tfds:wiki40b/en", "validation"))
    assert docs == ["Albedo\n\nHistory\n\nFirst line.\nSecond line 中文.\n\nAnother paragraph."]


def test_tfds_random_mock_data_runs():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=8):
        docs = texts(sources.documents_dataset("tfds:wikipedia/20230601.en", "train"))
    assert docs and all(isinstance(d, str) for d in docs)
    assert np.mean([len(d) for d in docs]) > 0


# ----------------------------------------------------------------------------- WikiExtractor output

def _wikiextractor_file(path, docs, truncate=False):
    parts = []
    for i, (title, body) in enumerate(docs):
        parts.append(f'<doc id="{i}" url="https://en.wikipedia.org/wiki?curid={i}" title="{title}">\n{title}\n\n{body}\n</doc>\n')
    text = "".join(parts)
    if truncate:
        text += '<doc id="99" url="u" title="Cut">\nCut\n\nhalf a'
    opener = lzma.open if str(path).endswith(".xz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return path


ARTICLE = "The {name} river flows through {place} and gives its name to a valley &amp; a town () famed for {thing}. " * 12


def test_wikiextractor_directory_filters_stubs_and_near_duplicates(tmp_path):
    root = tmp_path / "text" / "AA"
    root.mkdir(parents=True)
    docs = [(f"River {i}", ARTICLE.format(name=f"N{i}", place=f"region {i * 7}", thing=["salmon", "mills", "bridges"][i % 3])
             + f" Unique fact number {i} about its {i * 13} tributaries.") for i in range(30)]
    copy = (docs[3][0] + " (copy)", docs[3][1] + " Extra.")  # near-identical to River 3
    _wikiextractor_file(root / "wiki_00", docs[:15] + [("Stub", "Too short to keep.")])
    _wikiextractor_file(root / "wiki_01.xz", docs[15:] + [copy], truncate=True)
    (root / "README.md").write_text("not a document")
    source = sources.parse_source(str(tmp_path / "text"))
    assert [k for _, k in source.files] == ["wikiextractor", "wikiextractor"]
    stats = sources.ReadStats()
    got = {d.id: d.text for d in sources.iter_documents(source, stats)}
    assert len(got) == 30 and "Stub" not in got and "River 3 (copy)" not in got
    assert stats.skipped["stub"] == 1 and stats.skipped["near-duplicate"] == 1
    assert any("not closed" in e for e in stats.errors)  # the truncated last document is reported
    text = got["River 0"]
    assert text.startswith("River 0\n\nThe N0 river") and "&amp;" not in text and "()" not in text
    assert "valley & a town famed" in text
