"""The exported SavedModel runs in C++ the way tensorflow_model_server runs it.

Compiles serving/cpp/run_saved_model.cc against the tensorflow wheel's
libtensorflow_cc + headers, then loads the export with `LoadSavedModel`
(tag "serve", XLA disabled, TF Text ops from their op libraries) and checks
`serving_default` and `chat` against the Keras model (and a tagged model's
`chat_tagged` against the Keras model given the same control tags), and a
reward model export's `reward` signature against the reward model. About 30 s.
"""

import glob
import os
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text

from tfchat.text import chat_template
from tfchat.inference.generation import generate, generate_text
from tests.fixtures import MODERN, tag_items, tiny_export, tiny_reward_export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(REPO, "serving", "cpp", "run_saved_model.cc")
CXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
PROMPTS = ["Hello world", "The quick brown fox", "你好"]
USER = "How are you?"
MAX_NEW = 10

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++/c++) on PATH; install g++ to run")


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cpp") / "run_saved_model")
    tf_dir = os.path.dirname(tf.__file__)
    cmd = [
        CXX, "-O1", "-w", SOURCE, *tf.sysconfig.get_compile_flags(),
        f"-L{tf_dir}", "-l:libtensorflow_cc.so.2", "-l:libtensorflow_framework.so.2", f"-Wl,-rpath,{tf_dir}",
        "-o", out,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"compile failed:\n{r.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module", params=["gpt2", "modern"])
def exported(tmp_path_factory, request):
    """GPT-2's architecture, and every option of GPTConfig at once (RoPE, RMSNorm, QK-norm, ReLU², untied, softcap)."""
    root = tmp_path_factory.mktemp("cpp_export")
    texts = ["Hello world. How are you today? I am fine.", "The quick brown fox jumps.", "你好，世界。"] * 30
    return tiny_export(root, texts, vocab_size=430, **(MODERN if request.param == "modern" else {}))


def parse(stdout):
    rows = {}
    for line in stdout.splitlines():
        parts = line.split(" ")
        if len(parts) == 5 and parts[0] in ("generate", "chat", "chat_tagged"):
            tag, b, n, ids, text = parts
            ids = [] if ids == "-" else [int(i) for i in ids.split(",")]
            rows[(tag, int(b))] = (int(n), ids, bytes.fromhex("" if text == "-" else text).decode("utf-8"))
    return rows


def _op_libs():
    ops_dir = os.path.join(os.path.dirname(tensorflow_text.__file__), "python", "ops")
    libs = sorted(glob.glob(os.path.join(ops_dir, "*.so")))
    assert any("sentencepiece" in lib for lib in libs)
    return [arg for lib in libs for arg in ("--ops", lib)]


def test_cpp_load_saved_model_runs_generate_and_chat(binary, exported):
    loaded, path = exported
    cmd = [binary, path, "--max-new", str(MAX_NEW), "--user", USER, *_op_libs()]
    for p in PROMPTS:
        cmd += ["--prompt", p]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "loaded" in r.stdout
    rows = parse(r.stdout)

    tok = loaded.tokenizer
    stops = [tok.end_id, tok.eot_id]
    expected_text = generate_text(loaded, prompts=PROMPTS, max_new_tokens=MAX_NEW)
    for b, p in enumerate(PROMPTS):
        tokens, lengths = generate(
            loaded.model, tf.ragged.constant([[tok.eot_id] + tok.encode(p)], dtype=tf.int32), MAX_NEW, stop_ids=stops
        )
        n = int(lengths[0])
        assert rows[("generate", b)] == (n, tokens.numpy()[0, :n].tolist(), expected_text[b])

    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": USER}]
    ids = chat_template.prompt(messages, tok, max_len=loaded.config.block_size - MAX_NEW)
    tokens, lengths = generate(loaded.model, tf.ragged.constant([ids], dtype=tf.int32), MAX_NEW, stop_ids=stops)
    n = int(lengths[0])
    reply = tok.decode(tokens.numpy()[0, :n].tolist())
    assert rows[("chat", 0)] == (n, tokens.numpy()[0, :n].tolist(), reply)


