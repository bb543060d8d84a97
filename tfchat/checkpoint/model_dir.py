"""The model directory: the one folder format training writes and everything else reads.

    MODEL_DIR/
      tfchat.json         {"format": "tfchat-model", "version": 2, "head": "lm"|"reward", ...metadata}
      config.json         GPTConfig as JSON
      model.safetensors   every weight, keyed by its Keras path ("block_0/attn/c_attn/kernel")
      tokenizer/          tokenizer.json + tokenizer.model (SentencePiece)
                          or vocab.json + merges.txt (GPT-2 BPE)

Weights are keyed by path, not by the Keras object graph, so a backbone's
weights load into any head built on it (a reward model from a chat model:
`assign_weights(reward_model.backbone, weights, where, strict=False)`) and
the layout survives refactoring. `tfchat.json` "head" says which head the
directory holds (`tfchat.model.HEADS`; "lm" when absent) and `load_model`
rebuilds that one. Version 1 directories (Keras `model.weights.h5`, written
before tfchat 0.2) still load.

Writes are atomic: everything goes to a temporary sibling folder
(`.model.tmp-HOST-PID-RANDOM`), which then replaces the directory in two
renames: `model` -> `.model.old`, temporary -> `model`, then `.model.old`
is deleted. Whenever a process is killed, a complete directory is
loadable: `model` itself, or between the two renames `.model.old`, which
`load_model` (through `resolve_model_dir`) falls back to and the next save
(or `recover`) moves back into place. Leftover temporary folders of killed
writers are removed by the next save.

Example:

>>> import tempfile
>>> from tfchat import GPTConfig, build_gpt, train_tokenizer
>>> tok = train_tokenizer(["some text to learn from"] * 20, vocab_size=400)
>>> cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8)
>>> path = tempfile.mkdtemp() + "/m"
>>> save_model(path, build_gpt(cfg), tok, cfg)
>>> load_model(path).config == cfg
True
"""

from __future__ import annotations

import dataclasses
import json
import os
import logging
import shutil
from typing import Mapping

import keras
import numpy as np

from tfchat import atomic
from tfchat.config import GPTConfig
from tfchat.model import build_model, head_of
from tfchat.text.control_tags import TagVocabulary
from tfchat.text.tokenizer import Tokenizer, load_tokenizer

FORMAT = "tfchat-model"
VERSION = 2
MARKER_FILE = "tfchat.json"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LEGACY_WEIGHTS_FILE = "model.weights.h5"  # version 1
TOKENIZER_DIR = "tokenizer"
HEAD_NAMES = {"lm": "language model (chat or pretrained model)", "reward": "reward model (python -m training.reward)"}

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadedModel:
    model: keras.Model
    tokenizer: Tokenizer
    config: GPTConfig
    metadata: dict

    @property
    def head(self) -> str:
        """Which head the model is ("lm", "reward")."""
        return self.metadata.get("head", "lm")

    @property
    def tags(self) -> TagVocabulary | None:
        """The model's tag vocabulary (tfchat.json's "tags"), or None for a model trained without tags."""
        return TagVocabulary.from_dict(self.metadata.get("tags"), self.tokenizer.special)


def save_model(
    path: str, model: keras.Model, tokenizer: Tokenizer, config: GPTConfig, metadata: dict | None = None
) -> None:
    """Writes a model directory at `path`, replacing any previous one atomically."""
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but the model only {config.vocab_size}")
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    atomic.remove_stale_temps(parent, os.path.basename(path))
    tmp = atomic.temp_path(path)
    os.mkdir(tmp)
    try:
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            f.write(config.to_json())
        save_weights(model, os.path.join(tmp, WEIGHTS_FILE))
        tokenizer.save(os.path.join(tmp, TOKENIZER_DIR))
        # Written last: a directory with the marker is complete.
        with open(os.path.join(tmp, MARKER_FILE), "w") as f:
            json.dump({"format": FORMAT, "version": VERSION, **(metadata or {}), "head": head_of(model)}, f, indent=2)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_weights(model: keras.Model, path: str) -> None:
    """Writes every weight of `model` as float32, keyed by its Keras path, to a safetensors file."""
    from safetensors.numpy import save_file

    save_file(weights_by_path(model), path, metadata={"format": "tfchat"})


