import base64
import json
import re
import threading

import pytest
from fastapi.testclient import TestClient

from tfchat.inference.sampling import SamplingParams
from serving.backend import Backend, GenRequest
from serving.app import create_app
from tfchat.inference.generation import generate_text
from tfchat.inference.streaming import decode_text
from tests.fixtures import tiny_export

HI = [{"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(LoadedModel, export base path) of the module's tiny model."""
    root = tmp_path_factory.mktemp("server")
    loaded, _ = tiny_export(root)
    return loaded, str(root / "tfchat")


@pytest.fixture(scope="module")
def setup(exported):
    loaded, path = exported
    backend = Backend(path, batch_wait_ms=150)
    yield loaded, backend, TestClient(create_app(backend))
    backend.close()


def test_model_status_and_metadata(setup):
    _, _, client = setup
    status = client.get("/v1/models/tfchat").json()
    assert status["model_version_status"][0]["version"] == "1"
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    assert client.get("/v1/models/tfchat/versions/1").status_code == 200
    meta = client.get("/v1/models/tfchat/metadata").json()
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "chat", "score", "prefill", "decode"} <= set(sigs)
    prompt = sigs["serving_default"]["inputs"]["prompt"]
    assert prompt["dtype"] == "DT_STRING" and prompt["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    for path in ("/v1/models/other", "/v1/models/tfchat/versions/7", "/v1/models/other/metadata"):
        r = client.get(path)
        assert r.status_code == 404 and "Servable not found" in r.json()["error"]


def test_predict_row_and_columnar_formats_match_keras(setup):
    loaded, _, client = setup
    expected = generate_text(loaded, prompts=["Hello", "The fox"], max_new_tokens=6)
    rows = client.post(
        "/v1/models/tfchat:predict",
        json={"instances": [{"prompt": "Hello", "max_new_tokens": 6, "temperature": 0.0},
                            {"prompt": "The fox", "max_new_tokens": 6, "temperature": 0.0}]},
    ).json()["predictions"]
    assert [r["text"] for r in rows] == expected
    assert all(r["num_tokens"] == len(r["token_ids"]) == 6 for r in rows)
    cols = client.post(
        "/v1/models/tfchat/versions/1:predict",
        json={"signature_name": "generate", "inputs": {"prompt": ["Hello", "The fox"], "max_new_tokens": [6, 6],
              "temperature": [0.0, 0.0], "top_k": [0, 0], "top_p": [1.0, 1.0], "seed": [0, 0]}},
    ).json()["outputs"]
    assert cols["text"] == expected
    b64 = client.post(
        "/v1/models/tfchat:predict",
        json={"instances": [{"prompt": {"b64": base64.b64encode(b"Hello").decode()}, "max_new_tokens": 6,
                             "temperature": 0.0}]},
    ).json()["predictions"]
    assert b64[0]["text"] == expected[0]


def test_predict_other_signatures(setup):
    loaded, _, client = setup
    score = client.post("/v1/models/tfchat:predict", json={"signature_name": "score", "inputs": {"text": ["Hello world"]}})
    assert score.status_code == 200 and score.json()["outputs"]["loss"][0] > 0
    # A single-input signature takes bare values in both formats.
    tok = client.post("/v1/models/tfchat:predict", json={"signature_name": "tokenize", "instances": ["Hello", "Hi"]})
    preds = tok.json()["predictions"]
    for p, text in zip(preds, ["Hello", "Hi"]):
        assert p["token_ids"][: p["num_tokens"]] == loaded.tokenizer.encode(text)
    chat = client.post(
        "/v1/models/tfchat:predict",
        json={"signature_name": "chat", "inputs": {"roles": [["user"]], "contents": [["Hi"]], "max_new_tokens": [5]}},
    )
    assert chat.status_code == 200 and len(chat.json()["outputs"]["reply"]) == 1


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"inputs": {"prompt": ["x"]}, "signature_name": "nope"}, 404, "not found in signature def"),
        ({"instances": [{"prompt": "x"}], "inputs": {}}, 400, "exactly one of"),
        ({"instances": []}, 400, "non-empty"),
        ({"inputs": {"prompt": ["x"], "bogus": [1]}}, 400, "unknown input"),
        ({"inputs": {"max_new_tokens": [3]}, "signature_name": "score"}, 400, "unknown input"),
        ({"inputs": {"prompt": ["x"], "max_new_tokens": ["many"]}}, 400, "max_new_tokens"),
        ({"inputs": {"prompt": [["x"]]}}, 400, "shape"),
        ({"inputs": {"prompt": ["x"], "max_new_tokens": [500]}}, 400, "max_new_tokens must be <= 63"),
        ({"inputs": {"prompt": ["x"], "top_p": [0.0]}}, 400, "top_p"),
        ({"inputs": {"roles": [["robot"]], "contents": [["x"]]}, "signature_name": "chat"}, 400, "roles must be"),
        ({"inputs": {"roles": [["user"]], "contents": [["x"]], "max_new_tokens": [60]}, "signature_name": "chat"}, 400,
         "max_new_tokens must be <= 56 for chat"),
        ([1, 2], 400, "JSON object"),
    ],
)
def test_predict_errors(setup, body, status, message):
    _, _, client = setup
    r = client.post("/v1/models/tfchat:predict", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_predict_rejects_invalid_json(setup):
    _, _, client = setup
    r = client.post("/v1/models/tfchat:predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "invalid JSON" in r.json()["error"]
    r = client.post("/v1/models/other:predict", json={"inputs": {"prompt": ["x"]}})
    assert r.status_code == 404


def _sse(response) -> list[dict]:
    events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_chat_completions_plain_and_streamed_agree(setup):
    _, backend, client = setup
    body = {"model": "tfchat", "messages": HI, "max_tokens": 8, "temperature": 0.7, "seed": 3}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    out = r.json()
    assert out["object"] == "chat.completion"
    message = out["choices"][0]["message"]
    assert message["role"] == "assistant" and out["choices"][0]["finish_reason"] in ("stop", "length")
    assert out["usage"]["completion_tokens"] <= 8 and out["usage"]["prompt_tokens"] > 0
    direct = backend.complete(GenRequest(messages=HI, sampling=SamplingParams(max_new_tokens=8, temperature=0.7, seed=3)))
    assert message["content"] == direct.text
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        chunks = _sse(s)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == message["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == out["choices"][0]["finish_reason"]


def test_completions_batch_and_stream(setup):
    loaded, backend, client = setup
    library = generate_text(loaded, prompts=["Hello", "The quick"], max_new_tokens=6)
    ids = [backend.complete(GenRequest(prompt=p, sampling=SamplingParams.greedy().replace(max_new_tokens=6))).token_ids
           for p in ("Hello", "The quick")]
    assert [loaded.tokenizer.decode(i) for i in ids] == library  # the library's tokens
    # The server leaves out a character cut off by max_tokens (tfchat.inference.streaming), where the
    # library's decode shows U+FFFD.
    expected = [decode_text(i, loaded.tokenizer.token_bytes()) for i in ids]
    r = client.post("/v1/completions", json={"prompt": ["Hello", "The quick"], "max_tokens": 6, "temperature": 0})
    out = r.json()
    assert out["object"] == "text_completion" and [c["text"] for c in out["choices"]] == expected
    assert [c["index"] for c in out["choices"]] == [0, 1]
    with client.stream("POST", "/v1/completions", json={"prompt": "Hello", "max_tokens": 6, "temperature": 0, "stream": True}) as s:
        chunks = _sse(s)
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected[0]


@pytest.mark.parametrize(
    "path, body, status, fragment",
    [
        ("/v1/chat/completions", {"messages": []}, 400, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "content"),
        ("/v1/chat/completions", {"messages": HI, "temperature": -1}, 400, "temperature"),
        ("/v1/chat/completions", {"messages": HI, "top_p": 2}, 400, "top_p"),
        ("/v1/chat/completions", {"messages": HI, "max_tokens": 0}, 400, "max_new_tokens"),
        ("/v1/chat/completions", {"messages": HI, "max_tokens": 10_000}, 400, "max_new_tokens"),
        ("/v1/chat/completions", {"messages": HI, "n": 2}, 400, "n=1"),
        ("/v1/chat/completions", {"messages": HI, "model": "gpt-4"}, 404, "does not exist"),
        ("/v1/chat/completions", {"messages": HI, "stream": "yes"}, 400, "stream"),
        ("/v1/completions", {"prompt": 5}, 400, "prompt"),
        ("/v1/completions", {"prompt": ["a", "b"], "stream": True}, 400, "single prompt"),
        # Tags for a model trained without them are refused, never ignored.
        ("/v1/chat/completions", {"messages": HI, "style": "happy"}, 400, "this model was trained without tags"),
        ("/v1/chat/completions", {"messages": HI, "tags": {"topic": "music"}}, 400, "trained without tags"),
        ("/v1/chat/completions", {"messages": HI, "tags": ["topic=music"]}, 400, "'tags' must be an object"),
    ],
)
def test_openai_errors(setup, path, body, status, fragment):
    _, _, client = setup
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert fragment in err["message"] and err["type"] == "invalid_request_error"


def test_models_health_and_page(setup):
    _, _, client = setup
    model = client.get("/v1/models").json()["data"][0]
    assert model["id"] == "tfchat" and "tags" not in model  # trained without tags
    assert client.get("/healthz").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/v1/chat/completions" in page.text and "tfchat" in page.text


def test_concurrent_requests_are_batched_and_not_mixed_up(setup):
    _, backend, client = setup
    prompts = [f"Hello {i}" for i in range(4)]
    seeds = [11, 12, 13, 14]
    alone = [
        backend.complete(GenRequest(prompt=p, sampling=SamplingParams(max_new_tokens=6, temperature=1.0, seed=s))).text for p, s in zip(prompts, seeds)
    ]
    chat_alone = backend.complete(GenRequest(messages=HI, sampling=SamplingParams.greedy(6))).text
    results, errors = {}, []

    def completion(i):
        try:
            body = {"prompt": prompts[i], "max_tokens": 6, "temperature": 1.0, "seed": seeds[i]}
            results[i] = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    def streamed_chat(i):
        try:
            body = {"messages": HI, "max_tokens": 6, "temperature": 0, "stream": True}
            with client.stream("POST", "/v1/chat/completions", json=body) as s:
                results[f"chat{i}"] = "".join(c["choices"][0]["delta"].get("content", "") for c in _sse(s))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    backend.largest_batch = 0
    threads = [threading.Thread(target=completion, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=streamed_chat, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert [results[i] for i in range(4)] == alone
    assert results["chat0"] == results["chat1"] == chat_alone
    assert backend.largest_batch > 1  # the 150 ms window gathered several requests


# Each way of leaving once, one per decoding path (the row is dropped by the loop both paths share).
@pytest.mark.parametrize("stream, fast", [(True, True), (False, False)])
def test_client_gone_stops_decoding_and_server_keeps_serving(exported, monkeypatch, stream, fast):
    """A client that hangs up mid-stream, or gives up waiting for a non-streaming answer: its row stops."""
    import time

    import httpx

    from serving.app import ServerThread
    from tests.fixtures import before_each_decode

    backend = Backend(exported[1], fast=fast)
    calls = []

    def slow():  # slow enough that the client leaves mid-decoding: ~50 ms a token
        calls.append(1)
        time.sleep(0.05 * per_call)

    per_call = before_each_decode(backend, slow, monkeypatch)
    server = ServerThread(create_app(backend))
    url = server.start()
    body = {"messages": HI, "max_tokens": 50, "temperature": 1.0, "seed": 3, "stream": stream}
    try:
        warm = httpx.post(url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2}, timeout=60)
        assert warm.status_code == 200  # signatures traced: decode steps now take ~50 ms each
        calls.clear()
        with httpx.Client(timeout=httpx.Timeout(30, read=None if stream else 0.5)) as client:
            if stream:
                with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
                    assert response.status_code == 200
                    next(response.iter_lines())  # the first event, then hang up
            else:
                with pytest.raises(httpx.ReadTimeout):  # give up after 0.5 s: the connection closes
                    client.post(url + "/v1/chat/completions", json=body)
        # Wait until decoding stops (no new step for 0.6 s, about 12 steps' time), at most 20 s.
        deadline, made = time.monotonic() + 20, -1
        while len(calls) != made and time.monotonic() < deadline:
            made = len(calls)
            time.sleep(0.6)
        assert len(calls) == made, "decoding went on after the client left"
        assert made * per_call < 45, made  # not run to the 50-token end: the row was dropped
        again = httpx.post(url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 4}, timeout=60)
        assert again.status_code == 200 and again.json()["choices"][0]["message"]["role"] == "assistant"
    finally:
        server.stop()
        backend.close()


def test_a_modern_architecture_serves_streaming_and_batched_like_the_library(tmp_path):
    """RoPE, RMSNorm, QK-norm, ReLU², untied head, soft-cap: the export's prefill/decode stream equals generate."""
    from tests.fixtures import MODERN

    loaded, _ = tiny_export(tmp_path, **MODERN)
    backend = Backend(str(tmp_path / "tfchat"))
    try:
        greedy = SamplingParams.greedy(8)
        expected = generate_text(loaded, prompts=["Hello", "The fox"], max_new_tokens=8)
        assert [backend.complete(GenRequest(prompt=p, sampling=greedy)).text for p in ("Hello", "The fox")] == expected
        streamed = "".join(backend.stream(GenRequest(prompt="Hello", sampling=greedy)))
        assert streamed == expected[0]
        sampled = SamplingParams(max_new_tokens=8, temperature=1.0, seed=5)
        whole = backend.complete(GenRequest(messages=HI, sampling=sampled)).text
        assert "".join(backend.stream(GenRequest(messages=HI, sampling=sampled))) == whole
    finally:
        backend.close()


# ---------------------------------------------------------------------------------- control tags

TAGS = {"topic": "sports", "style": "happy"}
GUIDED = 20.0  # a guidance scale that changes the tiny random model's greedy reply


@pytest.fixture(scope="module")
def tagged(tagged_export):
    """(LoadedModel, fast backend, TestClient) of a model trained with control tags."""

    loaded, path = tagged_export
    backend = Backend(path, batch_wait_ms=300)
    yield loaded, backend, TestClient(create_app(backend))
    backend.close()


def _expected(loaded, messages, tags=None, knowledge=None, max_new=8, guidance=1.0, **sampling):
    """(prompt ids, reply ids) from the chat template and the Keras model (greedy unless `sampling` says;
    guided against the untagged prompt when `guidance` is not 1)."""
    import tensorflow as tf

    from tfchat.inference.generation import generate
    from tfchat.text import chat_template

    tok = loaded.tokenizer
    prompt = lambda reply_tags: chat_template.prompt(messages, tok, 64 - max_new, tags=loaded.tags,  # noqa: E731
                                                     reply_tags=reply_tags, knowledge=knowledge)
    ids = prompt(tags)
    guide = dict(guidance=guidance, unguided_ids=tf.ragged.constant([prompt(None)], tf.int32)) if guidance != 1 else {}
    tokens, lengths = generate(loaded.model, tf.ragged.constant([ids], dtype=tf.int32), max_new,
                               stop_ids=[tok.end_id, tok.eot_id], **sampling, **guide)
    return ids, tokens.numpy()[0, : int(lengths[0])].tolist()


@pytest.mark.parametrize("fast", [True, False])
def test_tagged_and_untagged_requests_batch_together_on_both_paths(tagged, fast):
    """Tagged, untagged and tagged-and-grounded requests in one batch (fast: continuous batching; plain: the
    prefill/decode signatures) each get the Keras model's greedy reply to its own prompt."""
    loaded, fast_backend, _ = tagged
    backend = fast_backend if fast else Backend(fast_backend.path, batch_wait_ms=300, fast=False)
    try:
        # (tags, knowledge, guidance, sampling): guided rows decode beside their untagged twins; an untagged
        # request ignores guidance.
        sampled = dict(temperature=1.0, top_k=0, top_p=0.9, seed=3)
        cases = [(TAGS, None, 1.0, {}), (None, None, 1.0, {}), ({"style": "sad"}, "The fox is quick.", 1.0, {}),
                 ({"topic": "music", "style": None}, None, 1.0, {}), (TAGS, None, GUIDED, {}),
                 ({"style": "sad"}, "The fox is quick.", GUIDED, sampled), (None, None, GUIDED, {})]
        requests = [GenRequest(messages=HI, sampling=SamplingParams.greedy(8).replace(guidance=g, **x), tags=t,
                               knowledge=k) for t, k, g, x in cases]
        backend.largest_batch = 0
        for r in requests:
            backend.submit(r)
        results = [r.future.result(timeout=120) for r in requests]
        assert backend.largest_batch >= 2
        replies = set()
        for (tags, knowledge, guidance, sampling), done in zip(cases, results):
            tags = {k: v for k, v in (tags or {}).items() if v}
            ids, reply = _expected(loaded, HI, tags, knowledge, guidance=guidance if tags else 1.0, **sampling)
            assert (done.token_ids, done.prompt_tokens) == (reply, len(ids))
            replies.add(tuple(reply))
        assert len(replies) > 1  # the tags reached the model
        assert results[0].prompt_tokens == results[1].prompt_tokens + 2  # two control ids
        assert results[4].token_ids != results[0].token_ids  # guidance changed the reply
        assert results[6].token_ids == results[1].token_ids
    finally:
        if not fast:
            backend.close()


def test_a_guided_request_takes_two_batch_rows():
    """Its untagged twin decodes beside it: batches and joining requests count it twice against max_batch."""
    from serving.backend import _rows_of, _within

    guided = GenRequest(messages=HI, tags=TAGS, sampling=SamplingParams(guidance=8.0))
    plain = GenRequest(messages=HI, sampling=SamplingParams(guidance=8.0))  # untagged: guidance does not apply
    assert _rows_of([guided, plain, guided]) == 5
    assert _within(3, [plain, guided, plain]) == [plain, guided]
    assert _within(2, [plain, guided, plain]) == [plain]  # in order: the guided one waits for two free rows
    assert _within(1, [guided, plain]) == []


@pytest.mark.parametrize("tags, message", [
    ({"topic": "cooking"}, "unknown topic 'cooking'; known: music, sports"),
    ({"mood": "happy"}, "unknown tag 'mood'; known: style, topic"),
    ({"style": 3}, "tag style must be a string, got 3"),
    ("topic=music", "tags must be an object of name: value"),
])
def test_backend_refuses_bad_tags(tagged, tags, message):
    from serving.errors import BadRequest

    _, backend, _ = tagged
    with pytest.raises(BadRequest, match=re.escape(message)):
        backend.validate(GenRequest(messages=HI, tags=tags))
    with pytest.raises(BadRequest, match="tags steer chat replies"):
        backend.validate(GenRequest(prompt="Hello", tags=TAGS))


def test_untagged_backend_refuses_tags(setup):
    from serving.errors import BadRequest

    _, backend, _ = setup
    assert backend.tags is None
    with pytest.raises(BadRequest, match="this model was trained without tags: leave out style"):
        backend.validate(GenRequest(messages=HI, tags={"style": "happy"}))
    backend.validate(GenRequest(messages=HI, tags={"style": None}))  # no tag given: fine


def test_openai_route_takes_top_level_and_object_tags(tagged):
    loaded, backend, client = tagged
    assert client.get("/v1/models").json()["data"][0]["tags"] == loaded.tags.to_dict()
    body = {"messages": HI, "max_tokens": 8, "temperature": 0}
    ids, reply = _expected(loaded, HI, TAGS)
    top = client.post("/v1/chat/completions", json={**body, **TAGS}).json()
    assert top["choices"][0]["message"]["content"] == loaded.tokenizer.decode(reply)
    assert top["usage"]["prompt_tokens"] == len(ids)
    nested = client.post("/v1/chat/completions", json={**body, "tags": TAGS, "topic": "sports"}).json()
    assert nested["choices"][0]["message"] == top["choices"][0]["message"]
    with client.stream("POST", "/v1/chat/completions", json={**body, **TAGS, "stream": True}) as s:
        streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in _sse(s))
    assert streamed == top["choices"][0]["message"]["content"]
    guided = client.post("/v1/chat/completions", json={**body, **TAGS, "guidance": GUIDED}).json()
    assert guided["choices"][0]["message"]["content"] == loaded.tokenizer.decode(
        _expected(loaded, HI, TAGS, guidance=GUIDED)[1])
    for extra, fragment in [({"topic": "cooking"}, "unknown topic 'cooking'; known: music, sports"),
                            ({**TAGS, "guidance": 31}, "guidance must be a number in 0 .. 30"),
                            ({**TAGS, "guidance": "strong"}, "guidance must be a number in 0 .. 30"),
                            ({"tags": {"topic": "music"}, "topic": "sports"}, "'topic' and 'tags.topic' differ"),
                            ({"style": ["happy"]}, "tag style must be a string")]:
        r = client.post("/v1/chat/completions", json={**body, **extra})
        assert r.status_code == 400, r.text
        assert fragment in r.json()["error"]["message"] and r.json()["error"]["type"] == "invalid_request_error"
    r = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 4, "topic": "music"})
    assert r.status_code == 400 and "tags steer chat replies" in r.json()["error"]["message"]


