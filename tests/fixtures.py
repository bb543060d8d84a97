"""Small shared fixtures: a tiny tokenizer and model shape, and a learnable synthetic dataset."""

import atexit
import functools
import pathlib
import shutil
import socket
import tempfile

import numpy as np
import tensorflow as tf

from tfchat.config import GPTConfig
from tfchat.text.tokenizer import train_tokenizer

TEXTS = ["The quick brown fox jumps over the lazy dog.", "你好，世界。", "Emoji 🙂 and café."] * 30


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    return train_tokenizer(TEXTS, vocab_size=400)


def tiny_config(tok) -> GPTConfig:
    return GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)


def synthetic_dataset(ctx, micro_batch, seed=0, seq_len=16, rows=64):
    """Deterministic windows with a learnable pattern (odd tokens = previous + 1), repeating."""
    rng = np.random.default_rng(seed)
    windows = rng.integers(10, 60, (rows, seq_len + 1)).astype("int32")
    windows[:, 1::2] = windows[:, 0:-1:2] + 1
    ds = tf.data.Dataset.from_tensor_slices(windows)
    if ctx is not None and ctx.num_input_pipelines > 1:
        ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
    ds = ds.repeat().map(lambda w: {"token_ids": w[:-1], "targets": w[1:], "loss_mask": tf.ones([seq_len])})
    return ds.batch(micro_batch, drop_remainder=True)


SERVING_TEXTS = ["Hello world. How are you today? I am fine, thanks.", "The quick brown fox jumps over the lazy dog."] * 30


# Every architecture option at once (tfchat/config.py): exports must serve them all.
MODERN = dict(position="rope", norm="rmsnorm", bias=False, qk_norm=True, mlp="relu2", tie_embeddings=False,
              logit_softcap=15.0)


def tiny_export(root, texts=SERVING_TEXTS, vocab_size=400, **architecture):
    """A tiny random chat model saved under `root/model` and exported to `root/tfchat`: (LoadedModel, version dir).

    `architecture`: GPTConfig fields over GPT-2's defaults (e.g. `**MODERN`). Each distinct model is built and
    exported once per test session (about 9 s: a tokenizer, a save and a SavedModel trace) and copied into `root`,
    so every caller owns its files.
    """
    import keras

    from serving.exporter import models_config
    from tfchat.checkpoint.model_dir import load_model

    source, version = _exported(tuple(texts), vocab_size, tuple(sorted(architecture.items())))
    for name in ("model", "tfchat"):
        shutil.copytree(source / name, root / name)
    (root / "tfchat" / "models.config").write_text(models_config("tfchat", str(root / "tfchat")))
    keras.utils.set_random_seed(0)  # as a fresh build leaves it
    return load_model(str(root / "model")), str(root / "tfchat" / version)


