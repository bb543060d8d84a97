"""The text classifier: in-graph hashed n-grams, training on a tiny separable set, evaluation, export, CLI errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from serving import export as export_cli
from serving.exporter import op_types
from tests.fixtures import separable_examples
from tfchat.checkpoint.classifier_dir import load_classifier
from tfchat.inference.classifier import ContentFilter, TextClassifier
from tfchat.model.classifier import ClassifierConfig, build_classifier
from tfchat.text.ngrams import HashedNGrams, words
from training import classify
from training import evaluate as evaluate_cli


@pytest.fixture(scope="module")
def trained(moderation_classifier):
    return moderation_classifier


def test_features_are_hashed_word_and_char_ngrams():
    w = words(tf.constant(["Don't KILL the process!!", "你好，世界", "  "])).to_list()
    assert w == [[b"dont", b"kill", b"the", b"process"], ["你".encode(), "好".encode(), "世".encode(), "界".encode()], []]
    layer = HashedNGrams(buckets=97, word_ngrams=2, char_ngrams=(3, 3))
    ids = layer(tf.constant(["kill it", "kill it", ""]))
    # "kill", "it", "kill it" + 3-grams of "<kill>" (4) and "<it>" (2)
    assert ids.row_lengths().numpy().tolist() == [9, 9, 0]
    assert ids[0].numpy().tolist() == ids[1].numpy().tolist()
    assert 0 <= int(tf.reduce_min(ids.flat_values)) and int(tf.reduce_max(ids.flat_values)) < 97
    assert HashedNGrams.from_config(layer.get_config()).get_config() == layer.get_config()
    with pytest.raises(ValueError):
        HashedNGrams(char_ngrams=(4, 2))


def test_config_validation_and_round_trip():
    config = ClassifierConfig(labels=("a", "b"), multi_label=False, buckets=64, dim=4, hidden=3)
    assert ClassifierConfig.from_dict(json.loads(config.to_json())) == config
    model = build_classifier(config)
    assert model(tf.constant(["x", "y z"])).shape == (2, 2)
    for bad in (dict(labels=()), dict(labels=("a", "a")), dict(labels=("a",), multi_label=False),
                dict(labels=("a",), kind="bert"), dict(labels=("a",), buckets=0)):
        with pytest.raises(ValueError):
            ClassifierConfig(**bad)
    with pytest.raises(ValueError, match="unknown ClassifierConfig fields"):
        ClassifierConfig.from_dict({"labels": ["a"], "layers": 3})


def test_tiny_separable_set_is_learned(trained, capsys):
    classifier = TextClassifier.load(trained)
    assert classifier.labels == ["flagged", "harassment", "violence"] and classifier.multi_label
    meta = classifier.metadata
    assert meta["task"] == "moderation" and meta["examples"] == {"train": 90, "validation": 30}
    held = meta["held_out"]
    assert held["accuracy"] == 1.0 and held["labels"]["flagged"]["roc_auc"] == 1.0
    assert set(meta["thresholds"]) == {"flagged", "harassment", "violence"}
    # Unseen names, same patterns: right on every label.
    assert classifier.predict(["you are a worthless idiot bob", "have a lovely day bob", "I will hurt you bob"]) == [
        ["flagged", "harassment"], [], ["flagged", "harassment", "violence"]]
    # Re-running the finished run changes nothing; switching to lazy updates is refused.
    argv = ["--data", meta["data"][0], "--out", trained, "--steps", "150", "--batch-size", "16", "--lr", "0.05",
            "--warmup-steps", "10", "--buckets", "4096", "--dim", "8", "--no-progress", "--precision", "fp32"]
    assert classify.main(argv) == 0
    capsys.readouterr()
    assert classify.main(argv + ["--lazy-adam"]) != 0
    assert "started with --lazy-adam False; this command gives --lazy-adam True" in capsys.readouterr().err
    assert os.path.isfile(os.path.join(trained, "logs", os.listdir(os.path.join(trained, "logs"))[0]))


def test_single_label_task(tmp_path):
    data = tmp_path / "intents.jsonl"
    rows = [{"text": f"{verb} {thing}", "labels": [intent], "split": "validation" if i % 5 == 0 else "train"}
            for intent, verb in (("play", "play the song"), ("weather", "what is the weather in"),
                                 ("alarm", "set an alarm for"))
            for i, thing in enumerate(["paris", "noon", "jazz", "oslo", "six", "rome", "rock", "lima", "ten", "kyoto"])]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "intents")
    assert classify.main(["--task", "single-label", "--data", str(data), "--out", out, "--steps", "80",
                          "--batch-size", "8", "--lr", "0.05", "--buckets", "2048", "--dim", "8", "--no-progress",
                          "--precision", "fp32", "--eval-every", "80"]) == 0
    classifier = TextClassifier.load(out)
    assert not classifier.multi_label and classifier.thresholds == {}
    assert classifier.predict(["play the song berlin", "set an alarm for seven"]) == [["play"], ["alarm"]]
    s = classifier.scores(["what is the weather in bonn"])
    assert s.shape == (1, 3) and abs(float(s.sum()) - 1) < 1e-5
    with pytest.raises(ValueError, match="multi-label classifier with a 'flagged' label"):
        ContentFilter(classifier)


def test_lazy_adam_moves_only_the_rows_of_training_features(tmp_path):
    """--lazy-adam: the n-gram rows the training texts hash to are trained, every other row keeps its initial value,
    and the model still learns the task."""
    from tfchat.data.batches import labelled_batches
    from training.objectives import Classification
    from training.strategy import make_strategy
    from training.trainer import TrainConfig, Trainer

    texts = ["play the song jazz", "play some rock", "set an alarm for six", "wake me at seven"] * 4
    targets = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]] * 4, np.float32)
    config = ClassifierConfig(labels=("play", "alarm"), multi_label=False, buckets=4096, dim=4)
    cfg = TrainConfig(steps=30, batch_size=4, seq_len=1, lr=0.05, warmup_steps=0, weight_decay=0.0, precision="fp32",
                      eval_every=1000, save_every=1000, log_every=10)
    trainer = Trainer(config, None, cfg, make_strategy("default"), str(tmp_path / "run"),
                      lambda ctx, batch: labelled_batches(texts, targets, batch, input_context=ctx),
                      objective=Classification(multi_label=False, lazy=True))
    table = trainer.model.embedding.embeddings
    before = table.numpy().copy()
    trainer.train(progress=False)
    changed = set(np.flatnonzero(np.any(table.numpy() != before, axis=1)).tolist())
    used = set(np.unique(HashedNGrams(4096)(tf.constant(texts)).flat_values.numpy()).tolist())
    assert changed == used and 20 < len(used) < 4096
    logits = trainer.model(tf.constant(["play the song", "set an alarm"])).numpy()
    assert logits.argmax(-1).tolist() == [0, 1]
    with pytest.raises(SystemExit):
        classify.main(["--task", "single-label", "--data", "x.jsonl", "--lazy-adam", "--optimizer", "muon"])


def test_lazy_adam_under_mirrored_strategy_with_two_replicas(tmp_path):
    """The sparse update after the cross-replica sum of IndexedSlices: two CPU replicas learn the separable set."""
    data = tmp_path / "separable.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in separable_examples()))
    out = str(tmp_path / "run")
    code = (
        "import sys, tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        "from training import classify\n"
        "sys.exit(classify.main(sys.argv[1:]))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code, "--data", str(data), "--out", out, "--steps", "60",
                           "--batch-size", "16", "--lr", "0.05", "--warmup-steps", "10", "--buckets", "4096", "--dim", "8",
                           "--no-progress", "--precision", "fp32", "--strategy", "mirrored", "--lazy-adam"],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    classifier = TextClassifier.load(out)
    with open(os.path.join(out, "run.json")) as f:
        run = json.load(f)
    assert run["strategy"] == "MirroredStrategy" and run["replicas"] == 2
    assert classifier.metadata["held_out"]["accuracy"] == 1.0
    assert classifier.predict(["you are a worthless idiot bob", "have a lovely day bob"]) == [
        ["flagged", "harassment"], []]


def test_intent_figures_count_a_routing_intent_as_out_of_scope(tmp_path):
    """`evaluate_intents` (the README's in-scope accuracy and out-of-scope recall): a routing intent predicted for a
    test text counts as out of scope, since the test set's intents are its scope."""
    from tfchat.eval.classification import evaluate_intents

    things = ["paris", "noon", "jazz", "oslo", "six", "rome", "rock", "lima", "ten", "kyoto"]
    rows = [{"text": f"{prefix} {thing}", "labels": [label], "split": "validation" if i % 5 == 0 else "train"}
            for label, prefix in (("play", "play the song"), ("alarm", "set an alarm for"),
                                  ("chit_chat", "how are you doing today"), ("oos", "zebra quantum banana"))
            for i, thing in enumerate(things)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "intents")
    assert classify.main(["--task", "single-label", "--data", str(data), "--out", out, "--steps", "80",
                          "--batch-size", "8", "--lr", "0.05", "--buckets", "2048", "--dim", "8", "--no-progress",
                          "--precision", "fp32", "--eval-every", "80"]) == 0
    test = [("play the song bonn", "play"), ("play the song riga", "play"), ("set an alarm for nine", "alarm"),
            ("play the song oslo", "alarm"),  # in scope, predicted wrong
            ("how are you doing today bob", "oos"),  # a routing intent: out of scope for CLINC150's figures
            ("zebra quantum banana bob", "oos")]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps({"text": t, "labels": [label]}) + "\n" for t, label in test))
    m = evaluate_intents(out, str(path))
    assert (m["in_scope"], m["out_of_scope"]) == (4, 2)
    assert (m["in_scope_accuracy"], m["oos_recall"], m["accuracy"]) == (0.75, 1.0, 5 / 6)


