"""Tables of rows as data sources: Parquet files (read with pyarrow) and Hugging Face datasets.

A table source is a `--data` string:

- `path/file.parquet`, `path/*.parquet`: Parquet files, read with pyarrow
  directly (no `datasets` needed), one row group at a time in batches of
  `BATCH_ROWS` rows, so a 20 GB dump is never loaded whole.
- `hf:NAME[:CONFIG][@SPLIT]`: read with the `datasets` library
  (`pip install 'tfchat[hf]'`, imported only here and only then):
  a Hub dataset (`hf:wikimedia/wikipedia:20231101.en`) is streamed
  (`streaming=True`) as pretraining text, and downloaded once into the
  Hugging Face cache as conversations (fine-tuning reads them all at every
  evaluation); offline (`HF_DATASETS_OFFLINE=1` or `HF_HUB_OFFLINE=1`) it is
  read from that cache. `NAME` may also be a
  directory written by `save_to_disk` (a `Dataset`, or a `DatasetDict` whose
  split `@SPLIT` names), a local dataset folder (data files, or a README
  that declares configs), or a loading script (`datasets` < 4 only).
  `SPLIT` defaults to `train`, or to the only split there is.

Every table is read in chunks, the unit that input pipelines shard and
shuffle: a Parquet row group, `CHUNK_ROWS` rows of an Arrow-backed dataset,
or one shard (usually one file) of a streamed one. Reading a chunk is
deterministic, so a pipeline built on chunks replays exactly (resuming).
`Columns` says which columns hold the text, or the conversation.

Example:

>>> table = open_table(parse_table("data/*.parquet"))          # doctest: +SKIP
>>> table.column_names, table.num_chunks                       # doctest: +SKIP
(['id', 'url', 'title', 'text'], 41)
>>> next(table.batches(0, ["text"])).num_rows                  # doctest: +SKIP
256
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import logging
import os
from typing import Iterator, Sequence

import numpy as np

from tfchat.data.io import expand_paths, split_of

log = logging.getLogger(__name__)

HF_PREFIX = "hf:"
# Rows per batch handed to the readers (and per chunk of an Arrow-backed dataset).
BATCH_ROWS = 256
CHUNK_ROWS = 4096
INSTALL_HINT = "pip install 'tfchat[hf]'"


@dataclasses.dataclass(frozen=True)
class Columns:
    """Which columns of a table (or fields of a JSONL record) hold what; None = recognised automatically.

    `text` is read for pretraining; for fine-tuning, `messages` (a list of
    {"role", "content"} or ShareGPT {"from", "value"} messages), or
    `prompt` + `response` (one exchange per row).
    """

    text: str = "text"
    messages: str | None = None
    prompt: str | None = None
    response: str | None = None

    def __post_init__(self):
        if (self.prompt is None) != (self.response is None):
            raise ValueError("--prompt-column and --response-column go together: give both")
        if self.messages and self.prompt:
            raise ValueError("--messages-column excludes --prompt-column/--response-column: a row is one or the other")


# ------------------------------------------------------------ naming a table


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """A parsed table source: Parquet `files`, or a `datasets` path with its config and split."""

    spec: str
    files: tuple[str, ...] = ()
    hf_path: str | None = None
    hf_config: str | None = None
    hf_split: str | None = None


def is_table_source(spec: str) -> bool:
    """True for `hf:...` and for names ending in `.parquet` (a file or a glob)."""
    return isinstance(spec, str) and (spec.startswith(HF_PREFIX) or spec.lower().endswith(".parquet"))


def parse_table(spec: str, files: Sequence[str] | None = None) -> TableSpec:
    """`hf:NAME[:CONFIG][@SPLIT]` or a Parquet path/glob (`files`: already expanded) -> TableSpec.

    Raises:
        ValueError / FileNotFoundError: naming the accepted forms.
    """
    if spec.startswith(HF_PREFIX):
        rest = spec[len(HF_PREFIX):]
        split = None
        name, at, tail = rest.rpartition("@")
        if at and "/" not in tail:
            rest, split = name, tail
        config = None
        name, colon, tail = rest.rpartition(":")
        if colon and "/" not in tail:
            rest, config = name, tail
        if not rest or split == "" or config == "":
            raise ValueError(f"{spec!r}: expected hf:NAME[:CONFIG][@SPLIT], e.g. hf:wikimedia/wikipedia:20231101.en")
        return TableSpec(spec, hf_path=rest, hf_config=config, hf_split=split)
    files = expand_paths(spec) if files is None else files
    if not files:
        raise FileNotFoundError(f"{spec}: " + ("the glob matches no files" if any(c in spec for c in "*?[") else
                                               "no such file"))
    return TableSpec(spec, files=tuple(os.path.abspath(f) for f in files))


# ------------------------------------------------------------------ tables


class Table:
    """Rows in `num_chunks` independently readable chunks; `batches(chunk, columns)` yields `pyarrow` tables."""

    spec: str
    num_chunks: int
    column_names: list[str]
    description: str
    schema = None  # a pyarrow.Schema, when known before reading

    def batches(self, chunk: int, columns: Sequence[str]) -> Iterator:
        raise NotImplementedError

    def require(self, column: str, flag: str) -> None:
        """Raises a one-line ValueError naming the available columns when `column` is missing."""
        if column not in self.column_names:
            raise ValueError(f"{self.spec}: no column {column!r} (columns: {', '.join(self.column_names)}); "
                             f"name the right one with {flag}")

    def iter_rows(self, columns: Sequence[str]) -> Iterator[dict]:
        """Every row (only `columns`), chunk after chunk, as Python dicts."""
        for chunk in range(self.num_chunks):
            for batch in self.batches(chunk, columns):
                yield from batch.to_pylist()


class ParquetTable(Table):
    """Parquet files; a chunk is one row group, read `BATCH_ROWS` rows at a time."""

    def __init__(self, spec: TableSpec):
        import pyarrow.parquet as pq

        self.spec, self.files = spec.spec, spec.files
        self.metadata = []
        for path in self.files:
            try:
                self.metadata.append(pq.read_metadata(path))
            except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-Parquet files
                raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
        self.schemas = [m.schema.to_arrow_schema() for m in self.metadata]
        self.schema = self.schemas[0]
        self.column_names = list(self.schema.names)
        self.chunks = [(f, g) for f, m in enumerate(self.metadata) for g in range(m.num_row_groups)
                       if m.row_group(g).num_rows]
        self.num_chunks = len(self.chunks)
        rows = sum(m.num_rows for m in self.metadata)
        self.description = f"{len(self.files)} Parquet file(s), {rows} rows in {self.num_chunks} row groups"

    def require(self, column: str, flag: str) -> None:
        for path, schema in zip(self.files, self.schemas):  # every file, not only the first
            if column not in schema.names:
                raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(schema.names)}); "
                                 f"name the right one with {flag}")

    def batches(self, chunk: int, columns: Sequence[str]) -> Iterator:
        import pyarrow.parquet as pq

        f, group = self.chunks[chunk]
        # A fresh reader per chunk (readers are not thread-safe); the footer is parsed once.
        reader = pq.ParquetFile(self.files[f], metadata=self.metadata[f])
        present = [c for c in columns if c in self.schemas[f].names]
        yield from reader.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=present, use_threads=False)


class ArrowTable(Table):
    """A `datasets.Dataset` (memory-mapped Arrow files); a chunk is `CHUNK_ROWS` consecutive rows."""

    def __init__(self, spec: str, dataset, origin: str):
        self.spec, self.dataset = spec, dataset
        self.schema = dataset.features.arrow_schema
        self.column_names = list(dataset.column_names)
        self.num_chunks = -(-len(dataset) // CHUNK_ROWS)
        self.description = f"{origin}, {len(dataset)} rows"

    def batches(self, chunk: int, columns: Sequence[str]) -> Iterator:
        part = self.dataset.select_columns([c for c in columns if c in self.column_names]).with_format("arrow")
        stop = min((chunk + 1) * CHUNK_ROWS, len(self.dataset))
        for start in range(chunk * CHUNK_ROWS, stop, BATCH_ROWS):
            yield part[start:min(start + BATCH_ROWS, stop)]


class StreamTable(Table):
    """A streamed `datasets.IterableDataset`; a chunk is one of its shards (files)."""

    def __init__(self, spec: str, dataset, origin: str):
        self.spec, self.dataset = spec, dataset
        self.schema = dataset.features.arrow_schema if dataset.features else None
        self.column_names = dataset.column_names or list(next(iter(dataset.take(1)), {}))
        self.num_chunks = max(dataset.num_shards, 1)
        self.description = f"{origin}, streamed from {dataset.num_shards} shard(s)"

    def batches(self, chunk: int, columns: Sequence[str]) -> Iterator:
        part = self.dataset
        if self.num_chunks > 1:
            part = part.shard(num_shards=self.num_chunks, index=chunk)
        part = part.select_columns([c for c in columns if c in self.column_names]).with_format("arrow")
        yield from part.iter(batch_size=BATCH_ROWS)


def open_table(spec: TableSpec, streaming: bool = True) -> Table:
    """Opens a table, once per process while its files are unchanged (pipelines are rebuilt for every
    evaluation, and a Hub lookup is slow). `streaming=False` downloads a Hub set into the Hugging Face
    cache once instead of streaming it (for what is read whole, again and again: conversations).

    Raises:
        ValueError / FileNotFoundError / ConnectionError / RuntimeError: one line naming what exists.
    """
    stamps = tuple((os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in spec.files)
    return _open_table(spec, stamps, streaming)


@functools.lru_cache(maxsize=8)
def _open_table(spec: TableSpec, stamps: tuple, streaming: bool) -> Table:
    return ParquetTable(spec) if spec.files else _open_hf(spec, streaming)


# --------------------------------------------------------- Hugging Face


def _import_datasets():
    try:
        import datasets
    except ImportError:  # a RuntimeError: commands report it in one line
        raise RuntimeError(f"hf: sources need the Hugging Face datasets library: {INSTALL_HINT}") from None
    return datasets


def _offline(datasets) -> bool:
    config = datasets.config
    return bool(getattr(config, "HF_HUB_OFFLINE", False) or getattr(config, "HF_DATASETS_OFFLINE", False))


def _is_saved_to_disk(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or (
        os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json")))


def _choose(names: Sequence[str], wanted: str | None, what: str, spec: TableSpec) -> str:
    names = list(names)
    if wanted is None:
        if "train" in names or len(names) == 1:
            return "train" if "train" in names else names[0]
        raise ValueError(f"{spec.spec}: which {what}? name one with @{what.upper()}: {', '.join(names)}")
    if wanted not in names:
        raise ValueError(f"{spec.spec}: no {what} {wanted!r} ({what}s: {', '.join(names)})")
    return wanted


def _open_hf(spec: TableSpec, streaming: bool) -> Table:
    datasets = _import_datasets()
    path = os.path.expanduser(spec.hf_path)
    if os.path.isdir(path) and _is_saved_to_disk(path):
        if spec.hf_config:
            raise ValueError(f"{spec.spec}: a save_to_disk directory has no configs; drop ':{spec.hf_config}'")
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            split = _choose(loaded.keys(), spec.hf_split, "split", spec)
            return ArrowTable(spec.spec, loaded[split], f"save_to_disk directory {path} [{split}]")
        if spec.hf_split:
            raise ValueError(f"{spec.spec}: {path} holds one Dataset, not a DatasetDict; drop '@{spec.hf_split}'")
        return ArrowTable(spec.spec, loaded, f"save_to_disk directory {path}")

    local = os.path.exists(path)
    if path.endswith(".py") and not local:
        raise FileNotFoundError(f"{spec.spec}: no such loading script")
    kwargs = {}
    if path.endswith(".py"):
        major = int(datasets.__version__.split(".")[0])
        if major >= 4:
            raise ValueError(f"{spec.spec}: datasets {datasets.__version__} no longer runs loading scripts (removed "
                             "in datasets 4.0): run it once with datasets<4 and save_to_disk, or point hf: at a "
                             "folder of its data files")
        kwargs["trust_remote_code"] = True  # the user named this local script
    # Hub sets stream; local folders and scripts, and the cache when offline, are prepared once as Arrow files.
    streaming = streaming and not local and not _offline(datasets)
    try:
        try:
            loaded = datasets.load_dataset(path, spec.hf_config, streaming=streaming, **kwargs)
        except ConnectionError:
            if not streaming:
                raise
            streaming = False  # the Hub is unreachable: a copy in the local cache still serves
            loaded = datasets.load_dataset(path, spec.hf_config, **kwargs)
    except Exception as e:  # datasets raises many types; each becomes one line
        raise _hf_error(spec, e, datasets, local) from None
    split = _choose(loaded.keys(), spec.hf_split, "split", spec)
    where = "" if local else "the Hub" if streaming else "the local Hugging Face cache"
    origin = f"{path}{':' + spec.hf_config if spec.hf_config else ''} [{split}]" + (f" from {where}" if where else "")
    dataset = loaded[split]
    return StreamTable(spec.spec, dataset, origin) if streaming else ArrowTable(spec.spec, dataset, origin)


def _hf_error(spec: TableSpec, e: Exception, datasets, local: bool) -> Exception:
    """A one-line error for what `load_dataset` raised, naming what exists."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, ConnectionError) or type(e).__name__ in ("OfflineModeIsEnabled", "LocalEntryNotFoundError"):
        why = "offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)" if _offline(datasets) else \
            "the Hugging Face Hub cannot be reached"
        return ConnectionError(
            f"{spec.spec}: not in the local Hugging Face cache and {why}; download it once where the Hub is "
            f"reachable (python -c \"import datasets; datasets.load_dataset('{spec.hf_path}'"
            f"{', ' + repr(spec.hf_config) if spec.hf_config else ''})\"), or give a save_to_disk directory, "
            "a local dataset folder or Parquet files")
    if isinstance(e, ValueError) and ("BuilderConfig" in text or "Config name is missing" in text):
        try:
            configs = datasets.get_dataset_config_names(spec.hf_path)
        except Exception:  # the original message is all there is
            return ValueError(f"{spec.spec}: {text}")
        shown = difflib.get_close_matches(spec.hf_config or "", configs, n=8, cutoff=0.5) or configs[:8]
        listing = ", ".join(shown) + (f" ... ({len(configs)} configs)" if len(configs) > len(shown) else "")
        if spec.hf_config is None:
            return ValueError(f"{spec.spec}: needs a config, hf:{spec.hf_path}:CONFIG with one of: {listing}")
        return ValueError(f"{spec.spec}: no config {spec.hf_config!r} (configs: {listing})")
    if type(e).__name__ == "DatasetNotFoundError":
        return FileNotFoundError(f"{spec.spec}: {text} (private or gated sets need `hf auth login`)")
    if isinstance(e, FileNotFoundError) and not local:
        return FileNotFoundError(f"{spec.spec}: no such local directory, and not a dataset on the Hub ({text})")
    if isinstance(e, (ValueError, FileNotFoundError)):
        return (ValueError if isinstance(e, ValueError) else FileNotFoundError)(f"{spec.spec}: {text}")
    return RuntimeError(f"{spec.spec}: {type(e).__name__}: {text}")


