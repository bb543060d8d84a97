"""The training loop: loss falls, distribution equivalence, accumulation, resume, summaries, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.fixtures import free_ports, synthetic_dataset, tiny_config, tiny_tokenizer
from training.objectives import LanguageModeling
from training.trainer import TrainConfig, Trainer, TrainingError
from training.strategy import make_strategy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROC = os.path.join(ROOT, "tests", "_trainer_proc.py")


def _cfg(**kw):
    base = dict(steps=4, batch_size=8, seq_len=16, lr=3e-3, warmup_steps=2, eval_every=1000, save_every=1000, log_every=1)
    return TrainConfig(**{**base, **kw})


def _trainer(tmp_path, name="run", **kw):
    tok = tiny_tokenizer()
    return Trainer(tiny_config(tok), tok, _cfg(**kw), make_strategy("default"), str(tmp_path / name), synthetic_dataset,
                   eval_dataset=lambda ctx, m: synthetic_dataset(ctx, m, seed=1).take(2))


def _run(tmp_path, name, *args):
    out = str(tmp_path / f"{name}.json")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, PROC, out, str(tmp_path / name), *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f)


def _max_weight_diff(a, b):
    return max(np.abs(np.asarray(x) - np.asarray(y)).max() for x, y in zip(a["weights"], b["weights"]))


def test_loss_falls_and_outputs_are_written(tmp_path):
    trainer = _trainer(tmp_path, steps=40, eval_every=40)
    first = trainer.evaluate()["loss"]
    metrics = trainer.train(progress=False)
    assert metrics["step"] == 40
    assert metrics["val_loss"] < first - 0.5, (first, metrics)
    run = tmp_path / "run"
    assert (run / "model" / "tfchat.json").exists()
    assert (run / "checkpoints" / "checkpoint").exists()


def test_tensorboard_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tok = tiny_tokenizer()
    trainer = Trainer(tiny_config(tok), tok, _cfg(steps=2, eval_every=2), make_strategy("default"), str(tmp_path / "run"),
                      synthetic_dataset, eval_dataset=lambda c, m: synthetic_dataset(c, m, seed=1).take(1),
                      sample_prompts=[tok.encode("The quick")])
    trainer.train(progress=False)
    acc = EventAccumulator(str(tmp_path / "run" / "logs"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    expected = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec", "train/mfu", "val/loss", "val/perplexity", "config", "samples/0"}
    assert expected <= tags, expected - tags


def test_profiler_trace(tmp_path):
    _trainer(tmp_path, steps=3, profile_steps=(1, 2)).train(progress=False)
    traces = list((tmp_path / "run" / "logs" / "plugins" / "profile").rglob("*.xplane.pb"))
    assert traces


def test_gradient_accumulation_equals_large_batch(tmp_path):
    big = _trainer(tmp_path, "big", steps=3)
    big_metrics = big.train(progress=False)
    accum = _trainer(tmp_path, "accum", steps=3, micro_batch_size=2)
    assert accum.accum == 4
    accum_metrics = accum.train(progress=False)
    # Adam is nearly blind to a gradient's scale, so check the gradient itself
    # (its global norm, after normalising by the token count) and the loss.
    assert accum_metrics["grad_norm"] == pytest.approx(big_metrics["grad_norm"], rel=1e-5)
    assert accum_metrics["loss"] == pytest.approx(big_metrics["loss"], rel=1e-6)
    for a, b in zip(big.model.get_weights(), accum.model.get_weights()):
        # Adam turns float-rounding noise in near-zero gradients into lr-sized steps: 1e-4, not 1e-6.
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_masked_tokens_carry_zero_gradient():
    """Fine-tuning learns only from loss-mask tokens: targets under mask 0 do not affect the gradient."""
    tok = tiny_tokenizer()
    from tfchat.model import build_gpt

    model = build_gpt(tiny_config(tok))
    ids = np.random.default_rng(0).integers(10, 60, (2, 9)).astype("int32")
    mask = np.array([[0, 0, 0, 1, 1, 0, 0, 1, 1]] * 2, "float32")

    def grads(targets):
        batch = {"token_ids": ids[:, :-1], "targets": targets, "loss_mask": mask[:, 1:]}
        with tf.GradientTape() as tape:
            loss = LanguageModeling().sums(model, batch, training=False)["loss"]
        return tape.gradient(loss, model.trainable_variables)

    targets = ids[:, 1:].copy()
    changed = targets.copy()
    changed[mask[:, 1:] == 0] = 7  # different "user" targets
    for a, b in zip(grads(targets), grads(changed)):
        np.testing.assert_allclose(tf.convert_to_tensor(a), tf.convert_to_tensor(b), atol=1e-7)
    # and the masked-in targets do matter
    other = targets.copy()
    other[mask[:, 1:] == 1] = 7
    assert any(np.abs(np.asarray(tf.convert_to_tensor(a) - tf.convert_to_tensor(b))).max() > 1e-6
               for a, b in zip(grads(targets), grads(other)))


def test_mirrored_two_cpus_matches_one_device(tmp_path):
    one = _run(tmp_path, "one", "--steps", "3")
    two = _run(tmp_path, "two", "--steps", "3", "--strategy", "mirrored", "--logical-cpus", "2")
    assert two["replicas"] == 2
    assert abs(one["metrics"]["loss"] - two["metrics"]["loss"]) < 1e-5
    assert two["metrics"]["grad_norm"] == pytest.approx(one["metrics"]["grad_norm"], rel=1e-5)
    # Adam turns float-rounding noise in near-zero gradients into lr-sized steps: the weights agree to
    # rounding-noise level (1.8e-5 with undecayed embeddings, 2.1e-5 since embeddings decay as matrices).
    assert _max_weight_diff(one, two) < 5e-5


def test_multiworker_two_processes_agree(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        out = str(tmp_path / f"w{i}.json")
        procs.append((out, subprocess.Popen(
            [sys.executable, PROC, out, str(tmp_path / "mw"), "--steps", "3", "--strategy", "auto"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    results = []
    for out, p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        with open(out) as f:
            results.append(json.load(f))
    assert results[0]["replicas"] == 2
    assert results[0]["metrics"]["step"] == results[1]["metrics"]["step"] == 3
    assert results[0]["metrics"]["loss"] == results[1]["metrics"]["loss"]
    assert _max_weight_diff(results[0], results[1]) == 0
    # Only the chief wrote the model directory.
    assert (tmp_path / "mw" / "model" / "tfchat.json").exists()


def test_sigterm_then_resume_matches_uninterrupted(tmp_path):
    # With dropout, so the RNG state must be checkpointed too.
    straight = _run(tmp_path, "straight", "--steps", "6", "--dropout", "0.1")
    killed = _run(tmp_path, "resumed", "--steps", "6", "--sigterm-after", "3", "--dropout", "0.1")
    assert killed["status"] == "interrupted" and killed["metrics"]["step"] == 3
    resumed = _run(tmp_path, "resumed", "--steps", "6", "--dropout", "0.1")
    assert resumed["status"] == "done" and resumed["metrics"]["step"] == 6
    assert abs(straight["metrics"]["loss"] - resumed["metrics"]["loss"]) < 1e-6
    assert _max_weight_diff(straight, resumed) < 1e-6


def test_muon_wsd_modern_model_resumes_exactly(tmp_path):
    """Muon + warmup-stable-decay on a RoPE/RMSNorm/ReLU² model: SIGTERM, resume, same weights as straight."""
    flags = ["--steps", "6", "--optimizer", "muon", "--schedule", "wsd",
             "--arch", "position=rope,norm=rmsnorm,bias=false,qk_norm=true,mlp=relu2,tie_embeddings=false"]
    straight = _run(tmp_path, "straight", *flags)
    killed = _run(tmp_path, "resumed", *flags, "--sigterm-after", "3")
    assert killed["status"] == "interrupted" and killed["metrics"]["step"] == 3
    resumed = _run(tmp_path, "resumed", *flags)
    assert resumed["status"] == "done" and resumed["metrics"]["step"] == 6
    assert abs(straight["metrics"]["loss"] - resumed["metrics"]["loss"]) < 1e-6
    assert _max_weight_diff(straight, resumed) < 1e-6


def test_muon_trains_and_uses_adamw_for_embeddings_head_and_vectors(tmp_path):
    tok = tiny_tokenizer()
    config = tiny_config(tok).replace(tie_embeddings=False)
    trainer = Trainer(config, tok, _cfg(steps=30, optimizer="muon", lr=3e-3), make_strategy("default"),
                      str(tmp_path / "run"), synthetic_dataset, eval_dataset=lambda c, m: synthetic_dataset(c, m, seed=1).take(2))
    first = trainer.evaluate()["loss"]
    metrics = trainer.train(progress=False)
    assert metrics["val_loss"] < first - 0.5, (first, metrics)
    opt = trainer.optimizer
    by_path = {v.path: opt._should_use_adamw(v) for v in trainer.model.trainable_variables}
    assert by_path["block_0/attn/c_attn/kernel"] is False and by_path["block_0/mlp/c_proj/kernel"] is False
    assert by_path["embeddings/token_embedding"] and by_path["lm_head/kernel"] and by_path["block_0/ln_1/gamma"]


def test_lazy_adamw_updates_only_the_rows_a_sparse_gradient_names():
    """The classifier's sparse path: rows it names move as dense Adam moves them (repeated ids summed); the rest,
    and their moments, stay; a dense gradient takes Keras' own update."""
    from training.optimizer import make_optimizer

    cfg = _cfg(steps=10, warmup_steps=0, lr=0.1, weight_decay=0.0)
    start = np.arange(12, dtype=np.float32).reshape(6, 2)
    lazy_table, dense_table, bias = tf.Variable(start), tf.Variable(start), tf.Variable([1.0, 2.0])
    lazy, dense = make_optimizer(cfg, [lazy_table, bias], lazy=True), make_optimizer(cfg, [dense_table], lazy=False)
    assert lazy.lazy and not dense.lazy
    sparse = tf.IndexedSlices(tf.constant([[1.0, -2.0], [0.5, 0.5], [3.0, 1.0]]), tf.constant([1, 4, 1]), tf.constant([6, 2]))
    for _ in range(2):  # the same rows twice: other rows have no moments under dense Adam either
        lazy.apply_gradients([(sparse, lazy_table), (tf.constant([0.5, -0.5]), bias)])
        dense.apply_gradients([(tf.convert_to_tensor(sparse), dense_table)])
    np.testing.assert_allclose(lazy_table.numpy(), dense_table.numpy(), rtol=1e-6)
    assert not np.allclose(lazy_table.numpy()[[1, 4]], start[[1, 4]])
    np.testing.assert_array_equal(lazy_table.numpy()[[0, 2, 3, 5]], start[[0, 2, 3, 5]])
    assert bias.numpy()[0] < 1.0 < 2.0 < bias.numpy()[1]
    # A third step on row 0 alone: rows 1 and 4 keep their values (dense Adam would move them on momentum).
    before = lazy_table.numpy()
    lazy.apply_gradients([(tf.IndexedSlices(tf.constant([[1.0, 1.0]]), tf.constant([0])), lazy_table),
                          (tf.constant([0.0, 0.0]), bias)])
    np.testing.assert_array_equal(lazy_table.numpy()[1:], before[1:])
    assert (lazy_table.numpy()[0] < start[0]).all()


