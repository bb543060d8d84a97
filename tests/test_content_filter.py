"""The content filter: texts/documents/conversations, the filtered backend (input refused, output cut as it
streams), TF Serving rows, /v1/moderations with the official openai SDK, the terminal chat, training data."""

import concurrent.futures
import io
import json

import numpy as np
import pytest
import tensorflow as tf
from fastapi.testclient import TestClient

from serving import chat as chat_cli
from serving.app import ServerThread, create_app
from serving.backend import Backend, Completion, GenRequest
from serving.content_filter import FINISH_REASON, REFUSAL, FilteredBackend
from serving.errors import NotFound
from serving.routes import moderation
from tests.fixtures import tiny_export
from tfchat.inference.classifier import ContentFilter, TextClassifier
from tfchat.inference.sampling import SamplingParams

FLAGGED_WORD = "bomb"


def keyword_filter(word: str = FLAGGED_WORD) -> ContentFilter:
    """A content filter whose classifier flags exactly the texts containing `word` (a deterministic stand-in)."""
    def score_fn(text):
        hit = tf.strings.regex_full_match(tf.strings.lower(text), f".*{word}.*")
        return tf.stack([tf.cast(hit, tf.float32)] * 2, axis=1)

    classifier = TextClassifier(score_fn, ["flagged", "violence"], True, {"flagged": 0.5, "violence": 0.5}, {},
                                "keyword", "k")
    return ContentFilter(classifier)


class ScriptedBackend:
    """A model backend that answers every request with the same scripted pieces, one per token, and records
    what reached it."""

    name, version, largest_batch = "scripted", 1, 0
    stop_ids = {0}

    def __init__(self, pieces):
        self.pieces = list(pieces)
        self.defaults = SamplingParams()
        self.signatures = {"generate": None, "chat": None, "prefill": None, "decode": None, "detokenize": None}
        self.generated, self.cancelled_after = [], None

    def validate(self, request):
        request.sampling = (request.sampling or self.defaults).resolved()

    def _completion(self, n=None):
        ids = list(range(1, len(self.pieces) + 1))[:n]
        return Completion("".join(self.pieces[: len(ids)]), ids, "stop", 3)

    def submit(self, request):
        self.generated.append(request)
        request.future.set_result(self._completion())
        return request.future

    def stream_with_logprobs(self, request):
        self.generated.append(request)

        def pieces():  # like Backend.stream: closing it cancels the row, which then finishes with what it has
            produced = 0
            try:
                for piece in self.pieces:
                    yield piece, []
                    produced += 1
            finally:
                if produced < len(self.pieces):
                    self.cancelled_after = produced
                request.future.set_result(self._completion(produced))

        return pieces()

    def predict(self, signature, inputs):
        if signature == "detokenize":
            return {"text": np.array(["".join(self.pieces[:n]).encode() for n in inputs["num_tokens"].numpy()], object)}
        self.generated.append(signature)
        batch = int(inputs["max_new_tokens"].shape[0])
        text = "".join(self.pieces).encode()
        key = "reply" if signature == "chat" else "text"
        return {key: np.array([text] * batch, object), "token_ids": np.ones([batch, 4], np.int32),
                "num_tokens": np.full([batch], 4, np.int32)}

    def close(self):
        pass


PIECES = ["Sure", ",", " here", " is", " how", " to", " build", " a", " bomb", " at", " home", "."]


def chat_request(content="Hi there"):
    return GenRequest(messages=[{"role": "user", "content": content}])


def test_content_filter_texts_documents_conversations(moderation_classifier):
    f = ContentFilter.load(moderation_classifier)
    assert f.threshold == f.classifier.thresholds["flagged"]
    assert f.flag_texts(["you are a worthless idiot zed", "have a lovely day zed"]).tolist() == [True, False]
    clean = "What a pleasant morning it is today in the city of Oslo, friends."
    bad = "Honestly, shut up you stupid moron zed, nobody wants to hear it anymore."
    assert f.flag_documents([f"{clean}\n\n{clean}", f"{clean}\n\n{bad}\n\n{clean}"]).tolist() == [False, True]
    conversations = [[{"role": "user", "content": "thanks for the help zed"}, {"role": "assistant", "content": "ok"}],
                     [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "I will hurt you zed"}]]
    assert f.flag_conversations(conversations).tolist() == [False, True]
    strict = ContentFilter.load(moderation_classifier, threshold=1.0)
    assert strict.fingerprint != f.fingerprint and not strict.flag_texts(["have a lovely day zed"]).any()
    with pytest.raises(ValueError, match="threshold must be in"):
        ContentFilter.load(moderation_classifier, threshold=0.0)


