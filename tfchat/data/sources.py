"""Text sources for pretraining: one way to name them, one way to read them.

A source is a string (the `--data` flag):

- `wikipedia-sample`: the bundled excerpt of an English Wikipedia dump
  (106 articles), the default pretraining data.
- `zhwiki-sample`: 6,100 bundled Chinese Wikipedia articles (5.9 M
  characters; Traditional and Simplified as written, about 2:1).
- `tfds:wikipedia/20230601.en`, `tfds:wiki40b/en`, any `tfds:NAME` with a
  `text` feature, read with `tfds.load` (wiki40b's `_START_ARTICLE_` /
  `_START_SECTION_` / `_START_PARAGRAPH_` / `_NEWLINE_` markers are turned
  into the same title / heading / paragraph layout as a dump's text).
- a MediaWiki dump: `path/enwiki-...-pages-articles*.xml[.bz2|.gz]`.
- WikiExtractor output (`<doc id=... title=...>` ... `</doc>`, files such as
  `text/AA/wiki_00`): a file, a glob or the whole directory
  (`tfchat.data.wikiextractor`).
- `.txt` files, one document per file: `path/doc.txt` or a glob `path/*.txt`.
- `.jsonl` files with a `text` field per line (`id` or `title` name the doc).
  Globs and directories may mix these kinds; `.gz`/`.bz2`/`.xz` compression
  is read transparently.
- Parquet files (`path/*.parquet`) and Hugging Face datasets
  (`hf:wikimedia/wikipedia:20231101.en`, a `save_to_disk` directory...):
  tables, see `tfchat.data.tables`. They are not cached: read a row group
  (or a shard) at a time, straight into the pipeline.

`text_column` names the text field of JSONL records, table columns and TFDS
features (default `text`).

Several sources separated by commas, each with an optional weight, are a
mixture (`enwiki-2018:0.7,zhwiki-sample:0.3`, see `tfchat.data.mixture`).

`convert_script` (`t2s`, `s2t`, ... `tfchat.text.chinese.SCRIPT_CONVERSIONS`)
converts Chinese text between Simplified and Traditional with OpenCC as it is
read: local files when they are extracted into their cache (a cache of its
own), tables as they stream; TFDS sources cannot be converted. Without it,
text is kept as written.

WikiExtractor sources lose their stubs and near-duplicate articles on the
way (`tfchat.data.filters`); the counts are in the read statistics.

Every document belongs to `train` or `validation`, a deterministic function
of its id (the article title for Wikipedia): `VALIDATION_PERCENT`% of articles
are held out. TFDS datasets that ship a `validation` split (wiki40b) use it.

Local files (not tables) are parsed once (wiki markup is slow to parse) into TFRecord
shards under the cache directory (`$TFCHAT_CACHE_DIR`, default
`~/.cache/tfchat`), keyed by the files' paths, sizes and mtimes and written
atomically (temp dir, then rename). `documents_dataset` then reads them with
native TF readers: fast, and checkpointable with
`tf.train.Checkpoint(iterator=...)`. Counts of read/skipped records are
logged and kept in the cache's `meta.json` (`source_stats`).

With a content filter (`tfchat.inference.classifier.ContentFilter`),
`filter_documents` writes a second cache next to the first, without the
flagged documents, keyed by the filter (model and threshold), with the
counts in its `meta.json`; `documents_dataset(..., content_filter=...)`
reads it. TFDS and table sources are filtered as they stream (no counts up
front).

Example:

>>> ds = documents_dataset("wikipedia-sample", split="validation")  # doctest: +SKIP
>>> next(iter(ds)).numpy().decode()[:6]                             # doctest: +SKIP
'Autism'
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import time
from typing import Iterator

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfchat import atomic
from tfchat.cache import default_cache_dir
from tfchat.data import mixture, tables, wikiextractor, wikipedia
from tfchat.data.filters import DocumentFilter
from tfchat.data.io import (
    COMPRESSIONS,
    SPLITS,
    VALIDATION_PERCENT,
    ReadStats,
    check_split,
    expand_paths,
    iter_jsonl,
    open_text,
    resource_path,
    shard_of,
    split_of,
)
from tfchat.text import chinese

log = logging.getLogger(__name__)

SAMPLE_NAME = "wikipedia-sample"
SAMPLE_FILE = "enwiki-sample-pages-articles.xml.bz2"
DEFAULT_SOURCE = "enwiki-2018"
# Sources bundled in tfchat/resources (see ATTRIBUTION.md): name -> (file, kind).
BUNDLED = {
    SAMPLE_NAME: (SAMPLE_FILE, "dump"),
    DEFAULT_SOURCE: ("enwiki-2018-articles.txt.xz", "wikiextractor"),
    "zhwiki-sample": ("zhwiki-articles.txt.xz", "wikiextractor"),
}
# Bump when the extracted text changes (cleaning rules, record format).
CACHE_VERSION = 3
# Cache shards roll over at this size so big sources shard across workers.
SHARD_BYTES = 128 << 20


def default_pretrain_source() -> str:
    """The default pretraining data: the bundled 2018 Wikipedia articles."""
    return DEFAULT_SOURCE


# ----------------------------------------------------------- naming a source


@dataclasses.dataclass(frozen=True)
class Source:
    """A parsed source: a TFDS name, a table (Parquet, `hf:`), or local files with their kinds."""

    spec: str
    tfds_name: str | None = None
    files: tuple[tuple[str, str], ...] = ()  # (path, kind): kind in dump/text/jsonl
    table: tables.TableSpec | None = None
    text_column: str = tables.Columns.text
    convert: str | None = None  # an OpenCC conversion (`tfchat.text.chinese.SCRIPT_CONVERSIONS`) or None


def _file_kind(path: str) -> str | None:
    name = os.path.basename(path).lower()
    for ext in COMPRESSIONS:
        if name.endswith(ext):
            name = name[: -len(ext)]
    if name.endswith(".xml"):
        return "dump"
    if name.endswith(".jsonl") or name.endswith(".json"):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".txt") or "." not in name:  # WikiExtractor writes wiki_00, wiki_01...
        return "wikiextractor" if _starts_with_doc_tag(path) else ("text" if name.endswith(".txt") else None)
    return None


def _starts_with_doc_tag(path: str) -> bool:
    try:
        with open_text(path) as f:
            first = next((line for line in f if line.strip()), "")
    except (OSError, EOFError, UnicodeDecodeError, ValueError):
        return False
    return wikiextractor.looks_like_wikiextractor(first)


def parse_source(spec: str, text_column: str = tables.Columns.text, convert_script: str | None = None) -> Source:
    """Parses a source name (see the module docstring); `text_column` names the text field.

    Raises:
        ValueError / FileNotFoundError: with the accepted forms, for a bad name.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"a source must be a non-empty string, got {spec!r}")
    if mixture.is_mixture(spec):
        raise ValueError(f"{spec}: a mixture of sources; read it with documents_dataset() or pretrain_dataset()")
    chinese.check_conversion(convert_script)
    if spec in BUNDLED:
        name, kind = BUNDLED[spec]
        source = Source(spec, files=((resource_path(name), kind),))
    elif spec.startswith("tfds:"):
        name = spec[len("tfds:"):]
        if not name:
            raise ValueError(f"{spec!r}: expected tfds:NAME, e.g. tfds:wikipedia/20230601.en")
        source = Source(spec, tfds_name=name)
    elif spec.startswith(tables.HF_PREFIX):
        source = Source(spec, table=tables.parse_table(spec))
    else:
        source = _parse_files(spec)
    if convert_script and source.tfds_name:
        raise ValueError(f"{spec}: --convert-script applies to local files and tables, not to TFDS datasets")
    source = dataclasses.replace(source, text_column=text_column, convert=convert_script)
    if text_column != tables.Columns.text and source.files and any(k != "jsonl" for _, k in source.files):
        raise ValueError(f"{spec}: --text-column applies to JSONL, Parquet, hf: and tfds: sources, "
                         "not to dumps or .txt files")
    return source


