"""Import a Hugging Face GPT-2 checkpoint into a tfchat model directory.

Reads a local Hugging Face GPT-2 folder (nothing is downloaded):

    SRC/
      config.json                      model_type "gpt2"
      model.safetensors                or pytorch_model.bin (or a sharded *.index.json)
      vocab.json, merges.txt           GPT-2 byte-level BPE (or pass --tokenizer DIR)

and writes a tfchat model directory (see `tfchat.model_dir`) with the same
weights. HF's GPT-2 uses `Conv1D` layers whose weight is `[in, out]`, the
layout of a Keras `Dense` kernel, so every tensor is copied as is; the LM head
is tied to `wte` in both models.

The vocabulary grows by 4 rows, one per chat marker (`<|system|>`,
`<|user|>`, `<|assistant|>`, `<|end|>`: `GPT2Tokenizer` ids right after the
BPE ids). Each new row is the mean of the BPE rows: its logit is then about the
average logit, so the imported model neither favours nor can never emit the
new ids, and fine-tuning learns them from a sensible start. Logits of the
original ids are unchanged.

`pytorch_model.bin` is read without torch: a restricted unpickler (like
`torch.load(weights_only=True)`) accepts only tensor-rebuild helpers and
storage types, and the raw storages become numpy arrays.

Example:

    python -m tfchat.convert --from-hf ~/models/gpt2 --out runs/gpt2

or from Python:

>>> from tfchat.convert import convert_hf_gpt2
>>> loaded = convert_hf_gpt2("gpt2-hf", "runs/gpt2")  # doctest: +SKIP
>>> loaded.config.vocab_size  # doctest: +SKIP
50261
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import pickle
import re
import struct
import sys
import zipfile

import keras
import numpy as np

from tfchat.config import GPTConfig
from tfchat.model import build_gpt
from tfchat.model_dir import FORMAT, VERSION, LoadedModel, is_model_dir, save_model
from tfchat.tokenizer import GPT2_MERGES_FILE, GPT2_VOCAB_FILE, GPT2Tokenizer

log = logging.getLogger(__name__)

HF_CONFIG_FILE = "config.json"
# In order of preference.
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# tanh-approximated GELU under its HF names (all the same function).
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def convert_hf_gpt2(
    src_dir: str,
    out_dir: str,
    tokenizer_dir: str | None = None,
    dropout: float = 0.0,
    overwrite: bool = False,
) -> LoadedModel:
    """Converts the Hugging Face GPT-2 checkpoint in `src_dir` into a tfchat model directory.

    Everything is read and checked before anything is written, and the write
    is atomic (`save_model`), so a failure leaves no output behind.

    Args:
        src_dir: HF checkpoint folder (config.json + weights [+ vocab.json, merges.txt]).
        out_dir: the tfchat model directory to create.
        tokenizer_dir: folder with vocab.json + merges.txt, when `src_dir` has none.
        dropout: dropout of the written config (used by fine-tuning; 0 for inference).
        overwrite: allow replacing an existing tfchat model directory at `out_dir`.

    Returns:
        The converted model, its tokenizer, config and metadata.

    Raises:
        FileNotFoundError: a required file is missing (the message names it).
        ValueError: the checkpoint is not a supported GPT-2 (the message names the file).
    """
    src_dir, out_dir = os.path.abspath(src_dir), os.path.abspath(out_dir)
    if not os.path.isdir(src_dir):
        raise FileNotFoundError(f"Hugging Face checkpoint directory not found: {src_dir}")
    _check_out_dir(src_dir, out_dir, overwrite)

    hf = read_hf_config(os.path.join(src_dir, HF_CONFIG_FILE))
    tokenizer = _read_tokenizer(tokenizer_dir or src_dir, explicit=tokenizer_dir is not None)
    weights_path, tensors = read_hf_weights(src_dir)
    weights = map_gpt2_weights(tensors, hf, weights_path)
    del tensors

    bpe_size = tokenizer.system_id  # the first id after the BPE vocabulary
    if bpe_size > hf["vocab_size"]:
        raise ValueError(
            f"tokenizer has {bpe_size} BPE ids but {os.path.join(src_dir, HF_CONFIG_FILE)} "
            f"says vocab_size={hf['vocab_size']}: tokenizer and weights do not belong together"
        )
    if hf["vocab_size"] > bpe_size:
        log.warning(
            "the checkpoint has %d embedding rows but the tokenizer only %d ids; ids %d..%d become the chat "
            "markers and are re-initialised", hf["vocab_size"], bpe_size, bpe_size, tokenizer.end_id,
        )
    weights["embeddings/token_embedding"] = add_marker_rows(
        weights["embeddings/token_embedding"], bpe_size, tokenizer.vocab_size
    )

    config = GPTConfig(
        vocab_size=max(hf["vocab_size"], tokenizer.vocab_size),
        block_size=hf["n_positions"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        dropout=dropout,
        layer_norm_epsilon=hf["layer_norm_epsilon"],
    )
    model = build_model_with_weights(config, weights)
    metadata = {
        "converted_from": {
            "format": "huggingface-gpt2",
            "path": src_dir,
            "weights": os.path.basename(weights_path),
            "vocab_size": hf["vocab_size"],
        },
        # Why: tells fine-tuning code (and humans) which rows are untrained.
        "new_token_rows": {"ids": list(range(bpe_size, tokenizer.vocab_size)), "init": "mean"},
    }
    save_model(out_dir, model, tokenizer, config, metadata)
    log.info("wrote %s (%d layers, width %d, vocab %d)", out_dir, config.n_layer, config.n_embd, config.vocab_size)
    return LoadedModel(
        model=model, tokenizer=tokenizer, config=config, metadata={"format": FORMAT, "version": VERSION, **metadata}
    )


# ----------------------------------------------------------------------------- config


def read_hf_config(path: str) -> dict:
    """Reads an HF GPT-2 config.json; returns the fields tfchat needs, or raises naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"not a Hugging Face checkpoint: {path} missing") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: corrupt JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object")

    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    # Very old GPT-2 configs have no model_type; their architectures say GPT2*.
    if model_type != "gpt2" and not (model_type is None and archs and all(a.startswith("GPT2") for a in archs)):
        raise ValueError(f"{path}: model_type {model_type!r} is not GPT-2 (expected 'gpt2')")

    def unsupported(msg):
        return ValueError(f"{path}: unsupported GPT-2 variant: {msg}")

    act = cfg.get("activation_function", "gelu_new")
    if act not in _TANH_GELUS:
        raise unsupported(f"activation_function {act!r} (tfchat uses the tanh GELU, 'gelu_new')")
    if not cfg.get("scale_attn_weights", True):
        raise unsupported("scale_attn_weights=false")
    if cfg.get("scale_attn_by_inverse_layer_idx", False):
        raise unsupported("scale_attn_by_inverse_layer_idx=true")
    if cfg.get("add_cross_attention", False):
        raise unsupported("add_cross_attention=true")
    if not cfg.get("tie_word_embeddings", True):
        raise unsupported("tie_word_embeddings=false (tfchat's LM head is tied to wte)")
    # reorder_and_upcast_attn only changes where HF scales/upcasts; the math is
    # ours (fp32 softmax, scaled scores), so it is accepted.

    out = {}
    for name in ("n_layer", "n_head", "n_embd", "vocab_size"):
        out[name] = _positive_int(cfg, name, path)
    out["n_positions"] = _positive_int(cfg, "n_positions" if "n_positions" in cfg else "n_ctx", path)
    n_inner = cfg.get("n_inner")
    if n_inner is not None and n_inner != 4 * out["n_embd"]:
        raise unsupported(f"n_inner={n_inner} (tfchat's MLP is 4 * n_embd = {4 * out['n_embd']})")
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"{path}: layer_norm_epsilon must be a positive number, got {eps!r}")
    out["layer_norm_epsilon"] = float(eps)
    if out["n_embd"] % out["n_head"]:
        raise ValueError(f"{path}: n_embd={out['n_embd']} is not divisible by n_head={out['n_head']}")
    return out


