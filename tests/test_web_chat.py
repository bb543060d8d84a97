"""The web chat page at `/`, driven end to end in a real headless Chromium.

Debian's `chromium` (apt-get install chromium) is driven by Playwright for Python
(`pip install playwright`; its own browser download, `playwright install`, is not
needed). A tiny random model is exported and served by `ServerThread` on a free
127.0.0.1 port; every `/v1/chat/completions` request body the page sends is
recorded, so the tests check what the page asks for as well as what it shows.
Where a test needs particular model output (Markdown, hostile HTML, a
content-filter stop), `scripted` makes the served backend stream given text
through the real server path (routes, SSE, the page's reader).

TFCHAT_SCREENSHOT=docs/web-chat.png writes the README's screenshot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import pytest

from serving.app import ServerThread, create_app
from serving.backend import Backend, Completion
from tests.fixtures import before_each_decode, tiny_export
from tfchat.data.dialogues import load_conversations, write_messages_jsonl
from tfchat.data.io import ReadStats

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
MARKUP = re.compile(r"[`*_~#>|\[\]<\\-]|^\s*\d+[.)]", re.M)  # text that Markdown would change
IDLE = "() => document.getElementById('log').getAttribute('aria-busy') !== 'true'"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, backend, export path) of a live server around a tiny exported model."""
    _, export_path = tiny_export(tmp_path_factory.mktemp("web_chat"))
    backend = Backend(export_path)
    backend.warmup()  # as serving.server does: no XLA compilation in the middle of a test's timing
    server = ServerThread(create_app(backend), host="127.0.0.1", port=0)  # port 0: a free one
    url = server.start()
    yield url, backend, export_path
    server.stop()
    backend.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory, served):
    with sync_playwright() as p:
        # A persistent context is how a fresh --user-data-dir is given to Chromium.
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 900, "height": 800}, accept_downloads=True)
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=served[0])
        yield context
        context.close()


class Chat:
    """The page plus the chat requests it sent (parsed JSON bodies), their SSE responses, and every URL it fetched."""

    def __init__(self, page, url):
        self.page, self.url, self.sent, self.responses, self.fetched = page, url, [], [], []
        page.on("request", self._on_request)
        page.on("console", lambda m: m.type == "error" and print("console:", m.text))
        page.on("pageerror", lambda e: print("pageerror:", e))

    def _on_request(self, request):
        self.fetched.append(request.url)
        if request.url.endswith(API) and request.method == "POST":
            self.sent.append(json.loads(request.post_data))

    def open(self, url=None):
        self.page.goto((url or self.url) + "/")
        self.page.wait_for_selector("#input")
        return self

    def settings(self, **values):
        """Fills settings fields (opening the panel first)."""
        if self.page.is_hidden("#settings"):
            self.page.click("#toggle-settings")
        for name, value in values.items():
            self.page.fill("#" + name, str(value))

    def say(self, text, *, click=False, timeout=20_000):
        """Sends `text` and waits until the page has shown the whole reply (or an error); returns the response."""
        page = self.page
        errors_before = page.locator(".msg.err").count()
        with page.expect_response(lambda r: r.url.endswith(API), timeout=timeout) as info:
            page.fill("#input", text)
            page.click("#send") if click else page.press("#input", "Enter")
        response = info.value
        response.finished()  # the whole body (the event stream) has arrived
        self.responses.append(response)
        page.wait_for_function(IDLE, timeout=timeout)
        reply, chunks = _streamed_text(response) if response.status == 200 else (None, [])
        if reply is None or any("error" in c for c in chunks):  # the page must show an error
            assert page.locator(".msg.err").count() > errors_before
        else:  # the conversation stores exactly the streamed text, and plain text shows as streamed
            last = self.stored()["messages"][-1]
            assert (last["role"], last["content"]) == ("assistant", reply)
            if not MARKUP.search(reply):
                assert _squash(self.replies()[-1]) == _squash(reply)
        return response

    def wait_idle(self, timeout=20_000):
        self.page.wait_for_function(IDLE, timeout=timeout)

    def start(self, text):
        """Sends `text` and returns once the reply's first text shows (the stream still running)."""
        n = self.page.locator(".msg.assistant").count()
        with self.page.expect_response(lambda r: r.url.endswith(API)):
            self.page.fill("#input", text)
            self.page.press("#input", "Enter")
        self.page.wait_for_function("n => document.querySelectorAll('.msg.assistant .body')[n]?.textContent", arg=n)

    def act(self, selector):
        """Clicks what asks for a reply (Regenerate, an edit's Send) and waits until the reply has ended."""
        with self.page.expect_response(lambda r: r.url.endswith(API)):
            self.page.click(selector)
        self.wait_idle()

    def reload(self):
        self.page.reload()
        self.page.wait_for_selector("#input")

    def replies(self):
        return self.page.locator(".msg.assistant .body").all_inner_texts()

    def users(self):
        return self.page.locator(".msg.user .body").all_text_contents()  # exact text, whitespace included

    def errors(self):
        return self.page.locator(".msg.err").all_text_contents()

    def titles(self):
        return self.page.locator("#conversations .open").all_text_contents()

    def stored(self, index=None):
        """The open conversation as the page keeps it in localStorage (or the `index`-th newest)."""
        return self.page.evaluate("""i => {
            const all = Object.keys(localStorage).filter(k => k.startsWith('tfchat.conversation.'))
                .map(k => JSON.parse(localStorage.getItem(k))).sort((a, b) => b.updated - a.updated);
            const current = localStorage.getItem('tfchat.current');
            return i === null ? all.find(c => c.id === current) : all[i];
        }""", index)


@pytest.fixture()
def chat(browser, served):
    page = browser.new_page()
    chat = Chat(page, served[0]).open()
    page.evaluate("localStorage.clear()")  # every test starts with no conversations
    chat.open()
    yield chat
    page.close()


