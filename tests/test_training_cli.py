"""`python -m training.pretrain` / `training.finetune` end to end at small sizes, and their bad inputs."""

import math
import os
import subprocess
import sys

import pytest

from tfchat.checkpoint.model_dir import load_model
from tests.fixtures import free_ports
from training import finetune, pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = ["--preset", "tiny", "--data", "wikipedia-sample", "--vocab-size", "512", "--seq-len", "32",
         "--batch-size", "8", "--eval-batches", "4", "--warmup-steps", "5", "--no-progress", "--precision", "fp32",
         "--lr", "3e-3"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "pretrain")
    code = pretrain.main([*SMALL, "--out", out, "--steps", "60", "--eval-every", "30"])
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


def test_rerun_of_a_finished_run_reports_its_figures(pretrained, capsys):
    """A re-run of a finished run trains nothing, says so with the figures it recorded, exits 0 and names
    the next commands."""
    import re

    before = sorted(os.listdir(os.path.join(pretrained, "checkpoints")))
    assert pretrain.main([*SMALL, "--out", pretrained, "--steps", "60", "--eval-every", "30"]) == 0
    err = capsys.readouterr().err
    recorded = load_model(pretrained).metadata
    found = re.search(r"already complete at step 60: train loss ([\d.]+), held-out loss ([\d.]+)", err)
    assert found, err
    assert abs(float(found.group(1)) - recorded["loss"]) < 1e-3 and abs(float(found.group(2)) - recorded["val_loss"]) < 1e-3
    assert "nan" not in err and "0 tokens/s" not in err
    assert f"Next:\n  tensorboard --logdir {os.path.join(pretrained, 'logs')}" in err
    assert f"python -m training.finetune --from {pretrained}" in err
    assert sorted(os.listdir(os.path.join(pretrained, "checkpoints"))) == before


@pytest.mark.parametrize("flag,value,recorded,given", [("--seq-len", "16", "32", "16"),
                                                       ("--lr", "1e-3", "0.003", "0.001")])
def test_resume_refuses_another_seq_len_or_lr(pretrained, tmp_path, capsys, flag, value, recorded, given):
    import shutil

    run = str(tmp_path / "copy")
    shutil.copytree(pretrained, run)
    argv = [*SMALL, "--out", run, "--steps", "61"]
    argv[argv.index(flag) + 1] = value
    assert pretrain.main(argv) == 1
    err = capsys.readouterr().err
    assert f"was started with {flag} {recorded}" in err and f"gives {flag} {given}" in err, err
    assert load_model(run).metadata["step"] == 60


def test_resume_with_other_flags_is_refused_unless_override(pretrained, tmp_path, capsys):
    import json
    import shutil

    run = str(tmp_path / "copy")
    shutil.copytree(pretrained, run)
    before = sorted(os.listdir(os.path.join(run, "checkpoints")))
    changed = [*SMALL, "--out", run, "--steps", "61", "--batch-size", "4"]
    assert pretrain.main(changed) == 1
    err = capsys.readouterr().err
    assert "was started with --batch-size 8" in err and "gives --batch-size 4" in err and "--override" in err
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == before
    with open(os.path.join(run, "run.json")) as f:
        assert json.load(f)["train_config"]["batch_size"] == 8  # the record is untouched
    assert pretrain.main([*changed, "--override"]) == 0
    with open(os.path.join(run, "run.json")) as f:
        record = json.load(f)
    assert record["train_config"]["batch_size"] == 4
    assert record["overrides"] == [{"step": 60, "changes": {"batch_size": [8, 4]}}]
    assert load_model(run).metadata["step"] == 61


def test_another_stage_cannot_resume_a_run_even_with_override(pretrained, tmp_path, capsys):
    import shutil

    run = str(tmp_path / "copy")
    shutil.copytree(pretrained, run)
    before = sorted(os.listdir(os.path.join(run, "checkpoints")))
    argv = ["--from", pretrained, "--out", run, "--steps", "61", "--batch-size", "4", "--seq-len", "32",
            "--precision", "fp32", "--resume"]
    for extra in ([], ["--override"]):
        assert finetune.main([*argv, *extra]) == 1
        err = capsys.readouterr().err
        assert f"{run} is a pretrain run; this command is finetune: choose another --out" in err, err
        assert "cannot restore" not in err
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == before
    assert load_model(run).metadata["job"] == "pretrain"