# ---------------------------------------------------------- documents


def document_columns(table: Table, text_column: str) -> tuple[str | None, str | None]:
    """(key column, title column) of a text table: the key names a document for the held-out split
    (`id`, else `title`, else the text's hash: the rule of JSONL sources); a title is put before the text."""
    table.require(text_column, "--text-column")
    if table.schema is not None:
        import pyarrow as pa

        kind = table.schema.field(text_column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
            raise ValueError(f"{table.spec}: column {text_column!r} holds {kind}, not text; name the text column "
                             f"with --text-column (columns: {', '.join(table.column_names)})")
    names = table.column_names
    key = "id" if "id" in names else "title" if "title" in names else None
    title = "title" if "title" in names and text_column != "title" else None
    return key, title


def documents(table: Table, chunk: int, text_column: str, split: str) -> Iterator[np.ndarray]:
    """Batches of the `split` documents of one chunk, as object arrays of UTF-8 bytes.

    A document is the text column ("title\\n\\ntext" when there is a title
    column and the text does not already start with it, the layout of dumps
    and TFDS Wikipedia); empty and null texts are skipped.
    """
    key_col, title_col = document_columns(table, text_column)
    wanted = [text_column] + [c for c in (key_col, title_col) if c and c != text_column]
    for batch in table.batches(chunk, wanted):
        texts = batch.column(text_column).to_pylist()
        names = batch.schema.names  # a Parquet file may lack the key or title column that the first one has
        keys = batch.column(key_col).to_pylist() if key_col in names else [None] * len(texts)
        titles = batch.column(title_col).to_pylist() if title_col in names else [None] * len(texts)
        out = []
        for text, key, title in zip(texts, keys, titles):
            if not isinstance(text, str) or not text.strip():
                continue
            key = str(key) if key is not None else hashlib.sha256(text.encode()).hexdigest()
            if split_of(key) != split:
                continue
            text = text.strip()
            if isinstance(title, str) and title.strip() and not text.startswith(title.strip()):
                text = f"{title.strip()}\n\n{text}"
            out.append(text.encode("utf-8"))
        if out:
            yield np.array(out, dtype=object)


@functools.lru_cache(maxsize=32)
def has_documents(table: Table, text_column: str, split: str) -> bool:
    """Whether `split` holds a document. The held-out split is a hash-chosen 5%, so the first chunk
    usually answers; all of a table is read only when the split is empty."""
    return any(next(documents(table, chunk, text_column, split), None) is not None
               for chunk in range(table.num_chunks))
