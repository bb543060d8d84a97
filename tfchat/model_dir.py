"""The model directory: the one folder format training writes and everything else reads.

    MODEL_DIR/
      tfchat.json         {"format": "tfchat-model", "version": 1, ...metadata}
      config.json         GPTConfig as JSON
      model.weights.h5    Keras weights of `build_gpt(config)`
      tokenizer/          tokenizer.json + tokenizer.model (SentencePiece)
                          or vocab.json + merges.txt (GPT-2 BPE)

Writes are atomic: everything goes to a temporary sibling folder that is then
renamed into place, so an interrupted save leaves the previous directory intact.

Example:

>>> import tempfile
>>> from tfchat import GPTConfig, build_gpt, train_tokenizer
>>> tok = train_tokenizer(["some text to learn from"] * 20, vocab_size=300)
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
import shutil
import tempfile

import keras

from tfchat.config import GPTConfig
from tfchat.model import build_gpt
from tfchat.tokenizer import Tokenizer, load_tokenizer

FORMAT = "tfchat-model"
VERSION = 1
MARKER_FILE = "tfchat.json"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
TOKENIZER_DIR = "tokenizer"


@dataclasses.dataclass
class LoadedModel:
    model: keras.Model
    tokenizer: Tokenizer
    config: GPTConfig
    metadata: dict


def save_model(
    path: str, model: keras.Model, tokenizer: Tokenizer, config: GPTConfig, metadata: dict | None = None
) -> None:
    """Writes a model directory at `path`, replacing any previous one atomically."""
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but the model only {config.vocab_size}")
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            f.write(config.to_json())
        model.save_weights(os.path.join(tmp, WEIGHTS_FILE))
        tokenizer.save(os.path.join(tmp, TOKENIZER_DIR))
        # Written last: a directory with the marker is complete.
        with open(os.path.join(tmp, MARKER_FILE), "w") as f:
            json.dump({"format": FORMAT, "version": VERSION, **(metadata or {})}, f, indent=2)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(src: str, dst: str) -> None:
    if os.path.exists(dst) and os.listdir(dst) and not is_model_dir(dst):
        raise FileExistsError(f"{dst} exists and is not a tfchat model directory; refusing to replace it")
    if not os.path.exists(dst) or not os.listdir(dst):
        if os.path.isdir(dst):
            os.rmdir(dst)
        os.rename(src, dst)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.old-", dir=os.path.dirname(dst))
    os.rmdir(old)
    os.rename(dst, old)
    os.rename(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def is_model_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER_FILE))


def resolve_model_dir(path: str) -> str:
    """`path` itself, or `path/model` when `path` is a training run directory."""
    if not is_model_dir(path) and is_model_dir(os.path.join(path, "model")):
        return os.path.join(path, "model")
    return path


def load_config(path: str) -> GPTConfig:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory not found: {path}")
    config_path = os.path.join(path, CONFIG_FILE)
    try:
        with open(config_path) as f:
            return GPTConfig.from_json(f.read())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"model config missing: {config_path}") from e
    except (ValueError, TypeError) as e:
        raise ValueError(f"{config_path}: invalid model config ({e})") from e


def load_model(path: str, dtype: str | None = None) -> LoadedModel:
    """Reads a model directory. A missing or corrupt file raises an error naming it.

    Args:
        path: the model directory, or a training run directory holding `model/`.
        dtype: Keras dtype policy for the rebuilt model (default: global policy).
    """
    path = resolve_model_dir(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory not found: {path}")
    marker = os.path.join(path, MARKER_FILE)
    try:
        with open(marker) as f:
            metadata = json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path} is not a tfchat model directory: {marker} missing") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{marker}: corrupt JSON ({e})") from e
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(f"{marker}: not a tfchat model marker")
    if metadata.get("version", 0) > VERSION:
        raise ValueError(f"{marker}: format version {metadata.get('version')} is newer than this tfchat ({VERSION})")
    config = load_config(path)
    tokenizer = load_tokenizer(os.path.join(path, TOKENIZER_DIR))
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"{os.path.join(path, TOKENIZER_DIR)}: tokenizer has {tokenizer.vocab_size} ids, "
            f"more than the model's vocab_size {config.vocab_size}"
        )
    model = build_gpt(config, dtype=dtype)
    weights = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"model weights missing: {weights}")
    try:
        model.load_weights(weights)
    except Exception as e:  # h5py/keras raise assorted types for truncated or foreign files
        raise ValueError(f"{weights}: cannot load weights ({type(e).__name__}: {e})") from e
    return LoadedModel(model=model, tokenizer=tokenizer, config=config, metadata=metadata)