def test_batch_not_divisible_by_replicas():
    with pytest.raises(ValueError, match="not divisible by the 3 replicas"):
        _cfg(batch_size=8).accumulation(3)
    with pytest.raises(ValueError, match="micro-batch-size 3"):
        _cfg(batch_size=8, micro_batch_size=3).accumulation(1)


def test_bad_train_config():
    with pytest.raises(ValueError, match="precision"):
        _cfg(precision="fp8")
    with pytest.raises(ValueError, match="steps must be positive"):
        _cfg(steps=0)


def test_incompatible_checkpoint_is_refused_and_kept(tmp_path):
    trainer = _trainer(tmp_path, steps=2)
    trainer.train(progress=False)
    before = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    tok = tiny_tokenizer()
    other = Trainer(tiny_config(tok).replace(n_layer=3), tok, _cfg(steps=4), make_strategy("default"),
                    str(tmp_path / "run"), synthetic_dataset)
    with pytest.raises(TrainingError, match="another model shape"):
        other.train(progress=False)
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == before


def test_existing_run_without_resume_is_refused(tmp_path):
    _trainer(tmp_path, steps=1).train(progress=False)
    with pytest.raises(TrainingError, match="--resume"):
        _trainer(tmp_path, steps=2).train(resume=False, progress=False)


