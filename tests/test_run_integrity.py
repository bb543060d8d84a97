"""No interruption damages saved work: atomic model directories, leftovers of killed writers, the run lock,
a full disk, final figures, and SIGKILL at random moments of a real `python -m training.pretrain`."""

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.fixtures import synthetic_dataset, tiny_config, tiny_tokenizer
from tfchat import atomic, cli
from tfchat.checkpoint import model_dir
from tfchat.checkpoint.model_dir import backup_path, load_model, save_model
from tfchat.model import build_gpt
from training import pretrain
from training.run_dir import RunDirectory
from training.strategy import make_strategy
from training.trainer import TrainConfig, Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--data", "wikipedia-sample", "--vocab-size", "512", "--seq-len", "32", "--batch-size", "8", "--eval-batches", "2",
        "--precision", "fp32"]


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _leftover(directory, name: str) -> str:
    """A temporary sibling as a killed writer on this host leaves it."""
    path = atomic.temp_path(os.path.join(directory, name)).replace(f"-{os.getpid()}-", f"-{_dead_pid()}-")
    os.makedirs(path)
    return path


def _model(seed: int):
    import keras

    tok = tiny_tokenizer()
    cfg = tiny_config(tok)
    keras.utils.set_random_seed(seed)
    return build_gpt(cfg), tok, cfg


class _Killed(BaseException):
    pass


def test_model_dir_swap_killed_between_renames_stays_loadable(tmp_path, monkeypatch):
    path = str(tmp_path / "model")
    old, tok, cfg = _model(0)
    save_model(path, old, tok, cfg, metadata={"step": 1})
    new, _, _ = _model(1)
    renames = []
    real_rename = os.rename

    def rename_then_die(src, dst):  # the process dies after `model` -> `.model.old`
        if renames:
            raise _Killed()
        renames.append((src, dst))
        real_rename(src, dst)

    monkeypatch.setattr(model_dir.os, "rename", rename_then_die)
    monkeypatch.setattr(model_dir.shutil, "rmtree", lambda *a, **k: None)  # a killed process cleans nothing
    with pytest.raises(_Killed):
        save_model(path, new, tok, cfg, metadata={"step": 2})
    monkeypatch.undo()
    assert not os.path.exists(path) and os.path.isdir(backup_path(path))
    loaded = load_model(path)  # falls back to the previous copy
    assert loaded.metadata["step"] == 1
    np.testing.assert_array_equal(loaded.model.get_weights()[0], old.get_weights()[0])
    assert load_model(str(tmp_path)).metadata["step"] == 1  # through a run directory too
    # The next save (by a new process: the killed one's pid is gone) finishes the job: the new model in place,
    # no backup, no temporary folder left.
    for name in os.listdir(tmp_path):
        if ".tmp-" in name:
            os.rename(tmp_path / name, tmp_path / name.replace(f"-{os.getpid()}-", f"-{_dead_pid()}-"))
    save_model(path, new, tok, cfg, metadata={"step": 3})
    assert load_model(path).metadata["step"] == 3
    assert sorted(os.listdir(tmp_path)) == ["model"], os.listdir(tmp_path)


def test_stale_temporaries_are_removed_live_ones_kept(tmp_path):
    stale = _leftover(tmp_path, "model")
    live = atomic.temp_path(str(tmp_path / "model"))  # this process's: a writer still at work
    os.makedirs(live)
    assert atomic.remove_stale_temps(str(tmp_path)) == [stale]
    assert os.path.isdir(live) and not os.path.exists(stale)


