"""What every data reader shares: bundled files, compressed text, JSONL lines, read statistics, splits, sharding.

* `resource_path(name)`: a file bundled in `tfchat/resources`.
* `open_text(path)`: text, `.gz` / `.bz2` / `.xz` decompressed transparently.
* `iter_jsonl(path, stats, strict)`: one parsed object per non-blank line; a
  line that is not JSON is skipped and counted, naming `path:line` (with
  `strict`, a `ValueError` naming it).
* `ReadStats`: what a read saw: records read, kept (by kind), skipped (by
  reason, the first ten per file logged), errors.
* `split_of(key, percent)`: the deterministic held-out split, `percent`%
  (default `VALIDATION_PERCENT`) of keys by SHA-256, shared by documents,
  conversations and pairs.
* `shard_of(input_context)`: (number of input pipelines, this one's index).
* `write_jsonl(records, path)`: atomic JSONL writer (temp file, then rename).
* `expand_paths(spec)`: the files a path or glob names.

Example:

>>> split_of("Albert Einstein") in SPLITS
True
>>> stats = ReadStats()
>>> stats.read, stats.kept["train"] = 3, 2
>>> stats.skip("f.jsonl", "f.jsonl:3", "empty")
>>> stats.summary()
'read 3 records, kept 2 train, skipped 1 (1 empty)'
"""

from __future__ import annotations

import bz2
import collections
import dataclasses
import glob as globlib
import gzip
import hashlib
import importlib.resources
import json
import logging
import lzma
import os
from typing import Iterable, Iterator

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")
VALIDATION_PERCENT = 5
# Warnings logged per file before only counting.
MAX_WARNINGS = 10


def resource_path(name: str) -> str:
    """Path of a bundled file in `tfchat/resources` (works when installed)."""
    path = importlib.resources.files("tfchat").joinpath("resources", name)
    if not path.is_file():
        raise FileNotFoundError(f"bundled resource {name!r} is missing from the tfchat package")
    return str(path)


COMPRESSIONS = (".gz", ".bz2", ".xz")


def open_text(path: str, encoding: str = "utf-8"):
    """Opens a text file, decompressing `.gz` / `.bz2` / `.xz` transparently."""
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding=encoding)
    if path.endswith(".bz2"):
        return bz2.open(path, "rt", encoding=encoding)
    if path.endswith(".xz"):
        return lzma.open(path, "rt", encoding=encoding)
    return open(path, encoding=encoding)


@dataclasses.dataclass
class ReadStats:
    """Counts of a read: `read` records, `kept` by kind (a split, "conversations"...), `skipped` by reason."""

    read: int = 0
    kept: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    errors: list[str] = dataclasses.field(default_factory=list)
    first_problems: dict = dataclasses.field(default_factory=dict, repr=False)
    _warned: collections.Counter = dataclasses.field(default_factory=collections.Counter, repr=False)

    def skip(self, path: str, where: str, reason: str) -> None:
        """Counts a skipped record by the kind of `reason` (before " (detail)") and logs the first few."""
        self.skipped[reason.split(" (")[0]] += 1
        self.first_problems.setdefault(path, f"{where}: {reason}")
        self._warned[path] += 1
        if self._warned[path] <= MAX_WARNINGS:
            log.warning("%s: skipped: %s", where, reason)
        elif self._warned[path] == MAX_WARNINGS + 1:
            log.warning("%s: more skipped records; only counting from now on", path)

    @property
    def total_kept(self) -> int:
        return sum(self.kept.values())

    def to_json(self) -> dict:
        return {"read": self.read, "kept": dict(self.kept), "skipped": dict(self.skipped), "errors": self.errors}

    @classmethod
    def from_json(cls, d: dict) -> "ReadStats":
        return cls(read=d["read"], kept=collections.Counter(d["kept"]), skipped=collections.Counter(d["skipped"]),
                   errors=list(d.get("errors", [])))

    def summary(self) -> str:
        kept = ", ".join(f"{n} {kind}" for kind, n in self.kept.items()) or "0"
        skipped = ", ".join(f"{n} {r}" for r, n in self.skipped.most_common())
        return f"read {self.read} records, kept {kept}, skipped {sum(self.skipped.values())}" + (
            f" ({skipped})" if skipped else ""
        )


def iter_jsonl(path: str, stats: ReadStats, strict: bool = False) -> Iterator[tuple[str, object]]:
    """Yields ("path:line", parsed object) per non-blank line, counting it in
    `stats.read`; a line that is not JSON is skipped through `stats.skip`, or
    with `strict` raises a `ValueError` naming `path:line`.
    Errors reading the file itself propagate (callers keep what came before)."""
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            stats.read += 1
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:  # RecursionError: nested past Python's stack
                why = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
                if strict:
                    raise ValueError(f"{where}: not JSON ({why})") from None
                stats.skip(path, where, f"not JSON ({why})")
                continue
            yield where, obj


def split_of(key: str, percent: int = VALIDATION_PERCENT) -> str:
    """'validation' for `percent`% of keys (by SHA-256), else 'train'."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return "validation" if int.from_bytes(digest[:8], "big") % 100 < percent else "train"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def shard_of(input_context) -> tuple[int, int]:
    """(number of input pipelines, this pipeline's index) of a `tf.distribute.InputContext` (or None)."""
    if input_context is None:
        return 1, 0
    return input_context.num_input_pipelines, input_context.input_pipeline_id


def expand_paths(spec: str) -> list[str]:
    """The files a path or a glob (`**` recursive, `~` expanded) names, sorted; [] when none."""
    path = os.path.expanduser(spec)
    if any(ch in spec for ch in "*?["):
        return sorted(p for p in globlib.glob(path, recursive=True) if os.path.isfile(p))
    return [path] if os.path.isfile(path) else []


def write_jsonl(records: Iterable[dict], path: str) -> int:
    """Writes JSONL atomically (temp file, then rename; `.gz` compresses). Returns the count."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    n = 0
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(tmp, "wt", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return n