def _parse_files(spec: str) -> Source:
    paths = expand_paths(spec)
    if not paths and any(ch in spec for ch in "*?["):
        raise FileNotFoundError(f"{spec}: the glob matches no files")
    if not paths and os.path.isdir(os.path.expanduser(spec)):
        return _directory_source(spec)
    if not paths:
        raise FileNotFoundError(
            f"{spec}: no such file. A source is one of {', '.join(BUNDLED)}, tfds:NAME, hf:NAME, a dump "
            "(*.xml.bz2), WikiExtractor output, a .txt, .jsonl or .parquet file, a directory or a glob of them"
        )
    files = []
    for path in paths:
        kind = _file_kind(path)
        if kind is None:
            raise ValueError(f"{path}: unknown kind of file (expected .xml[.bz2], .txt, .jsonl, WikiExtractor output "
                             "(maybe compressed .gz/.bz2/.xz) or .parquet)")
        files.append((os.path.abspath(path), kind))
    kinds = {kind for _, kind in files}
    if "parquet" in kinds:
        if kinds != {"parquet"}:
            raise ValueError(f"{spec}: Parquet files cannot be mixed with other kinds in one source")
        return Source(spec, table=tables.parse_table(spec, [p for p, _ in files]))
    return Source(spec, files=tuple(files))