def test_flagged_input_never_reaches_the_generator():
    model = ScriptedBackend(["Hello", "!"])
    backend = FilteredBackend(model, keyword_filter())
    for request in (chat_request("how do I build a BOMB"), GenRequest(prompt="bomb recipe:")):
        completion = backend.complete(request)
        assert (completion.text, completion.finish_reason) == (REFUSAL, FINISH_REASON)
    streamed = chat_request("tell me about bombs")
    assert list(backend.stream(streamed)) == [REFUSAL]
    assert streamed.future.result().finish_reason == FINISH_REASON
    history = [{"role": "user", "content": "bomb?"}, {"role": "assistant", "content": "no"},
               {"role": "user", "content": "go on"}]
    assert backend.complete(GenRequest(messages=history)).finish_reason == FINISH_REASON
    assert model.generated == [] and backend.counts["input"] == 4
    assert backend.complete(chat_request("hello")).text == "Hello!" and len(model.generated) == 1


@pytest.mark.parametrize("every", [1, 2, 3, 4])
def test_streamed_reply_is_cut_at_the_first_flagged_check(every):
    model = ScriptedBackend(PIECES)
    backend = FilteredBackend(model, keyword_filter(), check_every=every)
    request = chat_request()
    sent = "".join(backend.stream(request))
    # Checks run after every `every` pieces; the first that sees " bomb" (piece 9) stops the reply, and
    # only text that passed an earlier check was sent.
    first_flagged_check = -(-9 // every) * every
    assert sent == "".join(PIECES[: first_flagged_check - every])
    assert FLAGGED_WORD not in sent
    completion = request.future.result(timeout=5)
    assert completion.finish_reason == FINISH_REASON and completion.text == sent
    assert model.cancelled_after is not None and model.cancelled_after <= first_flagged_check + 1
    assert backend.counts["output"] == 1


def test_clean_stream_and_flag_at_the_very_end():
    model = ScriptedBackend(["All", " good", " here"])
    backend = FilteredBackend(model, keyword_filter(), check_every=2)
    request = chat_request()
    assert "".join(backend.stream(request)) == "All good here"
    assert request.future.result().finish_reason == "stop"
    model = ScriptedBackend(["All", " good", " bomb"])  # the last piece is checked though no check is due
    backend = FilteredBackend(model, keyword_filter(), check_every=2)
    request = chat_request()
    assert "".join(backend.stream(request)) == "All good"
    assert request.future.result().finish_reason == FINISH_REASON


def test_non_streamed_reply_is_cut_like_a_stream():
    backend = FilteredBackend(ScriptedBackend(PIECES), keyword_filter(), check_every=3)
    completion = backend.complete(chat_request())
    assert completion.finish_reason == FINISH_REASON
    assert completion.text == "".join(PIECES[:6])  # checks at 3, 6, 9: the one at 9 sees " bomb"


def test_tf_serving_rows_are_screened():
    backend = FilteredBackend(ScriptedBackend(["safe", " text"]), keyword_filter())
    inputs = {"prompt": tf.constant(["hello", "a bomb", "hi"]), "max_new_tokens": tf.constant([4, 4, 4])}
    out = backend.predict("generate", inputs)
    assert out["content_filter"].tolist() == [b"", b"input", b""]
    assert out["text"].tolist() == [b"safe text", REFUSAL.encode(), b"safe text"]
    assert out["num_tokens"].tolist() == [4, 0, 4] and out["token_ids"][1].tolist() == [0, 0, 0, 0]
    backend = FilteredBackend(ScriptedBackend(["a", " bomb"]), keyword_filter())
    chat = backend.predict("chat", {"roles": tf.constant([["user", ""]]), "contents": tf.constant([["hi", ""]]),
                                    "max_new_tokens": tf.constant([4])})
    assert chat["content_filter"].tolist() == [b"output"] and chat["reply"].tolist() == [b""]
    assert chat["token_ids"].tolist() == [[0, 0, 0, 0]]
    for name in ("prefill", "decode"):
        assert name not in backend.signatures
        with pytest.raises(NotFound, match="not served with a content filter"):
            backend.predict(name, {})


def _sse(response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_openai_routes_finish_with_content_filter():
    client = TestClient(create_app(FilteredBackend(ScriptedBackend(PIECES), keyword_filter(), check_every=2)))
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "stream": True})
    chunks = _sse(r)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert FLAGGED_WORD not in text and text == "".join(PIECES[:8])  # checks at 2, 4, 6, 8, 10: 10 sees " bomb"
    assert chunks[-1]["choices"][0]["finish_reason"] == FINISH_REASON
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a bomb please"}]})
    choice = r.json()["choices"][0]
    assert r.status_code == 200 and choice["finish_reason"] == FINISH_REASON and choice["message"]["content"] == REFUSAL
    r = client.post("/v1/completions", json={"prompt": "Once upon a time"})
    assert r.json()["choices"][0]["finish_reason"] == FINISH_REASON and FLAGGED_WORD not in r.json()["choices"][0]["text"]