def test_nan_loss_stops_with_clear_error(tmp_path):
    def poisoned(ctx, micro):
        return synthetic_dataset(ctx, micro).map(lambda b: {**b, "loss_mask": b["loss_mask"] * np.nan})

    tok = tiny_tokenizer()
    trainer = Trainer(tiny_config(tok), tok, _cfg(steps=3), make_strategy("default"), str(tmp_path / "run"), poisoned)
    with pytest.raises(TrainingError, match="loss is nan at step 1"):
        trainer.train(progress=False)
    assert not (tmp_path / "run" / "model").exists()


def test_bf16_and_fp16_train(tmp_path):
    for precision in ("bf16", "fp16"):
        metrics = _trainer(tmp_path, precision, steps=3, precision=precision).train(progress=False)
        assert np.isfinite(metrics["loss"])


def test_sigterm_at_an_evaluation_step_saves_before_evaluating(tmp_path):
    """A SIGTERM that arrives during the step an evaluation (and a save) is due at: the checkpoint and
    model directory are written at once, and no evaluation runs before the process stops."""
    import signal

    trainer = _trainer(tmp_path, steps=6, eval_every=3, save_every=3)
    real_step, evaluated = trainer._train_step, []

    def step(iterator):
        result = real_step(iterator)
        if int(trainer.optimizer.iterations) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while step 3 runs: the handler only sets a flag
        return result

    trainer._train_step = step
    trainer._evaluate_and_log = lambda *a, **k: evaluated.append(a) or {}
    with pytest.raises(KeyboardInterrupt, match="at step 3"):
        trainer.train(progress=False)
    assert evaluated == []
    assert tf.train.latest_checkpoint(trainer.ckpt_dir).endswith("-3")
    with open(os.path.join(trainer.out_dir, "model", "tfchat.json")) as f:
        assert json.load(f)["step"] == 3
