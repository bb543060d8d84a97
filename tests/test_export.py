import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the SentencePiece ops the SavedModel uses)

from serving.exporter import SIGNATURES, export, next_version, op_types, read_metadata
from tfchat.text import chat_template
from tfchat.config import GPTConfig
from tfchat.inference.generation import generate, generate_text
from tfchat.model import build_gpt
from tfchat.checkpoint.model_dir import load_model, save_model
from tests.fixtures import TAG_VOCABULARY, tiny_export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["Hello world", "The quick brown fox jumps over", "x"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    loaded, path = tiny_export(root)
    return loaded, path, tf.saved_model.load(path)


def sampling(n, max_new=10, temperature=0.0, top_k=0, top_p=1.0, seed=0):
    return dict(
        max_new_tokens=tf.fill([n], max_new), temperature=tf.fill([n], float(temperature)),
        top_k=tf.fill([n], top_k), top_p=tf.fill([n], float(top_p)), seed=tf.fill([n], seed),
    )


def test_layout_and_models_config(exported):
    loaded, path, _ = exported
    base = os.path.dirname(path)
    assert os.path.basename(path) == "1"
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert os.path.isdir(os.path.join(path, "variables"))
    config = open(os.path.join(base, "models.config")).read()
    assert f'base_path: "{base}"' in config and 'model_platform: "tensorflow"' in config
    assert [d for d in os.listdir(base) if d.startswith(".")] == []  # no temp dir left behind
    meta = read_metadata(path)
    assert meta["config"] == loaded.config.to_dict() and meta["version"] == 1
    # Each weight is saved once (a tracked Keras model would save a second copy of every one).
    saved = [n for n, _ in tf.train.list_variables(os.path.join(path, "variables", "variables"))
             if n != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert len(saved) == len(loaded.model.weights)


def test_generate_equals_keras_greedy(exported):
    loaded, _, sm = exported
    out = sm.signatures["serving_default"](prompt=tf.constant(PROMPTS), **sampling(3))
    expected = generate_text(loaded, prompts=PROMPTS, max_new_tokens=10)
    assert [t.decode() for t in out["text"].numpy()] == expected
    tok = loaded.tokenizer
    ids = tf.ragged.constant([[tok.eot_id] + tok.encode(p) for p in PROMPTS], dtype=tf.int32)
    tokens, lengths = generate(loaded.model, ids, 10, stop_ids=[tok.end_id, tok.eot_id], pad_id=tok.pad_id)
    np.testing.assert_array_equal(out["token_ids"], tokens)
    np.testing.assert_array_equal(out["num_tokens"], lengths)
    same = sm.signatures["generate"](prompt=tf.constant(PROMPTS), **sampling(3))
    np.testing.assert_array_equal(same["token_ids"], out["token_ids"])


def test_chat_uses_the_chat_template(exported):
    loaded, _, sm = exported
    tok = loaded.tokenizer
    conversations = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        [{"role": "user", "content": "How are you?"}],
    ]
    roles = tf.constant([["system", "user"], ["user", ""]])
    contents = tf.constant([["Be brief.", "Hello"], ["How are you?", ""]])
    out = sm.signatures["chat"](roles=roles, contents=contents, **sampling(2, max_new=8))
    prompts = sm.signatures["chat_prompt"](roles=roles, contents=contents, max_new_tokens=tf.fill([2], 8))
    for b, messages in enumerate(conversations):
        ids = chat_template.prompt(messages, tok, max_len=64 - 8)
        n = int(prompts["num_tokens"][b])
        assert prompts["token_ids"].numpy()[b, :n].tolist() == ids
        tokens, lengths = generate(loaded.model, tf.ragged.constant([ids], dtype=tf.int32), 8, stop_ids=[tok.end_id, tok.eot_id])
        assert out["token_ids"].numpy()[b].tolist() == tokens.numpy()[0].tolist()
        text = tok.decode(tokens.numpy()[0, : lengths.numpy()[0]].tolist())
        assert out["reply"].numpy()[b].decode() == text


def test_score_matches_keras_log_probs(exported):
    loaded, _, sm = exported
    tok = loaded.tokenizer
    texts = ["Hello world. How are you?", "fox", ""]
    out = sm.signatures["score"](text=tf.constant(texts))
    for b, text in enumerate(texts):
        ids = [tok.eot_id] + tok.encode(text)
        n = len(ids) - 1
        assert int(out["num_tokens"][b]) == n
        if n == 0:
            assert float(out["loss"][b]) == 0.0
            continue
        logits = loaded.model(np.array([ids[:-1]], "int32"))[0]
        want = tf.nn.log_softmax(logits).numpy()[np.arange(n), ids[1:]]
        np.testing.assert_allclose(out["log_probs"].numpy()[b, :n], want, atol=1e-4)
        np.testing.assert_allclose(float(out["total_log_prob"][b]), want.sum(), atol=1e-3)
        np.testing.assert_allclose(float(out["loss"][b]), -want.mean(), atol=1e-4)


def test_score_truncates_long_texts_to_the_context(exported):
    loaded, _, sm = exported
    out = sm.signatures["score"](text=tf.constant(["Hello world. " * 40, "fox"]))
    assert out["num_tokens"].numpy().tolist()[0] == loaded.config.block_size
    assert out["log_probs"].shape[1] == loaded.config.block_size
    assert np.isfinite(out["loss"].numpy()).all()


def test_tokenize_detokenize_round_trip(exported):
    loaded, _, sm = exported
    tok = sm.signatures["tokenize"](text=tf.constant(PROMPTS))
    for b, p in enumerate(PROMPTS):
        assert tok["token_ids"].numpy()[b, : tok["num_tokens"][b]].tolist() == loaded.tokenizer.encode(p)
    back = sm.signatures["detokenize"](token_ids=tok["token_ids"], num_tokens=tok["num_tokens"])
    assert [t.decode() for t in back["text"].numpy()] == PROMPTS


@pytest.mark.parametrize("kw", [dict(), dict(temperature=1.2, top_k=20, top_p=0.9, seed=5)])
def test_prefill_decode_stream_equals_generate(exported, kw):
    loaded, _, sm = exported
    eot = loaded.tokenizer.eot_id
    enc = sm.signatures["tokenize"](text=tf.constant(PROMPTS))
    ids = tf.concat([tf.fill([3, 1], eot), enc["token_ids"]], axis=1)
    s = sampling(3, max_new=10, **kw)
    want = sm.signatures["generate"](prompt=tf.constant(PROMPTS), **s)
    state = sm.signatures["prefill"](token_ids=ids, num_tokens=enc["num_tokens"] + 1, **s)
    del s["max_new_tokens"]
    tokens, cache, position, index = [state["next_token"]], state["cache"], state["position"], state["cache_index"]
    assert cache.shape[0] == loaded.config.n_layer
    for _ in range(9):
        step = sm.signatures["decode"](
            token=tokens[-1], position=position, cache=cache, cache_index=index, key_mask=state["key_mask"], **s
        )
        tokens.append(step["next_token"])
        cache, position, index = step["cache"], position + 1, index + 1
    stream = np.stack([t.numpy() for t in tokens], axis=1)
    for b in range(3):
        n = int(want["num_tokens"][b])
        np.testing.assert_array_equal(stream[b, :n], want["token_ids"].numpy()[b, :n])


def test_invalid_sampling_inputs_are_rejected(exported):
    _, _, sm = exported
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_new_tokens"):
        sm.signatures["generate"](prompt=tf.constant(["hi"]), **sampling(1, max_new=64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="temperature"):
        sm.signatures["generate"](prompt=tf.constant(["hi"]), **sampling(1, temperature=-1.0))
    with pytest.raises(tf.errors.InvalidArgumentError, match="roles"):
        sm.signatures["chat"](roles=tf.constant([["bot"]]), contents=tf.constant([["hi"]]), **sampling(1))


def test_long_prompt_is_truncated_not_rejected(exported):
    _, _, sm = exported
    out = sm.signatures["generate"](prompt=tf.constant(["Hello world. " * 40]), **sampling(1, max_new=5))
    assert int(out["num_tokens"][0]) >= 1


def test_no_xla_ops_in_any_signature(exported):
    _, path, _ = exported
    types = op_types(path)
    assert {"SentencepieceOp", "TensorScatterUpdate"} <= types
    assert not sorted(t for t in types if t.startswith("Xla")), "XLA ops would not run in stock TF Serving"


def test_saved_model_cli_lists_signatures(exported):
    _, path, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    out = subprocess.run([cli, "show", "--dir", path, "--tag_set", "serve"], capture_output=True, text=True, check=True)
    for name in SIGNATURES:
        assert f'SignatureDef key: "{name}"' in out.stdout
    out = subprocess.run(
        [cli, "show", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default"],
        capture_output=True, text=True, check=True,
    )
    for name in ("prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "text", "token_ids", "num_tokens"):
        assert f"['{name}']" in out.stdout


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "serving.export", *args], capture_output=True, text=True, cwd=REPO)


def test_cli_versions_increment_and_refuse_overwrite(exported, tmp_path):
    loaded, path, _ = exported
    base = os.path.dirname(path)
    model_dir = os.path.join(os.path.dirname(base), "model")
    r = _cli("--model", model_dir, "--out", base, "--max-len", "48")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == os.path.join(base, "2")
    assert read_metadata(os.path.join(base, "2"))["max_len"] == 48
    assert next_version(base) == 3
    r = _cli("--model", model_dir, "--out", base, "--version", "2")
    assert r.returncode == 2 and "already exists" in r.stderr
    # A training run directory (model in model/) is accepted too; the check fails only on the version.
    r = _cli("--model", os.path.dirname(base), "--out", base, "--version", "2")
    assert r.returncode == 2 and "already exists" in r.stderr
    assert sorted(os.listdir(base)) == ["1", "2", "models.config"]


def test_cli_rejects_a_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hi")
    out = tmp_path / "exports"
    r = _cli("--model", str(tmp_path / "junk"), "--out", str(out))
    assert r.returncode == 2 and "not a tfchat model directory" in r.stderr
    r = _cli("--model", str(tmp_path / "missing"), "--out", str(out))
    assert r.returncode == 2 and "not found" in r.stderr
    assert not out.exists() or os.listdir(out) == []


def test_failed_export_leaves_no_version(exported, tmp_path, monkeypatch):
    loaded, _, _ = exported

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export(loaded, str(tmp_path / "x"))
    assert os.listdir(tmp_path / "x") == []
    with pytest.raises(ValueError, match="max_len"):
        export(loaded, str(tmp_path / "x"), max_len=1000)


def test_export_with_gpt2_byte_level_tokenizer(tmp_path):
    """keras-hub's BytePairTokenizer (lookup tables, regex split) also exports and runs in the graph."""
    from tfchat.text.tokenizer import GPT2Tokenizer

    vocab = {"<|endoftext|>": 0}
    for c in "Helowrd.Ġ":
        vocab[c] = len(vocab)
    vocab.update({"He": len(vocab), "ll": len(vocab) + 1})
    tok = GPT2Tokenizer(vocab, ["H e", "l l"])
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    keras.utils.set_random_seed(0)
    save_model(str(tmp_path / "m"), build_gpt(cfg), tok, cfg)
    loaded = load_model(str(tmp_path / "m"))
    sm = tf.saved_model.load(export(loaded, str(tmp_path / "e")))
    out = sm.signatures["generate"](prompt=tf.constant(["Hello", "world."]), **sampling(2, max_new=5))
    assert [t.decode() for t in out["text"].numpy()] == generate_text(loaded, prompts=["Hello", "world."], max_new_tokens=5)
    chat = sm.signatures["chat"](roles=tf.constant([["user"]]), contents=tf.constant([["Hello"]]), **sampling(1, max_new=5))
    ids = chat_template.prompt([{"role": "user", "content": "Hello"}], tok, max_len=32 - 5)
    tokens, _ = generate(loaded.model, tf.ragged.constant([ids], dtype=tf.int32), 5, stop_ids=[tok.end_id, tok.eot_id])
    np.testing.assert_array_equal(chat["token_ids"], tokens)


# ---------------------------------------------------------------------------------- control tags


@pytest.fixture(scope="module")
def tagged(tagged_export):

    loaded, path = tagged_export
    return loaded, path, tf.saved_model.load(path)


def test_an_untagged_model_exports_no_tag_signatures(exported):
    from serving.exporter import TAG_SIGNATURES

    _, path, sm = exported
    meta = read_metadata(path)
    assert "tags" not in meta and not set(TAG_SIGNATURES) & (set(meta["signatures"]) | set(sm.signatures))
    assert set(meta["signatures"]) == set(SIGNATURES)


def test_tagged_export_has_tag_signatures_and_metadata_and_chat_unchanged(exported, tagged):
    from serving.exporter import TAG_SIGNATURES

    loaded, path, sm = tagged
    meta = read_metadata(path)
    assert meta["tags"] == TAG_VOCABULARY
    assert set(meta["signatures"]) == set(SIGNATURES) | set(TAG_SIGNATURES) == set(sm.signatures)
    def inputs(saved, name):
        return {k: (v.dtype, v.shape.as_list()) for k, v in saved.signatures[name].structured_input_signature[1].items()}

    assert inputs(sm, "chat") == inputs(exported[2], "chat")  # TF Serving clients of `chat` see no change
    assert inputs(sm, "chat_tagged") == {**inputs(sm, "chat"), "tags": (tf.string, [None, None]),
                                         "guidance": (tf.float32, [None])}
    assert set(inputs(sm, "tagged_prompt")) == {"roles", "contents", "knowledge", "tags", "max_new_tokens"}
    assert not sorted(t for t in op_types(path) if t.startswith("Xla"))


def test_chat_tagged_and_tagged_prompt_equal_the_chat_template_and_keras(tagged):
    loaded, _, sm = tagged
    tok = loaded.tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    rows = [{"topic": "sports", "style": "happy"}, {}, {"style": "sad"}, {"topic": "music"}]
    # Items in any order, blanks and spaces around them: ids come in vocabulary order all the same.
    items = [["style=happy", " topic=sports"], ["", ""], ["", "style=sad"], ["topic=music", ""]]
    roles, contents = tf.constant([["system", "user"]] * 4), tf.constant([[m["content"] for m in messages]] * 4)
    knowledge = ["", "", "The fox is quick.", ""]
    prompts = sm.signatures["tagged_prompt"](roles=roles, contents=contents, knowledge=tf.constant(knowledge),
                                             tags=tf.constant(items), max_new_tokens=tf.fill([4], 8))
    out = sm.signatures["chat_tagged"](roles=roles, contents=contents, tags=tf.constant(items),
                                       guidance=tf.ones([4]), **sampling(4, max_new=8))
    # Guided rows 0 and 3 (row 1 is untagged: its guidance is ignored; row 2 has scale 1).
    guidance = [20.0, 20.0, 1.0, 3.0]
    guided = sm.signatures["chat_tagged"](roles=roles, contents=contents, tags=tf.constant(items),
                                          guidance=tf.constant(guidance), **sampling(4, max_new=8))
    plain = sm.signatures["chat"](roles=roles, contents=contents, **sampling(4, max_new=8))
    stops = [tok.end_id, tok.eot_id]
    for b, reply_tags in enumerate(rows):
        ids = chat_template.prompt(messages, tok, max_len=64 - 8, tags=loaded.tags, reply_tags=reply_tags,
                                   knowledge=knowledge[b] or None)
        n = int(prompts["num_tokens"][b])
        assert prompts["token_ids"].numpy()[b, :n].tolist() == ids
        assert ids[-1 - len(reply_tags):] == [tok.assistant_id, *loaded.tags.ids(reply_tags)]
        tagged_ids = chat_template.prompt(messages, tok, max_len=64 - 8, tags=loaded.tags, reply_tags=reply_tags)
        tokens, _ = generate(loaded.model, tf.ragged.constant([tagged_ids], dtype=tf.int32), 8, stop_ids=stops)
        assert out["token_ids"].numpy()[b].tolist() == tokens.numpy()[0].tolist()
        untagged_ids = chat_template.prompt(messages, tok, max_len=64 - 8)
        scale = guidance[b] if reply_tags else 1.0
        tokens, _ = generate(loaded.model, tf.ragged.constant([tagged_ids], dtype=tf.int32), 8, stop_ids=stops,
                             guidance=scale, unguided_ids=tf.ragged.constant([untagged_ids], dtype=tf.int32))
        assert guided["token_ids"].numpy()[b].tolist() == tokens.numpy()[0].tolist()
    assert guided["token_ids"].numpy()[0].tolist() != out["token_ids"].numpy()[0].tolist()  # guidance steered
    # An untagged row of chat_tagged is exactly `chat`.
    np.testing.assert_array_equal(out["token_ids"].numpy()[1], plain["token_ids"].numpy()[1])
    np.testing.assert_array_equal(guided["token_ids"].numpy()[1], plain["token_ids"].numpy()[1])
    empty = sm.signatures["chat_tagged"](roles=roles[:1], contents=contents[:1], tags=tf.zeros([1, 0], tf.string),
                                         guidance=tf.ones([1]), **sampling(1, max_new=8))
    np.testing.assert_array_equal(empty["token_ids"].numpy()[0], plain["token_ids"].numpy()[0])


@pytest.mark.parametrize("items, message", [
    (["topic=cooking"], "unknown tag topic=cooking; known tags: style=happy, style=sad, topic=music, topic=sports"),
    (["mood=happy"], "unknown tag mood=happy"),
    (["topic=music", "topic=sports"],
     "two values of one tag name in topic=music, topic=sports; give each of style, topic once"),
], ids=["unknown-value", "unknown-name", "two-values"])
def test_chat_tagged_refuses_unknown_tags_and_two_values_of_one_name(tagged, items, message):
    from tfchat.cli import tf_error_message

    _, _, sm = tagged
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        sm.signatures["chat_tagged"](roles=tf.constant([["user"]]), contents=tf.constant([["Hi"]]),
                                     tags=tf.constant([items]), guidance=tf.ones([1]), **sampling(1, max_new=4))
    assert tf_error_message(info.value).startswith(message)


def test_chat_tagged_refuses_bad_guidance(tagged):
    from tfchat.cli import tf_error_message

    _, _, sm = tagged
    for bad in (-1.0, 31.0, float("nan")):
        with pytest.raises(tf.errors.InvalidArgumentError) as info:
            sm.signatures["chat_tagged"](roles=tf.constant([["user"]]), contents=tf.constant([["Hi"]]),
                                         tags=tf.constant([["topic=music"]]), guidance=tf.constant([bad]),
                                         **sampling(1, max_new=4))
        assert tf_error_message(info.value).startswith("guidance must be in 0 .. 30 (1 = off)")
