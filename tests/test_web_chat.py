"""The web chat page at `/`, driven end to end in a real headless Chromium.

Debian's `chromium` (apt-get install chromium) is driven by Playwright for Python
(`pip install playwright`; its own browser download, `playwright install`, is not
needed). A tiny random model is exported and served by `ServerThread` on a free
127.0.0.1 port; every `/v1/chat/completions` request body the page sends is
recorded, so the tests check what the page asks for as well as what it shows.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from serving.backend import Backend
from serving.app import ServerThread, create_app
from tests.fixtures import tiny_export

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(sync_playwright is None,
                       reason="Playwright for Python is not installed (pip install playwright)"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium)"),
]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
API = "/v1/chat/completions"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, backend, export path) of a live server around a tiny exported model."""
    _, export_path = tiny_export(tmp_path_factory.mktemp("web_chat"))
    backend = Backend(export_path)
    server = ServerThread(create_app(backend), host="127.0.0.1", port=0)  # port 0: a free one
    url = server.start()
    yield url, backend, export_path
    server.stop()
    backend.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with sync_playwright() as p:
        # A persistent context is how a fresh --user-data-dir is given to Chromium.
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 900, "height": 800})
        yield context
        context.close()


class Chat:
    """The page plus the chat requests it sent (parsed JSON bodies) and their SSE responses."""

    def __init__(self, page, url):
        self.page, self.url, self.sent, self.responses = page, url, [], []
        page.on("request", self._on_request)
        page.on("console", lambda m: m.type == "error" and print("console:", m.text))

    def _on_request(self, request):
        if request.url.endswith(API) and request.method == "POST":
            self.sent.append(json.loads(request.post_data))

    def open(self, url=None):
        self.page.goto((url or self.url) + "/")
        self.page.wait_for_selector("#input")
        return self

    def say(self, text, *, click=False, timeout=20_000):
        """Sends `text` and waits until the page shows the whole reply (or an error); returns the response."""
        page = self.page
        errors_before = page.locator(".msg.err").count()
        with page.expect_response(lambda r: r.url.endswith(API), timeout=timeout) as info:
            page.fill("#input", text)
            page.click("#send") if click else page.press("#input", "Enter")
        response = info.value
        response.finished()  # the whole body (the event stream) has arrived
        self.responses.append(response)
        reply, chunks = _streamed_text(response) if response.status == 200 else (None, [])
        if reply is None or any("error" in c for c in chunks):  # the page must show an error
            page.wait_for_function("n => document.querySelectorAll('.msg.err').length > n",
                                   arg=errors_before, timeout=timeout)
        else:  # the page must show exactly the streamed text in the last assistant bubble
            page.wait_for_function(
                "t => { const b = document.querySelectorAll('.msg.assistant');"
                " return b.length > 0 && b[b.length - 1].textContent === t; }",
                arg="Bot: " + reply, timeout=timeout)
        page.wait_for_timeout(100)  # margin for the page to record the turn once its reader reports the end
        return response

    def bubbles(self, kind):
        return self.page.locator(f".msg.{kind}").all_text_contents()  # exact text, whitespace included


@pytest.fixture()
def chat(browser, served):
    page = browser.new_page()
    yield Chat(page, served[0]).open()
    page.close()


def _streamed_text(response) -> tuple[str, list[dict]]:
    """The assistant text of an SSE chat response and its parsed events."""
    body = response.text()
    events = [line[6:] for line in body.split("\n") if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", body[-300:]
    chunks = [json.loads(e) for e in events[:-1]]
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if "choices" in c), chunks


def test_multi_turn_chat_with_controls_and_new_chat(chat, tmp_path):
    page = chat.page
    assert "tfchat" in page.title() and "tfchat" in page.inner_text("h2")
    assert page.locator(".msg").count() == 0

    # Turn 1 (greedy, so the tiny model's reply is deterministic and non-empty), sent with the button.
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "8")
    response = chat.say("Hello there", click=True)
    assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert chat.bubbles("user") == ["You: Hello there"]
    replies = chat.bubbles("assistant")
    assert len(replies) == 1 and replies[0].startswith("Bot: ")
    first_reply = replies[0][len("Bot: "):]
    streamed, chunks = _streamed_text(response)
    assert first_reply.strip() and first_reply == streamed  # what was streamed is what is shown
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert page.input_value("#input") == ""
    assert len(chat.sent) == 1
    assert chat.sent[0]["stream"] is True
    assert chat.sent[0]["messages"] == [{"role": "user", "content": "Hello there"}]
    assert chat.sent[0]["temperature"] == 0 and chat.sent[0]["max_tokens"] == 8

    # Turn 2 (Enter key): the request carries the whole history, and the changed controls.
    page.fill("#temperature", "0.7")
    page.fill("#max_tokens", "5")
    chat.say("How are you?")
    second = chat.sent[-1]
    assert second["messages"] == [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": first_reply},
        {"role": "user", "content": "How are you?"},
    ]
    assert second["temperature"] == pytest.approx(0.7) and second["max_tokens"] == 5
    assert second["top_p"] == pytest.approx(0.95)  # untouched control: the page's default
    assert len(chat.bubbles("assistant")) == 2
    assert chat.bubbles("user") == ["You: Hello there", "You: How are you?"]
    second_reply = chat.bubbles("assistant")[1][len("Bot: "):]
    assert second_reply == _streamed_text(chat.responses[-1])[0]
    assert page.locator(".msg.err").count() == 0

    # A system prompt goes first, ahead of the history.
    page.fill("#system", "Be brief.")
    page.fill("#temperature", "0")
    chat.say("Bye")
    third = chat.sent[-1]
    assert [m["role"] for m in third["messages"]] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert third["messages"][0] == {"role": "system", "content": "Be brief."}
    assert third["messages"][3]["content"] == "How are you?" and third["messages"][4]["content"] == second_reply
    assert len(chat.bubbles("assistant")) == 3

    shot = tmp_path / "web_chat.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data[:8] == PNG and len(data) > 5000

    # New chat: the log is emptied and the next request holds only the new message.
    page.fill("#system", "")
    page.click("#reset")
    assert page.locator(".msg").count() == 0
    chat.say("Fresh start")
    assert chat.sent[-1]["messages"] == [{"role": "user", "content": "Fresh start"}]
    assert chat.sent[-1]["temperature"] == 0 and chat.sent[-1]["max_tokens"] == 5  # controls survive a new chat
    assert chat.bubbles("user") == ["You: Fresh start"] and len(chat.bubbles("assistant")) == 1


