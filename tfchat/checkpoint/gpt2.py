"""Import a Hugging Face GPT-2 checkpoint into a tfchat model directory.

Reads a local Hugging Face GPT-2 folder (nothing is downloaded):

    SRC/
      config.json                      model_type "gpt2"
      model.safetensors                or pytorch_model.bin (or a sharded *.index.json)
      vocab.json, merges.txt           GPT-2 byte-level BPE (or pass --tokenizer DIR)

and writes a tfchat model directory (see `tfchat.checkpoint.model_dir`) with the same
weights. HF's GPT-2 uses `Conv1D` layers whose weight is `[in, out]`, the
layout of a Keras `Dense` kernel, so every tensor is copied as is; the LM head
is tied to `wte` in both models.

The vocabulary grows by one row per special token of tfchat's registry
other than `<|endoftext|>` (`<|system|>`, `<|user|>`, `<|assistant|>`,
`<|end|>`, `<|knowledge|>`, the reserved control tags: `GPT2Tokenizer` ids
right after the BPE ids). Each new row is the mean of the BPE rows: its logit is then about the
average logit, so the imported model neither favours nor can never emit the
new ids, and fine-tuning learns them from a sensible start. Logits of the
original ids are unchanged.

`pytorch_model.bin` is read without torch (`tfchat.checkpoint.readers`).

Example:

    python -m tfchat.convert --from-hf ~/models/gpt2 --out runs/gpt2

or from Python:

>>> from tfchat.checkpoint.gpt2 import convert_hf_gpt2
>>> loaded = convert_hf_gpt2("gpt2-hf", "runs/gpt2")  # doctest: +SKIP
>>> loaded.config.vocab_size  # doctest: +SKIP
50294
"""

from __future__ import annotations

import json
import logging
import os
import re

import numpy as np

from tfchat.checkpoint.model_dir import FORMAT, VERSION, LoadedModel, assign_weights, is_model_dir, save_model
from tfchat.checkpoint.readers import read_safetensors, read_torch_checkpoint
from tfchat.config import GPTConfig
from tfchat.model import build_gpt
from tfchat.text.tokenizer import GPT2_MERGES_FILE, GPT2_VOCAB_FILE, GPT2Tokenizer

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
        raise FileNotFoundError(f"Hugging Face checkpoint directory not found: {src_dir}; download one first, e.g. "
                                f"`hf download openai-community/gpt2 --local-dir {src_dir}`")
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
            "special tokens and are re-initialised", hf["vocab_size"], bpe_size, bpe_size, tokenizer.vocab_size - 1,
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


def build_model_with_weights(config: GPTConfig, weights: dict[str, np.ndarray]):
    """`build_gpt(config)` in float32 with every variable set from `weights` (Keras path -> array)."""
    model = build_gpt(config, dtype="float32")
    assign_weights(model, weights, "the converted weights")
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