def _positive_int(cfg: dict, name: str, path: str) -> int:
    value = cfg.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{path}: {name} must be a positive integer, got {value!r}")
    return value


# ----------------------------------------------------------------------------- tokenizer


def _read_tokenizer(directory: str, explicit: bool) -> GPT2Tokenizer:
    vocab, merges = os.path.join(directory, GPT2_VOCAB_FILE), os.path.join(directory, GPT2_MERGES_FILE)
    missing = [p for p in (vocab, merges) if not os.path.isfile(p)]
    if missing:
        hint = "" if explicit else "; pass --tokenizer DIR (tokenizer_dir=) pointing to GPT-2's vocab.json + merges.txt"
        raise FileNotFoundError(f"GPT-2 tokenizer file missing: {', '.join(missing)}{hint}")
    try:
        return GPT2Tokenizer.from_files(vocab, merges)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{vocab}: corrupt JSON ({e})") from e
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{vocab} / {merges}: not a usable GPT-2 BPE tokenizer ({e})") from e


# ----------------------------------------------------------------------------- weights


def read_hf_weights(src_dir: str) -> tuple[str, dict[str, np.ndarray]]:
    """Finds and reads the weights file of `src_dir`: (its path, name -> numpy array)."""
    for name in HF_WEIGHT_FILES:
        path = os.path.join(src_dir, name)
        if os.path.isfile(path):
            break
    else:
        raise FileNotFoundError(
            f"no weights in {src_dir}: expected one of {', '.join(HF_WEIGHT_FILES)} "
            "(TF/Flax-only checkpoints are not supported)"
        )
    log.info("reading %s", path)
    if name.endswith(".index.json"):
        return path, _read_sharded(path)
    return path, _read_weight_file(path)


