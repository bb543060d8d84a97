import json
import os

import numpy as np
import pytest

from tfchat.config import GPTConfig
from tfchat.model import build_gpt
from tfchat.checkpoint.model_dir import legacy_layout, load_model, save_model, save_weights
from tfchat.text.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tok = train_tokenizer(["a small corpus for a small tokenizer, with 中文 too"] * 30, vocab_size=400)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    model = build_gpt(cfg)
    path = str(tmp_path_factory.mktemp("models") / "m")
    save_model(path, model, tok, cfg, metadata={"step": 3})
    return path, model, tok, cfg


def test_round_trip(saved):
    path, model, tok, cfg = saved
    loaded = load_model(path)
    assert loaded.config == cfg
    assert loaded.metadata["step"] == 3
    assert loaded.tokenizer.encode("中文 corpus") == tok.encode("中文 corpus")
    ids = np.array([[1, 2, 3]], "int32")
    np.testing.assert_array_equal(loaded.model(ids), model(ids))


def test_save_replaces_atomically_and_leaves_no_temp_dirs(saved, tmp_path):
    path, model, tok, cfg = saved
    target = str(tmp_path / "m")
    save_model(target, model, tok, cfg, metadata={"step": 1})
    save_model(target, model, tok, cfg, metadata={"step": 2})
    assert load_model(target).metadata["step"] == 2
    assert os.listdir(tmp_path) == ["m"]


def test_failed_save_keeps_previous(saved, tmp_path):
    path, model, tok, cfg = saved
    target = str(tmp_path / "m")
    save_model(target, model, tok, cfg, metadata={"step": 1})
    bigger = cfg.replace(vocab_size=tok.vocab_size - 1)  # tokenizer no longer fits: refused
    with pytest.raises(ValueError, match="tokenizer has"):
        save_model(target, model, tok, bigger)
    assert load_model(target).metadata["step"] == 1
    assert os.listdir(tmp_path) == ["m"]


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "damage, error, names",
    [
        (lambda p: os.remove(os.path.join(p, "tfchat.json")), FileNotFoundError, "tfchat.json"),
        (lambda p: os.remove(os.path.join(p, "config.json")), FileNotFoundError, "config.json"),
        (lambda p: open(os.path.join(p, "config.json"), "w").write("{nope"), ValueError, "config.json"),
        (lambda p: open(os.path.join(p, "config.json"), "w").write('{"n_head": 3}'), ValueError, "config.json"),
        (lambda p: os.remove(os.path.join(p, "model.safetensors")), FileNotFoundError, "model.safetensors"),
        (lambda p: open(os.path.join(p, "model.safetensors"), "wb").write(b"\x10\x00"), ValueError, "model.safetensors"),
        (lambda p: os.remove(os.path.join(p, "tokenizer", "tokenizer.model")), FileNotFoundError, "tokenizer.model"),
        (lambda p: open(os.path.join(p, "tfchat.json"), "w").write("[]"), ValueError, "tfchat.json"),
    ],
)
def test_load_errors_name_the_file(saved, tmp_path, damage, error, names):
    path = _copy(saved[0], str(tmp_path / "copy"))
    damage(path)
    with pytest.raises(error, match=names):
        load_model(path)


def test_weights_of_another_shape_are_rejected(saved, tmp_path):
    path = _copy(saved[0], str(tmp_path / "copy"))
    cfg = saved[3]
    other = build_gpt(cfg.replace(n_embd=32))
    save_weights(other, os.path.join(path, "model.safetensors"))
    with pytest.raises(ValueError, match="model.safetensors.*the model expects"):
        load_model(path)


def legacy_h5_keys(n_layer: int) -> set:
    """The Keras h5 layout tfchat 0.1 wrote (model directory format version 1): its flat functional GPT."""
    return {
        "layers/embeddings/vars/0", "layers/embeddings/vars/1",
        "layers/layer_normalization/vars/0", "layers/layer_normalization/vars/1",
        *(f"layers/transformer_block{'' if b == 0 else f'_{b}'}/{part}/vars/{i}"
          for b in range(n_layer)
          for part in ("attn/c_attn", "attn/c_proj", "ln_1", "ln_2", "mlp/c_fc", "mlp/c_proj")
          for i in (0, 1)),
    }


def test_version_1_directories_with_keras_h5_weights_still_load(saved, tmp_path):
    import h5py

    path, model, tok, cfg = saved
    legacy = _copy(path, str(tmp_path / "legacy"))
    os.remove(os.path.join(legacy, "model.safetensors"))
    legacy_layout(model).save_weights(os.path.join(legacy, "model.weights.h5"))
    keys = set()
    h5py.File(os.path.join(legacy, "model.weights.h5")).visititems(
        lambda name, obj: keys.add(name) if isinstance(obj, h5py.Dataset) else None)
    assert keys == legacy_h5_keys(cfg.n_layer)  # the layout 0.1 wrote, so this is a real version-1 directory
    marker = os.path.join(legacy, "tfchat.json")
    meta = json.load(open(marker))
    json.dump({**meta, "version": 1}, open(marker, "w"))
    loaded = load_model(legacy)
    ids = np.array([[1, 2, 3]], "int32")
    np.testing.assert_allclose(loaded.model(ids), model(ids), atol=1e-6)


def test_missing_directory():
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load_model("/nonexistent/model")


def test_save_refuses_to_replace_a_foreign_directory(saved, tmp_path):
    path, model, tok, cfg = saved
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a tfchat model directory"):
        save_model(str(tmp_path), model, tok, cfg)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    save_model(str(empty), model, tok, cfg)
    assert load_model(str(empty)).config == cfg
