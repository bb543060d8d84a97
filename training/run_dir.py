"""A training run directory: where a run keeps its record, checkpoints, logs and model.

    RUN/
      run.json       what the run is: model and training configuration, strategy, job metadata
      tokenizer/     the run's tokenizer (reused on resume)
      checkpoints/   tf.train.CheckpointManager: model, optimizer, step, RNG state, loss scale
      logs/          TensorBoard
      model/         the model directory (`tfchat.checkpoint.model_dir`), written at the end and on stops

Example:

>>> run = RunDirectory("runs/pretrain")
>>> run.model_dir
'runs/pretrain/model'
"""

from __future__ import annotations

import json
import os


class RunDirectory:
    def __init__(self, path: str):
        self.path = path

    @property
    def run_file(self) -> str:
        return os.path.join(self.path, "run.json")

    @property
    def model_dir(self) -> str:
        return os.path.join(self.path, "model")

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
        write_json_atomic(self.run_file, record)

    def final_metrics(self) -> dict:
        """What the finished run recorded in its model directory (step, final losses), or {}."""
        try:
            with open(os.path.join(self.model_dir, "tfchat.json")) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return {}
        return {k: meta[k] for k in ("step", "loss", "val_loss", "val_perplexity") if k in meta}


def write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)
