"""A training run directory: where a run keeps its record, checkpoints, logs and model.

    RUN/
      run.json       what the run is: model and training configuration, strategy, job metadata,
                     the final figures ("final") and flags changed with --override ("overrides")
      .lock          held (fcntl) by the run using the directory; names its pid
      tokenizer/     the run's tokenizer (reused on resume)
      checkpoints/   tf.train.CheckpointManager: model, optimizer, step, RNG state, loss scale
      logs/          TensorBoard
      model/         the model directory (`tfchat.checkpoint.model_dir`), written at the end and on stops

One run at a time: `lock()` takes `.lock` (a second run on the same
directory fails at once, naming the first one's pid) and then removes what
killed runs left behind: TensorFlow's `*_temp` checkpoint folders and
`checkpoint.tmp*` state files, temporary model and tokenizer folders, a
model directory half replaced (`tfchat.checkpoint.model_dir.recover`).

Example:

>>> run = RunDirectory("runs/pretrain")
>>> run.model_dir
'runs/pretrain/model'
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import os
import shutil
import socket

from tfchat import atomic
from tfchat.checkpoint.model_dir import MARKER_FILE, recover

log = logging.getLogger(__name__)



def figures(metrics: dict) -> dict:
    """The figures a run keeps: the training loss and every held-out metric."""
    return {k: v for k, v in metrics.items() if k == "loss" or k.startswith("val_")}

# Locks this process holds: {real path: [fd, depth]} (flock is per open file, so re-entry shares the fd).
_held: dict[str, list[int]] = {}


class RunLocked(RuntimeError):
    """Another process is using the run directory."""


class RunDirectory:
    def __init__(self, path: str):
        self.path = path

    @property
    def run_file(self) -> str:
        return os.path.join(self.path, "run.json")

    @property
    def model_dir(self) -> str:
        return os.path.join(self.path, "model")

    @property
    def lock_file(self) -> str:
        return os.path.join(self.path, ".lock")

    def read_record(self) -> dict:
        """run.json, or {} for a new run."""
        try:
            with open(self.run_file) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.run_file}: corrupt JSON ({e}); move it away to start over") from e

    def write_record(self, record: dict) -> None:
        atomic.write_json(self.run_file, record)

    def record_final(self, step: int, final: dict) -> None:
        """Keeps the final figures in run.json, before the last checkpoint: a re-run of the complete
        run shows them even when it was killed before the model directory was written."""
        record = self.read_record()
        record["final"] = {"step": step, **figures(final)}
        self.write_record(record)

    def final_metrics(self, step: int) -> dict:
        """The figures recorded for `step` (run.json, else the model directory's marker), or {}."""
        final = self.read_record().get("final") or {}
        if final.get("step") == step:
            return figures(final)
        meta = self.model_metadata()
        if meta.get("step") == step:
            return figures(meta)
        return {}

    def model_metadata(self) -> dict:
        """model/tfchat.json, or {} when there is no complete model directory."""
        try:
            with open(os.path.join(self.model_dir, MARKER_FILE)) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    @contextlib.contextmanager
    def lock(self):
        """Holds the run's lock file for the block (re-entrant in one process), cleaning what killed
        runs left on first entry. Raises RunLocked when another process holds it."""
        try:
            os.makedirs(self.path, exist_ok=True)
            key = os.path.realpath(self.path)
            fd = _held[key][0] if key in _held else os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise PermissionError(f"cannot write to the output directory {self.path}: {e.strerror or e}") from e
        if key in _held:
            _held[key][1] += 1
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                with os.fdopen(fd) as f:
                    holder = f.read().strip() or "unknown pid"
                raise RunLocked(
                    f"{self.path} is in use by another run ({holder}); wait for it to finish, "
                    "or choose another --out"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            _held[key] = [fd, 1]
            try:
                self.clean_leftovers()
            except BaseException:
                self._release(key)
                raise
        try:
            yield self
        finally:
            self._release(key)

    @staticmethod
    def _release(key: str) -> None:
        entry = _held[key]
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])

    def clean_leftovers(self) -> list[str]:
        """Removes what killed runs left (call with the lock held: nothing else writes here)."""
        removed = []
        ckpt = os.path.join(self.path, "checkpoints")
        for path in glob.glob(os.path.join(ckpt, "*_temp")) + glob.glob(os.path.join(ckpt, "checkpoint.tmp*")):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            removed.append(path)
        for name in ("model", "tokenizer", "run.json"):
            removed += atomic.remove_stale_temps(self.path, name)
        for path in glob.glob(os.path.join(self.path, ".write-test-*")):  # probes of tfchat <= 0.2
            os.remove(path)
            removed.append(path)
        recover(self.model_dir)
        if removed:
            log.info("Removed what an interrupted run left: %s", ", ".join(os.path.relpath(p, self.path) for p in removed))
        return removed