@pytest.fixture(scope="module")
def real_server(tmp_path_factory, moderation_classifier):
    """The tiny export behind a FilteredBackend with the tiny moderation classifier, and /v1/moderations."""
    root = tmp_path_factory.mktemp("filtered")
    tiny_export(root)
    inner = Backend(str(root / "tfchat"))
    submitted = []
    original = inner._submit
    # The generations and signature calls that reach the model's queue (not the filter's detokenize calls).
    inner._submit = lambda job: (getattr(job, "signature", None) != "detokenize" and submitted.append(job),
                                 original(job))[1]
    # The tiny classifier knows only its fixture: a random model's babble scores near its 50% base rate.
    content_filter = ContentFilter.load(moderation_classifier, threshold=0.9)
    app = create_app(FilteredBackend(inner, content_filter))
    app.include_router(moderation.router(content_filter))
    with ServerThread(app) as url:
        yield url, submitted
    inner.close()


def test_real_backend_refuses_flagged_input_before_the_model(real_server):
    import httpx

    url, submitted = real_server
    before = len(submitted)
    r = httpx.post(url + "/v1/chat/completions", timeout=60,
                   json={"messages": [{"role": "user", "content": "you are a worthless idiot zed"}], "max_tokens": 4})
    assert r.json()["choices"][0]["finish_reason"] == FINISH_REASON and len(submitted) == before
    r = httpx.post(url + "/v1/chat/completions", timeout=60,
                   json={"messages": [{"role": "user", "content": "thanks for the help zed"}], "max_tokens": 4})
    # Clean input reaches the model (whose random babble the output screen may still stop).
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length", FINISH_REASON)
    assert len(submitted) == before + 1
    # TF Serving REST: a clear per-row field; the token-level signatures are not served.
    r = httpx.post(url + "/v1/models/tfchat:predict", timeout=60, json={"instances": [
        {"prompt": "you are a worthless idiot zed", "max_new_tokens": 3}, {"prompt": "Hello", "max_new_tokens": 3}]})
    rows = r.json()["predictions"]
    assert rows[0]["content_filter"] == "input" and rows[0]["text"] == REFUSAL
    assert rows[1]["content_filter"] in ("", "output")  # generated; the random model's babble may be screened
    assert len(submitted) == before + 2  # one model call, for the clean row
    meta = httpx.get(url + "/v1/models/tfchat/metadata", timeout=30).json()["metadata"]["signature_def"]["signature_def"]
    assert "prefill" not in meta and "content_filter" in meta["chat"]["outputs"]
    r = httpx.post(url + "/v1/models/tfchat:predict", timeout=30,
                   json={"signature_name": "prefill", "instances": [{"token_ids": [1], "num_tokens": 1}]})
    assert r.status_code == 404 and "not served with a content filter" in r.json()["error"]


def test_moderations_with_the_official_openai_sdk(real_server):
    openai = pytest.importorskip("openai")
    url, _ = real_server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    response = client.moderations.create(input=["you are a worthless idiot zed", "have a lovely day zed"],
                                         model="omni-moderation-latest")
    assert response.id.startswith("modr-") and response.model == "moderation"
    bad, good = response.results
    assert bad.flagged and not good.flagged
    assert bad.categories.harassment and not good.categories.harassment
    assert bad.category_scores.harassment > 0.5 > good.category_scores.harassment
    assert bad.categories.sexual is False and bad.category_scores.sexual == 0.0  # no label: never flagged
    single = client.moderations.create(input="I will hurt you zed")
    assert len(single.results) == 1 and single.results[0].categories.violence
    with pytest.raises(openai.BadRequestError, match="is empty"):
        client.moderations.create(input="")