def _streamed_text(response) -> tuple[str, list[dict]]:
    """The assistant text of an SSE chat response and its parsed events."""
    body = response.text()
    events = [line[6:] for line in body.split("\n") if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", body[-300:]
    chunks = [json.loads(e) for e in events[:-1]]
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices")), chunks


def _squash(text: str) -> str:
    """Text with runs of whitespace as one space (what rendering as HTML preserves)."""
    return re.sub(r"\s+", " ", text).strip()


def scripted(monkeypatch, backend, *replies, finish="stop", delay=0.0):
    """The served model's next streamed replies are `replies`, sent in 3-character pieces (so markup is split
    across chunks) through the real route and SSE encoder; each request is still validated as usual."""
    queue = list(replies)

    def stream_with_logprobs(request):
        backend.validate(request)
        text = queue.pop(0)
        pieces = [text[i:i + 3] for i in range(0, len(text), 3)]
        request.future.set_result(Completion(text, list(range(len(pieces))), finish, 0))

        def emit():
            for piece in pieces:
                time.sleep(delay)
                yield piece, []

        return emit()

    monkeypatch.setattr(backend, "stream_with_logprobs", stream_with_logprobs)


# ---------------------------------------------------------------------------------------------- chatting


def test_multi_turn_chat_with_settings_and_new_chat(chat, tmp_path):
    page = chat.page
    assert page.title() == "tfchat" and page.inner_text("h1") == "tfchat"  # the model's name, once
    assert page.is_hidden("#model")  # one model: no picker
    assert page.locator(".msg").count() == 0

    # Turn 1 (greedy, so the tiny model's reply is deterministic and non-empty), sent with the button.
    chat.settings(temperature=0, max_tokens=8)
    response = chat.say("Hello there", click=True)
    assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert chat.users() == ["Hello there"]
    streamed, chunks = _streamed_text(response)
    first_reply = chat.stored()["messages"][1]["content"]
    assert first_reply.strip() and first_reply == streamed  # what was streamed is what is kept
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finish = chunks[-1]["choices"][0]["finish_reason"]
    assert finish in ("stop", "length")
    content_chunks = sum(1 for c in chunks if c["choices"][0]["delta"].get("content"))
    meta = page.locator(".msg.assistant .meta").inner_text()
    assert re.match(rf"{content_chunks} chunks? · ([\d.]+ chunks/s · )?finish: {finish}$", meta), meta  # no usage here
    assert page.input_value("#input") == ""
    assert len(chat.sent) == 1
    assert chat.sent[0]["stream"] is True
    assert chat.sent[0]["messages"] == [{"role": "user", "content": "Hello there"}]
    assert chat.sent[0]["temperature"] == 0 and chat.sent[0]["max_tokens"] == 8
    assert chat.titles() == ["Hello there"]

    # Turn 2 (Enter key): the request carries the whole history, and the changed settings.
    chat.settings(temperature=0.7, max_tokens=5)
    chat.say("How are you?")
    second = chat.sent[-1]
    assert second["messages"] == [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": first_reply},
        {"role": "user", "content": "How are you?"},
    ]
    assert second["temperature"] == pytest.approx(0.7) and second["max_tokens"] == 5
    assert second["top_p"] == pytest.approx(0.95) and second["top_k"] == 0  # untouched: the model's defaults
    assert "seed" not in second  # empty seed: a fresh random one per request
    assert len(chat.replies()) == 2 and chat.users() == ["Hello there", "How are you?"]
    second_reply = chat.stored()["messages"][3]["content"]
    assert page.locator(".msg.err").count() == 0

    # A system prompt goes first, ahead of the history; a seed is sent when set.
    chat.settings(system="Be brief.", temperature=0, seed=42)
    chat.say("Bye")
    third = chat.sent[-1]
    assert [m["role"] for m in third["messages"]] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert third["messages"][0] == {"role": "system", "content": "Be brief."}
    assert third["messages"][3]["content"] == "How are you?" and third["messages"][4]["content"] == second_reply
    assert third["seed"] == 42
    assert len(chat.replies()) == 3

    shot = tmp_path / "web_chat.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data[:8] == PNG and len(data) > 5000

    # New chat: the log is emptied, the next request holds only the new message, the settings carry over.
    chat.settings(system="")
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0
    chat.say("Fresh start")
    assert chat.sent[-1]["messages"] == [{"role": "user", "content": "Fresh start"}]
    assert chat.sent[-1]["temperature"] == 0 and chat.sent[-1]["max_tokens"] == 5 and chat.sent[-1]["seed"] == 42
    assert chat.users() == ["Fresh start"] and len(chat.replies()) == 1
    assert chat.titles() == ["Fresh start", "Hello there"]  # the latest on top

    # The page came whole from the server: nothing was fetched from anywhere else.
    assert chat.fetched and all(u.startswith(chat.url + "/") or u.startswith(("data:", "blob:")) for u in chat.fetched)
    csp = page.get_attribute('meta[http-equiv="Content-Security-Policy"]', "content")
    assert "script-src 'sha256-" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp


def test_reply_is_rendered_while_it_streams(chat, served, monkeypatch):
    """With decoding slowed down, the reply grows piece by piece; one reply at a time."""
    _, backend, _ = served
    before_each_decode(backend, lambda: time.sleep(0.12), monkeypatch)
    page = chat.page
    page.evaluate("""() => {
        window.seen = [];
        window.sendDisabledMidStream = false;
        window.stopShownMidStream = false;
        new MutationObserver(() => {
            const b = document.querySelectorAll('.msg.assistant .body');
            if (b.length) {
                window.sendDisabledMidStream ||= document.getElementById('send').disabled;
                window.stopShownMidStream ||= !document.getElementById('stop').hidden;
            }
            const t = b.length ? b[b.length - 1].textContent : null;
            if (t && window.seen[window.seen.length - 1] !== t) window.seen.push(t);
        }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
    }""")
    chat.settings(temperature=0, max_tokens=12)
    chat.start("Hello there")
    # Mid-stream, Enter sends nothing (the next message can be typed meanwhile).
    page.fill("#input", "Second")
    page.press("#input", "Enter")
    chat.wait_idle()
    assert len(chat.sent) == 1 and page.input_value("#input") == "Second"
    final = chat.replies()[-1]
    seen = page.evaluate("window.seen")
    assert seen and seen[-1] == final
    assert len(seen) >= 3, seen  # several partial renderings, not one at the end
    for shorter, longer in zip(seen, seen[1:]):
        assert longer.startswith(shorter) and len(longer) > len(shorter)
    assert page.evaluate("window.sendDisabledMidStream") and page.evaluate("window.stopShownMidStream")
    assert re.search(r"\d+ chunks · [\d.]+ chunks/s · finish: ", page.inner_text(".msg.assistant .meta"))
    assert not page.is_disabled("#send") and page.is_hidden("#stop")


def test_rejected_request_is_shown_and_not_kept(chat, served):
    """A 400 from the API (max tokens beyond the context) is shown; the failed turn is dropped, its text kept."""
    page = chat.page
    chat.settings(temperature=0, max_tokens=100000)
    response = chat.say("Hello")
    assert response.status == 400
    errors = chat.errors()
    assert len(errors) == 1 and errors[0].startswith("Error: ")
    assert "max_new_tokens" in errors[0] and "100000" in errors[0], errors[0]
    assert page.locator(".msg.assistant").count() == 0 and page.locator(".msg.user").count() == 0
    assert page.input_value("#input") == "Hello"  # nothing typed is lost
    assert chat.titles() == []  # no conversation was stored for a turn that failed
    chat.settings(max_tokens=4)
    chat.say("Again")
    assert chat.sent[-1]["messages"] == [{"role": "user", "content": "Again"}]
    assert page.locator(".msg.assistant").count() == 1 and len(chat.errors()) == 1


def test_settings_that_are_not_numbers_are_refused_in_the_page(chat):
    chat.settings(temperature="")
    chat.page.type("#temperature", "1e")  # the browser's own number field holds unparsable text
    chat.page.fill("#input", "Hi")
    chat.page.press("#input", "Enter")
    assert chat.errors() == ["Error: Temperature must be a number"]
    assert chat.sent == [] and chat.page.input_value("#input") == "Hi"


def test_failure_mid_stream_is_shown(chat, served, monkeypatch):
    """A model error after the stream began (sent in-band as an SSE error event) replaces the partial reply."""
    _, backend, _ = served
    calls = []

    def fail_late():
        calls.append(1)
        if len(calls) >= 2:  # the second decode call: mid-stream on either path (a fast call decodes 8 tokens)
            raise RuntimeError("simulated decode failure")

    before_each_decode(backend, fail_late, monkeypatch)
    page = chat.page
    chat.settings(temperature=0, max_tokens=10)
    response = chat.say("Hello there")
    assert response.status == 200  # headers were already sent: the error comes in the stream
    _, chunks = _streamed_text(response)
    assert any("error" in c for c in chunks)
    assert chat.errors() == ["Error: simulated decode failure"]
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
        chat.settings(max_tokens=4)
        chat.say("Hello")
        assert page.locator(".msg.assistant").count() == 1 and not chat.errors()
        backend.close()  # the model is gone; the HTTP server is still up
        response = chat.say("Still there?")
        assert response.status == 500
        errors = chat.errors()
        assert len(errors) == 1 and errors[0].startswith("Error: ") and "500" in errors[0], errors
        assert "JSON" not in errors[0]  # the status, not a parse failure of the plain-text body
    finally:
        page.close()
        server.stop()
        backend.close()


def test_stop_frees_the_server_slot(chat, served, monkeypatch):
    """Stop aborts the stream; the server cancels the row, so the next request starts at once instead of
    waiting for the stopped generation to run out (here 40-odd more decode steps, over 10 s)."""
    _, backend, _ = served
    calls = []
    delay = 0.25

    def slow():
        calls.append(time.monotonic())
        time.sleep(delay)

    before_each_decode(backend, slow, monkeypatch)
    page = chat.page
    chat.settings(temperature=1, top_k=0, top_p=1, seed=3, max_tokens=48)  # this seed runs all 48 steps
    chat.start("Tell me a long story")
    page.wait_for_timeout(600)
    assert page.is_visible("#stop")
    page.click("#stop")
    chat.wait_idle()
    at_stop = len(calls)
    assert at_stop < 12  # it was stopped far from its end
    assert page.is_hidden("#stop") and not chat.errors()
    stopped = chat.stored()["messages"][-1]
    assert stopped["role"] == "assistant" and stopped["meta"]["finish"] == "stopped"
    assert "stopped" in page.locator(".msg.assistant .meta").inner_text()

    # The next request gets the model within a few decode steps, not after the other 40-odd.
    chat.settings(max_tokens=2)
    page.evaluate("""() => { window.firstText = null; new MutationObserver(() => {
        const b = document.querySelectorAll('.msg.assistant .body');
        if (b.length === 2 && b[1].textContent && window.firstText === null) window.firstText = performance.now();
    }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true}); }""")
    t0 = page.evaluate("performance.now()")
    chat.say("And now?")
    waited = (page.evaluate("window.firstText") - t0) / 1000
    assert waited < 2, f"the next reply started {waited:.1f} s after it was sent"  # not the 10 s left to the other
    # The stopped row's decoding ended soon after Stop. (The server learns of the closed connection when the
    # row's next text arrives, and byte-level tokens of this tiny model may take a few steps to make text.)
    assert len(calls) <= at_stop + 8, (at_stop, len(calls))
    assert chat.sent[-1]["messages"][:2] == [{"role": "user", "content": "Tell me a long story"},
                                             {"role": "assistant", "content": stopped["content"]}]


def test_regenerate_replaces_the_last_reply(chat, served, monkeypatch):
    _, backend, _ = served
    scripted(monkeypatch, backend, "First answer.", "Second answer.", "Third answer.")
    page = chat.page
    chat.say("Question one")
    chat.say("Question two")
    assert chat.replies() == ["First answer.", "Second answer."]
    assert page.locator("button[aria-label='Regenerate this reply']").count() == 1  # only on the last reply
    chat.act("button[aria-label='Regenerate this reply']")
    assert chat.replies() == ["First answer.", "Third answer."]
    assert chat.sent[-1]["messages"] == [
        {"role": "user", "content": "Question one"}, {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "Question two"}]
    assert [m["content"] for m in chat.stored()["messages"]] == ["Question one", "First answer.", "Question two", "Third answer."]


def test_edit_a_message_and_continue_from_it(chat, served, monkeypatch):
    _, backend, _ = served
    scripted(monkeypatch, backend, "Paris.", "Berlin.", "Rome.")
    page = chat.page
    chat.say("Capital of France?")
    chat.say("And Germany?")
    # Edit the first user message: everything after it is replaced by a new reply.
    page.locator(".msg.user").nth(0).locator("button", has_text="Edit").click()
    page.fill(".msg.user .editor textarea", "Capital of Italy?")
    chat.act(".msg.user .editor button:has-text('Send')")
    assert chat.sent[-1]["messages"] == [{"role": "user", "content": "Capital of Italy?"}]
    assert chat.users() == ["Capital of Italy?"] and chat.replies() == ["Rome."]
    # Editing a reply (say, to make better fine-tuning data) keeps it without asking the model again.
    requests = len(chat.sent)
    page.locator(".msg.assistant button", has_text="Edit").click()
    page.fill(".msg.assistant .editor textarea", "Rome is the **capital** of Italy.")
    page.click(".msg.assistant .editor button:has-text('Save')")
    assert len(chat.sent) == requests
    assert page.inner_html(".msg.assistant .body strong") == "capital"
    assert chat.stored()["messages"][-1]["content"] == "Rome is the **capital** of Italy."
    assert "edited" in page.locator(".msg.assistant .meta").inner_text()
    # Cancel leaves a message as it was.
    page.locator(".msg.user button", has_text="Edit").click()
    page.fill(".msg.user .editor textarea", "never sent")
    page.click(".msg.user .editor button:has-text('Cancel')")
    assert chat.users() == ["Capital of Italy?"] and len(chat.sent) == requests


# ---------------------------------------------------------------------------------------------- conversations


def test_conversations_survive_a_reload_and_can_be_renamed_and_deleted(chat, served, monkeypatch):
    _, backend, _ = served
    scripted(monkeypatch, backend, "Reply A.", "Reply B.", "Reply A2.")
    page = chat.page
    chat.say("Conversation A")
    page.click("#new-chat")
    chat.say("Conversation B")
    chat.reload()
    assert chat.titles() == ["Conversation B", "Conversation A"]
    assert chat.users() == ["Conversation B"] and chat.replies() == ["Reply B."]  # the open one is reopened
    page.click("#conversations .open:has-text('Conversation A')")
    assert chat.users() == ["Conversation A"] and chat.replies() == ["Reply A."]
    assert page.get_attribute("#conversations li.current .open", "aria-current") == "true"
    chat.say("More")  # the conversation goes on with its history
    assert chat.sent[-1]["messages"] == [{"role": "user", "content": "Conversation A"},
                                         {"role": "assistant", "content": "Reply A."},
                                         {"role": "user", "content": "More"}]
    assert chat.titles() == ["Conversation A", "Conversation B"]

    # Rename (Enter keeps, Escape cancels), and the name survives a reload.
    page.click("button[aria-label='Rename “Conversation A”']")
    page.fill("input[aria-label='Conversation title']", "Trip planning")
    page.press("input[aria-label='Conversation title']", "Enter")
    page.click("button[aria-label='Rename “Conversation B”']")
    page.fill("input[aria-label='Conversation title']", "discarded")
    page.press("input[aria-label='Conversation title']", "Escape")
    chat.reload()
    assert chat.titles() == ["Trip planning", "Conversation B"]

    # Delete, undo, delete again: gone after a reload too.
    page.click("button[aria-label='Delete “Conversation B”']")
    assert chat.titles() == ["Trip planning"]
    page.click("#toast button:has-text('Undo')")
    assert chat.titles() == ["Trip planning", "Conversation B"]
    assert chat.users() == ["Conversation B"]
    page.click("button[aria-label='Delete “Conversation B”']")
    chat.reload()
    assert chat.titles() == ["Trip planning"]


def test_export_and_import_messages_jsonl(chat, served, monkeypatch, tmp_path):
    """Exported conversations are fine-tuning data (the trainers' reader takes them) and import back whole."""
    _, backend, _ = served
    scripted(monkeypatch, backend, "Hi! How can I help?", "Python: `sorted(xs)`.", "你好！")
    page = chat.page
    chat.settings(system="You are terse.", temperature=0.3)
    chat.say("Hello")
    chat.say("How do I sort a list?\nIn Python.")
    page.click("#new-chat")
    chat.settings(system="")
    chat.say("你好")

    with page.expect_download() as info:
        page.click("#export")
    path = tmp_path / "exported.jsonl"
    info.value.save_as(path)
    assert info.value.suggested_filename.endswith(".jsonl")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["messages"] for r in records] == [
        [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}],
        [{"role": "system", "content": "You are terse."},
         {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! How can I help?"},
         {"role": "user", "content": "How do I sort a list?\nIn Python."},
         {"role": "assistant", "content": "Python: `sorted(xs)`."}],
    ]
    stats = ReadStats()
    assert load_conversations(str(path), stats) == [r["messages"] for r in records]  # what finetune --data reads
    assert not stats.skipped

    # Delete everything, import the file back: same conversations, titles and settings.
    page.evaluate("localStorage.clear()")
    chat.reload()
    assert chat.titles() == []
    page.set_input_files("#import-file", str(path))
    page.wait_for_function("() => document.querySelectorAll('#conversations li').length === 2")
    assert "Imported 2 conversations" in page.inner_text("#toast")
    assert sorted(chat.titles()) == ["Hello", "你好"]
    page.click("#conversations .open:has-text('Hello')")
    assert chat.users() == ["Hello", "How do I sort a list?\nIn Python."]
    assert page.input_value("#system") == "You are terse." and page.input_value("#temperature") == "0.3"
    chat.reload()
    assert sorted(chat.titles()) == ["Hello", "你好"]

    # A file written by the data tools imports too; bad lines are skipped and named, nothing else is lost.
    other = tmp_path / "training.jsonl"
    write_messages_jsonl([[{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]], str(other))
    with open(other, "a", encoding="utf-8") as f:
        f.write("not json\n" + json.dumps({"messages": [{"role": "robot", "content": "x"}]}) + "\n")
    page.set_input_files("#import-file", str(other))
    page.wait_for_function("() => document.querySelectorAll('#conversations li').length === 3")
    note = page.inner_text("#toast")
    assert "Imported 1 conversation" in note and "lines 2 (not JSON), 3 (message 0 has role \"robot\")" in note, note
    assert chat.users() == ["Q?"] and chat.replies() == ["A."]


# ---------------------------------------------------------------------------------------------- rendering


HOSTILE = ('Look: <img src=x onerror="window.pwned=1"> and <script>window.pwned=2</script> '
           '<a href="javascript:window.pwned=3">a</a>\n\n'
           '[click me](javascript:window.pwned=4) [ok](https://example.org/a?b=1) '
           '![pic](https://example.org/x.png) <svg onload="window.pwned=5"></svg>\n\n'
           '| name | markup |\n|---|---|\n| cell | <b onmouseover="window.pwned=6">b</b> |\n\n'
           '```html\n<script>window.pwned=7</script>\n```')

MARKDOWN = ("## Reversing a list\n\nUse **slicing** or *reversed()*:\n\n"
            "```python\nitems = [1, 2, 3]\nprint(items[::-1])  # [3, 2, 1]\n```\n\n"
            "1. `items[::-1]` makes a copy\n2. `items.reverse()` works in place\n   - returns `None`\n\n"
            "> Tip: see [the docs](https://docs.python.org/3/tutorial/datastructures.html).")
FOLLOW_UP = "The same slice works on strings: `'stressed'[::-1]` gives `'desserts'`."


def _no_injection(page):
    """Nothing the model wrote ran or became live markup."""
    assert page.evaluate("window.pwned") is None
    assert page.evaluate("""() => [...document.querySelectorAll('*')].flatMap(e => [...e.attributes])
        .filter(a => a.name.startsWith('on')).map(a => a.name)""") == []
    assert page.locator("#log script, #log img, #log svg:not(.i), #log iframe, #log b").count() == 0
    hrefs = page.eval_on_selector_all("#log a", "as => as.map(a => a.getAttribute('href'))")
    assert hrefs and all(h.startswith(("https://", "http://", "mailto:")) for h in hrefs), hrefs


def test_markdown_is_rendered_and_model_output_cannot_inject_markup(chat, served, monkeypatch):
    _, backend, _ = served
    scripted(monkeypatch, backend, HOSTILE, MARKDOWN, FOLLOW_UP)
    page = chat.page
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    chat.say("Show me some <b>HTML</b>")
    body = page.locator(".msg.assistant .body").last
    text = body.inner_text()
    assert '<img src=x onerror="window.pwned=1">' in text and "<script>window.pwned=2</script>" in text  # shown as text
    assert "click me" in text and "pwned=4" not in text  # an unsafe link keeps its words only
    assert body.locator("table td").nth(1).inner_text() == '<b onmouseover="window.pwned=6">b</b>'
    assert body.locator("pre code").inner_text() == "<script>window.pwned=7</script>"
    assert body.locator("a[href='https://example.org/a?b=1']").get_attribute("rel") == "noopener noreferrer nofollow"
    assert chat.users() == ["Show me some <b>HTML</b>"]
    _no_injection(page)
    chat.reload()  # drawn again from storage
    _no_injection(page)

    page.click("#new-chat")
    chat.say("How do I reverse a list in Python?")
    reply = page.locator(".msg.assistant .body").last
    assert reply.locator("h4").inner_text() == "Reversing a list"
    assert reply.locator("strong").inner_text() == "slicing" and reply.locator("em").inner_text() == "reversed()"
    code = "items = [1, 2, 3]\nprint(items[::-1])  # [3, 2, 1]"
    assert reply.locator("pre code.language-python").inner_text() == code
    assert reply.locator("ol > li").count() == 2 and reply.locator("ol > li ul > li code").inner_text() == "None"
    assert reply.locator("blockquote a").get_attribute("href") == "https://docs.python.org/3/tutorial/datastructures.html"
    reply.locator(".code button", has_text="Copy").click()
    page.wait_for_function("() => document.querySelector('.msg.assistant:last-of-type .code button').textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()") == code
    _no_injection(page)

    assert dialogs == []

    # A follow-up; the page as the README shows it (TFCHAT_SCREENSHOT=docs/web-chat.png).
    chat.say("And for a string?")
    if os.environ.get("TFCHAT_SCREENSHOT"):
        page.set_viewport_size({"width": 1100, "height": 900})
        page.wait_for_function("() => [...document.querySelectorAll('.code button')].every(b => b.textContent === 'Copy')")
        page.evaluate("document.getElementById('log').scrollTop = 1e6")
        page.screenshot(path=os.environ["TFCHAT_SCREENSHOT"])


RENDERED = [  # (Markdown, the HTML the page's renderer builds for it)
    ("a *b* c **d** __e__ ~~f~~ ***g***", "<p>a <em>b</em> c <strong>d</strong> <strong>e</strong> <del>f</del> "
                                         "<strong><em>g</em></strong></p>"),
    ("snake_case_name, 2 * 3 * 4, a\\*b\\*, **open", "<p>snake_case_name, 2 * 3 * 4, a*b*, **open</p>"),
    ("*a `*` b* `x <y>`", "<p><em>a <code>*</code> b</em> <code>x &lt;y&gt;</code></p>"),
    ("line one\nline two", "<p>line one<br>line two</p>"),
    ("# One\n###### Six", "<h3>One</h3><h6>Six</h6>"),
    ("Steps:\n1. a\n2. b\n\n3. c\n4. d", "<p>Steps:</p><ol><li><p>a</p></li><li><p>b</p></li><li><p>c</p></li>"
                                          "<li><p>d</p></li></ol>"),
    ("4. four\n5. five", '<ol start="4"><li>four</li><li>five</li></ol>'),
    ("In\n2019. it rained", "<p>In<br>2019. it rained</p>"),
    ("- [ ] todo\n- [x] done", '<ul><li class="task"><input type="checkbox" disabled="" aria-label="not done"> todo</li>'
                               '<li class="task"><input type="checkbox" disabled="" aria-label="done"> done</li></ul>'),
    ("- a\n  - b\n    - c", "<ul><li>a<ul><li>b<ul><li>c</li></ul></li></ul></li></ul>"),
    ("> q\n> r\n>> s", "<blockquote><p>q<br>r</p><blockquote><p>s</p></blockquote></blockquote>"),
    ("***\n---", "<hr><hr>"),
    ("| a | b |\n|:--|--:|\n| `x|y` | <i>2</i> |",
     '<div class="table"><table><thead><tr><th style="text-align: left;">a</th><th style="text-align: right;">b</th>'
     '</tr></thead><tbody><tr><td style="text-align: left;"><code>x|y</code></td><td style="text-align: right;">'
     '&lt;i&gt;2&lt;/i&gt;</td></tr></tbody></table></div>'),
    ("[ok](https://a.example/x_(y) \"T\") <https://b.example> see http://c.example/p.",
     '<p><a href="https://a.example/x_(y)" target="_blank" rel="noopener noreferrer nofollow" title="T">ok</a> '
     '<a href="https://b.example/" target="_blank" rel="noopener noreferrer nofollow">https://b.example</a> see '
     '<a href="http://c.example/p" target="_blank" rel="noopener noreferrer nofollow">http://c.example/p</a>.</p>'),
    ("[a](javascript:alert(1)) [b](JaVaScRiPt:alert(1)) [c]( java\tscript:x) [d](data:text/html,x) [e](vbscript:x)",
     "<p>a b [c]( java\tscript:x) d e</p>"),
    ("![alt](https://img.example/p.png)",
     '<p><a href="https://img.example/p.png" target="_blank" rel="noopener noreferrer nofollow">🖼 alt</a></p>'),
    ("<script>alert(1)</script><img src=x onerror=alert(1)>",
     "<p>&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;</p>"),
]


def _render(page, source, what="innerHTML"):
    """The page's Markdown renderer run on `source`: the HTML (or text) it builds."""
    return page.evaluate("([s, what]) => { const d = document.createElement('div'); d.append(tfchat.markdown.render(s));"
                         " return d[what]; }", [source, what])


def test_markdown_renderer(chat):
    """The renderer itself, case by case, in Chromium: what it builds, and that hostile or huge input stays text."""
    page = chat.page
    for source, expected in RENDERED:
        assert _render(page, source) == expected, source
    code = page.evaluate("""() => { const d = document.createElement('div');
        d.append(tfchat.markdown.render('~~~js\\n</pre><b>x</b>\\n~~~\\n\\n```\\nstill streaming'));
        return [...d.querySelectorAll('pre code')].map(c => [c.className, c.textContent]); }""")
    assert code == [["language-js", "</pre><b>x</b>"], ["", "still streaming"]]  # an unclosed fence: code to the end
    # Pathological input (unmatched delimiters, deep nesting) renders, as text where nothing matches.
    for source, word in [("*a " * 3000, None), ("[" * 5000 + "](x", None), ("> " * 3000 + "deep", "deep"),
                         ("- " * 500 + "deep", "deep"), ("*" * 2000 + "a" + "*" * 2000, "a"), ("**a " * 2000 + "b**" * 9, "b")]:
        text = _render(page, source, "textContent")
        assert _squash(text) == _squash(source) if word is None else word in text


def test_imported_markup_is_inert(chat, tmp_path):
    hostile = tmp_path / "hostile.jsonl"
    hostile.write_text(json.dumps({"title": "<img src=x onerror=window.pwned=1>", "messages": [
        {"role": "user", "content": "<script>window.pwned=2</script>"},
        {"role": "assistant", "content": HOSTILE}]}) + "\n", encoding="utf-8")
    page = chat.page
    page.set_input_files("#import-file", str(hostile))
    page.wait_for_selector(".msg.assistant")
    assert chat.titles() == ["<img src=x onerror=window.pwned=1>"]
    assert chat.users() == ["<script>window.pwned=2</script>"]
    _no_injection(page)


def test_a_hostile_model_name_is_only_text(browser, served, monkeypatch):
    """The model's name goes into the title, header and a meta tag escaped, and the CSP hash still matches."""
    _, backend, _ = served
    name = '</title><script>window.pwned=1</script>"><b onclick=x>tf'
    monkeypatch.setattr(backend, "name", name)
    server = ServerThread(create_app(backend))
    url = server.start()
    page = browser.new_page()
    try:
        Chat(page, url).open()
        assert page.title() == name and page.inner_text("h1") == name
        assert page.get_attribute("#input", "placeholder") == "Message " + name  # the script ran (CSP hash matched)
        assert page.evaluate("window.pwned") is None
        assert page.locator("script").count() == 1 and page.locator("b").count() == 0
    finally:
        page.close()
        server.stop()


def test_usage_sources_and_content_filter_from_the_stream(chat, served, monkeypatch):
    """Token counts when the server reports usage; knowledge sources and content-filter notices have their place."""
    _, backend, _ = served
    page = chat.page
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "Grounded "}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "answer."}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
         "sources": [{"title": "Paris", "url": "https://en.wikipedia.org/wiki/Paris", "snippet": "capital of France"},
                     {"title": "<i>evil</i>", "url": "javascript:window.pwned=1"}]},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}},
    ]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    page.route("**" + API, lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body))
    page.fill("#input", "Where is Paris?")
    page.press("#input", "Enter")
    chat.wait_idle()
    page.unroute("**" + API)
    assert chat.sent[-1]["stream_options"] == {"include_usage": True}
    # One read holds the whole fulfilled body, so there is no time span to give a rate over.
    assert page.inner_text(".msg.assistant .meta") == "7 tokens · finish: stop"
    sources = page.locator(".msg.assistant .sources li")
    assert sources.count() == 2
    assert sources.nth(0).locator("a").get_attribute("href") == "https://en.wikipedia.org/wiki/Paris"
    assert sources.nth(1).inner_text() == "<i>evil</i>" and sources.nth(1).locator("a").count() == 0
    _no_injection(page)

    # A reply the content filter stopped says so, through the real server path.
    scripted(monkeypatch, backend, "I was about to", finish="content_filter")
    chat.say("Something bad")
    notice = page.locator(".msg.assistant .notice").last
    assert notice.get_attribute("role") == "note" and "content filter" in notice.inner_text()
    assert "finish: content_filter" in page.locator(".msg.assistant .meta").last.inner_text()


