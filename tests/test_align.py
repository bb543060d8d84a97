"""Preference tuning: DPO/IPO and reward losses, the reward head, training.align / training.reward end to end,
exact resume, preference evaluation, and bad input to every new command."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfchat.checkpoint.model_dir import assign_weights, load_model, save_model, weights_by_path
from tfchat.data.pair_batches import pair_batches, preference_splits
from tfchat.model import RewardModel, build_model
from tests.fixtures import tiny_chat_dir, write_preferences
from training import align, evaluate, reward
from training.objectives import DirectPreference, PairwiseReward, preference_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--seq-len", "64", "--batch-size", "4", "--eval-batches", "2", "--warmup-steps", "1", "--precision", "fp32",
         "--no-progress"]


# ----------------------------------------------------------------------------- losses on hand-set log-probs


def test_dpo_loss_on_hand_set_log_probs():
    logps = tf.constant([[-10.0, -12.0], [-5.0, -4.0]])
    ref = tf.constant([[-11.0, -11.0], [-5.0, -4.0]])
    loss, rewards = preference_loss(logps, ref, beta=0.1, loss="dpo")
    # pair 0: h = (-10 + 11) - (-12 + 11) = 2, loss = -log sigmoid(0.1 * 2); pair 1: h = 0, loss = log 2
    np.testing.assert_allclose(loss.numpy(), [np.log1p(np.exp(-0.2)), np.log(2.0)], rtol=1e-6)
    np.testing.assert_allclose(rewards.numpy(), [[0.1, -0.1], [0.0, 0.0]], atol=1e-7)
    np.testing.assert_allclose(preference_loss(logps, ref, 0.5)[0].numpy()[0], np.log1p(np.exp(-1.0)), rtol=1e-6)
    # The reference matters: against itself every pair is at log 2.
    np.testing.assert_allclose(preference_loss(logps, logps, 0.1)[0].numpy(), [np.log(2.0)] * 2, rtol=1e-6)


def test_ipo_loss_on_hand_set_log_probs():
    logps = tf.constant([[-10.0, -12.0], [-5.0, -4.0]])
    ref = tf.constant([[-11.0, -11.0], [-5.0, -4.0]])
    # (h - 1 / (2 beta))^2: beta 0.1 -> target margin 5; beta 0.25 -> 2
    np.testing.assert_allclose(preference_loss(logps, ref, 0.1, "ipo")[0].numpy(), [9.0, 25.0], rtol=1e-6)
    np.testing.assert_allclose(preference_loss(logps, ref, 0.25, "ipo")[0].numpy(), [0.0, 4.0], atol=1e-6)
    with pytest.raises(ValueError, match="loss must be one of"):
        preference_loss(logps, ref, 0.1, "kto")
    with pytest.raises(ValueError, match="beta must be positive"):
        DirectPreference(beta=0.0)


# ----------------------------------------------------------------------------- the objectives on a model


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefs")
    chat = tiny_chat_dir(root / "chat")
    path = write_preferences(root / "prefs.jsonl")
    return {"root": root, "chat": chat, "chat_dir": str(root / "chat"), "data": path}


def _batch(prefs, ref=None):
    tok = prefs["chat"].tokenizer
    rendered = preference_splits(prefs["data"], tok, 64)["train"]
    ref = np.zeros([len(rendered), 2], np.float32) if ref is None else ref
    return rendered, next(iter(pair_batches(rendered, 64, 4, tok.pad_id, ref_logps=ref, repeat=False)))


def test_dpo_log_prob_covers_the_final_reply_only(prefs):
    model = prefs["chat"].model
    rendered, batch = _batch(prefs)
    logps = DirectPreference().log_probs(model, batch, training=False).numpy()
    for i in range(4):
        for row, seq in enumerate((rendered.chosen[i], rendered.rejected[i])):
            start = rendered.prompt_lengths[i]
            log_probs = tf.nn.log_softmax(model(np.array([seq[:-1]], "int32"))[0]).numpy()  # predicts seq[1:]
            expected = sum(log_probs[t - 1, seq[t]] for t in range(start, len(seq)))  # reply and <|end|> only
            assert logps[i, row] == pytest.approx(expected, rel=1e-5)
    # Multi-turn prompts hold an earlier assistant turn, outside the mask.
    multi = [i for i, p in enumerate(rendered.pairs) if any(m["role"] == "assistant" for m in p.messages)]
    assert multi and all(rendered.chosen[i].count(prefs["chat"].tokenizer.assistant_id) == 2 for i in multi)


def test_nll_weight_adds_the_chosen_replys_per_token_nll(prefs):
    model = prefs["chat"].model
    rendered, batch = _batch(prefs)
    plain = DirectPreference(beta=0.1).sums(model, batch, training=False)
    rpo = DirectPreference(beta=0.1, nll_weight=0.5).sums(model, batch, training=False)
    logps = DirectPreference().log_probs(model, batch, training=False).numpy()
    tokens = [len(rendered.chosen[i]) - rendered.prompt_lengths[i] for i in range(4)]  # reply + <|end|>
    nll = -logps[:, 0] / np.array(tokens)
    assert float(rpo["nll"]) == pytest.approx(float(nll.sum()), rel=1e-5)
    assert float(rpo["loss"]) == pytest.approx(float(plain["loss"]) + 0.5 * float(nll.sum()), rel=1e-5)
    assert float(rpo["rewards/accuracies"]) == float(plain["rewards/accuracies"])
    with pytest.raises(ValueError, match="NLL weight"):
        DirectPreference(nll_weight=-1.0)


def test_gradients_flow_through_the_policy_only(prefs):
    model = prefs["chat"].model
    _, batch = _batch(prefs)
    ref = tf.constant(np.random.default_rng(0).normal(-30, 3, [4, 2]).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(ref)
        sums = DirectPreference(beta=0.1).sums(model, {**batch, "ref_logps": ref}, training=True)
    grads = tape.gradient(sums["loss"], [ref, *model.trainable_variables])
    assert grads[0] is None  # the reference is a constant
    policy = [tf.convert_to_tensor(g) for g in grads[1:]]
    assert all(g is not None for g in policy) and max(float(tf.reduce_max(tf.abs(g))) for g in policy) > 0
    assert set(sums) == {"loss", "weight", *DirectPreference.metrics} and float(sums["weight"]) == 4


def test_reward_objective_trains_head_and_backbone(prefs):
    cfg = prefs["chat"].config
    model = build_model(cfg, "reward")
    _, batch = _batch(prefs)
    with tf.GradientTape() as tape:
        sums = PairwiseReward().sums(model, batch, training=True)
    grads = tape.gradient(sums["loss"], model.trainable_variables)
    names = {v.path for v, g in zip(model.trainable_variables, grads) if g is not None}
    assert "reward_head/kernel" in names and "ln_f/gamma" in names
    rewards = model({"token_ids": tf.reshape(batch["token_ids"], [8, 64]), "lengths": tf.reshape(batch["lengths"], [8])})
    margins = rewards.numpy().reshape(4, 2) @ [1.0, -1.0]
    assert float(sums["loss"]) == pytest.approx(float(np.sum(np.log1p(np.exp(-margins)))), rel=1e-5)
    assert float(sums["rewards/accuracies"]) == pytest.approx(float(np.sum(margins > 0) + 0.5 * np.sum(margins == 0)))


# ----------------------------------------------------------------------------- the reward head


def test_reward_head_reads_the_last_real_token_saves_loads_and_starts_from_a_chat_model(prefs, tmp_path):
    chat, tok = prefs["chat"], prefs["chat"].tokenizer
    model = build_model(chat.config, "reward")
    assign_weights(model.backbone, weights_by_path(chat.model), "chat", strict=False)
    for v in model.backbone.weights:  # the backbone is the chat model's
        np.testing.assert_array_equal(v.numpy(), weights_by_path(chat.model)[v.path])
    ids = np.array([tok.encode("The fox is quick.")], "int32")
    padded = np.concatenate([ids, np.full([1, 5], tok.pad_id, "int32")], 1)
    n = np.array([ids.shape[1]], "int32")
    score = model({"token_ids": ids, "lengths": n}).numpy()
    np.testing.assert_allclose(model({"token_ids": padded, "lengths": n}).numpy(), score, rtol=1e-6)
    assert model({"token_ids": ids, "lengths": n - 1}).numpy() != pytest.approx(score)

    save_model(str(tmp_path / "rm"), model, tok, chat.config, metadata={"job": "reward"})
    assert json.loads((tmp_path / "rm" / "tfchat.json").read_text())["head"] == "reward"
    loaded = load_model(str(tmp_path / "rm"))
    assert isinstance(loaded.model, RewardModel) and loaded.head == "reward"
    np.testing.assert_allclose(loaded.model({"token_ids": ids, "lengths": n}).numpy(), score, rtol=1e-6)
    assert isinstance(RewardModel.from_config(model.get_config()), RewardModel)
    with pytest.raises(ValueError, match="holds a reward model.*not a language model"):
        load_model(str(tmp_path / "rm"), head="lm")
    assert load_model(prefs["chat_dir"]).head == "lm"  # directories without "head" are language models


def test_reward_export_signature_matches_the_model_and_has_no_xla(prefs, tmp_path):
    import tensorflow_text  # noqa: F401  (the SavedModel's tokenizer ops)

    from serving.exporter import export, op_types, read_metadata
    from tfchat.text import chat_template

    chat, tok = prefs["chat"], prefs["chat"].tokenizer
    model = build_model(chat.config, "reward")
    save_model(str(tmp_path / "rm"), model, tok, chat.config)
    loaded = load_model(str(tmp_path / "rm"))
    path = export(loaded, str(tmp_path / "export"))
    meta = read_metadata(path)
    assert meta["head"] == "reward" and meta["signatures"] == ["reward", "serving_default"]
    assert not [t for t in op_types(path) if t.startswith("Xla")]
    conversations = [[{"role": "user", "content": "Tell me about the fox."},
                      {"role": "assistant", "content": "Gladly: the fox is a fine animal."}],
                     [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "And the owl?"},
                      {"role": "assistant", "content": "No. owl owl owl."}]]
    roles = [[m["role"] for m in c] + [""] * (3 - len(c)) for c in conversations]
    contents = [[m["content"] for m in c] + [""] * (3 - len(c)) for c in conversations]
    out = tf.saved_model.load(path).signatures["reward"](roles=tf.constant(roles), contents=tf.constant(contents))
    for b, c in enumerate(conversations):
        ids, _ = chat_template.render_reply([m["role"] for m in c[:-1]], [tok.encode(m["content"]) for m in c[:-1]],
                                            tok.encode(c[-1]["content"]), tok, 64)
        expected = loaded.model({"token_ids": np.array([ids], "int32"), "lengths": np.array([len(ids)], "int32")})
        assert int(out["num_tokens"][b]) == len(ids)
        assert float(out["score"][b]) == pytest.approx(float(expected[0]), abs=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="last message of a row must be the assistant reply"):
        tf.saved_model.load(path).signatures["reward"](roles=tf.constant([["user"]]), contents=tf.constant([["Hi"]]))


# ----------------------------------------------------------------------------- the commands end to end


@pytest.fixture(scope="module")
def aligned(prefs):
    out = str(prefs["root"] / "aligned")
    code = align.main(["--from", prefs["chat_dir"], "--data", prefs["data"], "--out", out, "--steps", "4",
                       "--eval-every", "2", "--lr", "1e-3", *SMALL])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def rewarded(prefs):
    out = str(prefs["root"] / "reward")
    code = reward.main(["--from", prefs["chat_dir"], "--data", prefs["data"], "--out", out, "--steps", "4",
                        "--eval-every", "4", "--lr", "1e-3", *SMALL])
    assert code == 0
    return out


def _tags(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir, size_guidance={"tensors": 0})
    acc.Reload()
    return set(acc.Tags()["tensors"])


def test_align_writes_an_ordinary_chat_model_and_trl_named_scalars(aligned, prefs, capsys):
    names = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
             "logps/rejected", "loss"]
    expected = {f"{split}/{n}" for split in ("train", "val") for n in names} | {"train/lr", "samples/0"}
    tags = _tags(os.path.join(aligned, "logs"))
    assert expected <= tags, expected - tags
    model = load_model(aligned, head="lm")  # what serving.export, the server and the chat CLI load
    assert model.metadata["job"] == "align" and model.metadata["preference_loss"] == "dpo"
    assert set(model.metadata["held_out_preference_accuracy"]) == {"start", "aligned", "aligned_vs_reference"}
    assert os.path.isfile(os.path.join(aligned, "reference_logps.npz"))
    # Re-running a finished run changes nothing and says so.
    assert align.main(["--from", prefs["chat_dir"], "--data", prefs["data"], "--out", aligned, "--steps", "4",
                       "--eval-every", "2", "--lr", "1e-3", *SMALL]) == 0
    assert "already complete" in capsys.readouterr().err


def test_aligned_model_exports_and_chats(aligned, tmp_path):
    import tensorflow_text  # noqa: F401

    from serving.exporter import export

    path = export(load_model(aligned), str(tmp_path / "export"))
    chat = tf.saved_model.load(path).signatures["chat"]
    out = chat(roles=tf.constant([["user"]]), contents=tf.constant([["Tell me about the fox."]]),
               max_new_tokens=tf.constant([4]), temperature=tf.constant([0.0]), top_k=tf.constant([0]),
               top_p=tf.constant([1.0]), seed=tf.constant([0]))
    assert int(out["num_tokens"][0]) >= 1


def test_reward_command_and_evaluation(rewarded, aligned, prefs, capsys):
    loaded = load_model(rewarded)
    assert loaded.head == "reward" and 0 <= loaded.metadata["held_out_reward_accuracy"] <= 1
    assert {"val/rewards/accuracies", "train/rewards/margins"} <= _tags(os.path.join(rewarded, "logs"))
    capsys.readouterr()
    assert evaluate.main(["--model", aligned, "--reference", prefs["chat_dir"], "--reward-model", rewarded,
                          "--preferences", prefs["data"], "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("preference_accuracy", "preference_margin", "preference_length_baseline", "reward_accuracy",
                "reward_margin", "reward_length_baseline"):
        assert isinstance(result[key], float), key
    assert result["preference_pairs"] == result["reward_pairs"] > 0
    assert result["preference_by_source"]["messages"]["pairs"] == result["preference_pairs"]
    # What align stored for the aligned model relative to its start is what evaluate measures.
    assert result["preference_accuracy"] == pytest.approx(
        load_model(aligned).metadata["held_out_preference_accuracy"]["aligned_vs_reference"])
    # A model compared with itself cannot prefer either reply: every pair is a tie, counted half.
    assert evaluate.main(["--model", prefs["chat_dir"], "--reference", prefs["chat_dir"], "--preferences",
                          prefs["data"], "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["preference_accuracy"] == 0.5 and same["preference_margin"] == 0.0
    assert evaluate.main(["--model", rewarded, "--preferences", prefs["data"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reward_accuracy"] == pytest.approx(
        loaded.metadata["held_out_reward_accuracy"])


# ----------------------------------------------------------------------------- exact resume


def _proc(tmp_path, name, prefs, *args):
    out = str(tmp_path / f"{name}.json")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "_align_proc.py"), out, str(tmp_path / name),
                           prefs["chat_dir"], prefs["data"], *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f)


def test_interrupted_align_resumes_exactly(prefs, tmp_path):
    straight = _proc(tmp_path, "straight", prefs, "--steps", "6", "--dropout", "0.1")
    killed = _proc(tmp_path, "resumed", prefs, "--steps", "6", "--dropout", "0.1", "--sigterm-after", "3")
    assert killed["status"] == "interrupted" and killed["step"] == 3
    resumed = _proc(tmp_path, "resumed", prefs, "--steps", "6", "--dropout", "0.1")
    assert resumed["status"] == "done" and resumed["step"] == 6
    assert resumed["loss"] == pytest.approx(straight["loss"], abs=1e-6)
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], abs=1e-6)
    diff = max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(straight["weights"], resumed["weights"]))
    assert diff < 1e-6


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv, message", [
    (["--beta", "0"], "expected a number > 0"),
    (["--beta", "nan"], "expected a number > 0"),
    (["--loss", "kto"], "invalid choice"),
    (["--steps", "-1"], "expected an integer > 0"),
])
def test_align_bad_flags_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        align.parser().parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_align_and_reward_bad_input_one_clear_line(prefs, rewarded, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(open(prefs["data"]).readline() + '{"messages": "nope"}\n')
    other = tiny_chat_dir(tmp_path / "other-chat", seed=5)
    cases = [
        (align, ["--from", str(tmp_path / "none")], "model directory not found"),
        (align, ["--from", rewarded], "holds a reward model"),
        (align, ["--from", prefs["chat_dir"], "--data", str(tmp_path / "missing.jsonl")], "no such file"),
        (align, ["--from", prefs["chat_dir"], "--data", str(bad)], "bad.jsonl:2: not a preference record"),
        (align, ["--from", prefs["chat_dir"], "--data", "hh-rlhf-sample", "--seq-len", "16"], "fits 16 tokens"),
        (reward, ["--from", prefs["chat_dir"], "--data", prefs["data"], "--seq-len", "65"], "exceeds"),
        (reward, ["--from", str(tmp_path / "none")], "model directory not found"),
    ]
    for command, argv, message in cases:
        out = str(tmp_path / f"run{len(argv)}")
        assert command.main([*SMALL, "--steps", "1", *argv, "--out", out]) == 1, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err[-2000:])
        assert "Traceback" not in err
    # Resuming a run against another starting model would train against the wrong reference: refused.
    run = str(tmp_path / "resume")
    assert align.main(["--from", prefs["chat_dir"], "--data", prefs["data"], "--out", run, *SMALL, "--steps", "1"]) == 0
    assert align.main(["--from", str(tmp_path / "other-chat"), "--data", prefs["data"], "--out", run, *SMALL,
                       "--steps", "2"]) == 1
    assert "computed for another starting model" in capsys.readouterr().err
    assert other.head == "lm"


def test_evaluate_bad_preference_flags(prefs, rewarded, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--model", prefs["chat_dir"], "--reference", prefs["chat_dir"]])
    assert e.value.code == 2 and "--reference and --reward-model need --preferences" in capsys.readouterr().err
    assert evaluate.main(["--model", rewarded, "--data", "dialogues-sample"]) == 1
    assert "is a reward model: evaluate it on preference pairs" in capsys.readouterr().err
    assert evaluate.main(["--model", prefs["chat_dir"], "--preferences", "nope.jsonl"]) == 1
    assert "nope.jsonl: no such file" in capsys.readouterr().err
    assert evaluate.main(["--model", prefs["chat_dir"], "--reward-model", prefs["chat_dir"], "--preferences",
                          prefs["data"]]) == 1
    assert "holds a language model" in capsys.readouterr().err
