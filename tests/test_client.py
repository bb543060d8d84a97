"""REST and gRPC clients against serving.server running for real (uvicorn + grpc in threads)."""

import numpy as np
import pytest

from serving import client as client_cli
from tfchat.inference.sampling import SamplingParams
from serving.backend import Backend, GenRequest
from serving.client import GrpcClient, RestClient, ServingError
from serving.app import ServerThread, create_app
from serving.grpc_service import create_grpc_server
from tfchat.inference.generation import generate_text
from tests.fixtures import tiny_export

PROMPTS = ["Hello", "The quick brown"]
HI = [{"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("client")
    loaded, _ = tiny_export(root)
    backend = Backend(str(root / "tfchat"))
    grpc_server = create_grpc_server(backend, 0, host="127.0.0.1")
    http = ServerThread(create_app(backend))
    url = http.start()
    yield loaded, backend, url, f"127.0.0.1:{grpc_server.bound_port}"
    http.stop()
    grpc_server.stop(grace=0)
    backend.close()


@pytest.fixture(params=["rest", "grpc"])
def client(request, servers):
    _, _, url, target = servers
    c = RestClient(url, "tfchat") if request.param == "rest" else GrpcClient(target, "tfchat")
    yield c
    c.close()


def test_generate_matches_keras(servers, client):
    loaded = servers[0]
    assert client.generate(PROMPTS, max_new_tokens=6) == generate_text(loaded, prompts=PROMPTS, max_new_tokens=6)


def test_chat_and_score(servers, client):
    backend = servers[1]
    reply = client.chat(HI, max_new_tokens=6, temperature=0.9, seed=4)
    expected = backend.complete(GenRequest(messages=HI, sampling=SamplingParams.greedy(6).replace(temperature=0.9,
                                                                                               seed=4))).text
    # A character cut off by max_new_tokens: the `chat` signature decodes it as U+FFFD, the backend's
    # streaming rule leaves it out (tfchat.inference.streaming).
    assert reply in (expected, expected + "\ufffd")
    losses = client.score(["Hello world", "fox"])
    assert len(losses) == 2 and all(np.isfinite(x) and x > 0 for x in losses)


def test_signature_names_and_raw_predict(client):
    names = client.signature_names()
    assert {"serving_default", "generate", "chat", "score", "prefill", "decode"} <= set(names)
    out = client.predict({"text": ["Hello"]}, signature_name="tokenize")
    assert out["token_ids"].shape[0] == 1 and int(np.asarray(out["num_tokens"])[0]) > 0


def test_errors_are_raised_with_the_server_message(servers, client):
    with pytest.raises(ValueError, match="max_new_tokens must be an integer"):  # caught before sending
        client.generate(["x"], max_new_tokens=0)
    with pytest.raises(ServingError, match="max_new_tokens must be <= 63"):  # only the server knows the context
        client.generate(["x"], max_new_tokens=1000)
    with pytest.raises(ServingError, match="not found"):
        client.predict({"text": ["x"]}, signature_name="nope")
    with pytest.raises(ServingError, match="Servable not found"):
        client.predict({"text": ["x"]}, signature_name="score", version=9)
    with pytest.raises(ServingError, match="65 rows in one request; at most 64"):  # the server's --max-rows
        client.predict({"text": ["x"] * 65}, signature_name="tokenize")


def test_rest_status_and_row_format(servers):
    _, _, url, _ = servers
    c = RestClient(url, "tfchat")
    assert c.status()["model_version_status"][0]["state"] == "AVAILABLE"
    rows = c.predict_instances([{"prompt": p, "max_new_tokens": 4} for p in PROMPTS])
    assert [r["num_tokens"] for r in rows] == [4, 4]
    with pytest.raises(ServingError) as e:
        RestClient(url, "other").status()
    assert e.value.status == 404


def test_client_cli(servers, capsys):
    loaded, _, url, target = servers
    expected = generate_text(loaded, prompts=PROMPTS, max_new_tokens=5)
    assert client_cli.main(["--url", url, "--max-new-tokens", "5", *PROMPTS]) == 0
    assert capsys.readouterr().out == "".join(t + "\n" for t in expected)
    assert client_cli.main(["--grpc", target, "--max-new-tokens", "5", *PROMPTS]) == 0
    assert capsys.readouterr().out == "".join(t + "\n" for t in expected)
    assert client_cli.main(["--url", url, "--max-new-tokens", "1000", "x"]) == 1
    assert "max_new_tokens must be <= 63" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        client_cli.main(["--url", url, "--max-new-tokens", "0", "x"])
    assert e.value.code == 2 and "--max-new-tokens: expected an integer > 0" in capsys.readouterr().err


def test_a_url_that_names_no_server_is_a_clear_error():
    with pytest.raises(ValueError, match=r"invalid server URL 'http://\[::1'"):
        RestClient("http://[::1", "tfchat").status()