def weights_by_path(model: keras.Model) -> dict[str, np.ndarray]:
    """{Keras path: float32 array} of every weight of `model`."""
    tensors = {v.path: np.ascontiguousarray(keras.ops.convert_to_numpy(v.value), np.float32) for v in model.weights}
    if len(tensors) != len(model.weights):
        raise ValueError("two weights of the model share a path; cannot save it by path")
    return tensors


def assign_weights(model: keras.Model, weights: Mapping[str, np.ndarray], where: str, strict: bool = True) -> None:
    """Sets `model`'s variables from {Keras path: array}, checking names and shapes.

    With `strict=False`, weights the model lacks (another head's) are ignored;
    every variable of the model must still be given.
    """
    variables = {v.path: v for v in model.weights}
    missing = sorted(set(variables) - set(weights))
    extra = sorted(set(weights) - set(variables))
    if missing or (strict and extra):
        raise ValueError(f"{where}: weight names do not match the model: missing {missing[:3]}, extra {extra[:3]}")
    for name, var in variables.items():
        if tuple(var.shape) != tuple(weights[name].shape):
            raise ValueError(f"{where}: {name}: the model expects {tuple(var.shape)}, the file has {weights[name].shape}")
        var.assign(weights[name])


def read_weights(path: str) -> dict[str, np.ndarray]:
    """{Keras path: float32 array} of a model directory's weights file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read weights ({e})") from e


def legacy_layout(model: keras.Model) -> keras.Model:
    """`model`'s layers wired as the flat functional GPT tfchat 0.1 built, whose Keras weights file
    (`model.weights.h5`, model directory version 1) has that layout; loading into it fills `model`."""
    backbone = model.backbone
    token_ids = keras.Input(shape=(None,), dtype="int32")
    x = backbone.embeddings(token_ids)
    for block in backbone.blocks:
        x = block(x)
    return keras.Model(token_ids, backbone.embeddings(backbone.final_norm(x), reverse=True))


def backup_path(path: str) -> str:
    """Where the previous directory waits while `save_model` moves the new one into place."""
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{name}.old")


def recover(path: str) -> None:
    """Finishes a replacement a killed process left half done: `.NAME.old` goes back to `NAME`
    when `NAME` is missing, else it is deleted."""
    old = backup_path(path)
    if not os.path.isdir(old):
        return
    if os.path.lexists(path):
        shutil.rmtree(old, ignore_errors=True)
    else:
        log.warning("Restoring %s from %s (a save was interrupted)", path, old)
        os.rename(old, path)


def replace_dir(src: str, dst: str) -> None:
    """Moves the finished folder `src` to `dst`, replacing a previous model directory there (never anything else)."""
    recover(dst)
    if os.path.exists(dst) and os.listdir(dst) and not is_model_dir(dst):
        raise FileExistsError(f"{dst} exists and is not a tfchat model directory; refusing to replace it")
    if os.path.isdir(dst) and not os.listdir(dst):
        os.rmdir(dst)
    old = backup_path(dst)
    if os.path.exists(dst):
        os.rename(dst, old)  # from here until the next rename, `old` is the loadable copy
    os.rename(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def not_found(path: str) -> FileNotFoundError:
    """The error for a missing model directory, naming the commands that make one."""
    return FileNotFoundError(
        f"model directory not found: {path}; create it with `python -m training.pretrain --out {path}` "
        f"(a chat model: `python -m training.finetune --out {path}`), or import GPT-2 with "
        f"`python -m tfchat.convert --from-hf DIR --out {path}`"
    )


def is_model_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER_FILE))


def resolve_model_dir(path: str) -> str:
    """`path` itself, or `path/model` when `path` is a training run directory; during (or after a
    kill in) a replacement, the previous directory `.model.old` that `save_model` keeps until then."""
    for candidate in (path, os.path.join(path, "model")):
        if is_model_dir(candidate):
            return candidate
        if not os.path.lexists(candidate) and is_model_dir(backup_path(candidate)):
            return backup_path(candidate)
    return path


def read_marker(path: str, fmt: str, version: int, what: str) -> dict:
    """The metadata in directory `path`'s marker file, checked to be of format `fmt`, at most `version`;
    errors name the file and, for a directory of another kind, what it is."""
    marker = os.path.join(path, MARKER_FILE)
    try:
        with open(marker) as f:
            metadata = json.load(f)
    except FileNotFoundError as e:
        run = "" if not os.path.isfile(os.path.join(path, "run.json")) else (
            " (a training run writes its model when it finishes or is stopped: re-run its command to complete it)")
        raise FileNotFoundError(f"{path} is not a {what}: {marker} missing{run}") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{marker}: corrupt JSON ({e})") from e
    found = metadata.get("format") if isinstance(metadata, dict) else None
    if found != fmt:
        raise ValueError(f"{path} is not a {what} (its {MARKER_FILE} says format {found!r})")
    if metadata.get("version", 0) > version:
        raise ValueError(f"{marker}: format version {metadata.get('version')} is newer than this tfchat ({version})")
    return metadata


def load_config(path: str) -> GPTConfig:
    if not os.path.isdir(path):
        raise not_found(path)
    config_path = os.path.join(path, CONFIG_FILE)
    try:
        with open(config_path) as f:
            return GPTConfig.from_json(f.read())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"model config missing: {config_path}") from e
    except (ValueError, TypeError) as e:
        raise ValueError(f"{config_path}: invalid model config ({e})") from e


def load_model(path: str, dtype: str | None = None, head: str | None = None) -> LoadedModel:
    """Reads a model directory. A missing or corrupt file raises an error naming it.

    Args:
        path: the model directory, or a training run directory holding `model/`.
        dtype: Keras dtype policy for the rebuilt model (default: global policy).
        head: the head the caller needs ("lm", "reward"); another one is a
            `ValueError` saying what the directory holds. None: any.
    """
    path = resolve_model_dir(path)
    if not os.path.isdir(path):
        raise not_found(path)
    metadata = read_marker(path, FORMAT, VERSION, "tfchat model directory")
    held = metadata.get("head", "lm")
    if head is not None and held != head:
        raise ValueError(f"{path} holds a {HEAD_NAMES.get(held, held)}, not a {HEAD_NAMES.get(head, head)}")
    config = load_config(path)
    tokenizer = load_tokenizer(os.path.join(path, TOKENIZER_DIR))
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"{os.path.join(path, TOKENIZER_DIR)}: tokenizer has {tokenizer.vocab_size} ids, "
            f"more than the model's vocab_size {config.vocab_size}"
        )
    try:
        model = build_model(config, held, dtype=dtype)
    except ValueError as e:
        raise ValueError(f"{os.path.join(path, MARKER_FILE)}: {e}") from None
    weights = os.path.join(path, WEIGHTS_FILE)
    legacy = os.path.join(path, LEGACY_WEIGHTS_FILE)
    if os.path.isfile(weights):
        assign_weights(model, read_weights(weights), weights)
    elif os.path.isfile(legacy) and metadata.get("version", 1) == 1:
        try:
            legacy_layout(model).load_weights(legacy)
        except Exception as e:  # h5py/keras raise assorted types for truncated or foreign files
            raise ValueError(f"{legacy}: cannot load weights ({type(e).__name__}: {e})") from e
    else:
        raise FileNotFoundError(f"model weights missing: {weights}")
    return LoadedModel(model=model, tokenizer=tokenizer, config=config, metadata=metadata)
