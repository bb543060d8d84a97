"""tfchat.eval.evaluate and `training.evaluate`: metrics of stub models by hand, the CLI's JSON on a tiny saved
model, bad inputs."""

import json
import math

import pytest
import tensorflow as tf

from tfchat import GPTConfig, LoadedModel, build_gpt, save_model, train_tokenizer
from tfchat.eval import evaluate
from training import evaluate as evaluate_cli

TEXTS = ["The quick brown fox jumps over the lazy dog. Hello there, how are you?",
         "Café au lait, 你好，世界。 I am fine, thank you!"] * 20
DOC = "Hello there! The lazy dog sleeps. Café 你好 🙂"


class FixedLogits:
    """A 'model' giving the same logits at every position: the probabilities are ours to set."""

    def __init__(self, logits):
        self.logits = tf.constant(logits, tf.float32)

    def __call__(self, token_ids, training=False):
        shape = tf.shape(token_ids)
        return tf.broadcast_to(self.logits, [shape[0], shape[1], self.logits.shape[0]])


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=400)


def _stub(tok, logits=None, block_size=256):
    logits = [0.0] * tok.vocab_size if logits is None else logits
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1, n_head=1, n_embd=8)
    return LoadedModel(model=FixedLogits(logits), tokenizer=tok, config=config, metadata={})


def _write_chats(path, conversations):
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    return str(path)


CHATS = [[{"role": "user", "content": f"Hello {i}, how are you?"},
          {"role": "assistant", "content": "I am fine, thank you!"}] for i in range(4)]


# ------------------------------------------------------------- kind of source


def test_source_kind(tmp_path):
    chats = _write_chats(tmp_path / "chats.jsonl", CHATS)
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": "a document"}) + "\n")
    (tmp_path / "a.txt").write_text("plain text")
    assert evaluate.source_kind(chats) == "dialogue"
    assert evaluate.source_kind("dialogues-sample") == "dialogue"
    assert evaluate.source_kind("oasst:trees.jsonl.gz") == "dialogue"
    assert evaluate.source_kind("tfds:databricks_dolly") == "dialogue"
    assert evaluate.source_kind(str(docs)) == "text"
    assert evaluate.source_kind(str(tmp_path / "a.txt")) == "text"
    assert evaluate.source_kind("wikipedia-sample") == "text"
    assert evaluate.source_kind("tfds:wiki40b/en") == "text"


# ------------------------------------------------- hand-checked stub metrics


def test_text_metrics_uniform_model(tok, tmp_path):
    (tmp_path / "doc.txt").write_text(DOC)
    ids = tok.encode(DOC)
    v = tok.vocab_size
    # seq_len = len(ids): the stream [eot] + ids is exactly one window, whose targets are `ids`.
    out = evaluate.text_metrics(_stub(tok), str(tmp_path / "doc.txt"), split="all", seq_len=len(ids))
    assert out["tokens"] == len(ids) and out["batches"] == 1
    assert out["bytes"] == len(DOC.encode("utf-8")) == 51
    assert out["loss"] == pytest.approx(math.log(v), rel=1e-6)
    assert out["perplexity"] == pytest.approx(v, rel=1e-5)
    assert out["bits_per_byte"] == pytest.approx(len(ids) * math.log2(v) / 51, rel=1e-6)


def test_text_metrics_model_with_a_favourite_token(tok, tmp_path):
    (tmp_path / "doc.txt").write_text(DOC)
    ids = tok.encode(DOC)
    v, fav = tok.vocab_size, max(set(ids), key=ids.count)
    logits = [0.0] * v
    logits[fav] = math.log(v - 1)  # p(fav) = 1/2, every other id 1 / (2 (v - 1))
    out = evaluate.text_metrics(_stub(tok, logits), str(tmp_path / "doc.txt"), split="all", seq_len=len(ids))
    k, n = ids.count(fav), len(ids)
    nats = k * math.log(2) + (n - k) * math.log(2 * (v - 1))
    assert out["loss"] == pytest.approx(nats / n, rel=1e-5)
    assert out["bits_per_byte"] == pytest.approx(nats / math.log(2) / 51, rel=1e-5)


