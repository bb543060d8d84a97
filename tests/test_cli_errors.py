"""Every "not found" names the command that creates the missing thing, in one line, with exit code 1 or 2."""

import os
import re

import pytest

from tests.fixtures import tiny_config, tiny_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tfchat.checkpoint.model_dir import save_model
    from tfchat.model import build_gpt

    path = str(tmp_path_factory.mktemp("m") / "model")
    tok = tiny_tokenizer()
    save_model(path, build_gpt(tiny_config(tok)), tok, tiny_config(tok))
    return path


def _cases(tmp, model):
    from serving import chat, client, export, server
    from tfchat import convert
    from training import align, classify, evaluate, finetune, index, pretrain, reward

    missing = str(tmp / "missing")
    train = ["--steps", "1", "--no-progress", "--out", str(tmp / "run")]
    return [
        (finetune.main, ["--from", missing, *train], "python -m training.pretrain --out " + missing),
        (finetune.main, ["--from", model, "--data", missing + ".jsonl", *train], "python -m training.convert_dialogues"),
        (pretrain.main, ["--tokenizer", missing, *train], "python -m training.pretrain"),
        (evaluate.main, ["--model", missing, "--data", "wikipedia-sample"], "python -m training.pretrain --out " + missing),
        (export.main, ["--model", missing, "--out", str(tmp / "exports")], "python -m training.finetune"),
        (server.main, ["--model", missing], "python -m serving.export --model runs/chat --out"),
        (chat.main, ["--model", missing], "python -m serving.export"),
        (chat.main, ["--server", "http://127.0.0.1:9"], "python -m serving.server --model exports/tfchat"),
        (client.main, ["--url", "http://127.0.0.1:9", "hi"], "python -m serving.server --model exports/tfchat"),
        (convert.main, ["--from-hf", missing, "--out", str(tmp / "gpt2")], "hf download"),
        (align.main, ["--from", missing, *train], "python -m training.finetune --out " + missing),
        (align.main, ["--from", model, "--data", missing + ".jsonl", *train], "python -m training.convert_dialogues"),
        (reward.main, ["--from", missing, *train], "python -m training.finetune --out " + missing),
        (classify.main, ["--task", "single-label", "--data", missing + ".jsonl", *train],
         "python -m training.convert_labelled"),
        (index.main, ["--search", "who", "--out", missing], "python -m training.index --out " + missing),
    ]


@pytest.mark.parametrize("case", range(15))
def test_not_found_names_the_command_that_creates_it(case, tmp_path, model_dir, capsys):
    main, argv, command = _cases(tmp_path, model_dir)[case]
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code in (1, 2) and len(errors) == 1 and "Traceback" not in err, err
    assert re.search(r"not found|no such file|cannot reach|no knowledge index", errors[0]), errors
    assert command in errors[0], errors


def _commands() -> list[str]:
    """Every command-line module: those of training/, serving/ and benchmarks/ with `if __name__ == "__main__"`."""
    import glob

    found = ["tfchat.convert"]
    for package in ("training", "serving", "benchmarks"):
        for path in sorted(glob.glob(os.path.join(ROOT, package, "*.py"))):
            with open(path, encoding="utf-8") as f:
                if 'if __name__ == "__main__"' in f.read():
                    found.append(f"{package}.{os.path.basename(path)[:-3]}")
    return found


def test_help_never_imports_tensorflow():
    """`--help` of every command prints without importing TensorFlow (so it is instant): exit 0, usage on
    stdout, nothing on stderr."""
    import subprocess
    import sys

    probe = ("import runpy, sys\n"
             "sys.argv = [sys.argv[1], '--help']\n"
             "try:\n    runpy.run_module(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
             "assert 'tensorflow' not in sys.modules, 'imported tensorflow'\n")
    commands = _commands()
    assert {"training.pretrain", "training.align", "serving.server", "benchmarks.train"} <= set(commands), commands
    for command in commands:
        r = subprocess.run([sys.executable, "-c", probe, command], capture_output=True, text=True, timeout=120,
                           cwd=ROOT)
        assert r.returncode == 0 and "usage:" in r.stdout and not r.stderr, (command, r.stderr[-2000:])


def test_server_help_documents_every_flag_with_its_default(capsys):
    from serving import server

    with pytest.raises(SystemExit):
        server.parser().parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag, default in (("--host", "127.0.0.1"), ("--port", "8501"), ("--max-batch", "8"), ("--batch-wait-ms", "5.0"),
                          ("--max-request-bytes", "1048576"), ("--name", "the export folder's name")):
        assert flag in out and f"(default: {default})" in out, flag
    assert "(default: None)" not in out and "(default: False)" not in out


def test_tensorflow_start_up_messages_are_hidden_unless_verbose(tmp_path):
    """Without --verbose a command prints its one error line and none of TF's C++ start-up lines; with
    --verbose (or TFCHAT_LOG_LEVEL=debug) those come back."""
    import re
    import subprocess
    import sys

    noise = re.compile(r"^[IWE]\d{4} [\d:.]+\s+\d+ \S+:\d+\]|absl::InitializeLog|oneDNN|cpu_feature_guard", re.M)
    env = {k: v for k, v in os.environ.items() if k not in ("TFCHAT_RAW_STDERR", "TF_CPP_MIN_LOG_LEVEL",
                                                             "TFCHAT_LOG_LEVEL")}
    argv = [sys.executable, "-m", "serving.export", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]

    def run(extra_argv=(), **extra_env):
        r = subprocess.run([*argv, *extra_argv], capture_output=True, text=True, timeout=300, cwd=ROOT,
                           env={**env, **extra_env})
        assert r.returncode == 2, r.stderr[-2000:]  # the --model the user named is missing
        return r.stderr

    quiet = run()
    assert [line for line in quiet.splitlines() if line.strip()] == [
        next(line for line in quiet.splitlines() if line.startswith("error:"))], quiet
    for loud in (run(["--verbose"]), run(TFCHAT_LOG_LEVEL="debug")):
        assert noise.search(loud) and "error: model directory not found" in loud, loud[-3000:]


def test_a_graph_error_reads_as_its_message_not_the_stack_where_the_op_was_defined():
    """TF 2.21 may put the Python stack of the failing op ("Detected at node ... defined at") before the
    message (here as `generate` raised it for an empty batch): the one line a command prints is the message."""
    import tensorflow as tf

    from tfchat.cli import error_line

    message = ("Graph execution error:\n\nDetected at node strided_slice_16 defined at (most recent call last):\n"
               '  File "<frozen runpy>", line 198, in _run_module_as_main\n\n'
               '  File "/work/main/tfchat/inference/generation.py", line 243, in prefill\n\n'
               "slice index -1 of dimension 1 out of bounds.\n\t [[{{node strided_slice_16}}]] [Op:__inference_fn_4849]")
    assert error_line(tf.errors.InvalidArgumentError(None, None, message)) == (
        "slice index -1 of dimension 1 out of bounds.")
