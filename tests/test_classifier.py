"""The text classifier: in-graph hashed n-grams, training on a tiny separable set, evaluation, export, CLI errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from serving import export as export_cli
from serving.exporter import op_types
from tests.fixtures import separable_examples, tiny_chat_dir
from tfchat.checkpoint.classifier_dir import load_classifier
from tfchat.inference.classifier import ContentFilter, TextClassifier
from tfchat.model.classifier import ClassifierConfig, build_classifier, scores
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


def test_ensemble_pools_log_probabilities():
    """Single-label: the scores are the normalised geometric mean of the members' softmaxes; multi-label: the
    sigmoid of the mean logit."""
    import keras

    for multi_label in (False, True):
        keras.utils.set_random_seed(3)
        config = ClassifierConfig(labels=("a", "b", "c"), multi_label=multi_label, buckets=64, dim=4)
        members = [build_classifier(config), build_classifier(config.replace(dim=6))]
        ensemble = build_classifier(config.replace(kind="ensemble", members=2), members=members)
        texts = tf.constant(["play jazz", "wake me up", ""])
        s = scores(ensemble(texts), multi_label).numpy()
        p = [scores(m(texts), multi_label).numpy() for m in members]
        if multi_label:
            expected = 1 / (1 + np.exp(-(members[0](texts).numpy() + members[1](texts).numpy()) / 2))
        else:
            expected = np.sqrt(p[0] * p[1]) / np.sqrt(p[0] * p[1]).sum(-1, keepdims=True)
        np.testing.assert_allclose(s, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="members"):
        ClassifierConfig(labels=("a",), members=2)
    with pytest.raises(ValueError, match="backbone"):
        ClassifierConfig(labels=("a",), kind="gpt")


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
    saved = [n for n, _ in tf.train.list_variables(os.path.join(version_dir, "variables", "variables"))
             if n != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert len(saved) == len(load_classifier(trained).model.weights)  # each weight saved once
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


@pytest.fixture(scope="module")
def gpt_classifier(trained, tmp_path_factory):
    """(run directory, chat model directory, data): --kind gpt fine-tuned from a tiny chat model on the separable set
    (the `trained` n-gram classifier's data file)."""
    root = tmp_path_factory.mktemp("gpt-classifier")
    tiny_chat_dir(root / "chat")
    data = TextClassifier.load(trained).metadata["data"][0]
    out = str(root / "gpt")
    assert classify.main(["--data", str(data), "--kind", "gpt", "--from", str(root / "chat"), "--out", out,
                          "--steps", "100", "--batch-size", "16", "--lr", "3e-3", "--warmup-steps", "10",
                          "--max-tokens", "16", "--eval-every", "100", "--no-progress", "--precision", "fp32"]) == 0
    return out, str(root / "chat"), str(data)


def test_gpt_kind_fine_tunes_a_chat_backbone(gpt_classifier, tmp_path):
    """--kind gpt: the backbone starts from the chat model, the tokenizer is stored with the classifier (in the
    graph), it learns the separable set and reloads to the same scores."""
    from tfchat.checkpoint.model_dir import load_model, weights_by_path
    from training.jobs import classify as classify_job

    out, chat, data = gpt_classifier
    classifier = TextClassifier.load(out)
    assert classifier.metadata["from"] == os.path.abspath(chat)
    loaded = load_classifier(out)
    assert loaded.config.kind == "gpt" and loaded.config.max_tokens == 16
    assert loaded.config.backbone == load_model(chat).config.to_dict()
    assert os.path.isfile(os.path.join(out, "model", "tokenizer", "tokenizer.model"))
    assert classifier.metadata["held_out"]["labels"]["flagged"]["roc_auc"] == 1.0
    assert classifier.predict(["you are a worthless idiot bob", "have a lovely day bob", "I will hurt you bob"]) == [
        ["flagged", "harassment"], [], ["flagged", "harassment", "violence"]]
    # A text longer than --max-tokens is read up to it; an empty one is <|endoftext|> alone.
    long = "have a lovely day bob " * 20
    s = classifier.scores([long, long + "you are a worthless idiot", ""])
    np.testing.assert_allclose(s[0], s[1], atol=1e-6)
    # The starting weights are the chat model's backbone (one step at a negligible rate).
    args = classify.parser().parse_args(["--data", data, "--kind", "gpt", "--from", chat, "--out", str(tmp_path / "r"),
                                         "--steps", "1", "--lr", "1e-12", "--warmup-steps", "0", "--no-progress",
                                         "--precision", "fp32"])
    classify_job(classify.options(args))
    start, chat_weights = load_classifier(str(tmp_path / "r")), weights_by_path(load_model(chat).model.backbone)
    for v in start.model.backbone.weights:
        np.testing.assert_allclose(v.numpy(), chat_weights[v.path], atol=1e-6)


def test_ensemble_averages_its_members(trained, gpt_classifier, tmp_path, capsys):
    """--ensemble: the mean of the members' log-odds, thresholds chosen again, exported like any classifier."""
    out = str(tmp_path / "ensemble")
    members = [trained, gpt_classifier[0]]
    assert classify.main(["--ensemble", members[0], "--ensemble", members[1], "--out", out]) == 0
    assert "held-out accuracy" in capsys.readouterr().err
    ensemble = TextClassifier.load(out)
    assert ensemble.metadata["members"] == [os.path.abspath(m) for m in members]
    assert set(ensemble.thresholds) == {"flagged", "harassment", "violence"}
    texts = ["you are a worthless idiot bob", "have a lovely day bob", "", "你好"]
    logits = np.mean([load_classifier(m).model(tf.constant(texts)).numpy() for m in members], axis=0)
    expected = 1 / (1 + np.exp(-logits))  # multi-label: the sigmoid of the members' mean log-odds
    np.testing.assert_allclose(ensemble.scores(texts), expected, atol=1e-5)
    assert ensemble.predict(texts[:2]) == [["flagged", "harassment"], []]
    # The members are copied in: the ensemble does not depend on their run directories.
    assert sorted(os.listdir(os.path.join(out, "model", "members"))) == ["0", "1"]
    # An ensemble is a classifier, so it can be a member: here the n-gram model gets 3/4 of the weight.
    nested = str(tmp_path / "nested")
    assert classify.main(["--ensemble", out, "--ensemble", trained, "--out", nested]) == 0
    member_logits = [load_classifier(m).model(tf.constant(texts)).numpy() for m in members]
    np.testing.assert_allclose(load_classifier(nested).model(tf.constant(texts)).numpy(),
                               0.75 * member_logits[0] + 0.25 * member_logits[1], atol=1e-4)
    base = str(tmp_path / "export")
    assert export_cli.main(["--classifier", out, "--out", base]) == 0
    version_dir = capsys.readouterr().out.strip().splitlines()[-1]
    assert not {t for t in op_types(version_dir) if t.startswith("Xla")}
    np.testing.assert_allclose(TextClassifier.load(base).scores(texts), expected, atol=1e-5)


def test_ensemble_and_gpt_kind_fail_clearly(trained, gpt_classifier, tmp_path, capsys):
    out, chat, data = gpt_classifier
    for argv in (["--ensemble", trained, "--out", str(tmp_path / "e")],  # one member
                 ["--ensemble", trained, "--ensemble", out, "--data", data, "--out", str(tmp_path / "e")],
                 ["--kind", "gpt", "--data", data],  # no --from
                 ["--from", chat, "--data", data]):  # --from without --kind gpt
        with pytest.raises(SystemExit) as e:
            classify.main(argv)
        assert e.value.code == 2
    capsys.readouterr()
    cases = [
        (["--ensemble", trained, "--ensemble", trained], "at least two different classifiers"),
        (["--ensemble", trained, "--ensemble", str(tmp_path / "none")], "classifier directory not found"),
        (["--ensemble", trained, "--ensemble", out, "--out", os.path.dirname(os.path.join(out, ""))],
         "the ensemble's own output"),
        (["--ensemble", out, "--ensemble", os.path.join(out, "model")], "at least two different"),
    ]
    for argv, message in cases:
        argv = argv if "--out" in argv else argv + ["--out", str(tmp_path / "e")]
        assert classify.main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in separable_examples()[:-4]))
    assert classify.main(["--data", str(other), "--out", str(tmp_path / "o"), "--steps", "5", "--buckets", "64",
                          "--dim", "4", "--no-progress", "--precision", "fp32"]) == 0
    assert classify.main(["--ensemble", trained, "--ensemble", str(tmp_path / "o"), "--out", str(tmp_path / "e")]) == 1
    assert "must be trained on the same task and data" in capsys.readouterr().err
    # A training run is never overwritten by an ensemble.
    before = load_classifier(str(tmp_path / "o")).config
    assert classify.main(["--ensemble", trained, "--ensemble", out, "--out", str(tmp_path / "o")]) == 1
    assert "holds a training run" in capsys.readouterr().err
    assert load_classifier(str(tmp_path / "o")).config == before
    assert classify.main(["--kind", "gpt", "--from", str(tmp_path / "nothing"), "--data", data,
                          "--out", str(tmp_path / "g"), "--no-progress"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    # A damaged ensemble names what is missing.
    assert classify.main(["--ensemble", trained, "--ensemble", out, "--out", str(tmp_path / "e")]) == 0
    shutil.rmtree(os.path.join(tmp_path, "e", "model", "members", "1"))
    with pytest.raises(FileNotFoundError, match="members"):
        load_classifier(str(tmp_path / "e"))
