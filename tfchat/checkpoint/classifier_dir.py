"""The classifier directory: what `training.classify` writes and the content filter, evaluation and export read.

    CLASSIFIER_DIR/
      tfchat.json         {"format": "tfchat-classifier", "version": 1, "thresholds": {label: t}, "task", "data", ...}
      classifier.json     ClassifierConfig (labels, multi_label, shape)
      model.safetensors   every weight, keyed by its Keras path

`thresholds` are the score at or above which a label is predicted, chosen
on the held-out split when training ends (`tfchat.eval.classification`);
a multi-label model has one per label. Writes are atomic, like model
directories (`tfchat.checkpoint.model_dir`).

Example:

>>> import tempfile
>>> from tfchat.model.classifier import ClassifierConfig, build_classifier
>>> config = ClassifierConfig(labels=("flagged",), buckets=64, dim=4)
>>> path = tempfile.mkdtemp() + "/c"
>>> save_classifier(path, build_classifier(config), config, {"thresholds": {"flagged": 0.5}})
>>> load_classifier(path).thresholds
{'flagged': 0.5}
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import keras

from tfchat.checkpoint.model_dir import (
    MARKER_FILE,
    WEIGHTS_FILE,
    assign_weights,
    read_marker,
    read_weights,
    replace_dir,
    save_weights,
)
from tfchat.model.classifier import ClassifierConfig, build_classifier

FORMAT = "tfchat-classifier"
VERSION = 1
CONFIG_FILE = "classifier.json"


@dataclasses.dataclass
class LoadedClassifier:
    model: keras.Model
    config: ClassifierConfig
    metadata: dict

    @property
    def thresholds(self) -> dict[str, float]:
        """{label: threshold}; 0.5 for a label without one (single-label models: none)."""
        saved = self.metadata.get("thresholds") or {}
        return {label: float(saved.get(label, 0.5)) for label in self.config.labels} if self.config.multi_label else {}


def save_classifier(path: str, model: keras.Model, config: ClassifierConfig, metadata: dict | None = None) -> None:
    """Writes a classifier directory at `path`, replacing a previous one atomically."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=os.path.dirname(path))
    try:
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            f.write(config.to_json())
        save_weights(model, os.path.join(tmp, WEIGHTS_FILE))
        with open(os.path.join(tmp, MARKER_FILE), "w") as f:  # last: a directory with the marker is complete
            json.dump({"format": FORMAT, "version": VERSION, **(metadata or {})}, f, indent=2)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_classifier_dir(path: str) -> bool:
    try:
        with open(os.path.join(path, MARKER_FILE)) as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def resolve_classifier_dir(path: str) -> str:
    """`path` itself, or `path/model` when `path` is a `training.classify` run directory."""
    if not is_classifier_dir(path) and is_classifier_dir(os.path.join(path, "model")):
        return os.path.join(path, "model")
    return path


def load_classifier(path: str) -> LoadedClassifier:
    """Reads a classifier directory (or the run directory holding it); errors name the missing or bad file."""
    path = resolve_classifier_dir(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"classifier directory not found: {path}; train one with python -m training.classify")
    metadata = read_marker(path, FORMAT, VERSION, "classifier directory")
    config_path = os.path.join(path, CONFIG_FILE)
    try:
        with open(config_path) as f:
            config = ClassifierConfig.from_dict(json.load(f))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"classifier config missing: {config_path}") from e
    except (ValueError, TypeError) as e:
        raise ValueError(f"{config_path}: invalid classifier config ({e})") from e
    model = build_classifier(config)
    weights = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"classifier weights missing: {weights}")
    assign_weights(model, read_weights(weights), weights)
    return LoadedClassifier(model=model, config=config, metadata=metadata)
