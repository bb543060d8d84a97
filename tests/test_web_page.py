"""The web chat at `/`, end to end in a real headless Chromium (Debian's) driven by Playwright."""

import json
import shutil

import pytest

from serving.backend import Backend
from serving.server import ServerThread, create_app
from tests.fixtures import tiny_export

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    _, export_path = tiny_export(tmp_path_factory.mktemp("web"))
    backend = Backend(export_path)
    server = ServerThread(create_app(backend))
    yield server.start()
    server.stop()
    backend.close()


@pytest.fixture()
def page(url, tmp_path):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context()
        page = context.new_page()
        page.sent = []  # request bodies the page POSTed to the chat API
        page.on("request", lambda r: page.sent.append(json.loads(r.post_data))
                if r.url.endswith("/v1/chat/completions") else None)
        page.goto(url + "/")
        yield page
        browser.close()


def _say(page, text, replies_before):
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as response:
        page.fill("#input", text)
        page.press("#input", "Enter")
    response.value.finished()  # the whole event stream has arrived
    page.wait_for_function(
        "n => document.querySelectorAll('.msg.assistant, .msg.err').length > n", arg=replies_before)
    page.wait_for_timeout(200)  # the page's reader loop handles the last chunk


def test_multi_turn_streaming_controls_and_new_chat(page, tmp_path):
    assert "tfchat" in page.title()
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "8")
    _say(page, "Hello there", 0)
    bubbles = page.locator(".msg.assistant")
    assert bubbles.count() == 1
    assert bubbles.first.inner_text().startswith("Bot: ") and len(bubbles.first.inner_text()) > len("Bot: ")
    first = page.sent[-1]
    assert first["stream"] is True and first["messages"] == [{"role": "user", "content": "Hello there"}]
    assert first["temperature"] == 0 and first["max_tokens"] == 8

    # Second turn carries the history, and the changed controls.
    page.fill("#temperature", "0.3")
    page.fill("#max_tokens", "5")
    _say(page, "How are you?", 1)
    assert page.locator(".msg.assistant").count() == 2
    second = page.sent[-1]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["messages"][1]["content"] == bubbles.first.inner_text()[len("Bot: "):]
    assert second["temperature"] == pytest.approx(0.3) and second["max_tokens"] == 5

    shot = tmp_path / "chat.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000

    # New chat: the log and the history are cleared.
    page.click("#reset")
    assert page.locator(".msg").count() == 0
    _say(page, "Fresh start", 0)
    assert page.sent[-1]["messages"] == [{"role": "user", "content": "Fresh start"}]


def test_server_error_is_shown_to_the_user(page):
    page.fill("#max_tokens", "100000")  # beyond the context: the server answers 400
    _say(page, "Hello", 0)
    error = page.locator(".msg.err")
    assert error.count() == 1
    assert error.first.inner_text().startswith("Error: ")
    assert "100000" in error.first.inner_text()  # says what was wrong
    # The failed turn is not kept: the next request holds only the new message.
    page.fill("#max_tokens", "4")
    _say(page, "Again", 1)
    assert page.sent[-1]["messages"] == [{"role": "user", "content": "Again"}]