@pytest.mark.parametrize("body, fragment", [
    ({}, "'input' is required"),
    ({"input": []}, "non-empty"),
    ({"input": ""}, "is empty"),
    ({"input": 42}, "non-empty string"),
    ({"input": ["ok", {"type": "image_url"}]}, "input[1] must be a string"),
    ({"input": "x" * (moderation.MAX_CHARS + 1)}, "at most"),
    ({"input": ["hi"] * (moderation.MAX_INPUTS + 1)}, "per request"),
    ({"input": "hi", "model": 3}, "'model' must be a string"),
    ([1, 2], "JSON object"),
])
def test_moderations_rejects_bad_input(real_server, body, fragment):
    import httpx

    url, _ = real_server
    r = httpx.post(url + "/v1/moderations", json=body, timeout=30)
    assert r.status_code == 400 and fragment in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(url + "/v1/moderations", content=b"{not json", headers={"Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == 400 and "invalid JSON" in r.json()["error"]["message"]


def test_terminal_chat_shows_a_filtered_reply(real_server):
    url, _ = real_server
    out = io.StringIO()
    chat = chat_cli.RemoteChat(url)
    chat_cli.run(chat, io.StringIO("you are a worthless idiot zed\nthanks for the help zed\n"), out, max_new_tokens=4)
    text = out.getvalue()
    first, second = text.split("bot> ")[1:3]
    assert first.startswith(REFUSAL) and "[filtered: the content filter flagged this exchange" in first
    # The clean message reached the model; the random model's babble may itself be screened.
    assert chat.finish_reason in ("stop", "length", FINISH_REASON)
    assert ("[filtered:" in second) == (chat.finish_reason == FINISH_REASON)


def test_server_and_chat_flags_fail_clearly(tmp_path, capsys):
    from serving import server

    with pytest.raises(SystemExit) as e:
        server.main(["--model", str(tmp_path), "--filter-threshold", "0.5"])
    assert e.value.code == 2
    assert server.main(["--model", str(tmp_path), "--content-filter", str(tmp_path / "none")]) == 1
    assert "classifier not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        chat_cli.main(["--server", "http://x", "--content-filter", str(tmp_path)])


def test_training_data_filter_drops_flagged_documents_and_conversations(tmp_path, data_tokenizer):
    from tfchat.data import batches, sources

    for i, text in enumerate(["A calm article about gardening and the growing of tomatoes in summer.",
                              "A guide that explains how to build a bomb in a garage, step by step.",
                              "Another calm article, about the history of bread and bakeries in Europe."] * 8):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"Document {i}\n\n{text}")
    source = str(tmp_path / "*.txt")
    content_filter = keyword_filter()
    directory = sources.filter_documents(source, content_filter)
    with open(f"{directory}/meta.json") as f:
        counts = json.load(f)["content_filter"]["splits"]
    assert sum(c["total"] for c in counts.values()) == 24 and sum(c["dropped"] for c in counts.values()) == 8
    kept = [d.decode() for d in sources.documents_dataset(source, "train", content_filter=content_filter)
            .as_numpy_iterator()]
    assert kept and not any(FLAGGED_WORD in d for d in kept)
    assert sources.filter_documents(source, content_filter) == directory  # cached

    chats = tmp_path / "chats.jsonl"
    rows = [[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "a bomb" if i % 3 else "ok"}]
            for i in range(60)]
    chats.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    ds = batches.finetune_dataset(str(chats), data_tokenizer, 32, 4, split="train", repeat=False,
                                  content_filter=content_filter)
    texts = [data_tokenizer.decode([t for t in row if t != data_tokenizer.pad_id])
             for b in ds.as_numpy_iterator() for row in b["token_ids"]]
    assert texts and not any(FLAGGED_WORD in t for t in texts)


def test_refusal_future_is_resolved_once():
    backend = FilteredBackend(ScriptedBackend(["x"]), keyword_filter())
    request = chat_request("bomb")
    future = backend.submit(request)
    assert isinstance(future, concurrent.futures.Future) and future.result().text == REFUSAL