def test_evaluate_cli_reports_per_label_metrics(trained, tmp_path, capsys):
    data = TextClassifier.load(trained).metadata["data"][0]
    assert evaluate_cli.main(["--classifier", trained, "--data", data, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "validation" and result["examples"] == 30
    flagged = result["labels"]["flagged"]
    assert set(flagged) >= {"precision", "recall", "f1", "roc_auc", "pr_auc", "threshold", "support"}
    assert flagged["roc_auc"] == 1.0 and flagged["f1"] == 1.0 and flagged["support"] == 15
    assert result["by_source"]["small-talk"]["false_positive_rate"] == 0.0
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"text": "you are a worthless idiot zed", "labels": ["harassment", "hate"]}) + "\n" +
                     json.dumps({"text": "thanks for the help zed", "labels": []}) + "\n")
    assert evaluate_cli.main(["--classifier", trained, "--data", str(other), "--json", "--threshold", "0.5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "all" and result["examples"] == 2 and result["labels_not_in_model"] == ["hate"]
    assert result["labels"]["flagged"]["threshold"] == 0.5 and result["labels"]["flagged"]["recall"] == 1.0
    assert evaluate_cli.main(["--classifier", trained, "--data", str(other)]) == 0
    assert "flagged" in capsys.readouterr().out


def test_export_classify_signature_matches_keras(trained, tmp_path, capsys):
    base = str(tmp_path / "exports" / "moderation")
    assert export_cli.main(["--classifier", trained, "--out", base]) == 0
    version_dir = capsys.readouterr().out.strip().splitlines()[-1]
    assert version_dir.endswith(os.path.join("moderation", "1"))
    assert not {t for t in op_types(version_dir) if t.startswith("Xla")}
    texts = ["you are a worthless idiot bob", "have a lovely day bob", "", "你好"]
    keras_scores = TextClassifier.load(trained).scores(texts)
    exported = TextClassifier.load(base)
    assert exported.labels == ["flagged", "harassment", "violence"] and exported.thresholds
    np.testing.assert_allclose(exported.scores(texts), keras_scores, atol=1e-5)
    out = tf.saved_model.load(version_dir).signatures["classify"](text=tf.constant(texts))
    assert out["labels"].numpy()[0].tolist() == [b"flagged", b"harassment", b"violence"]
    assert out["predicted"].numpy()[:2, 0].tolist() == [True, False]
    loaded = load_classifier(trained)
    assert loaded.config.buckets == 4096


def test_classifier_commands_fail_clearly(trained, tmp_path, capsys):
    out = str(tmp_path / "x")
    assert classify.main(["--data", str(tmp_path / "missing.jsonl"), "--out", out, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "no such file" in err and "Traceback" not in err
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text(json.dumps({"text": "hello", "labels": ["a"]}) + "\n")
    assert classify.main(["--data", str(tiny), "--out", out, "--no-progress"]) == 1
    assert "no examples in the 'validation' split" in capsys.readouterr().err
    for argv in (["--task", "single-label"], ["--char-ngrams", "5,2"], ["--balance", "2"]):
        with pytest.raises(SystemExit) as e:
            classify.main(argv + ["--out", out])
        assert e.value.code == 2
    assert evaluate_cli.main(["--classifier", str(tmp_path / "none"), "--data", str(tiny)]) == 1
    assert "classifier not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_cli.main(["--classifier", trained, "--blimp", "x.jsonl"])
    assert export_cli.main(["--classifier", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert "not a classifier directory" in capsys.readouterr().err
    assert export_cli.main(["--classifier", trained, "--out", str(tmp_path / "e"), "--max-len", "8"]) == 2


def test_separable_fixture_has_both_splits():
    records = separable_examples()
    assert {r["split"] for r in records} == {"train", "validation"}