def test_finetune_from_pretrained(pretrained, tmp_path, capsys):
    out = str(tmp_path / "chat")
    code = finetune.main(["--from", pretrained, "--out", out, "--steps", "6", "--batch-size", "4", "--seq-len", "32",
                          "--eval-every", "3", "--eval-batches", "2", "--precision", "fp32"])
    assert code == 0
    err = capsys.readouterr().err
    # One bar per command: the training bar (unit "step"), none of its own for tokenizing ("msg", "it").
    assert "step/s" in err and not any(unit in err for unit in ("msg/s", "s/msg", "it/s", "s/it", "tokenizing"))
    assert "held-out loss" in err  # shown when evaluated
    chat = load_model(out)
    assert chat.metadata["job"] == "finetune"
    assert chat.tokenizer.special_ids == load_model(pretrained).tokenizer.special_ids
    # The default data tags Topical-Chat replies: the vocabulary is stored with the model.
    assert chat.metadata["tag_dropout"] == 0.2 and len(chat.metadata["tags"]["topic"]) == 8
    assert chat.tags.ids({"topic": "music", "style": "happy"})
    # Fine-tuning a tagged model further keeps its vocabulary: data with a value it lacks is refused up front.
    cooking = tmp_path / "cooking.jsonl"
    cooking.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], '
                       '"tags": {"topic": "cooking"}}\n')
    capsys.readouterr()
    assert finetune.main(["--from", out, "--data", str(cooking), "--out", str(tmp_path / "more"), "--steps", "1",
                          "--no-progress"]) == 1
    assert "the data tags topic cooking, which the model's tag vocabulary lacks" in capsys.readouterr().err


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


def _readme_multiworker_commands():
    """The README's two-process example: [(TF_CONFIG dict, argv)] in the order it starts them."""
    import json
    import shlex

    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = readme.split("<!-- multi-worker example: run by tests/test_training_cli.py -->", 1)[1]
    block = block.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    commands = []
    for line in block.splitlines():
        words = shlex.split(line)
        if words and words[0].startswith("TF_CONFIG="):
            commands.append((json.loads(words[0][len("TF_CONFIG="):]), [w for w in words[1:] if w != "&"]))
    return commands