@functools.cache
def _exported(texts, vocab_size, architecture):
    """(directory holding `model/` and `tfchat/`, the version dir's name) of one tiny export, removed at exit."""
    import keras

    from serving.exporter import export
    from tfchat.model import build_gpt
    from tfchat.checkpoint.model_dir import load_model, save_model

    root = pathlib.Path(tempfile.mkdtemp(prefix="tfchat-tiny-export-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    tok = train_tokenizer(list(texts), vocab_size=vocab_size)
    keras.utils.set_random_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32, **dict(architecture))
    save_model(str(root / "model"), build_gpt(cfg), tok, cfg)
    return root, pathlib.Path(export(load_model(str(root / "model")), str(root / "tfchat"))).name


# ----------------------------------------------------------------------------- preference pairs

_ANIMALS = ["cat", "dog", "fox", "owl", "bee", "cow", "hen", "pig", "rat", "elk"]


def preference_records(n: int = 40) -> list[dict]:
    """Synthetic preference-JSONL records: polite, correct replies are chosen; some prompts are multi-turn."""
    records = []
    for i in range(n):
        a, b = _ANIMALS[i % 10], _ANIMALS[(i * 3 + 1) % 10]
        messages = [{"role": "user", "content": f"Tell me about the {a} number {i}."}]
        if i % 3 == 0:  # earlier turns are context
            messages = [{"role": "system", "content": "Be kind."}, *messages,
                        {"role": "assistant", "content": f"The {a} is an animal."},
                        {"role": "user", "content": f"And the {b}?"}]
        records.append({"messages": messages,
                        "chosen": {"role": "assistant", "content": f"Gladly: the {b} is a fine animal."},
                        "rejected": {"role": "assistant", "content": f"No. {a} {a} {a}."}})
    return records


def preference_texts() -> list[str]:
    texts = [m["content"] for r in preference_records() for m in r["messages"]]
    return texts + [r[k]["content"] for r in preference_records() for k in ("chosen", "rejected")] + SERVING_TEXTS


def write_preferences(path, n: int = 40) -> str:
    import json

    with open(path, "w") as f:
        for record in preference_records(n):
            f.write(json.dumps(record) + "\n")
    return str(path)


def tiny_chat_dir(path, block_size: int = 64, seed: int = 0):
    """A tiny random chat model directory whose tokenizer knows the preference fixtures' words: LoadedModel."""
    import keras

    from tfchat.checkpoint.model_dir import load_model, save_model
    from tfchat.model import build_gpt

    tok = _preference_tokenizer()
    keras.utils.set_random_seed(seed)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32)
    save_model(str(path), build_gpt(cfg), tok, cfg, metadata={"job": "finetune"})
    return load_model(str(path))


@functools.lru_cache(maxsize=1)
def _preference_tokenizer():
    return train_tokenizer(preference_texts() * 3, vocab_size=400)


def tiny_reward_export(root, block_size: int = 64, **architecture):
    """A tiny random reward model saved under `root/reward` and exported to `root/reward-export`:
    (LoadedModel, version dir). `architecture`: GPTConfig fields over GPT-2's defaults."""
    import keras

    from serving.exporter import export
    from tfchat.checkpoint.model_dir import load_model, save_model
    from tfchat.model import build_model

    tok = _preference_tokenizer()
    keras.utils.set_random_seed(1)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32, **architecture)
    save_model(str(root / "reward"), build_model(cfg, "reward"), tok, cfg, metadata={"job": "reward"})
    loaded = load_model(str(root / "reward"))
    return loaded, export(loaded, str(root / "reward-export"))


ZH_QUESTION = "你是谁？"
# 小明, 🙂 and 龘 are not in the tokenizer's training text: they are spelt in byte-fallback ids (3 and 4 bytes).
ZH_REPLY = "你好！我是小明🙂，龘龘。"


def chinese_chat_export(root, steps: int = 300):
    """A tiny chat model that answers ZH_QUESTION with ZH_REPLY (trained to memorise it), saved under `root/model`
    and exported to `root/tfchat`: (LoadedModel, version dir)."""
    import keras

    from serving.exporter import export
    from tfchat.checkpoint.model_dir import load_model, save_model
    from tfchat.model import build_gpt
    from tfchat.text import chat_template

    tok = train_tokenizer(SERVING_TEXTS + ["你好，我是谁？"] * 30, vocab_size=400)
    keras.utils.set_random_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=64)
    model = build_gpt(cfg)
    messages = [{"role": "user", "content": ZH_QUESTION}, {"role": "assistant", "content": ZH_REPLY}]
    ids, _ = chat_template.render(messages, tok, max_len=cfg.block_size)
    x, y = tf.constant([ids[:-1]]), tf.constant([ids[1:]])
    optimizer = keras.optimizers.Adam(0.01)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(x, training=True),
                                                                               from_logits=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    for _ in range(steps):
        step()
    save_model(str(root / "model"), model, tok, cfg)
    loaded = load_model(str(root / "model"))
    return loaded, export(loaded, str(root / "tfchat"))


