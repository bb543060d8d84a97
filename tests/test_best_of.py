"""Best-of-n at serving time, the reward export behind the server, and their bad input."""

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving import chat as chat_cli
from serving import server
from serving.app import create_app
from serving.backend import Backend, GenRequest
from serving.best_of import BestOfN, RewardScorer
from tests.fixtures import tiny_export, tiny_reward_export
from tfchat.inference.sampling import SamplingParams

HI = [{"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("best_of")
    tiny_export(root)
    reward_loaded, _ = tiny_reward_export(root)
    backend = Backend(str(root / "tfchat"), batch_wait_ms=100)
    scorer = RewardScorer(str(root / "reward-export"))
    yield {"root": root, "backend": backend, "scorer": scorer, "reward": reward_loaded}
    backend.close()
    scorer.close()


class TableScorer:
    """Scores a reply by a fixed pseudo-random function of its text; records what it saw."""

    def __init__(self):
        self.seen = []

    def score(self, conversations):
        self.seen.append(conversations)
        return np.array([hash(c[-1]["content"]) % 1000 / 1000 for c in conversations])


def _candidates(backend, n, sampling):
    return [backend.complete(GenRequest(messages=HI, sampling=sampling.replace(seed=sampling.seed + i))).text
            for i in range(n)]


def test_best_of_returns_the_highest_scoring_candidate(exports):
    backend = exports["backend"]
    sampling = SamplingParams(max_new_tokens=12, temperature=1.5, top_k=0, top_p=1.0, seed=100)
    candidates = _candidates(backend, 5, sampling)
    assert len(set(candidates)) > 1  # different seeds, different replies
    scorer = TableScorer()
    backend.best_of = BestOfN(scorer, 5)
    try:
        backend.largest_batch = 0
        best = backend.complete(GenRequest(messages=HI, sampling=sampling))
        assert backend.largest_batch == 5  # the candidates are decoded as one batch
        streamed = "".join(backend.stream(GenRequest(messages=HI, sampling=sampling)))
        plain = backend.complete(GenRequest(prompt="Hello", sampling=sampling))  # text completions pass through
        greedy = backend.complete(GenRequest(messages=HI, sampling=sampling.replace(temperature=0.0)))
    finally:
        backend.best_of = None
    scores = scorer.score([[*HI, {"role": "assistant", "content": c}] for c in candidates])
    assert best.text == candidates[int(np.argmax(scores))] == streamed
    assert scorer.seen[0] == [[*HI, {"role": "assistant", "content": c}] for c in candidates]
    assert len(scorer.seen) == 3  # the completion, the stream, the check above: not the text or greedy requests
    assert plain.token_ids and greedy.token_ids


def test_reward_scorer_scores_like_the_reward_model(exports):
    from tfchat.text import chat_template

    loaded, tok = exports["reward"], exports["reward"].tokenizer
    replies = ["Gladly: the fox is a fine animal.", "No. fox fox fox."]
    scores = exports["scorer"].score([[*HI, {"role": "assistant", "content": r}] for r in replies])
    for reply, score in zip(replies, scores):
        ids, _ = chat_template.render_reply(["user"], [tok.encode(HI[0]["content"])], tok.encode(reply), tok, 64)
        expected = loaded.model({"token_ids": np.array([ids], "int32"), "lengths": np.array([len(ids)], "int32")})
        assert score == pytest.approx(float(expected[0]), abs=1e-5)


def test_server_with_reward_model_answers_with_the_best_reply(exports):
    backend = exports["backend"]
    sampling = SamplingParams(max_new_tokens=10, temperature=1.2, top_k=0, top_p=1.0, seed=7)
    candidates = _candidates(backend, 3, sampling)
    scores = exports["scorer"].score([[*HI, {"role": "assistant", "content": c}] for c in candidates])
    backend.best_of = BestOfN(exports["scorer"], 3)
    try:
        client = TestClient(create_app(backend))
        body = {"messages": HI, "max_tokens": 10, "temperature": 1.2, "top_p": 1.0, "seed": 7}
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == candidates[int(np.argmax(scores))]
        streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
        chunks = [json.loads(line[6:]) for line in streamed.text.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == r.json()["choices"][0][
            "message"]["content"]
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        r = client.post("/v1/chat/completions", json={**body, "n": 3})  # n stays rejected: best-of is a server setting
        assert r.status_code == 400 and "n=1" in r.json()["error"]["message"]
    finally:
        backend.best_of = None


def test_reward_export_served_over_tf_serving_rest_with_bad_input(exports):
    backend = Backend(str(exports["root"] / "reward-export"))
    try:
        client = TestClient(create_app(backend))
        ok = client.post("/v1/models/reward-export:predict", json={"signature_name": "reward", "instances": [
            {"roles": ["user", "assistant"], "contents": ["Hi", "Hello!"]}]})
        assert ok.status_code == 200 and isinstance(ok.json()["predictions"][0]["score"], float)
        bad = client.post("/v1/models/reward-export:predict", json={"signature_name": "reward", "instances": [
            {"roles": ["user", "user"], "contents": ["Hi", "Hello!"]}]})
        assert bad.status_code == 400 and "assistant reply to score" in bad.json()["error"]
        missing = client.post("/v1/models/reward-export:predict", json={"signature_name": "reward",
                                                                         "inputs": {"roles": [["user"]]}})
        assert missing.status_code == 400
        chat = client.post("/v1/chat/completions", json={"messages": HI})
        assert chat.status_code == 400 and "reward model" in chat.json()["error"]["message"]
    finally:
        backend.close()


def test_bad_best_of_setup_one_clear_line(exports, capsys):
    chat_export = str(exports["root"] / "tfchat")
    with pytest.raises(ValueError, match="is not a reward model export"):
        RewardScorer(chat_export)
    with pytest.raises(ValueError, match="best-of must be an integer in 1..64"):
        BestOfN(TableScorer(), 0)
    assert server.main(["--model", chat_export, "--best-of", "3"]) == 2
    assert "--best-of needs --reward-model" in capsys.readouterr().err
    assert server.main(["--model", chat_export, "--reward-model", chat_export, "--best-of", "65"]) == 2
    assert "at most 64" in capsys.readouterr().err
    assert server.main(["--model", chat_export, "--reward-model", chat_export, "--port", "0"]) == 1
    assert "is not a reward model export" in capsys.readouterr().err
    assert server.main(["--model", chat_export, "--reward-model", str(exports["root"] / "none")]) == 1
    assert "export not found" in capsys.readouterr().err
    out = io.StringIO()
    assert chat_cli.main(["--server", "http://127.0.0.1:9", "--reward-model", chat_export], io.StringIO(), out) == 2
    assert "--reward-model works with --model" in capsys.readouterr().err


def test_terminal_chat_with_best_of(exports, capsys):
    backend = exports["backend"]
    sampling = backend.defaults.replace(max_new_tokens=8, temperature=1.0, seed=3)
    candidates = _candidates(backend, 3, sampling)
    scores = exports["scorer"].score([[*HI, {"role": "assistant", "content": c}] for c in candidates])
    out = io.StringIO()
    code = chat_cli.main(["--model", str(exports["root"] / "tfchat"), "--reward-model",
                          str(exports["root"] / "reward-export"), "--best-of", "3", "--max-tokens", "8",
                          "--temperature", "1.0", "--seed", "3"], io.StringIO("Hi there\n/exit\n"), out)
    assert code == 0, capsys.readouterr().err
    assert f"bot> {candidates[int(np.argmax(scores))]}\n" in out.getvalue()