def _directory_source(spec: str) -> Source:
    """Every file of a directory tree whose kind is known (a WikiExtractor `text/` folder, say), in name order."""
    root = os.path.expanduser(spec)
    files, unknown = [], 0
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = os.path.join(folder, name)
            kind = _file_kind(path)
            if kind is None:
                unknown += 1
            else:
                files.append((os.path.abspath(path), kind))
    if not files:
        raise ValueError(f"{spec}: no readable files in this directory (expected WikiExtractor output, dumps, .txt or "
                         ".jsonl files)")
    if unknown:
        log.warning("%s: %d files of unknown kind are skipped", spec, unknown)
    return Source(spec, files=tuple(files))


# ---------------------------------------------------------- reading documents


@dataclasses.dataclass(frozen=True)
class Document:
    id: str
    text: str


def _read_dump(path: str, stats: ReadStats) -> Iterator[Document]:
    dump_stats = wikipedia.DumpStats()
    with tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc=os.path.basename(path),
              disable=None, leave=False) as bar:
        try:
            for article in wikipedia.read_dump(path, dump_stats, progress=bar):
                yield Document(article.title, f"{article.title}\n\n{article.text}")
        finally:
            stats.read += dump_stats.pages
            for reason, n in (("redirect", dump_stats.redirects), ("not main namespace", dump_stats.other_namespace),
                              ("empty", dump_stats.empty), ("unreadable", len(dump_stats.errors))):
                if n:
                    stats.skipped[reason] += n
            stats.errors.extend(f"{path}: {e}" for e in dump_stats.errors)


def _read_text(path: str, stats: ReadStats) -> Iterator[Document]:
    stats.read += 1
    try:
        with open_text(path) as f:
            text = f.read().strip()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        stats.skip(path, path, f"unreadable ({e})")
        return
    if not text:
        stats.skip(path, path, "empty")
        return
    yield Document(os.path.basename(path), text)


def _read_jsonl(path: str, stats: ReadStats, field: str = tables.Columns.text) -> Iterator[Document]:
    try:
        for where, obj in iter_jsonl(path, stats):
            text = obj.get(field) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                stats.skip(path, where, f'no "{field}" string')
                continue
            if not text.strip():
                stats.skip(path, where, "empty")
                continue
            doc_id = obj.get("id", obj.get("title"))
            doc_id = str(doc_id) if doc_id is not None else hashlib.sha256(text.encode()).hexdigest()
            yield Document(doc_id, text.strip())
    except (OSError, EOFError, UnicodeDecodeError) as e:
        stats.errors.append(f"{path}: {e}")
        stats.skip(path, path, f"unreadable ({e}); keeping the lines before it")