def test_dialogue_losses_uniform_model(tok, tmp_path):
    chats = _write_chats(tmp_path / "one.jsonl", [[{"role": "user", "content": "Hi"},
                                                  {"role": "assistant", "content": "Hello there"}]])
    out = evaluate.dialogue_metrics(_stub(tok), chats, split="all", seq_len=64, max_dialogues=0)
    h, a = len(tok.encode("Hi")), len(tok.encode("Hello there"))
    # [eot, <|user|>, Hi.., <|end|>, <|assistant|>, Hello there.., <|end|>]: all but eot are targets;
    # the assistant's are its content and its <|end|>. Markers have 0 bytes.
    assert out["tokens"] == 4 + h + a and out["assistant_tokens"] == a + 1
    assert out["bytes"] == 13 and out["assistant_bytes"] == 11
    ln_v = math.log(tok.vocab_size)
    assert out["loss"] == pytest.approx(ln_v, rel=1e-6) and out["assistant_loss"] == pytest.approx(ln_v, rel=1e-6)
    assert out["assistant_bits_per_byte"] == pytest.approx((a + 1) * ln_v / math.log(2) / 11, rel=1e-6)
    assert "bleu" not in out  # --max-dialogues 0: no generation


def test_minimal_pairs_uniform_model(tok, tmp_path):
    # Every token costs ln V, so the sentence with fewer tokens wins; a tie counts as wrong.
    pairs = [("The dog sleeps.", "The dog sleeps sleeps sleeps."),  # right
             ("The dog sleeps sleeps sleeps.", "The dog sleeps."),  # wrong
             ("The dog sleeps.", "The dog sleeps.")]  # tie: wrong
    (tmp_path / "agreement.jsonl").write_text(
        "".join(json.dumps({"sentence_good": g, "sentence_bad": b}) + "\n" for g, b in pairs))
    out = evaluate.minimal_pair_metrics(_stub(tok), [str(tmp_path / "*.jsonl")])
    assert out["blimp_pairs"] == 3 and out["blimp_correct"] == 1
    assert out["blimp_accuracy"] == pytest.approx(1 / 3)
    assert out["blimp_by_file"] == {"agreement": pytest.approx(1 / 3)}


# ------------------------------------------------- the CLI on a saved model


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32)
    save_model(str(root / "run" / "model"), build_gpt(cfg), tok, cfg, {"step": 12})
    (root / "doc.txt").write_text(" ".join(TEXTS[:8]))
    _write_chats(root / "chats.jsonl", CHATS)
    (root / "blimp.jsonl").write_text(json.dumps({"sentence_good": "The dog sleeps.", "sentence_bad": "Dog the sleeps."}))
    return root


def _run_json(capsys, argv):
    assert evaluate_cli.main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and len(out) < 4000, out  # one compact line: texts go to --samples-out
    return json.loads(out)  # exactly one JSON object on stdout