def _read_weight_file(path: str) -> dict[str, np.ndarray]:
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    return read_torch_checkpoint(path)


def _read_sharded(index_path: str) -> dict[str, np.ndarray]:
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{index_path}: not a valid shard index ({e})") from e
    tensors = {}
    for shard in shards:
        path = os.path.join(os.path.dirname(index_path), shard)
        if os.path.basename(shard) != shard or not os.path.isfile(path):
            raise FileNotFoundError(f"{index_path}: shard {shard!r} missing")
        tensors.update(_read_weight_file(path))
    return tensors


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Reads a .safetensors file into numpy arrays (bfloat16 is widened to float32)."""
    from safetensors import SafetensorError, safe_open

    tensors = {}
    try:
        with safe_open(path, framework="numpy") as f:
            for key in f.keys():
                if f.get_slice(key).get_dtype() == "BF16":
                    tensors[key] = _safetensors_bf16(path, key)  # numpy has no bfloat16
                else:
                    tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: cannot read safetensors file ({e})") from e
    return tensors


def _safetensors_bf16(path: str, key: str) -> np.ndarray:
    # safe_open has already validated the header and offsets.
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        info = json.loads(f.read(header_len))[key]
        begin, end = info["data_offsets"]
        f.seek(8 + header_len + begin)
        raw = np.frombuffer(f.read(end - begin), "<u2")
    return _bf16_to_f32(raw).reshape(info["shape"])


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    # bfloat16 is the top half of a float32.
    return (raw.astype(np.uint32) << 16).view(np.float32)


# Torch storage class name -> numpy dtype ("bf16" handled apart).
_TORCH_STORAGES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stands in for `torch.FloatStorage` etc. in the pickle."""

    name: str


