"""The terminal chat, local (export loaded in-process) and against a running server."""

import io

import pytest

from serving import chat as chat_cli
from serving.backend import Backend, GenRequest
from serving.app import ServerThread, create_app
from tests.fixtures import tiny_export



@pytest.fixture(scope="module")
def export_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    return tiny_export(root)[1]


@pytest.fixture(scope="module")
def backend(export_path):
    b = Backend(export_path)
    yield b
    b.close()


def expected_replies(backend, turns, system=None, **sampling):
    """What the chat should print: each reply generated from the full history so far."""
    history, replies = [], []
    for turn in turns:
        if turn == "/reset":
            history = []
            continue
        history.append({"role": "user", "content": turn})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        reply = backend.complete(GenRequest(messages=messages, sampling=backend.defaults.replace(**sampling))).text
        history.append({"role": "assistant", "content": reply})
        replies.append(reply)
    return replies


def bot_lines(output: str) -> list[str]:
    return [line[len("bot> "):] for line in output.split("\n") if line.startswith("bot> ")]


SAMPLING = ["--max-tokens", "6", "--temperature", "0.8", "--top-p", "0.9", "--seed", "5"]


def test_local_chat_keeps_history_and_resets(export_path, backend):
    turns = ["Hello", "How are you?", "/reset", "Hello"]
    out = io.StringIO()
    stdin = io.StringIO("\n".join(turns) + "\n/exit\nnever read\n")
    assert chat_cli.main(["--model", export_path, *SAMPLING], stdin=stdin, stdout=out) == 0
    text = out.getvalue()
    want = expected_replies(backend, turns, max_new_tokens=6, temperature=0.8, top_p=0.9, seed=5)
    assert bot_lines(text) == want
    assert want[0] == want[2]  # same seed, history reset: same first answer
    assert "(conversation reset)" in text and text.rstrip().endswith("bye")


def test_remote_chat_streams_from_the_server(backend):
    turns = ["Hello", "Tell me more"]
    with ServerThread(create_app(backend)) as url:
        out = io.StringIO()
        stdin = io.StringIO("/system Be brief.\n" + "\n".join(turns) + "\n")  # EOF ends the session
        assert chat_cli.main(["--server", url, *SAMPLING], stdin=stdin, stdout=out) == 0
    want = expected_replies(backend, turns, system="Be brief.", max_new_tokens=6, temperature=0.8, top_p=0.9, seed=5)
    assert bot_lines(out.getvalue()) == want
    assert "system prompt set" in out.getvalue()


def test_errors_keep_the_session_alive(backend):
    with ServerThread(create_app(backend)) as url:
        out = io.StringIO()
        stdin = io.StringIO("Hello\n/help\n/exit\n")
        assert chat_cli.main(["--server", url, "--max-tokens", "1000"], stdin=stdin, stdout=out) == 0
    text = out.getvalue()
    assert "(error: server error 400" in text and "max_new_tokens" in text
    assert "/reset" in text and text.rstrip().endswith("bye")


def test_bad_model_path_fails_cleanly(tmp_path, capsys):
    assert chat_cli.main(["--model", str(tmp_path / "missing")], stdin=io.StringIO(""), stdout=io.StringIO()) == 1
    assert "export not found" in capsys.readouterr().err


def test_topic_and_style_flags_and_commands(tagged_export):
    """`--topic`, `/style happy`, `/style` (clears), and an unknown value (one line, the chat goes on) against a
    server with a model trained with tags; each reply is the backend's reply with the tags in force, guided by
    `--guidance`."""

    _, path = tagged_export
    backend = Backend(path, fast=False)
    try:
        script = ["Hello", "/style happy", "Hello", "/style grumpy", "/guidance 40", "/guidance", "/tags", "Hello",
                  "/style", "/topic", "Hello"]
        in_force = [{"topic": "sports"}, {"topic": "sports", "style": "happy"}, {"topic": "sports", "style": "happy"},
                    None]
        seen, stream = [], backend.stream_with_logprobs
        backend.stream_with_logprobs = lambda request: (seen.append(request.tags), stream(request))[1]
        with ServerThread(create_app(backend)) as url:
            out = io.StringIO()
            code = chat_cli.main(["--server", url, "--topic", "sports", "--max-tokens", "6", "--temperature", "0",
                                  "--guidance", "20"],
                                 stdin=io.StringIO("\n".join(script) + "\n"), stdout=out)
            assert code == 0
            history, want = [], []
            for tags, guidance in zip(in_force, [20, 20, 1, 1]):  # /guidance alone: back to the default
                history.append({"role": "user", "content": "Hello"})
                done = backend.complete(GenRequest(messages=list(history), tags=tags,
                                                   sampling=backend.defaults.replace(max_new_tokens=6, temperature=0,
                                                                                     guidance=guidance)))
                history.append({"role": "assistant", "content": done.text})
                want.append(done.text)
        text = out.getvalue()
        assert seen == in_force  # what reached the server's backend
        assert bot_lines(text) == want
        assert "(style: happy)" in text and "(style cleared)" in text and "(topic cleared)" in text
        assert "(unknown style 'grumpy'; known: happy, sad)" in text
        assert "(guidance: expected a number in 0 .. 30 (1 = off), got 40; it stays as it was)" in text
        assert "(guidance: the default)" in text
        assert "(tags: topic: sports, style: happy; known: style: happy, sad; topic: music, sports)" in text
    finally:
        backend.close()


def test_a_tag_flag_for_a_model_without_tags_fails_cleanly(backend, capsys):
    """A one-line usage error before the chat starts; `/style` in the chat says the same and the chat goes on."""
    with ServerThread(create_app(backend)) as url:
        out = io.StringIO()
        code = chat_cli.main(["--server", url, "--style", "happy"], stdin=io.StringIO("Hi\n"), stdout=out)
        assert code == 2 and "--style happy: this model was trained without tags" in capsys.readouterr().err
        with pytest.raises(SystemExit) as e:
            chat_cli.main(["--server", url, "--style", "happy", "--guidance", "40"], stdin=io.StringIO(""), stdout=out)
        assert e.value.code == 2 and "expected a number in 0 .. 30 (1 = off), got 40" in capsys.readouterr().err
        assert out.getvalue() == ""  # no chat started
        out = io.StringIO()
        assert chat_cli.main(["--server", url, "--max-tokens", "2"], stdin=io.StringIO("/style happy\nHi\n"),
                             stdout=out) == 0
    assert "(this model was trained without tags)" in out.getvalue() and len(bot_lines(out.getvalue())) == 1


def test_a_seed_beyond_int32_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        chat_cli.main(["--server", "http://127.0.0.1:1", "--seed", str(2**64)])
    assert info.value.code == 2 and "expected an integer in -2147483648 .. 2147483647" in capsys.readouterr().err


def test_max_tokens_beyond_the_context_is_a_usage_error_at_start(export_path, capsys):
    out = io.StringIO()
    assert chat_cli.main(["--model", export_path, "--max-tokens", "99999"], stdin=io.StringIO("Hello\n"),
                         stdout=out) == 2
    assert "max_new_tokens must be an integer in 1 .." in capsys.readouterr().err and "bot>" not in out.getvalue()


def test_a_line_that_is_not_utf8_is_skipped_with_a_note():
    out = io.StringIO()
    chat_cli.run(object(), io.StringIO("\udcff\udcfe bad\n/exit\n"), out)  # no model call: any chat will do
    assert "(that line is not UTF-8 text; nothing was sent)" in out.getvalue()
