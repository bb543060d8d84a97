"""`python -m training.pretrain` / `training.finetune` end to end at small sizes, and their bad inputs."""

import math
import os
import subprocess
import sys

import pytest

from tfchat.checkpoint.model_dir import load_model
from training import finetune, pretrain

SMALL = ["--preset", "tiny", "--data", "wikipedia-sample", "--vocab-size", "512", "--seq-len", "32", "--batch-size", "8", "--eval-batches", "4",
         "--warmup-steps", "5", "--no-progress", "--precision", "fp32"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "pretrain")
    code = pretrain.main([*SMALL, "--out", out, "--steps", "60", "--eval-every", "30", "--lr", "3e-3"])
    assert code == 0
    return out


def _scalars(logdir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    import tensorflow as tf

    acc = EventAccumulator(logdir, size_guidance={"tensors": 0})
    acc.Reload()
    return [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]


def test_pretrain_loss_falls_on_bundled_sample(pretrained):
    loaded = load_model(pretrained)
    uniform = math.log(loaded.config.vocab_size)  # the loss of an untrained model
    losses = _scalars(os.path.join(pretrained, "logs"), "train/loss")
    assert losses[-1] < uniform - 1.0, losses
    val = _scalars(os.path.join(pretrained, "logs"), "val/loss")
    assert len(val) == 2 and val[1] < val[0] < uniform
    assert loaded.config.vocab_size == loaded.tokenizer.vocab_size <= 512
    assert loaded.metadata["step"] == 60


def test_rerun_resumes_and_extends(pretrained, tmp_path):
    import shutil

    run = str(tmp_path / "copy")
    shutil.copytree(pretrained, run)
    assert pretrain.main([*SMALL, "--out", run, "--steps", "62", "--eval-every", "100"]) == 0
    assert load_model(run).metadata["step"] == 62


def test_finetune_from_pretrained(pretrained, tmp_path):
    out = str(tmp_path / "chat")
    code = finetune.main(["--from", pretrained, "--out", out, "--steps", "6", "--batch-size", "4", "--seq-len", "32",
                          "--eval-every", "6", "--eval-batches", "2", "--no-progress", "--precision", "fp32"])
    assert code == 0
    chat = load_model(out)
    assert chat.metadata["job"] == "finetune"
    assert chat.tokenizer.special_ids == load_model(pretrained).tokenizer.special_ids


def test_finetune_drops_conversations_the_content_filter_flags(pretrained, moderation_classifier, tmp_path):
    import json

    chats = tmp_path / "chats.jsonl"
    rows = [[{"role": "user", "content": f"question number {i}"},
             {"role": "assistant", "content": "you are a worthless idiot zed" if i % 4 == 0 else "thanks for the help zed"}]
            for i in range(200)]
    chats.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    out = str(tmp_path / "chat")
    code = finetune.main(["--from", pretrained, "--data", str(chats), "--out", out, "--steps", "2", "--batch-size", "4",
                          "--seq-len", "32", "--eval-every", "2", "--eval-batches", "1", "--no-progress",
                          "--precision", "fp32", "--content-filter", moderation_classifier, "--filter-threshold", "0.9"])
    assert code == 0
    with open(os.path.join(out, "content_filter.json")) as f:
        report = json.load(f)
    assert report["unit"] == "conversations" and report["threshold"] == 0.9
    assert sum(c["total"] for c in report["splits"].values()) == 200
    assert sum(c["dropped"] for c in report["splits"].values()) == 50


def test_content_filter_flags_need_a_classifier(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        finetune.main(["--filter-threshold", "0.5", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    code = pretrain.main([*SMALL, "--out", str(tmp_path / "r"), "--steps", "1", "--content-filter", str(tmp_path)])
    assert code == 1 and "not a classifier directory" in capsys.readouterr().err


def test_missing_data(tmp_path, capsys):
    assert pretrain.main([*SMALL, "--out", str(tmp_path / "r"), "--data", str(tmp_path / "nope.txt")]) == 1
    assert "nope.txt" in capsys.readouterr().err


def test_unknown_preset_lists_choices(capsys):
    with pytest.raises(SystemExit) as e:
        pretrain.parser().parse_args(["--preset", "huge"])
    assert e.value.code == 2
    assert "tiny" in capsys.readouterr().err


def test_batch_not_divisible(tmp_path, capsys):
    code = pretrain.main([*SMALL, "--out", str(tmp_path / "r"), "--micro-batch-size", "3", "--steps", "1"])
    assert code == 1
    assert "not divisible" in capsys.readouterr().err


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert pretrain.main([*SMALL, "--out", str(blocker / "run"), "--steps", "1"]) == 1
    assert "cannot write to the output directory" in capsys.readouterr().err
    assert blocker.read_text() == "x"


def test_incompatible_checkpoint_another_preset(pretrained, tmp_path, capsys):
    import shutil

    run = str(tmp_path / "copy")
    shutil.copytree(pretrained, run)
    before = sorted(os.listdir(os.path.join(run, "checkpoints")))
    code = pretrain.main([*SMALL, "--preset", "small", "--out", run, "--steps", "70"])
    assert code == 1
    assert "another model shape" in capsys.readouterr().err
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == before
    assert load_model(run).metadata["step"] == 60


def test_corrupt_checkpoint(pretrained, tmp_path, capsys):
    import shutil

    run = str(tmp_path / "copy")
    shutil.copytree(pretrained, run)
    ckpt = os.path.join(run, "checkpoints")
    index = sorted(f for f in os.listdir(ckpt) if f.endswith(".index"))[-1]
    with open(os.path.join(ckpt, index), "wb") as f:
        f.write(b"garbage")
    assert pretrain.main([*SMALL, "--out", run, "--steps", "70"]) == 1
    assert "cannot restore checkpoint" in capsys.readouterr().err
    assert load_model(run).metadata["step"] == 60


def test_finetune_from_missing_model(tmp_path, capsys):
    assert finetune.main(["--from", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "not found" in capsys.readouterr().err


def test_help_documents_every_flag():
    out = subprocess.run([sys.executable, "-m", "training.pretrain", "--help"], capture_output=True, text=True).stdout
    for flag in ("--preset", "--data", "--out", "--steps", "--batch-size", "--seq-len", "--lr", "--strategy",
                 "--precision", "--resume", "--no-resume", "--seed", "--tokenizer", "--vocab-size", "--profile-steps",
                 "--eval-every", "--save-every", "--xla"):
        assert flag in out


def test_pretrain_with_modern_architecture_muon_and_wsd(tmp_path):
    out = str(tmp_path / "modern")
    flags = ["--position", "rope", "--norm", "rmsnorm", "--no-bias", "--qk-norm", "--mlp", "swiglu",
             "--no-tie-embeddings", "--logit-softcap", "15", "--optimizer", "muon", "--schedule", "wsd"]
    assert pretrain.main([*SMALL, "--out", out, "--steps", "8", "--eval-every", "8", *flags]) == 0
    loaded = load_model(out)
    c = loaded.config
    assert (c.position, c.norm, c.bias, c.qk_norm, c.mlp, c.tie_embeddings, c.logit_softcap) == (
        "rope", "rmsnorm", False, True, "swiglu", False, 15.0)
    import json

    run = json.load(open(os.path.join(out, "run.json")))
    assert run["train_config"]["optimizer"] == "muon" and run["train_config"]["schedule"] == "wsd"
    # The saved model generates through the KV-cached loop like any other.
    from tfchat.inference.generation import generate_text

    assert isinstance(generate_text(loaded, prompts=["The history of"], max_new_tokens=4)[0], str)


def test_wikiextractor_directory_as_pretraining_data(tmp_path):
    folder = tmp_path / "text" / "AA"
    folder.mkdir(parents=True)
    import random

    words = "river hill town bridge market church school valley forest road mill castle lake harbour".split()
    rng = random.Random(0)
    with open(folder / "wiki_00", "w") as f:
        for i in range(100):  # distinct articles: the near-duplicate filter keeps them all
            body = " ".join(rng.choice(words) for _ in range(120))
            f.write(f'<doc id="{i}" url="u{i}" title="Place {i}">\nPlace {i}\n\nPlace {i} is a town. {body}.\n</doc>\n')
    out = str(tmp_path / "run")
    assert pretrain.main([*SMALL, "--data", str(tmp_path / "text"), "--out", out, "--steps", "4",
                          "--eval-every", "4"]) == 0
    assert load_model(out).metadata["data"] == str(tmp_path / "text")