def test_lock_cleans_what_killed_runs_left(tmp_path):
    run = RunDirectory(str(tmp_path / "run"))
    ckpt = tmp_path / "run" / "checkpoints"
    (ckpt / "ckpt-3_temp").mkdir(parents=True)
    (ckpt / "ckpt-3_temp" / "part-00000-of-00001.data-00000-of-00001.tempstate1").write_bytes(b"x")
    (ckpt / "checkpoint.tmp5a5a").write_text("partial")
    (ckpt / "ckpt-2.index").write_bytes(b"kept")
    model_tmp = _leftover(tmp_path / "run", "model")
    tok_tmp = _leftover(tmp_path / "run", "tokenizer")
    (tmp_path / "run" / ".write-test-123").write_text("")
    m, tok, cfg = _model(0)
    save_model(backup_path(run.model_dir), m, tok, cfg, metadata={"step": 2})  # killed between the two renames
    with run.lock():
        left = sorted(os.listdir(tmp_path / "run"))
        assert left == [".lock", "checkpoints", "model"], left
        assert sorted(os.listdir(ckpt)) == ["ckpt-2.index"]
        assert load_model(run.model_dir).metadata["step"] == 2  # the backup moved back into place
    assert not os.path.exists(model_tmp) and not os.path.exists(tok_tmp)


def test_export_and_cache_remove_leftovers_of_killed_writers(tmp_path):
    from serving.exporter import export
    from tfchat.data import sources

    base = tmp_path / "exports"
    base.mkdir()
    stale_export = _leftover(base, "1")
    m, tok, cfg = _model(0)
    save_model(str(tmp_path / "m"), m, tok, cfg)
    export(load_model(str(tmp_path / "m")), str(base))
    assert sorted(os.listdir(base)) == ["1", "models.config"] and not os.path.exists(stale_export)

    (tmp_path / "docs.txt").write_text("One document.\n\nAnother one.\n")
    cache = tmp_path / "cache"
    final = sources.cache_path(str(tmp_path / "docs.txt"), str(cache))
    os.makedirs(os.path.dirname(final))
    stale_cache = _leftover(os.path.dirname(final), os.path.basename(final))
    assert sources.prepare_cache(str(tmp_path / "docs.txt"), str(cache)) == final
    assert not os.path.exists(stale_cache)


def test_second_run_on_the_same_directory_is_refused(tmp_path):
    out = str(tmp_path / "run")
    with RunDirectory(out).lock():
        proc = subprocess.run([sys.executable, "-m", "training.pretrain", *TINY, "--steps", "2", "--out", out],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert lines == [f"error: {out} is in use by another run (pid {os.getpid()} on {os.uname().nodename}); "
                     "wait for it to finish, or choose another --out"], proc.stderr
    assert sorted(os.listdir(out)) == [".lock"]  # nothing written by the refused run


def test_full_disk_is_one_clear_line(tmp_path, monkeypatch, capsys):
    oserror = OSError(errno.ENOSPC, "No space left on device", "/data/run/model.safetensors")
    assert cli.error_line(oserror) == ("no space left on the device writing /data/run/model.safetensors: "
                                       "free some space (or choose another --out) and re-run the command")
    # What TensorFlow raises when a checkpoint shard does not fit (seen on a full tmpfs).
    tf_error = tf.errors.ResourceExhaustedError(
        None, None, "{{function_node __wrapped__SaveV2_dtypes_162_device_/job:localhost/replica:0/task:0/device:CPU:0}} "
        "/r/checkpoints/ckpt-1_temp/part-00000-of-00001.data-00000-of-00001.tempstate96556; No space left on device "
        "[Op:SaveV2]")
    assert cli.error_line(tf_error).startswith(
        "no space left on the device writing /r/checkpoints/ckpt-1_temp/part-00000-of-00001.data-00000-of-00001:")

    def full(self):
        raise tf_error

    monkeypatch.setattr(Trainer, "save_checkpoint", full)
    code = pretrain.main([*TINY, "--steps", "2", "--save-every", "1", "--no-progress", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [f"error: {cli.error_line(tf_error)}"]


def _can_mount_tmpfs(path) -> bool:
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)], capture_output=True).returncode == 0