def test_readme_multiworker_example_two_processes_agree(tmp_path):
    """Two `python -m training.pretrain` workers on loopback, started as the README shows (with free ports
    and a temporary --out): both finish with the same figures, only the chief writes the run, the other
    leaves no temporary directory, and neither prints TF's start-up noise."""
    import json
    import re

    commands = _readme_multiworker_commands()
    assert [c["task"]["index"] for c, _ in commands] == [1, 0]
    ports = dict(zip(("127.0.0.1:12345", "127.0.0.1:12346"), (f"127.0.0.1:{p}" for p in free_ports(2))))
    scratch, out = tmp_path / "tmp", str(tmp_path / "two-workers")
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "TFCHAT_RAW_STDERR"}  # the real stderr filter
    env["TMPDIR"] = str(scratch)
    procs = {}
    for tf_config, argv in commands:
        tf_config["cluster"]["worker"] = [ports[a] for a in tf_config["cluster"]["worker"]]
        assert argv[:3] == ["python", "-m", "training.pretrain"] and argv[argv.index("--precision") + 1] == "auto"
        argv = [sys.executable, *argv[1:]]
        argv[argv.index("--out") + 1] = out
        procs[tf_config["task"]["index"]] = subprocess.Popen(
            argv, cwd=ROOT, env={**env, "TF_CONFIG": json.dumps(tf_config)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {i: p.communicate(timeout=600) for i, p in procs.items()}
    for i, p in procs.items():
        assert p.returncode == 0, results[i][1][-3000:]
    figures = {i: re.search(r"step 10, train loss ([\d.]+), held-out loss ([\d.]+)", err) for i, (_, err) in results.items()}
    assert figures[0] and figures[1] and figures[0].groups() == figures[1].groups(), results
    with open(os.path.join(out, "run.json")) as f:
        record = json.load(f)
    assert record["strategy"] == "CollectiveAllReduceStrategy" and record["replicas"] == 2  # MultiWorkerMirrored
    assert record["train_config"]["precision"] in ("bf16", "fp32", "fp16")
    loaded = load_model(out)
    assert loaded.metadata["step"] == 10 and abs(loaded.metadata["loss"] - float(figures[0].group(1))) < 1e-3
    assert not [n for n in os.listdir(scratch) if "tfchat" in n], os.listdir(scratch)
    for _, err in results.values():
        # C++ log lines (absl's format with a thread id), absl's banner, oneDNN/CUDA probing, tracebacks
        assert not re.search(r"^[IWE]\d{4} [\d:.]+\s+\d+ |absl::InitializeLog|oneDNN|cuda|Traceback", err, re.M), err[-3000:]


def test_log_lines_print_above_the_progress_bar(tmp_path):
    """With the bar on (the default) and the real stderr filter: one bar, every log line at the start of
    its own line (never inside the bar's line), the held-out loss both logged and in the bar's postfix."""
    import re

    env = {k: v for k, v in os.environ.items() if k != "TFCHAT_RAW_STDERR"}
    argv = [a for a in SMALL if a != "--no-progress"]
    r = subprocess.run([sys.executable, "-m", "training.pretrain", *argv, "--steps", "6", "--eval-every", "3",
                        "--save-every", "3", "--log-every", "2", "--out", str(tmp_path / "run")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    err = r.stderr
    log_line = r"[IWE]\d{4} \d\d:\d\d:\d\d \S+\.py:\d+\] "
    assert len(re.findall(log_line + r"step \d+: held-out loss", err)) == 2, err
    assert not re.search(r"[^\r\n]" + log_line, err), err  # a log line never continues a bar's line
    assert len(re.findall(r"\| 0/6 \[", err)) == 1, err  # one bar
    assert re.search(r"\| 6/6 \[[^\]]*, loss=[\d.]+, val=[\d.]+", err), err  # held-out loss in the postfix


def test_an_empty_held_out_split_fails_before_training(pretrained, tmp_path, capsys):
    """50 copies of one conversation leave the held-out split empty: refused before step 1, not after the
    steps up to the first evaluation (whose training was then lost)."""
    import json

    data = tmp_path / "same.jsonl"
    line = json.dumps({"messages": [{"role": "user", "content": "Hello there"},
                                    {"role": "assistant", "content": "Hi! How are you?"}]})
    data.write_text((line + "\n") * 50)
    out = tmp_path / "chat"
    assert finetune.main(["--from", pretrained, "--data", str(data), "--out", str(out), "--steps", "30",
                          "--batch-size", "2", "--seq-len", "32", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "no conversations in the 'validation' split" in err, err[-2000:]
    assert not (out / "run.json").exists() and not (out / "logs").exists()  # refused before training began


def test_pretrain_refuses_another_stages_run_before_writing_into_it(tmp_path, capsys):
    out = tmp_path / "chat"
    out.mkdir()
    (out / "run.json").write_text('{"job": "finetune"}')
    assert pretrain.main([*SMALL, "--out", str(out), "--steps", "2"]) == 1
    assert f"{out} is a finetune run; this command is pretrain: choose another --out" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["run.json"]  # no tokenizer


def test_interrupted_before_a_checkpoint_does_not_claim_one(tmp_path, capsys):
    from training import cli as training_cli

    def interrupted():
        raise KeyboardInterrupt

    args = type("Args", (), {"out": str(tmp_path / "run"), "verbose": False})()
    code = training_cli.run_job(interrupted, args, lambda out: [])
    err = capsys.readouterr().err
    assert code != 0 and "nothing was saved to resume from" in err and "is saved" not in err, err
