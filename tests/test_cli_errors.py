"""Every "not found" names the command that creates the missing thing, in one line, with exit code 1 or 2."""

import pytest

from tests.fixtures import tiny_config, tiny_tokenizer


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
    from training import evaluate, finetune, pretrain

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
    ]


@pytest.mark.parametrize("case", range(10))
def test_not_found_names_the_command_that_creates_it(case, tmp_path, model_dir, capsys):
    main, argv, command = _cases(tmp_path, model_dir)[case]
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code in (1, 2) and len(errors) == 1 and "Traceback" not in err, err
    assert ("not found" in errors[0] or "no such file" in errors[0] or "cannot reach" in errors[0]), errors
    assert command in errors[0], errors


COMMANDS = ["training.pretrain", "training.finetune", "training.evaluate", "training.convert_dialogues",
            "serving.export", "serving.server", "serving.chat", "serving.client", "tfchat.convert"]


def test_help_never_imports_tensorflow():
    """`--help` of every command prints without importing TensorFlow (so it is instant), and exits 0."""
    import subprocess
    import sys

    probe = ("import runpy, sys\n"
             "sys.argv = [sys.argv[1], '--help']\n"
             "try:\n    runpy.run_module(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
             "assert 'tensorflow' not in sys.modules, 'imported tensorflow'\n")
    for command in COMMANDS:
        r = subprocess.run([sys.executable, "-c", probe, command], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "usage:" in r.stdout, (command, r.stderr[-2000:])


def test_server_help_documents_every_flag_with_its_default(capsys):
    from serving import server

    with pytest.raises(SystemExit):
        server.parser().parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag, default in (("--host", "127.0.0.1"), ("--port", "8501"), ("--max-batch", "8"), ("--batch-wait-ms", "5.0"),
                          ("--max-request-bytes", "1048576"), ("--name", "the export folder's name")):
        assert flag in out and f"(default: {default})" in out, flag
    assert "(default: None)" not in out and "(default: False)" not in out