def test_full_disk_for_real_on_a_small_tmpfs(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("mounting a tmpfs needs root")
    try:
        out = str(disk / "run")
        proc = subprocess.run([sys.executable, "-m", "training.pretrain", *TINY, "--steps", "2", "--save-every", "1",
                               "--no-progress", "--out", out], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        error = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(error) == 1 and error[0].startswith(f"error: no space left on the device writing {out}/"), error
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def _trainer(out, steps=4):
    tok = tiny_tokenizer()
    cfg = TrainConfig(steps=steps, batch_size=8, seq_len=16, lr=3e-3, warmup_steps=2, eval_every=steps,
                      save_every=1000, log_every=1)
    return Trainer(tiny_config(tok), tok, cfg, make_strategy("default"), out, synthetic_dataset,
                   eval_dataset=lambda ctx, m: synthetic_dataset(ctx, m, seed=1).take(2))


def test_killed_after_the_last_checkpoint_rerun_completes_the_model_with_its_figures(tmp_path, monkeypatch):
    out = str(tmp_path / "run")

    def killed(self, extra=None):
        raise _Killed()

    monkeypatch.setattr(Trainer, "save_model_dir", killed)
    with pytest.raises(_Killed):
        _trainer(out).train(progress=False)
    monkeypatch.undo()
    with open(os.path.join(out, "run.json")) as f:
        final = json.load(f)["final"]
    assert final["step"] == 4 and final["val_loss"] > 0
    assert not os.path.exists(os.path.join(out, "model"))
    again = _trainer(out).train(progress=False)
    assert again["complete"] and again["val_loss"] == final["val_loss"]
    meta = load_model(out).metadata
    assert meta["step"] == 4 and meta["val_loss"] == final["val_loss"]
    # Re-running again keeps them (the record is not rewritten without them).
    assert _trainer(out).train(progress=False)["val_loss"] == final["val_loss"]
    assert load_model(out).metadata["val_loss"] == final["val_loss"]


def test_sigkill_at_random_moments_then_resume_completes(tmp_path):
    """SIGKILL a real `python -m training.pretrain` (a checkpoint every step, so kills land in checkpoint writes
    too) a few times at random moments, resume each time, and check the run completes and its model loads."""
    out = str(tmp_path / "run")
    steps = 8
    cmd = [sys.executable, "-m", "training.pretrain", *TINY, "--steps", str(steps), "--save-every", "1",
           "--eval-every", "4", "--out", out]
    env = {k: v for k, v in os.environ.items() if k != "TFCHAT_RAW_STDERR"}  # the real stderr filter
    rng = random.Random()
    delays, codes = [], []
    for _ in range(3):
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # Wait until training runs (a checkpoint exists or appears), then kill at a random moment.
        deadline = time.monotonic() + 240
        state = os.path.join(out, "checkpoints", "checkpoint")
        start = os.path.getmtime(state) if os.path.exists(state) else 0
        while proc.poll() is None and time.monotonic() < deadline:
            if os.path.exists(state) and os.path.getmtime(state) != start:
                break
            time.sleep(0.02)
        delays.append(round(rng.uniform(0, 1.5), 2))
        time.sleep(delays[-1])
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        codes.append(proc.returncode)
        if proc.returncode == 0:  # finished before the kill: nothing left to test
            break
    assert codes[0] == -signal.SIGKILL, (codes, delays)
    final = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, (codes, delays, final.stderr[-3000:])
    assert re.search(rf"(Done in .*|already complete at )step {steps}", final.stderr), final.stderr[-2000:]
    loaded = load_model(out)
    assert loaded.metadata["step"] == steps and loaded.metadata["val_loss"] > 0
    left = [n for n in os.listdir(out) if n not in ("run.json", ".lock", "tokenizer", "checkpoints", "logs", "model")]
    assert not left and not [n for n in os.listdir(os.path.join(out, "checkpoints")) if "temp" in n or "tmp" in n]
    # The progress bar is the only thing on stderr besides our log lines: no TF chatter (start-up, "Sharding callback").
    assert not re.search(r"Sharding callback|^[IWE]\d{4} [\d:.]+\s+\d+ |absl::InitializeLog", final.stderr, re.M)