def _read_wikiextractor(path: str, stats: ReadStats) -> Iterator[Document]:
    errors: list[str] = []
    try:
        with open_text(path) as f:
            for doc in wikiextractor.parse_docs(f, errors):
                stats.read += 1
                yield Document(doc.title, doc.text)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        errors.append(f"unreadable ({e}); keeping the documents before it")
    for error in errors:
        stats.errors.append(f"{path}: {error}")
        stats.skip(path, path, error)


_READERS = {"dump": _read_dump, "text": _read_text, "jsonl": _read_jsonl, "wikiextractor": _read_wikiextractor}
# WikiExtractor output keeps every stub and list article of a dump: it gets the stub and
# near-duplicate filter (`tfchat.data.filters`). Dumps, text files and JSONL are taken as they are.
_FILTERED_KINDS = ("wikiextractor",)


def _reader(kind: str, text_column: str):
    return functools.partial(_read_jsonl, field=text_column) if kind == "jsonl" else _READERS[kind]


def iter_documents(source: str | Source, stats: ReadStats | None = None) -> Iterator[Document]:
    """Yields every document of a local source (both splits), in file order.

    Raises:
        ValueError: naming the file(s) when no usable document is found.
    """
    source = parse_source(source) if isinstance(source, str) else source
    if source.tfds_name or source.table:
        raise ValueError(f"{source.spec}: TFDS and table sources are read with documents_dataset()")
    stats = stats if stats is not None else ReadStats()
    problems = []
    found = 0
    files = source.files
    doc_filter = DocumentFilter() if any(kind in _FILTERED_KINDS for _, kind in files) else None
    convert = (lambda text: chinese.convert_script(text, source.convert)) if source.convert else None
    bar = tqdm(files, desc="files", unit="file", disable=None if len(files) > 20 else True, leave=False)
    for path, kind in bar:
        try:
            for doc in _reader(kind, source.text_column)(path, stats):
                reason = doc_filter.check(doc.text) if kind in _FILTERED_KINDS else None
                if reason:
                    stats.skipped[reason] += 1  # counted, not logged: a dump has many thousands
                    continue
                found += 1
                yield Document(doc.id, convert(doc.text)) if convert else doc
        except ValueError as e:  # a file with nothing usable; others may still be fine
            problems.append(str(e))
            stats.errors.append(str(e))
            if len(files) > 1:
                log.warning("%s", e)
    if not found:
        if len(problems) == 1 and len(files) == 1:
            raise ValueError(problems[0])
        detail = "; ".join(problems) or stats.summary()
        raise ValueError(f"{source.spec}: no usable documents ({detail})")


# ------------------------------------------------------------------- caching


def _cache_key(source: Source) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION} validation={VALIDATION_PERCENT}".encode())
    if source.text_column != tables.Columns.text:  # the default keeps existing caches valid
        h.update(f" text={source.text_column}".encode())
    if source.convert:
        h.update(f" convert={source.convert}".encode())
    for path, kind in source.files:
        st = os.stat(path)
        h.update(f"\n{path}\t{kind}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cache_path(source: str | Source, cache_dir: str | None = None) -> str:
    """Where the extracted documents of a local source live."""
    source = parse_source(source) if isinstance(source, str) else source
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(source.files[0][0]))[:60]
    return os.path.join(cache_dir or default_cache_dir(), "documents", f"{slug}-{_cache_key(source)}")