def test_model_picker_lists_the_servers_models(chat, served):
    page = chat.page
    models = {"object": "list", "data": [{"id": "tfchat", "object": "model"}, {"id": "tfchat-zh", "object": "model"}]}
    page.route("**/v1/models", lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(models)))
    chat.open()
    page.wait_for_selector("#model:not([hidden])")
    assert page.locator("label[for=model]").text_content() == "Model"
    assert page.locator("#model option").all_text_contents() == ["tfchat", "tfchat-zh"]
    page.select_option("#model", "tfchat-zh")
    assert page.title() == "tfchat-zh" and page.inner_text("h1") == "tfchat-zh"
    response = chat.say("Hi")  # this server has no such model: the page shows its answer
    assert chat.sent[-1]["model"] == "tfchat-zh" and response.status == 404
    assert "tfchat-zh" in chat.errors()[0]
    page.select_option("#model", "tfchat")
    chat.settings(max_tokens=3)
    assert chat.say("Hi").status == 200 and chat.sent[-1]["model"] == "tfchat"
    page.reload()
    page.wait_for_selector("#model:not([hidden])")
    assert page.input_value("#model") == "tfchat"  # remembered with the conversation


def test_tag_drop_downs_list_the_vocabulary_and_send_the_choice(browser, served, tagged_export):
    """A model trained with tags: one drop-down per tag name from GET /v1/models ("any" first), the choice is sent
    as "tags" with each request (and steers the real reply), remembered with the conversation and reset with the
    settings; a model without tags shows none."""
    from serving.backend import GenRequest

    untagged = browser.new_page()
    try:
        Chat(untagged, served[0]).open()
        untagged.click("#toggle-settings")
        untagged.wait_for_load_state("networkidle")  # the /v1/models answer is in
        assert untagged.is_hidden("#steering") and untagged.locator("#steering select").count() == 0
    finally:
        untagged.close()

    _, path = tagged_export
    backend = Backend(path, fast=False)  # the plain signatures: no XLA compile for a few short replies
    server = ServerThread(create_app(backend))
    page = browser.new_page()
    try:
        chat = Chat(page, server.start()).open()
        page.evaluate("localStorage.clear()")
        chat.open()
        chat.settings(temperature=0, max_tokens=6)
        page.wait_for_selector("#steering:not([hidden])")
        assert page.locator("#steering label").all_text_contents() == ["Style", "Topic", "Strength"]
        assert page.locator("#tag-style option").all_text_contents() == ["any", "happy", "sad"]
        assert page.locator("#tag-topic option").all_text_contents() == ["any", "music", "sports"]
        assert page.get_by_label("Topic", exact=True).get_attribute("id") == "tag-topic"

        chat.say("Hello")  # untagged: no "tags" (nor "guidance") in the request
        assert "tags" not in chat.sent[-1] and "guidance" not in chat.sent[-1]
        page.select_option("#tag-topic", "sports")
        page.select_option("#tag-style", "happy")
        chat.say("Hello")
        assert chat.sent[-1]["tags"] == {"style": "happy", "topic": "sports"}
        tagged = backend.complete(GenRequest(messages=chat.sent[-1]["messages"],
                                             tags={"style": "happy", "topic": "sports"},
                                             sampling=backend.defaults.replace(temperature=0, max_new_tokens=6)))
        assert chat.stored()["messages"][-1]["content"] == tagged.text  # the model's reply under those tags
        assert chat.stored()["settings"]["tags"] == {"style": "happy", "topic": "sports"}
        assert chat.sent[-1]["guidance"] == 1  # the model's default strength
        page.fill("#guidance", "20")  # steer harder: classifier-free guidance
        chat.say("Hello")
        assert chat.sent[-1]["guidance"] == 20
        guided = backend.complete(GenRequest(messages=chat.sent[-1]["messages"],
                                             tags={"style": "happy", "topic": "sports"},
                                             sampling=backend.defaults.replace(temperature=0, max_new_tokens=6,
                                                                               guidance=20)))
        assert chat.stored()["messages"][-1]["content"] == guided.text

        chat.reload()  # remembered with the conversation
        assert (page.input_value("#tag-topic"), page.input_value("#tag-style")) == ("sports", "happy")
        page.select_option("#tag-style", "")  # back to "any"
        chat.say("Bye")
        assert chat.sent[-1]["tags"] == {"topic": "sports"}
        page.click("#new-chat")  # a new chat starts from the current settings
        assert page.input_value("#tag-topic") == "sports"
        page.click("#reset-settings")
        assert (page.input_value("#tag-topic"), page.input_value("#tag-style")) == ("", "")
        assert page.input_value("#guidance") == "1"
        chat.say("Hi")
        assert "tags" not in chat.sent[-1]
    finally:
        page.close()
        server.stop()
        backend.close()