def test_cli_text_json_and_tensorboard(saved, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = str(saved / "logs")
    result = _run_json(capsys, ["--model", str(saved / "run"), "--data", str(saved / "doc.txt"), "--split", "all",
                                "--seq-len", "32", "--blimp", str(saved / "blimp.jsonl"), "--logdir", logdir])
    assert result["kind"] == "text" and result["step"] == 12 and result["seq_len"] == 32
    assert {"loss", "perplexity", "bits_per_byte", "tokens", "bytes", "blimp_accuracy", "blimp_pairs"} <= set(result)
    assert abs(result["loss"] - math.log(400)) < 1.0  # an untrained model is near uniform
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-6)
    assert result["bits_per_byte"] == pytest.approx(
        result["loss"] * result["tokens"] / math.log(2) / result["bytes"], rel=1e-6)
    assert result["tokens"] > 0 and result["tokens"] % 32 == 0  # whole windows of 32 targets
    assert result["blimp_pairs"] == 1
    acc = EventAccumulator(logdir, size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    assert {"eval/loss", "eval/perplexity", "eval/bits_per_byte", "eval/blimp_accuracy"} <= tags
    assert "eval/step" not in tags
    (event,) = acc.Tensors("eval/loss")
    assert event.step == 12 and float(tf.make_ndarray(event.tensor_proto)) == pytest.approx(result["loss"])


def test_cli_dialogue_json(saved, capsys, tmp_path):
    samples = tmp_path / "replies.jsonl"
    result = _run_json(capsys, ["--model", str(saved / "run"), "--data", str(saved / "chats.jsonl"), "--split", "all",
                                "--max-dialogues", "2", "--max-new-tokens", "4", "--samples-out", str(samples)])
    assert result["kind"] == "dialogue" and result["conversations"] == 4 and result["replies"] == 2
    for key in ("loss", "perplexity", "bits_per_byte", "assistant_loss", "assistant_perplexity",
                "assistant_bits_per_byte", "assistant_tokens"):
        assert result[key] > 0, key
    assert 0 < result["assistant_tokens"] < result["tokens"]
    assert 0.0 <= result["bleu"] <= 1.0 and 0.0 <= result["rouge_l"] <= 1.0
    assert "samples" not in result  # per-example texts go to --samples-out, never inline
    replies = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(replies) == 2
    sample = replies[0]
    assert sample["prompt"] == "Hello 0, how are you?" and sample["reference"] == "I am fine, thank you!"
    assert isinstance(sample["reply"], str)


def test_cli_table_output(saved, capsys):
    assert evaluate_cli.main(["--model", str(saved / "run"), "--blimp", str(saved / "blimp.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "blimp_accuracy" in out and "loss" not in out


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("case, message", [
    ("missing model", "model directory not found"),
    ("unknown data", "no such file"),
    ("missing dialogue file", "no such file"),
    ("empty blimp", "no minimal pairs"),
    ("malformed blimp", "bad.jsonl:2: not JSON"),
    ("blimp glob", "matches no minimal-pair files"),
    ("no validation split", "no conversations in the 'validation' split"),
    ("reply too long", "--max-new-tokens must be in 1..56"),
    ("seq-len too long", "--seq-len must be in 1..64"),
    ("text too short", "not one full window of 65 tokens"),
])
def test_cli_bad_input(saved, tmp_path, capsys, case, message):
    model, chats = str(saved / "run"), str(saved / "chats.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "tiny.txt").write_text("Hello there.")
    (tmp_path / "bad.jsonl").write_text('{"sentence_good": "a", "sentence_bad": "b"}\n{oops\n')
    argv = {
        "missing model": ["--model", str(tmp_path / "nope"), "--data", chats],
        "unknown data": ["--model", model, "--data", str(tmp_path / "nosuch.txt")],
        "missing dialogue file": ["--model", model, "--data", "oasst:" + str(tmp_path / "nosuch.jsonl")],
        "empty blimp": ["--model", model, "--blimp", str(tmp_path / "empty.jsonl")],
        "malformed blimp": ["--model", model, "--blimp", str(tmp_path / "bad.jsonl")],
        "blimp glob": ["--model", model, "--blimp", str(tmp_path / "none-*.jsonl")],
        "no validation split": ["--model", model, "--data", _write_chats(tmp_path / "one.jsonl", CHATS[:1])],
        "reply too long": ["--model", model, "--data", chats, "--split", "all", "--max-new-tokens", "60"],
        "seq-len too long": ["--model", model, "--data", chats, "--seq-len", "65"],
        "text too short": ["--model", model, "--data", str(tmp_path / "tiny.txt"), "--split", "all"],
    }[case]
    assert evaluate_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "error: " in err and message in err and "Traceback" not in err


def test_cli_needs_something_to_evaluate(saved, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main(["--model", str(saved / "run")])
    assert exit_info.value.code == 2 and "give --data, --blimp" in capsys.readouterr().err