class _ShardWriter:
    def __init__(self, directory: str, split: str):
        self.directory, self.split = directory, split
        self.index, self.bytes, self.writer, self.paths = 0, 0, None, []

    def write(self, record: bytes) -> None:
        if self.writer is None or self.bytes >= SHARD_BYTES:
            self.close()
            path = os.path.join(self.directory, f"{self.split}-{len(self.paths):05d}.tfrecord")
            self.paths.append(os.path.basename(path))
            self.writer, self.bytes = tf.io.TFRecordWriter(path), 0
        self.writer.write(record)
        self.bytes += len(record)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def prepare_cache(source: str | Source, cache_dir: str | None = None) -> str:
    """Extracts a local source into TFRecord shards once; returns the directory.

    The directory holds `train-NNNNN.tfrecord`, `validation-NNNNN.tfrecord`
    (one UTF-8 document per record) and `meta.json` (files, counts).
    """
    source = parse_source(source) if isinstance(source, str) else source
    final = cache_path(source, cache_dir)
    if os.path.exists(os.path.join(final, "meta.json")):
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    atomic.remove_stale_temps(os.path.dirname(final))  # what killed extractions left
    tmp = atomic.temp_path(final)
    os.makedirs(tmp)
    start = time.time()
    log.info("extracting %s into %s (once; later runs read the cache)", source.spec, final)
    stats = ReadStats()
    writers = {split: _ShardWriter(tmp, split) for split in SPLITS}
    try:
        for doc in iter_documents(source, stats):
            split = split_of(doc.id)
            writers[split].write(doc.text.encode("utf-8"))
            stats.kept[split] += 1
        for w in writers.values():
            w.close()
        meta = {
            "spec": source.spec,
            "files": [p for p, _ in source.files],
            "shards": {split: writers[split].paths for split in SPLITS},
            "stats": stats.to_json(),
            "extract_seconds": round(time.time() - start, 2),
            "cache_version": CACHE_VERSION,
        }
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, ensure_ascii=False)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: theirs is as good
            if not os.path.exists(os.path.join(final, "meta.json")):
                raise
    finally:
        for w in writers.values():
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s: %s (%.1fs)", source.spec, stats.summary(), time.time() - start)
    return final


def cached_documents(source: str | Source, cache_dir: str | None = None) -> Iterator[str]:
    """Every document of a local source, both splits, read from its cache (extracted once)."""
    directory = prepare_cache(source, cache_dir)
    with open(os.path.join(directory, "meta.json"), encoding="utf-8") as f:
        shards = json.load(f)["shards"]
    files = [os.path.join(directory, name) for split in SPLITS for name in shards[split]]
    for record in tf.data.TFRecordDataset(files).as_numpy_iterator():
        yield record.decode("utf-8")