def test_settings_are_remembered_per_conversation(chat, served, monkeypatch):
    _, backend, _ = served
    scripted(monkeypatch, backend, "a", "b", "c", "d")
    page = chat.page
    page.click("#toggle-settings")
    # Labelled controls that state their defaults (the model's SamplingParams).
    defaults = backend.defaults
    for field, label, default in [("temperature", "Temperature", defaults.temperature), ("top_p", "Top-p", defaults.top_p),
                                  ("top_k", "Top-k", defaults.top_k), ("max_tokens", "Max tokens", defaults.max_new_tokens),
                                  ("seed", "Seed", "random"), ("system", "System prompt", "none")]:
        control = page.get_by_label(label, exact=True)
        assert control.get_attribute("id") == field
        hint = page.inner_text("#" + control.get_attribute("aria-describedby"))
        assert f"Default {default}" in hint or f"Default: {default}" in hint, hint
    chat.settings(temperature=0.3, top_k=5, seed=7, system="Answer in French.")
    chat.say("A")
    page.click("#new-chat")
    assert page.input_value("#temperature") == "0.3"  # a new chat starts from the last settings
    chat.settings(temperature=1.1, top_p=0.5, system="Answer in German.")
    chat.say("B")
    chat.reload()
    assert page.is_visible("#settings")  # the panel stays open across a reload
    assert page.input_value("#temperature") == "1.1" and page.input_value("#system") == "Answer in German."
    page.click("#conversations .open:has-text('A')")
    assert [page.input_value("#" + k) for k in ("temperature", "top_p", "top_k", "seed", "system")] == \
        ["0.3", str(defaults.top_p), "5", "7", "Answer in French."]
    chat.say("again")
    request = chat.sent[-1]
    assert (request["temperature"], request["top_k"], request["seed"]) == (0.3, 5, 7)
    assert request["messages"][0] == {"role": "system", "content": "Answer in French."}
    page.click("#reset-settings")
    assert page.input_value("#temperature") == str(defaults.temperature) and page.input_value("#system") == ""
    page.click("#toggle-settings")
    assert page.is_hidden("#settings") and page.get_attribute("#toggle-settings", "aria-expanded") == "false"
    chat.say("defaults")
    assert chat.sent[-1]["temperature"] == defaults.temperature and "seed" not in chat.sent[-1]