# A tiny moderation task a classifier separates perfectly: insults and threats vs friendly small talk.
_FLAGGED = ["you are a worthless idiot {}", "I will hurt you {}", "shut up you stupid moron {}",
            "{} is a disgusting loser", "go die in a fire {}"]
_BENIGN = ["have a lovely day {}", "how is the weather in {} today", "thanks for the help {}",
           "what time does the {} museum open", "I enjoyed the book about {}"]
_NAMES = ["alex", "paris", "sam", "oslo", "kim", "lima", "max", "rome", "lee", "kyoto", "ana", "cairo"]


def separable_examples() -> list[dict]:
    """Labelled JSONL records: 60 flagged (`harassment`, plus `violence` for threats) and 60 benign; every
    fourth name's examples are held out (`"split": "validation"`)."""
    records = []
    for k, name in enumerate(_NAMES):
        split = "validation" if k % 4 == 3 else "train"
        for t in _FLAGGED:
            labels = ["harassment"] + (["violence"] if "hurt" in t or "die" in t else [])
            records.append({"text": t.format(name), "labels": labels, "split": split, "source": "insults"})
        for t in _BENIGN:
            records.append({"text": t.format(name), "labels": [], "split": split, "source": "small-talk"})
    return records


def tiny_moderation(root) -> str:
    """Trains a moderation classifier on `separable_examples` under `root`; returns the run directory."""
    import json

    from training import classify

    data = root / "separable.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in separable_examples()))
    out = str(root / "moderation")
    code = classify.main(["--data", str(data), "--out", out, "--steps", "150", "--batch-size", "16", "--lr", "0.05",
                          "--warmup-steps", "10", "--buckets", "4096", "--dim", "8", "--eval-every", "75",
                          "--save-every", "75", "--no-progress", "--precision", "fp32"])
    assert code == 0
    return out


def free_ports(n: int) -> list[int]:
    """`n` loopback ports free right now (for TF_CONFIG clusters and servers in tests)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def before_each_decode(backend, before, monkeypatch) -> int:
    """Runs `before()` ahead of every decode call of `backend` (a fast-path chunk or a plain `decode`
    signature call); returns how many tokens one call decodes."""
    if backend.decoder is not None:
        decode = backend.decoder.decode

        def fast(*args, **kwargs):
            before()
            return decode(*args, **kwargs)

        monkeypatch.setattr(backend.decoder, "decode", fast)
        return backend.decoder.chunk
    signature = backend.signatures["decode"]

    def plain(**inputs):
        before()
        return signature(**inputs)

    monkeypatch.setitem(backend.signatures, "decode", plain)
    return 1


TAG_VOCABULARY = {"style": ["happy", "sad"], "topic": ["music", "sports"]}


def tiny_tagged_export(root):
    """(LoadedModel, version dir) of a tiny random chat model like `tiny_export`'s, with TAG_VOCABULARY as its
    tags (the `tagged_export` fixture makes it once per test session)."""
    import keras

    from serving.exporter import export
    from tfchat.checkpoint.model_dir import load_model, save_model
    from tfchat.config import GPTConfig
    from tfchat.model import build_gpt
    from tfchat.text.tokenizer import train_tokenizer

    tok = train_tokenizer(SERVING_TEXTS, vocab_size=400)
    assert len(tok.special.controls) >= 4  # the reserved <|control_i|> ids the tags map to
    keras.utils.set_random_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32)
    save_model(str(root / "model"), build_gpt(cfg), tok, cfg, metadata={"tags": TAG_VOCABULARY})
    loaded = load_model(str(root / "model"))
    assert loaded.tags is not None and loaded.tags.to_dict() == TAG_VOCABULARY
    return loaded, export(loaded, str(root / "tfchat"))


def tag_items(tags: dict) -> list[str]:
    """{name: value} as a `chat_tagged` row of "name=value" items."""
    return [f"{name}={value}" for name, value in tags.items()]