def source_stats(source: str | Source, cache_dir: str | None = None) -> dict:
    """The cache's metadata for a local source (extracting it if needed)."""
    with open(os.path.join(prepare_cache(source, cache_dir), "meta.json"), encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------- as tf.data


def documents_dataset(
    source: str,
    split: str = "train",
    *,
    cache_dir: str | None = None,
    input_context: tf.distribute.InputContext | None = None,
    seed: int | None = None,
    content_filter=None,
    text_column: str = tables.Columns.text,
    convert_script: str | None = None,
) -> tf.data.Dataset:
    """Documents as a `tf.data.Dataset` of scalar `tf.string`, read natively (tables: chunk by chunk).

    Args:
        source: a source name or a mixture of them (see the module docstring).
        split: "train" or "validation".
        cache_dir: overrides `$TFCHAT_CACHE_DIR` / `~/.cache/tfchat`.
        input_context: from `distribute_datasets_from_function`; each input
            pipeline reads a disjoint part (whole shard files when there are
            at least as many as pipelines, else every n-th document).
        seed: shuffles the order of shard files (each epoch); None keeps it.
        content_filter: drop the documents it flags (`filter_documents`).
        text_column: the text field of JSONL records, tables and TFDS features.
        convert_script: an OpenCC conversion applied to the text (see the module docstring).

    Raises:
        ValueError: the source has no document in `split`, or no `text_column`.
    """
    check_split(split)
    if mixture.is_mixture(source):
        parts = mixture.parse_mixture(source)
        return mixture.sample(
            [documents_dataset(name, split, cache_dir=cache_dir, input_context=input_context, seed=seed,
                               text_column=text_column, convert_script=convert_script, content_filter=content_filter)
             for name, _ in parts],
            [w for _, w in parts], seed)
    parsed = parse_source(source, text_column, convert_script)
    num, index = shard_of(input_context)
    if parsed.table:
        ds = _table_documents(parsed.table, split, text_column, num, index, seed, convert_script)
        return ds.filter(_keep_fn(content_filter)) if content_filter is not None else ds
    if parsed.tfds_name:
        ds = _tfds_documents(parsed.tfds_name, split, text_column)
        if content_filter is not None:
            ds = ds.filter(_keep_fn(content_filter))
        return ds.shard(num, index) if num > 1 else ds

    directory = prepare_cache(parsed, cache_dir)
    if content_filter is not None:
        directory = filter_documents(parsed, content_filter, cache_dir)
    with open(os.path.join(directory, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    stats = meta["stats"]
    log.debug("%s [%s]: %s", source, split, ReadStats.from_json(stats).summary())
    files = [os.path.join(directory, name) for name in meta["shards"][split]]
    if not files or not stats["kept"].get(split):
        raise ValueError(
            f"{source}: no documents in the {split!r} split (kept {stats['kept']}); the held-out split is "
            f"{VALIDATION_PERCENT}% of documents by id, so a tiny source may have none"
        )
    by_file = num > 1 and len(files) >= num
    ds = tf.data.Dataset.from_tensor_slices(files)
    if by_file:
        ds = ds.shard(num, index)
    if seed is not None and len(files) > 1:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if len(files) > 1:
        ds = ds.interleave(
            tf.data.TFRecordDataset, cycle_length=min(len(files), 4),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
        )
    else:
        ds = ds.flat_map(tf.data.TFRecordDataset)
    if num > 1 and not by_file:
        ds = ds.shard(num, index)
    return ds


def _table_documents(spec: tables.TableSpec, split: str, text_column: str, num: int, index: int,
                     seed: int | None, convert_script: str | None = None) -> tf.data.Dataset:
    """A table's documents: a native dataset of chunk indices (sharded whole across input pipelines when
    there are enough, shuffled by `seed` each epoch), each chunk read by a Python generator."""
    table = tables.open_table(spec)
    tables.document_columns(table, text_column)  # a missing column fails here, in one line
    if not tables.has_documents(table, text_column, split):
        raise ValueError(f"{spec.spec}: no documents in the {split!r} split (column {text_column!r}); the held-out "
                         f"split is {VALIDATION_PERCENT}% of documents by id, so a tiny source may have none")
    log.debug("%s [%s]: %s; documents from column %r", spec.spec, split, table.description, text_column)

    def chunk_documents(chunk):
        for texts in tables.documents(table, int(chunk), text_column, split):
            if convert_script:
                texts = np.array([chinese.convert_script(t.decode("utf-8"), convert_script).encode("utf-8")
                                  for t in texts], dtype=object)
            yield texts

    def read(chunk):
        return tf.data.Dataset.from_generator(
            chunk_documents, args=(chunk,), output_signature=tf.TensorSpec([None], tf.string),
        ).unbatch()

    n = table.num_chunks
    by_chunk = num > 1 and n >= num
    ds = tf.data.Dataset.range(n)
    if by_chunk:
        ds = ds.shard(num, index)
    if seed is not None and n > 1:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(read, cycle_length=min(n, 4), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if num > 1 and not by_chunk:
        ds = ds.shard(num, index)
    return ds


def _keep_fn(content_filter):
    """A tf.data predicate: True for a document `content_filter` does not flag (streamed sources)."""
    keep = lambda text: not content_filter.flag_documents([text.decode("utf-8")])[0]  # noqa: E731
    return lambda text: tf.numpy_function(keep, [text], tf.bool, stateful=False)


def filter_documents(source: str | Source, content_filter, cache_dir: str | None = None) -> str:
    """Writes (once) the cache of a local source without the documents `content_filter` flags; returns its
    directory. Its `meta.json` has `content_filter`: the filter and `splits` ({split: {"total", "dropped"}})."""
    source = parse_source(source) if isinstance(source, str) else source
    if source.tfds_name or source.table:
        raise ValueError(f"{source.spec}: TFDS and table sources are filtered as they stream (documents_dataset)")
    original = prepare_cache(source, cache_dir)
    final = f"{original}-filter-{hashlib.sha256(content_filter.fingerprint.encode()).hexdigest()[:12]}"
    if os.path.exists(os.path.join(final, "meta.json")):
        return final
    with open(os.path.join(original, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    tmp = atomic.temp_path(final)
    os.makedirs(tmp)
    counts = {}
    try:
        total = sum(meta["stats"]["kept"].get(split, 0) for split in SPLITS)
        with tqdm(total=total, desc="content filter", unit="doc", disable=None, leave=False) as bar:
            for split in SPLITS:
                writer, counts[split] = _ShardWriter(tmp, split), {"total": 0, "dropped": 0}
                files = [os.path.join(original, name) for name in meta["shards"][split]]
                batches = tf.data.TFRecordDataset(files).batch(64).as_numpy_iterator() if files else []
                for batch in batches:
                    flags = content_filter.flag_documents([t.decode("utf-8") for t in batch])
                    for text, flagged in zip(batch, flags):
                        if not flagged:
                            writer.write(text)
                    counts[split]["total"] += len(batch)
                    counts[split]["dropped"] += int(flags.sum())
                    bar.update(len(batch))
                writer.close()
                meta["shards"][split] = writer.paths
                meta["stats"]["kept"][split] = counts[split]["total"] - counts[split]["dropped"]
        meta["content_filter"] = {**content_filter.describe(), "splits": counts}
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, ensure_ascii=False)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first
            if not os.path.exists(os.path.join(final, "meta.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("content filter on %s: %s", source.spec,
             ", ".join(f"{split}: dropped {c['dropped']} of {c['total']} documents" for split, c in counts.items()))
    return final


# Marker cleanup for wiki40b, in graph: same layout as dump text.
_WIKI40B_RULES = (
    (r"^\s*_START_ARTICLE_\n", ""),
    (r"\n_START_SECTION_\n", "\n\n"),
    (r"\n_START_PARAGRAPH_\n", "\n\n"),
    (r"_NEWLINE_", "\n"),
)


def clean_wiki40b(text: tf.Tensor) -> tf.Tensor:
    """wiki40b markers -> "Title\\n\\nSection\\n\\nParagraph..." (graph op)."""
    for pattern, rewrite in _WIKI40B_RULES:
        text = tf.strings.regex_replace(text, pattern, rewrite)
    return tf.strings.strip(text)


_NATIVE_VALIDATION = ("wiki40b",)


def _tfds_documents(name: str, split: str, text_column: str = "text") -> tf.data.Dataset:
    import tensorflow_datasets as tfds

    builder = tfds.builder(name)
    features = builder.info.features
    if text_column not in features:
        raise ValueError(f"tfds:{name}: has no {text_column!r} feature (features: {', '.join(features)}); "
                         "name the right one with --text-column")
    # Datasets with their own validation split use it; others hold out by id.
    native = name.split("/")[0] in _NATIVE_VALIDATION or "validation" in builder.info.splits
    ds = tfds.load(name, split=split if native else "train", shuffle_files=False)
    is_wiki40b = name.split("/")[0] == "wiki40b"
    key_field = next((k for k in ("title", "wikidata_id", "id") if k in features), text_column)

    def to_text(ex):
        text = ex[text_column]
        if is_wiki40b:
            text = clean_wiki40b(text)
        elif "title" in features:
            text = tf.strings.join([ex["title"], text], separator="\n\n")
        return ex[key_field], tf.strings.strip(text)

    ds = ds.map(to_text, num_parallel_calls=tf.data.AUTOTUNE)
    if not native:
        # Same rule as local files (a percentage of ids), with TF's hash.
        bucket = lambda key, _: tf.strings.to_hash_bucket_fast(key, 100) < VALIDATION_PERCENT  # noqa: E731
        ds = ds.filter(bucket if split == "validation" else lambda k, t: tf.logical_not(bucket(k, t)))
    log.info("tfds:%s [%s]: empty documents are skipped in the graph (not counted)", name, split)
    return ds.map(lambda _, text: text).filter(lambda text: tf.strings.length(text) > 0)