class _Storage:
    def __init__(self, kind: _StorageType, numel: int):
        self.kind, self.numel = kind, numel
        self.data: np.ndarray | None = None  # flat, filled from the zip entry or legacy stream

    def set_bytes(self, raw: bytes, where: str) -> None:
        dtype = _TORCH_STORAGES[self.kind.name]
        if len(raw) < self.numel * dtype.itemsize:
            raise ValueError(f"{where}: storage truncated")
        self.data = np.frombuffer(raw, dtype, count=self.numel)


@dataclasses.dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *_):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict without torch, refusing every other global."""

    def __init__(self, file, persistent_load, where: str):
        super().__init__(file)
        self._persistent_load = persistent_load
        self._where = where

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _TORCH_STORAGES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only plain tensor state dicts are accepted"
        )

    def persistent_load(self, pid):
        return self._persistent_load(pid)


def read_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
    """Reads a torch.save'd state dict (zip or legacy format) into numpy, without importing torch.

    Only tensors are materialised; anything that is not a (nested) dict of
    tensors, e.g. a pickled `nn.Module`, is refused.
    """
    try:
        if zipfile.is_zipfile(path):
            state = _read_torch_zip(path)
        else:
            state = _read_torch_legacy(path)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"expected a state dict, got {type(state).__name__}")
        return {k: _to_numpy(v, path) for k, v in state.items() if isinstance(v, _TensorRef)}
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error, KeyError, TypeError,
            AttributeError, IndexError, ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        msg = str(e) if str(e).startswith(path) else f"{path}: cannot read PyTorch checkpoint ({e})"
        raise ValueError(msg + "; converting it to model.safetensors also works") from e


def _read_torch_zip(path: str):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise ValueError(f"{path}: no data.pkl in the zip, not a torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and z.read(prefix + "byteorder").strip() != b"little":
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        storages: dict[str, _Storage] = {}

        def persistent_load(pid):
            typename, kind, key, _location, numel = pid
            if typename != "storage" or not isinstance(kind, _StorageType):
                raise pickle.UnpicklingError(f"unexpected persistent id {typename!r}")
            if key not in storages:  # tied weights share one storage
                storage = _Storage(kind, numel)
                storage.set_bytes(z.read(f"{prefix}data/{key}"), f"{path}: {prefix}data/{key}")
                storages[key] = storage
            return storages[key]

        with z.open(pkl[0]) as f:
            return _RestrictedUnpickler(f, persistent_load, path).load()


def _read_torch_legacy(path: str):
    # Pre-1.6 torch.save: pickles of magic, protocol, sys info, the object,
    # the storage keys, then each storage as int64 numel + raw bytes.
    storages: dict[str, _Storage] = {}

    def persistent_load(pid):
        typename, kind, key, _location, numel, view = pid
        if typename != "storage" or not isinstance(kind, _StorageType):
            raise pickle.UnpicklingError(f"unexpected persistent id {typename!r}")
        if view is not None:
            raise ValueError(f"{path}: storage views (very old torch) are not supported")
        storages.setdefault(key, _Storage(kind, numel))
        return storages[key]

    def load(f):
        return _RestrictedUnpickler(f, persistent_load, path).load()

    with open(path, "rb") as f:
        try:
            magic = load(f)
        except Exception as e:
            raise ValueError(f"{path}: not a PyTorch checkpoint") from e
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a PyTorch checkpoint")
        load(f)  # protocol version
        sys_info = load(f)
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        state = load(f)
        for key in load(f):
            storage = storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            if numel != storage.numel:
                raise ValueError(f"{path}: storage {key} has {numel} elements, expected {storage.numel}")
            storage.set_bytes(f.read(numel * _TORCH_STORAGES[storage.kind.name].itemsize), f"{path}: storage {key}")
    return state


def _to_numpy(t: _TensorRef, path: str) -> np.ndarray:
    data = t.storage.data
    if data is None:
        raise ValueError(f"{path}: tensor storage has no data")
    if any(n == 0 for n in t.size):
        out = np.zeros(t.size, data.dtype)
    else:
        # Bounds check: a crafted file must not read outside its storage.
        last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
        if t.offset < 0 or min(t.stride, default=0) < 0 or last >= data.size:
            raise ValueError(f"{path}: tensor reaches outside its storage")
        view = np.lib.stride_tricks.as_strided(
            data[t.offset:], shape=t.size, strides=[s * data.itemsize for s in t.stride], writeable=False
        )
        out = np.array(view)
    if t.storage.kind.name == "BFloat16Storage":
        out = _bf16_to_f32(out)
    return out


# ----------------------------------------------------------------------------- mapping

_BLOCK_KEY = re.compile(r"h\.(\d+)\.(ln_1|ln_2|attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias)")
_BUFFER_KEY = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")  # causal-mask buffers, not weights
_HEAD_KEY = re.compile(r"(score|multiple_choice_head)\..*")  # task heads on top of GPT-2: unused


def _keras_path(key: str) -> str | None:
    """HF name (without `transformer.`) -> Keras weight path, None if not a GPT-2 weight."""
    fixed = {
        "wte.weight": "embeddings/token_embedding",
        "wpe.weight": "embeddings/position_embedding",
        "ln_f.weight": "ln_f/gamma",
        "ln_f.bias": "ln_f/beta",
    }
    if key in fixed:
        return fixed[key]
    m = _BLOCK_KEY.fullmatch(key)
    if not m:
        return None
    i, module, kind = m.groups()
    if module.startswith("ln_"):
        return f"block_{i}/{module}/{'gamma' if kind == 'weight' else 'beta'}"
    return f"block_{i}/{module.replace('.', '/')}/{'kernel' if kind == 'weight' else 'bias'}"


def expected_shapes(hf: dict) -> dict[str, tuple]:
    """Keras weight path -> shape of the HF tensor it comes from (before the vocab grows)."""
    c = hf["n_embd"]
    shapes = {
        "embeddings/token_embedding": (hf["vocab_size"], c),
        "embeddings/position_embedding": (hf["n_positions"], c),
        "ln_f/gamma": (c,),
        "ln_f/beta": (c,),
    }
    for i in range(hf["n_layer"]):
        b = f"block_{i}"
        shapes.update({
            f"{b}/ln_1/gamma": (c,), f"{b}/ln_1/beta": (c,),
            f"{b}/attn/c_attn/kernel": (c, 3 * c), f"{b}/attn/c_attn/bias": (3 * c,),
            f"{b}/attn/c_proj/kernel": (c, c), f"{b}/attn/c_proj/bias": (c,),
            f"{b}/ln_2/gamma": (c,), f"{b}/ln_2/beta": (c,),
            f"{b}/mlp/c_fc/kernel": (c, 4 * c), f"{b}/mlp/c_fc/bias": (4 * c,),
            f"{b}/mlp/c_proj/kernel": (4 * c, c), f"{b}/mlp/c_proj/bias": (c,),
        })
    return shapes


def map_gpt2_weights(tensors: dict[str, np.ndarray], hf: dict, path: str) -> dict[str, np.ndarray]:
    """Renames HF GPT-2 tensors to Keras paths as float32, checking names and shapes."""
    shapes = expected_shapes(hf)
    out: dict[str, np.ndarray] = {}
    lm_head = None
    for key, value in tensors.items():
        name = key[len("transformer."):] if key.startswith("transformer.") else key
        if _BUFFER_KEY.fullmatch(name):
            continue
        if name == "lm_head.weight":
            lm_head = value
            continue
        if _HEAD_KEY.fullmatch(name):
            log.info("skipping task head tensor %s", key)
            continue
        target = _keras_path(name)
        if target is None or target not in shapes:
            raise ValueError(f"{path}: unexpected tensor {key!r}: not a plain GPT-2 checkpoint of this config")
        if target in out:
            raise ValueError(f"{path}: tensor {key!r} appears twice")
        if tuple(value.shape) != shapes[target]:
            raise ValueError(
                f"{path}: tensor {key!r} has shape {tuple(value.shape)}, config.json implies {shapes[target]}"
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{path}: tensor {key!r} has dtype {value.dtype}, expected floating point")
        out[target] = value.astype(np.float32, copy=False)
    missing = [k for k in shapes if k not in out]
    if missing:
        raise ValueError(f"{path}: {len(missing)} GPT-2 weights missing, e.g. {', '.join(missing[:3])}")
    # Our LM head is wte; an untied head would be silently dropped.
    if lm_head is not None and not np.array_equal(np.asarray(lm_head, np.float32), out["embeddings/token_embedding"]):
        raise ValueError(f"{path}: lm_head.weight differs from wte.weight; untied LM heads are not supported")
    return out


def add_marker_rows(wte: np.ndarray, bpe_size: int, vocab_size: int) -> np.ndarray:
    """Token table with rows `bpe_size .. vocab_size-1` set to the mean of rows `0 .. bpe_size-1`.

    The table grows to `vocab_size` rows if it is smaller; rows past
    `vocab_size` (padded checkpoints) are kept.
    """
    rows = max(wte.shape[0], vocab_size)
    out = np.zeros((rows, wte.shape[1]), np.float32)
    out[: wte.shape[0]] = wte
    out[bpe_size:vocab_size] = wte[:bpe_size].mean(axis=0, dtype=np.float64)
    return out


def build_model_with_weights(config: GPTConfig, weights: dict[str, np.ndarray]) -> keras.Model:
    """`build_gpt(config)` in float32 with every variable set from `weights` (Keras path -> array)."""
    model = build_gpt(config, dtype="float32")
    variables = {v.path: v for v in model.weights}
    if set(variables) != set(weights):
        raise ValueError(
            f"weight names do not match the model: missing {sorted(set(variables) - set(weights))[:3]}, "
            f"extra {sorted(set(weights) - set(variables))[:3]}"
        )
    for name, var in variables.items():
        if tuple(var.shape) != weights[name].shape:
            raise ValueError(f"{name}: model expects {tuple(var.shape)}, got {weights[name].shape}")
        var.assign(weights[name])
    return model


# ----------------------------------------------------------------------------- output dir


def _check_out_dir(src_dir: str, out_dir: str, overwrite: bool) -> None:
    # save_model replaces out_dir wholesale: never let that be the source or a
    # folder that is not a tfchat model.
    if os.path.realpath(out_dir) == os.path.realpath(src_dir):
        raise ValueError(f"--out must differ from the source directory {src_dir}")
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise FileExistsError(f"output path exists and is not a directory: {out_dir}")
        if os.listdir(out_dir):
            if not is_model_dir(out_dir):
                raise FileExistsError(f"output directory is not empty and not a tfchat model directory: {out_dir}")
            if not overwrite:
                raise FileExistsError(f"output directory exists: {out_dir} (use --overwrite to replace it)")


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tfchat.convert", description="Import a local Hugging Face GPT-2 checkpoint."
    )
    parser.add_argument("--from-hf", required=True, metavar="DIR", help="HF GPT-2 folder (config.json + weights)")
    parser.add_argument("--out", required=True, metavar="DIR", help="tfchat model directory to write")
    parser.add_argument("--tokenizer", metavar="DIR", help="folder with vocab.json + merges.txt if --from-hf has none")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout stored in the config (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing tfchat model directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        loaded = convert_hf_gpt2(args.from_hf, args.out, args.tokenizer, args.dropout, args.overwrite)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"converted {args.from_hf} -> {args.out} (vocab_size {loaded.config.vocab_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