# ---------------------------------------------------------------------------------------------- looks and reach


def _colours(page):
    return page.evaluate("""() => {
        const rgb = s => s.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map(Number);
        const main = getComputedStyle(document.body), bubble = document.querySelector('.msg.user .body');
        return {bg: rgb(main.backgroundColor), text: rgb(main.color),
                bubble: bubble ? rgb(getComputedStyle(bubble).backgroundColor) : null};
    }""")


def _luminance(rgb):
    def channel(c):
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = map(channel, rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(a, b):
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_light_and_dark_themes_follow_the_system(chat, served, monkeypatch):
    _, backend, _ = served
    scripted(monkeypatch, backend, "Themed reply with `code`.")
    page = chat.page
    chat.say("Hi")
    page.emulate_media(color_scheme="light")
    light = _colours(page)
    page.emulate_media(color_scheme="dark")
    dark = _colours(page)
    page.emulate_media(color_scheme="no-preference")
    assert _luminance(light["bg"]) > 0.8 and _luminance(dark["bg"]) < 0.05
    for theme in (light, dark):
        assert _contrast(theme["text"], theme["bg"]) >= 7  # WCAG AAA for body text
        assert _contrast(theme["text"], theme["bubble"]) >= 4.5


def test_phone_width_layout(browser, served, monkeypatch):
    _, backend, _ = served
    wide = "A long line: " + "x" * 300
    scripted(monkeypatch, backend, f"Here:\n\n```\n{wide}\n```\n\n| a | b | c | d | e | f |\n|---|---|---|---|---|---|\n"
             + "| " + " | ".join(["some long cell text"] * 6) + " |")
    page = browser.new_page()
    page.set_viewport_size({"width": 375, "height": 740})
    try:
        chat = Chat(page, served[0]).open()
        page.evaluate("localStorage.clear()")
        chat.open()

        def fits():
            return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"
                                 " && document.body.scrollWidth <= window.innerWidth")

        def on_screen(selector):
            box = page.locator(selector).bounding_box()
            return box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375 and box["y"] + box["height"] <= 740

        assert fits()
        assert page.is_hidden("#new-chat") or not on_screen("#new-chat")  # the list is a drawer here
        for selector in ("#input", "#send", "#toggle-settings", "#open-sidebar"):
            assert on_screen(selector), selector
        chat.say("Hello from a phone", click=True)
        assert fits() and on_screen("#send")
        assert page.evaluate("document.querySelector('.msg.assistant pre').scrollWidth > document.querySelector('.msg.assistant pre').clientWidth")
        page.click("#toggle-settings")
        assert fits() and on_screen("#temperature")
        page.click("#toggle-settings")
        page.click("#open-sidebar")
        page.wait_for_function("() => document.getElementById('new-chat').getBoundingClientRect().left >= 0")
        assert on_screen("#new-chat") and on_screen("#export") and page.get_attribute("#open-sidebar", "aria-expanded") == "true"
        page.click("#new-chat")
        page.wait_for_function("() => document.getElementById('open-sidebar').getAttribute('aria-expanded') === 'false'")
        assert page.locator(".msg").count() == 0 and fits()
    finally:
        page.close()