def test_tf_serving_rest_chat_tagged_and_the_rest_client(tagged):
    from serving.client import RestClient, ServingError

    loaded, _, client = tagged
    _, reply = _expected(loaded, HI, TAGS, max_new=6)
    rows = client.post("/v1/models/tfchat:predict", json={"signature_name": "chat_tagged", "instances": [
        {"roles": ["user"], "contents": [HI[0]["content"]], "tags": ["style=happy", "topic=sports"],
         "max_new_tokens": 6, "temperature": 0.0, "guidance": 1.0},
        {"roles": ["user"], "contents": [HI[0]["content"]], "tags": ["", ""], "max_new_tokens": 6, "temperature": 0.0,
         "guidance": GUIDED},  # untagged: not guided
        {"roles": ["user"], "contents": [HI[0]["content"]], "tags": ["style=happy", "topic=sports"],
         "max_new_tokens": 6, "temperature": 0.0, "guidance": GUIDED},
    ]}).json()["predictions"]
    assert rows[0]["token_ids"][: rows[0]["num_tokens"]] == reply
    assert rows[1]["token_ids"][: rows[1]["num_tokens"]] == _expected(loaded, HI, max_new=6)[1]
    guided = _expected(loaded, HI, TAGS, max_new=6, guidance=GUIDED)[1]
    assert rows[2]["token_ids"][: rows[2]["num_tokens"]] == guided
    r = client.post("/v1/models/tfchat:predict", json={"signature_name": "chat_tagged", "inputs": {
        "roles": [["user"]], "contents": [["Hi"]], "tags": [["topic=cooking"]]}})
    assert r.status_code == 400 and r.json()["error"].startswith("unknown tag topic=cooking; known tags: style=happy")
    rest = RestClient("http://testserver", "tfchat", http=client)
    assert rest.chat(HI, max_new_tokens=6, tags=TAGS) == loaded.tokenizer.decode(reply)
    assert rest.chat(HI, max_new_tokens=6, tags=TAGS, guidance=GUIDED) == loaded.tokenizer.decode(guided)
    with pytest.raises(ServingError, match="unknown tag topic=cooking"):
        rest.chat(HI, max_new_tokens=6, tags={"topic": "cooking"})