def test_reply_is_rendered_while_it_streams(chat, served, monkeypatch):
    """With decoding slowed down, the bubble grows piece by piece before the stream ends."""
    _, backend, _ = served
    decode = backend.signatures["decode"]

    def slow_decode(**inputs):
        time.sleep(0.12)
        return decode(**inputs)

    monkeypatch.setitem(backend.signatures, "decode", slow_decode)
    page = chat.page
    page.evaluate("""() => {
        window.seen = [];
        window.sendDisabledMidStream = false;
        new MutationObserver(() => {
            if (document.querySelectorAll('.msg.assistant').length) {
                window.sendDisabledMidStream ||= document.getElementById('send').disabled;
            }
            const b = document.querySelectorAll('.msg.assistant');
            const t = b.length ? b[b.length - 1].textContent : null;
            if (t !== null && window.seen[window.seen.length - 1] !== t) window.seen.push(t);
        }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
    }""")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "12")
    chat.say("Hello there")
    final = chat.bubbles("assistant")[-1]
    seen = [t for t in page.evaluate("window.seen") if t != "Bot: "]
    assert seen and seen[-1] == final
    assert len(seen) >= 3, seen  # several partial renderings, not one at the end
    for shorter, longer in zip(seen, seen[1:]):
        assert longer.startswith(shorter) and len(longer) > len(shorter)
    # No second send while a reply streams; the controls come back once it has ended.
    assert page.evaluate("window.sendDisabledMidStream")
    page.wait_for_function("() => !document.getElementById('send').disabled && !document.getElementById('input').disabled")


def test_rejected_request_is_shown_and_not_kept(chat, served):
    """A 400 from the API (max tokens beyond the context) is shown, and the failed turn is dropped."""
    page = chat.page
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "100000")
    response = chat.say("Hello")
    assert response.status == 400
    errors = chat.bubbles("err")
    assert len(errors) == 1 and errors[0].startswith("Error: ")
    assert "max_new_tokens" in errors[0] and "100000" in errors[0], errors[0]
    assert page.locator(".msg.assistant").count() == 0
    page.fill("#max_tokens", "4")
    chat.say("Again")
    assert chat.sent[-1]["messages"] == [{"role": "user", "content": "Again"}]
    assert page.locator(".msg.assistant").count() == 1 and len(chat.bubbles("err")) == 1


def test_failure_mid_stream_is_shown(chat, served, monkeypatch):
    """A model error after the stream began (sent in-band as an SSE error event) replaces the partial reply."""
    _, backend, _ = served
    decode, calls = backend.signatures["decode"], []

    def failing_decode(**inputs):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("simulated decode failure")
        return decode(**inputs)

    monkeypatch.setitem(backend.signatures, "decode", failing_decode)
    page = chat.page
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "10")
    response = chat.say("Hello there")
    assert response.status == 200  # headers were already sent: the error comes in the stream
    _, chunks = _streamed_text(response)
    assert any("error" in c for c in chunks)
    errors = chat.bubbles("err")
    assert errors == ["Error: simulated decode failure"]
    assert page.locator(".msg.assistant").count() == 0
    monkeypatch.undo()
    chat.say("Again")  # the failed turn is not part of the history
    assert chat.sent[-1]["messages"] == [{"role": "user", "content": "Again"}]
    assert page.locator(".msg.assistant").count() == 1


def test_stopped_model_is_reported(browser, served):
    """With the model stopped the server fails (a plain-text 500); the page says so instead of hanging."""
    _, _, export_path = served
    backend = Backend(export_path)
    server = ServerThread(create_app(backend))
    url = server.start()
    page = browser.new_page()
    try:
        chat = Chat(page, url).open()
        page.fill("#max_tokens", "4")
        chat.say("Hello")
        assert page.locator(".msg.assistant").count() == 1 and not chat.bubbles("err")
        backend.close()  # the model is gone; the HTTP server is still up
        response = chat.say("Still there?")
        assert response.status == 500
        errors = chat.bubbles("err")
        assert len(errors) == 1 and errors[0].startswith("Error: ") and "500" in errors[0], errors
        assert "JSON" not in errors[0]  # the status, not a parse failure of the plain-text body
    finally:
        page.close()
        server.stop()
        backend.close()