def test_cpp_runs_chat_tagged_like_keras_with_the_same_tags(binary, tagged_export):
    """A model trained with control tags: `chat_tagged` in C++ gives the Keras model's greedy tokens for the chat
    template's prompt with those tags; an unknown tag fails the request with the known ones."""

    loaded, path = tagged_export
    tags = {"topic": "sports", "style": "happy"}
    cmd = [binary, path, "--max-new", str(MAX_NEW), "--user", USER, "--prompt", "Hi", *_op_libs()]
    r = subprocess.run(cmd + [arg for item in tag_items(tags) for arg in ("--tag", item)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = parse(r.stdout)

    tok = loaded.tokenizer
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": USER}]
    expected = {}
    for kind, reply_tags in (("chat_tagged", tags), ("chat", None)):
        ids = chat_template.prompt(messages, tok, max_len=loaded.config.block_size - MAX_NEW, tags=loaded.tags,
                                   reply_tags=reply_tags)
        tokens, lengths = generate(loaded.model, tf.ragged.constant([ids], dtype=tf.int32), MAX_NEW,
                                   stop_ids=[tok.end_id, tok.eot_id])
        n = int(lengths[0])
        expected[kind] = (n, tokens.numpy()[0, :n].tolist(), tok.decode(tokens.numpy()[0, :n].tolist()))
        assert rows[(kind, 0)] == expected[kind]
    assert expected["chat_tagged"][1] != expected["chat"][1]  # the tags reached the model: another reply

    # Guided (classifier-free guidance against the untagged prompt), as the Keras loop gives it.
    r = subprocess.run(cmd + [arg for item in tag_items(tags) for arg in ("--tag", item)] + ["--guidance", "20"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-4000:]
    ids = chat_template.prompt(messages, tok, max_len=loaded.config.block_size - MAX_NEW, tags=loaded.tags,
                               reply_tags=tags)
    plain = chat_template.prompt(messages, tok, max_len=loaded.config.block_size - MAX_NEW)
    tokens, lengths = generate(loaded.model, tf.ragged.constant([ids], dtype=tf.int32), MAX_NEW,
                               stop_ids=[tok.end_id, tok.eot_id], guidance=20.0,
                               unguided_ids=tf.ragged.constant([plain], dtype=tf.int32))
    n = int(lengths[0])
    assert parse(r.stdout)[("chat_tagged", 0)] == (n, tokens.numpy()[0, :n].tolist(),
                                                   tok.decode(tokens.numpy()[0, :n].tolist()))
    assert tokens.numpy()[0, :n].tolist() != expected["chat_tagged"][1]

    r = subprocess.run(cmd + ["--tag", "topic=cooking"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "unknown tag topic=cooking; known tags: style=happy" in r.stderr


def test_cpp_without_text_ops_fails_clearly(binary, exported):
    """Without TF Text's op library the graph cannot load: proves the program really loads the .so files."""
    _, path = exported
    r = subprocess.run([binary, path, "--prompt", "hi"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "Sentencepiece" in r.stderr or "not registered" in r.stderr.lower() or "Op type" in r.stderr


@pytest.mark.parametrize("architecture", ["gpt2", "modern"])
def test_cpp_load_saved_model_runs_reward(binary, tmp_path_factory, architecture):
    loaded, path = tiny_reward_export(tmp_path_factory.mktemp("cpp_reward"),
                                      **(MODERN if architecture == "modern" else {}))
    replies = ["Gladly: the fox is a fine animal.", "No. fox fox fox.", "你好"]
    cmd = [binary, path, "--user", USER, *_op_libs()]
    for reply in replies:
        cmd += ["--reply", reply]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = [line.split(" ") for line in r.stdout.splitlines() if line.startswith("reward ")]
    assert len(rows) == len(replies)
    tok = loaded.tokenizer
    for (_, b, n, score), reply in zip(rows, replies):
        ids, _ = chat_template.render_reply(["user"], [tok.encode(USER)], tok.encode(reply), tok, 64)
        expected = loaded.model({"token_ids": np.array([ids], "int32"), "lengths": np.array([len(ids)], "int32")})
        assert int(n) == len(ids)
        assert float(score) == pytest.approx(float(expected[0]), abs=1e-5)


def test_cpp_runs_a_classifier_export(binary, tmp_path):
    """A classifier export's `classify` signature runs in C++ and matches Keras: an ensemble of a hashed n-gram
    member and a GPT member (SentencePiece in the graph)."""
    from serving.classifier_export import export_classifier
    from tests.fixtures import tiny_chat_dir
    from tfchat.checkpoint.classifier_dir import load_classifier, save_classifier
    from tfchat.inference.classifier import TextClassifier
    from tfchat.model.classifier import ClassifierConfig, build_classifier

    import keras

    keras.utils.set_random_seed(1)
    config = ClassifierConfig(labels=("flagged", "hate"), buckets=512, dim=8)
    save_classifier(str(tmp_path / "ngrams"), build_classifier(config), config)
    chat = tiny_chat_dir(tmp_path / "chat")
    gpt = config.replace(kind="gpt", backbone=chat.config.to_dict(), max_tokens=16)
    save_classifier(str(tmp_path / "gpt"), build_classifier(gpt, tokenizer=chat.tokenizer), gpt)
    ensemble = config.replace(kind="ensemble", members=2)
    save_classifier(str(tmp_path / "clf"), None, ensemble, {"thresholds": {"flagged": 0.5, "hate": 0.4}},
                    members=[str(tmp_path / "ngrams"), str(tmp_path / "gpt")])
    loaded = load_classifier(str(tmp_path / "clf"))
    path = export_classifier(loaded, str(tmp_path / "export"))
    texts = ["You are an idiot!", "have a nice day", "你好，世界", ""]
    cmd = [binary, path, *_op_libs()]
    for t in texts:
        cmd += ["--classify", t]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = [line.split(" ") for line in r.stdout.splitlines() if line.startswith("classify ")]
    assert len(rows) == len(texts)
    expected = TextClassifier.load(str(tmp_path / "clf")).scores(texts)
    for b, (_, row, scores, labels, predicted) in enumerate(rows):
        assert int(row) == b
        got = np.array([float(x) for x in scores.split(",")])
        np.testing.assert_allclose(got, expected[b], atol=1e-5)
        assert [bytes.fromhex(x).decode() for x in labels.split(",")] == ["flagged", "hate"]
        assert [int(x) for x in predicted.split(",")] == [int(expected[b, 0] >= 0.5), int(expected[b, 1] >= 0.4)]
