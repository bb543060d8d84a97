"""The classifier directory: what `training.classify` writes and the content filter, evaluation and export read.

    CLASSIFIER_DIR/
      tfchat.json         {"format": "tfchat-classifier", "version": 1, "thresholds": {label: t}, "task", "data", ...}
      classifier.json     ClassifierConfig (labels, multi_label, shape)
      model.safetensors   every weight, keyed by its Keras path (not in an ensemble's directory)
      tokenizer/          kind "gpt": the backbone's tokenizer (`tfchat.text.tokenizer`)
      members/0/, ...     kind "ensemble": each member's classifier directory

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
TOKENIZER_DIR = "tokenizer"
MEMBERS_DIR = "members"


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


def save_classifier(path: str, model: keras.Model, config: ClassifierConfig, metadata: dict | None = None,
                    members: list[str] | None = None) -> None:
    """Writes a classifier directory at `path`, replacing a previous one atomically.

    A kind "gpt" model's tokenizer is saved with it; an ensemble's `members` are
    the classifier directories it averages, copied in.
    """
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=os.path.dirname(path))
    try:
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            f.write(config.to_json())
        if config.kind == "ensemble":
            if len(members or ()) != config.members:
                raise ValueError(f"an ensemble of {config.members} needs as many member directories, got {members}")
            for i, member in enumerate(members):
                shutil.copytree(resolve_classifier_dir(member), os.path.join(tmp, MEMBERS_DIR, str(i)))
        else:
            if config.kind == "gpt":
                model.tokenizer.save(os.path.join(tmp, TOKENIZER_DIR))
            save_weights(model, os.path.join(tmp, WEIGHTS_FILE))
        with open(os.path.join(tmp, MARKER_FILE), "w") as f:  # last: a directory with the marker is complete
            json.dump({"format": FORMAT, "version": VERSION, **(metadata or {})}, f, indent=2)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def marker_metadata(path: str) -> dict:
    """What directory `path`'s marker file says ({} when it has none, or not a JSON object): a cheap look, no checks."""
    try:
        with open(os.path.join(path, MARKER_FILE)) as f:
            metadata = json.load(f)
    except (OSError, ValueError):
        return {}
    return metadata if isinstance(metadata, dict) else {}


def is_classifier_dir(path: str) -> bool:
    return marker_metadata(path).get("format") == FORMAT


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
    if config.kind == "ensemble":
        members = [load_classifier(os.path.join(path, MEMBERS_DIR, str(i))) for i in range(config.members)]
        for i, member in enumerate(members):
            if (member.config.labels, member.config.multi_label) != (config.labels, config.multi_label):
                raise ValueError(f"{path}: member {i} predicts other labels than the ensemble")
        return LoadedClassifier(model=build_classifier(config, members=[m.model for m in members]), config=config,
                                metadata=metadata)
    tokenizer = None
    if config.kind == "gpt":
        from tfchat.text.tokenizer import load_tokenizer  # TF Text: only GPT classifiers need it

        tokenizer = load_tokenizer(os.path.join(path, TOKENIZER_DIR))
    model = build_classifier(config, tokenizer=tokenizer)
    weights = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"classifier weights missing: {weights}")
    assign_weights(model, read_weights(weights), weights)
    return LoadedClassifier(model=model, config=config, metadata=metadata)


def weights_files(path: str) -> list[str]:
    """The weights files a classifier directory loads (an ensemble's: its members')."""
    path = resolve_classifier_dir(path)
    return sorted(os.path.join(d, WEIGHTS_FILE) for d, _, files in os.walk(path) if WEIGHTS_FILE in files)
