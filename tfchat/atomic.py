"""Atomic writes: build under a temporary sibling, then rename into place; sweep what killed writers left.

A temporary sibling is named for its writer: `.NAME.tmp-HOST-PID-RANDOM`.
A killed process (SIGKILL, power loss, a full disk) leaves it behind;
`remove_stale_temps` removes the ones whose writer, on this host, is gone,
and never touches a live writer's (another process extracting the same
cache, another export into the same base path, a writer on another host
of a shared file system).

Example:

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> write_json(os.path.join(d, "run.json"), {"step": 3})
>>> sorted(os.listdir(d))
['run.json']
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket

_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]{8}$")


def temp_path(final: str) -> str:
    """A fresh temporary sibling of `final` (nothing is created)."""
    parent, name = os.path.split(os.path.abspath(final))
    return os.path.join(parent, f".{name}.tmp-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(directory: str, name: str | None = None) -> list[str]:
    """Removes the temporary siblings in `directory` (of `name` only, if given) whose writer on this
    host has exited; returns their paths."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for entry in entries:
        m = _TEMP.match(entry)
        if not m or (name is not None and m["name"] != name) or m["host"] != _HOST:
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _alive(pid):
            continue
        path = os.path.join(directory, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except OSError:
                continue
        removed.append(path)
    return removed


def write_json(path: str, obj, indent: int | None = 2) -> None:
    """Writes `obj` as JSON to `path` atomically: a reader sees the old file or the new one, never half."""
    tmp = temp_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent, default=str, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
