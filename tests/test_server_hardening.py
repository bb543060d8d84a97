"""Hostile and malformed input to the server: every case is a clear 4xx (never a 5xx), the server keeps serving,
and the OpenAPI spec, fuzzed by schemathesis, yields no 5xx."""

import json
import logging
import socket
import time

import pytest
from fastapi.testclient import TestClient

from serving.app import ServerThread, create_app
from serving.backend import Backend
from tests.fixtures import tiny_export

HI = [{"role": "user", "content": "Hi there"}]
JSON = {"content-type": "application/json"}
CHAT, COMPLETIONS, PREDICT = "/v1/chat/completions", "/v1/completions", "/v1/models/tfchat:predict"


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    _, path = tiny_export(tmp_path_factory.mktemp("hardening"))
    backend = Backend(path)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def client(backend):
    return TestClient(create_app(backend))


def _message(response) -> str:
    err = response.json()["error"]
    return err["message"] if isinstance(err, dict) else err


RAW = [  # (path, raw body, status, fragment)
    (CHAT, "[" * 100_000 + "]" * 100_000, 400, "nested deeper than 64"),
    (PREDICT, '{"inputs": ' + "[" * 100_000 + "]" * 100_000 + "}", 400, "nested deeper than 64"),
    (CHAT, '{"messages": [{"role": "user", "content": "hi"}], "seed": 1' + "0" * 5000 + "}", 400, "digits"),
    (PREDICT, '{"inputs": {"prompt": ["x"], "seed": [' + "9" * 5000 + "]}}", 400, "digits"),
    (CHAT, '{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "surrogate"),
    (COMPLETIONS, '{"prompt": "a \\udfff b"}', 400, "surrogate"),
    (PREDICT, '{"instances": ["\\ud800"], "signature_name": "tokenize"}', 400, "surrogate"),
    (CHAT, '{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}', 400, "Infinity is not a JSON"),
    (CHAT, '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400, "NaN is not a JSON number"),
    (CHAT, '{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}', 400, "temperature must be a finite"),
    (CHAT, '{"messages": [', 400, "invalid JSON"),
    (CHAT, b'{"messages": "\xff"}', 400, "invalid JSON"),
]


@pytest.mark.parametrize("path, raw, status, fragment", RAW)
def test_malformed_json_bodies(client, path, raw, status, fragment):
    r = client.post(path, content=raw, headers=JSON)
    assert r.status_code == status, r.text[:300]
    assert fragment in _message(r)


BODIES = [  # (path, JSON body, status, fragment)
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, 400, "text must be a string"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400,
     "only text parts"),
    (CHAT, {"messages": [{"role": "user", "content": ["hi"]}]}, 400, "only text parts"),
    (CHAT, {"messages": HI, "top_k": 2**40}, 400, "top_k must be an integer"),
    (CHAT, {"messages": HI, "max_tokens": 1.5}, 400, "max_new_tokens must be an integer"),
    (CHAT, {"messages": HI, "max_tokens": "4"}, 400, "max_new_tokens must be an integer"),
    (CHAT, {"messages": HI, "seed": 2**40}, 400, "seed must be an integer"),
    (CHAT, {"messages": HI, "logprobs": "yes"}, 400, "logprobs must be a boolean"),
    (CHAT, {"messages": HI, "top_logprobs": 3}, 400, "requires logprobs"),
    (CHAT, {"messages": HI, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs must be an integer"),
    (COMPLETIONS, {"prompt": "x", "logprobs": 6}, 400, "logprobs must be an integer in 0 .. 5"),
    (COMPLETIONS, {"prompt": "x", "top_k": 2**40}, 400, "top_k"),
    (PREDICT, {"inputs": {"prompt": ["x"]}, "signature_name": ["generate"]}, 400, "signature_name must be a string"),
    (PREDICT, {"inputs": {"prompt": ["x"], "max_new_tokens": [2**40]}}, 400, "-2147483648 .. 2147483647"),
    (PREDICT, {"inputs": {"prompt": ["x"], "top_k": [2**40]}}, 400, "top_k"),
    (PREDICT, {"inputs": {"prompt": ["x"], "max_new_tokens": [1.5]}}, 400, "expected integers"),
    (PREDICT, {"inputs": {"prompt": ["x"], "max_new_tokens": ["4"]}}, 400, "expected integers"),
    (PREDICT, {"inputs": {"prompt": ["x"], "max_new_tokens": [True]}}, 400, "expected integers"),
    (PREDICT, {"inputs": {"prompt": ["x"], "temperature": ["hot"]}}, 400, "expected numbers"),
    (PREDICT, {"inputs": {"prompt": ["x"], "temperature": [1e300]}}, 400, "values must be finite float32"),
    (PREDICT, {"inputs": {"prompt": ["x"], "seed": [[1], [1, 2]]}}, 400, "ragged"),
    (PREDICT, {"instances": [{"prompt": {"b64": "!!!"}}]}, 400, "invalid base64"),
    (PREDICT, {"instances": [{"prompt": {"b64": 5}}]}, 400, "invalid base64"),
    (PREDICT, {"signature_name": "detokenize", "inputs": {"token_ids": [[10**6]], "num_tokens": [1]}}, 400,
     "token ids must be in 0 .. 399"),
    (PREDICT, {"signature_name": "detokenize", "inputs": {"token_ids": [[-3]], "num_tokens": [1]}}, 400,
     "token ids must be in"),
    (PREDICT, {"inputs": {"prompt": ["x" * 2000]}}, 400, "a text of 2,000 characters; at most 1,024"),
    # Positive in Python, 0 or inf as the float32 the graph computes with: refused before any stream starts.
    (COMPLETIONS, {"prompt": "x", "top_p": 1e-300}, 400, "top_p must be a number in (0, 1] (1 = off), got 1e-300"),
    (CHAT, {"messages": HI, "stream": True, "top_p": 1e-40}, 400, "top_p must be a number in (0, 1]"),
    (CHAT, {"messages": HI, "temperature": 1e300}, 400, "temperature must be a finite number"),
    (PREDICT, {"signature_name": "chat", "instances": [{"roles": ["robot"], "contents": ["hi"]}]}, 400,
     "roles must be 'system', 'user' or 'assistant'"),
]


@pytest.mark.parametrize("path, body, status, fragment", BODIES)
def test_bad_values_are_clear_400s(client, path, body, status, fragment):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text[:300]
    assert fragment in _message(r)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None])
def test_only_json_bodies_so_web_pages_cannot_post_without_preflight(client, content_type):
    body = json.dumps({"messages": HI, "max_tokens": 2})
    headers = {"content-type": content_type} if content_type else {}
    for path in (CHAT, COMPLETIONS, PREDICT):
        r = client.post(path, content=body, headers=headers)
        assert r.status_code == 415 and "Content-Type must be application/json" in _message(r), r.text
    assert client.post(CHAT, content=body, headers={"content-type": "application/json; charset=utf-8"}).status_code == 200


def test_request_size_limit_before_reading_the_body(backend):
    client = TestClient(create_app(backend, max_request_bytes=1000))
    big = json.dumps({"prompt": "x" * 2000})
    r = client.post(COMPLETIONS, content=big, headers=JSON)
    assert r.status_code == 413 and "over 1,000 bytes" in _message(r)
    assert client.post(COMPLETIONS, json={"prompt": "hi", "max_tokens": 2}).status_code == 200
    # Without a Content-Length the limit holds while the body streams in: the answer comes before its end.
    with ServerThread(create_app(backend, max_request_bytes=1000)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=20) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            for _ in range(3):
                s.sendall(b"1f4\r\n" + b" " * 500 + b"\r\n")  # 1,500 bytes of an endless body
            assert s.recv(4096).startswith(b"HTTP/1.1 413")


def test_long_prompts_are_cut_before_tokenizing(backend, client):
    tokenize, seen = backend.signatures["tokenize"], []

    def spy(text):
        seen.append(max(len(t) for t in text.numpy()))
        return tokenize(text=text)

    backend.signatures["tokenize"] = spy
    try:
        r = client.post(COMPLETIONS, json={"prompt": "The quick brown fox. " * 10_000, "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] <= backend.max_len
        assert seen and max(seen) <= backend.max_prompt_chars
        long_chat = [{"role": "user", "content": "Hello world. " * 500}, {"role": "assistant", "content": "Hi."},
                     {"role": "user", "content": "How are you?"}]
        r = client.post(CHAT, json={"messages": long_chat, "max_tokens": 3})
        assert r.status_code == 200
    finally:
        backend.signatures["tokenize"] = tokenize


def test_get_of_a_predict_path_is_not_the_status_route(client):
    for path in ("/v1/models/tfchat/versions/1:predict", "/v1/models/tfchat:predict"):
        r = client.get(path)
        assert r.status_code == 405, (path, r.status_code, r.text)
    assert client.get("/v1/models/tfchat/versions/1").json()["model_version_status"][0]["version"] == "1"


def test_openapi_spec_describes_bodies_and_errors(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models/{name}:predict"):
        op = spec["paths"][path]["post"]
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert schema["type"] == "object" and schema["properties"], path
        assert {"400", "413", "415"} <= set(op["responses"]), path
    chat = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert chat["required"] == ["messages"] and "top_logprobs" in chat["properties"]


def test_client_hanging_up_mid_upload_logs_no_traceback(backend, caplog):
    with ServerThread(create_app(backend)) as url, caplog.at_level(logging.INFO):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000\r\n\r\n{\"messages\": [")
            time.sleep(0.3)
        time.sleep(0.5)
        import httpx

        assert httpx.post(url + CHAT, json={"messages": HI, "max_tokens": 2}, timeout=60).status_code == 200
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


def test_schemathesis_finds_no_server_errors(backend):
    """Bounded property-based fuzzing of every documented operation, with valid (positive) and invalid
    (negative) requests, through the ASGI app in-process on a tiny model: no 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(backend))
    served = {"name": backend.name, "version": backend.version}  # else every TF Serving path is a 404
    failures, statuses = [], set()
    for operation in schema.get_all_operations():
        op = operation.ok()
        params = {k: v for k, v in served.items() if "{" + k + "}" in op.path}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=25, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode, path_parameters=params or None))
            def run(case):
                if isinstance(case.body, dict):
                    for key in ("max_tokens", "max_completion_tokens"):  # keep the tiny model's decoding short
                        if isinstance(case.body.get(key), int) and case.body[key] > 8:
                            case.body[key] = 8
                response = case.call()
                statuses.add(response.status_code)
                if response.status_code >= 500:
                    failures.append((op.label, mode.value, case.body, response.status_code, response.text[:300]))
                case.validate_response(response, checks=[not_a_server_error])

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                pass
            except Exception as e:  # noqa: BLE001  (collect every operation's failure, then report)
                failures.append((op.label, mode.value, type(e).__name__, str(e)[:500]))
    assert not failures, failures
    assert {200, 400} <= statuses, statuses  # it reached the model, and its checks


def test_graph_errors_read_as_their_message(client):
    """A shape mismatch the graph finds (two roles, one content) is TF's own message, not
    "<stack traces unavailable>"."""
    r = client.post(PREDICT, json={"signature_name": "chat_prompt",
                                   "instances": [{"roles": ["user", "user"], "contents": ["hi"]}]})
    assert r.status_code == 400, r.text[:300]
    assert "stack traces" not in _message(r) and "is not in" in _message(r), r.text[:300]


def test_null_stream_and_n_mean_their_defaults(client):
    for extra in ({"stream": None}, {"n": None}):
        r = client.post(CHAT, json={"messages": HI, "max_tokens": 2, **extra})
        assert r.status_code == 200 and r.json()["object"] == "chat.completion", (extra, r.text[:300])


def test_unknown_routes_and_methods_answer_in_the_api_error_shapes(client):
    r = client.get("/v1/chat/completions")  # OpenAI's shape on its routes
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error", r.text
    assert "POST" in r.headers["allow"]
    r = client.post("/v1/models/tfchat::predict", json={})
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}, r.text
    r = client.get(PREDICT)
    assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed"}, r.text


def test_rows_per_request_are_limited(backend):
    """One request of many rows would hold everyone else's turn: --max-rows refuses it up front."""
    client = TestClient(create_app(backend, max_rows=2))
    r = client.post(COMPLETIONS, json={"prompt": ["a", "b", "c"], "max_tokens": 2})
    assert r.status_code == 400 and "3 prompts in one request; at most 2" in _message(r), r.text
    r = client.post(PREDICT, json={"instances": [{"prompt": p} for p in "abc"]})
    assert r.status_code == 400 and "3 rows in one request; at most 2" in _message(r), r.text
    assert client.post(COMPLETIONS, json={"prompt": ["a", "b"], "max_tokens": 2}).status_code == 200


def test_a_predict_answer_of_too_many_numbers_is_refused(client, monkeypatch):
    """A prefill's caches in JSON grow ~50k numbers a token: over the cap, a 400 instead of gigabytes."""
    import serving.routes.tf_serving as routes

    body = {"signature_name": "prefill",
            "inputs": {"token_ids": [[5, 6, 7]], "num_tokens": [3], "max_new_tokens": [1]}}
    assert client.post(PREDICT, json=body).status_code == 200
    monkeypatch.setattr(routes, "MAX_RESPONSE_VALUES", 100)
    r = client.post(PREDICT, json=body)
    assert r.status_code == 400 and "numbers, over 100: send fewer rows" in _message(r), r.text[:300]