def test_keyboard_enter_shift_enter_and_escape(chat, served, monkeypatch):
    _, backend, _ = served
    scripted(monkeypatch, backend, "one two three four five six seven eight nine ten", delay=0.3)
    page = chat.page
    page.click("#input")
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    assert page.input_value("#input") == "line one\nline two" and chat.sent == []
    with page.expect_response(lambda r: r.url.endswith(API)):
        page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('.msg.assistant .body')?.textContent")
    page.keyboard.press("Escape")  # stops the reply
    chat.wait_idle()
    assert chat.sent[-1]["messages"] == [{"role": "user", "content": "line one\nline two"}]
    assert chat.stored()["messages"][-1]["meta"]["finish"] == "stopped"
    assert chat.stored()["messages"][-1]["content"] != "one two three four five six seven eight nine ten"


def test_ime_composition_never_sends_half_typed_text(chat, served, monkeypatch):
    _, backend, _ = served
    scripted(monkeypatch, backend, "好的。")
    page = chat.page
    page.focus("#input")
    # A real composition in Chromium (as an IME drives it): the Enter that confirms it must not send.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Input.imeSetComposition", {"text": "nihao", "selectionStart": 5, "selectionEnd": 5})
    for kind in ("rawKeyDown", "keyUp"):
        cdp.send("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 229})
    cdp.send("Input.insertText", {"text": "你好"})  # the composition is committed
    page.wait_for_timeout(200)
    assert chat.sent == [] and page.input_value("#input") == "你好"
    # Events as other browsers order them: Enter flagged isComposing, and Safari's keyCode 229 after compositionend.
    sent = page.evaluate("""() => {
        const input = document.getElementById('input'), results = [];
        const enter = (init, keyCode) => {
            const e = new KeyboardEvent('keydown', {key: 'Enter', bubbles: true, cancelable: true, ...init});
            if (keyCode) Object.defineProperty(e, 'keyCode', {get: () => keyCode});
            input.dispatchEvent(e);
            results.push(e.defaultPrevented);
        };
        input.dispatchEvent(new CompositionEvent('compositionstart', {data: ''}));
        enter({isComposing: true});
        enter({});  // between compositionstart and compositionend, any Enter belongs to the IME
        input.dispatchEvent(new CompositionEvent('compositionend', {data: '你好'}));
        enter({}, 229);
        return results;
    }""")
    page.wait_for_timeout(200)
    assert sent == [False, False, False] and chat.sent == [] and page.locator(".msg").count() == 0
    page.press("#input", "Enter")  # a plain Enter after the composition sends
    chat.wait_idle()
    assert chat.sent[-1]["messages"] == [{"role": "user", "content": "你好"}]


def test_every_control_has_an_accessible_name(chat, served, monkeypatch):
    _, backend, _ = served
    scripted(monkeypatch, backend, "```\ncode\n```")
    page = chat.page
    chat.say("Hi")
    page.click("#toggle-settings")
    unnamed = page.evaluate("""() => [...document.querySelectorAll('button, input, select, textarea, a[href]')]
        .filter(e => e.offsetParent !== null || e.id === 'import-file')
        .filter(e => !((e.getAttribute('aria-label') || '').trim() || (e.labels && [...e.labels].some(l => l.textContent.trim()))
                     || (e.getAttribute('aria-labelledby') && document.getElementById(e.getAttribute('aria-labelledby')))
                     || (e.tagName === 'BUTTON' || e.tagName === 'A') && e.textContent.trim()))
        .map(e => e.outerHTML.slice(0, 80))""")
    assert unnamed == []
    assert page.get_attribute("#log", "role") == "log" and page.get_attribute("html", "lang") == "en"
    for name in ("Send", "Settings", "New chat", "Import", "Export all", "Copy code", "Copy reply",
                 "Regenerate this reply", "Edit this message and continue from it"):
        assert page.get_by_role("button", name=name, exact=True).count() >= 1, name
    assert page.get_by_role("textbox", name="Message", exact=True).count() == 1
