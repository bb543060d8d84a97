"""The official `openai` Python SDK against the server on loopback: completions and chat, streaming or not, with
log-probabilities in OpenAI's shapes, checked against the Keras model's own log-probabilities."""

import numpy as np
import pytest

from serving.app import ServerThread, create_app
from serving.backend import Backend, GenRequest
from tests.fixtures import tiny_export
from tfchat.eval.logprobs import token_log_probs
from tfchat.text import chat_template

HI = [{"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import openai

    loaded, path = tiny_export(tmp_path_factory.mktemp("sdk"))
    backend = Backend(path)
    server = ServerThread(create_app(backend))
    url = server.start()
    yield loaded, backend, openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    server.stop()
    backend.close()


def _model_log_probs(loaded, prompt_ids: list[int], reply_ids: list[int]) -> np.ndarray:
    """log p(reply_ids[t] | prompt, reply[:t]) from the Keras model, through the one primitive."""
    ids = np.array([prompt_ids + reply_ids], np.int32)
    logits = loaded.model(ids[:, :-1], training=False)
    lp = token_log_probs(logits, ids[:, 1:]).numpy()[0]
    return lp[len(prompt_ids) - 1:]


def _token_bytes(token: str) -> bytes:
    """A legacy-completions token's bytes (a partial character is spelled "bytes:\\xNN...")."""
    if token.startswith("bytes:"):
        return bytes(int(h, 16) for h in token[len("bytes:"):].split("\\x")[1:])
    return token.encode("utf-8")


def _greedy_ids(backend, max_new_tokens=8, **request) -> list[int]:
    sampling = backend.defaults.replace(max_new_tokens=max_new_tokens, temperature=0.0, seed=0)
    return backend.complete(GenRequest(sampling=sampling, **request)).token_ids


def test_chat_logprobs_match_the_model_and_stream_the_same(served):
    loaded, backend, client = served
    kwargs = dict(model="tfchat", messages=HI, max_tokens=8, temperature=0.0, logprobs=True, top_logprobs=3)
    out = client.chat.completions.create(**kwargs)
    choice = out.choices[0]
    content = choice.logprobs.content
    assert b"".join(bytes(t.bytes) for t in content).decode("utf-8") == choice.message.content
    reply_tokens = out.usage.completion_tokens - (choice.finish_reason == "stop")
    assert len(content) == reply_tokens
    for t in content:
        assert len(t.top_logprobs) == 3
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob, abs=1e-5)  # greedy: the likeliest token
    # The same numbers from the Keras model on the prompt + reply ids.
    prompt = chat_template.prompt(HI, loaded.tokenizer, backend.max_len)
    expected = _model_log_probs(loaded, prompt, _greedy_ids(backend, messages=HI))
    np.testing.assert_allclose([t.logprob for t in content], expected[: len(content)], atol=1e-4)

    stream = client.chat.completions.create(**kwargs, stream=True)
    streamed = [t for chunk in stream for c in chunk.choices if c.logprobs and c.logprobs.content
                for t in c.logprobs.content]
    assert [(t.token, t.bytes, t.logprob) for t in streamed] == [(t.token, t.bytes, t.logprob) for t in content]
    assert [[a.token for a in t.top_logprobs] for t in streamed] == [[a.token for a in t.top_logprobs] for t in content]


def test_chat_without_logprobs_has_none(served):
    _, _, client = served
    out = client.chat.completions.create(model="tfchat", messages=HI, max_tokens=3)
    assert out.choices[0].logprobs is None and out.choices[0].message.role == "assistant"


def test_completion_logprobs_shape_and_stream(served):
    loaded, backend, client = served
    kwargs = dict(model="tfchat", prompt="The quick brown", max_tokens=6, temperature=0.0, logprobs=2)
    out = client.completions.create(**kwargs)
    choice = out.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) > 0
    assert b"".join(map(_token_bytes, lp.tokens)) == choice.text.encode("utf-8")
    seen = [b"".join(map(_token_bytes, lp.tokens[:i])) for i in range(len(lp.tokens))]
    assert lp.text_offset == [len(b.decode("utf-8", errors="ignore")) for b in seen]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        # two alternatives (fewer when byte tokens share the text U+FFFD); greedy: the likeliest is the token
        assert 1 <= len(top) <= 2 and logprob == pytest.approx(max(top.values()), abs=1e-5)
    prompt = loaded.tokenizer.encode_document("The quick brown")
    expected = _model_log_probs(loaded, prompt, _greedy_ids(backend, prompt="The quick brown", max_new_tokens=6))
    np.testing.assert_allclose(lp.token_logprobs, expected[: len(lp.tokens)], atol=1e-4)

    chunks = list(client.completions.create(**kwargs, stream=True))
    tokens = [t for c in chunks for t in (c.choices[0].logprobs.tokens if c.choices[0].logprobs else [])]
    offsets = [o for c in chunks for o in (c.choices[0].logprobs.text_offset if c.choices[0].logprobs else [])]
    assert tokens == lp.tokens and offsets == lp.text_offset
    assert "".join(c.choices[0].text for c in chunks) == choice.text


def test_sdk_errors_are_openai_errors(served):
    import openai

    _, _, client = served
    with pytest.raises(openai.BadRequestError, match="top_logprobs must be an integer"):
        client.chat.completions.create(model="tfchat", messages=HI, logprobs=True, top_logprobs=50)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=HI)



@pytest.fixture(scope="module")
def tagged_served(tagged_export):
    """A model trained with control tags behind the server, and an SDK client for it."""
    import openai


    loaded, path = tagged_export
    backend = Backend(path, fast=False)  # the plain signatures: no XLA compile for two short requests
    server = ServerThread(create_app(backend))
    url = server.start()
    yield loaded, openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    server.stop()
    backend.close()


def test_extra_body_tags_reach_the_prompt(tagged_served):
    """`extra_body={"topic": ..., "style": ...}`: the prompt gains one control id per tag, and the reply is the
    model's reply to the tagged prompt; an unknown value is a BadRequestError naming the known ones."""
    import openai

    loaded, client = tagged_served
    kwargs = dict(model="tfchat", messages=HI, max_tokens=6, temperature=0.0)
    plain = client.chat.completions.create(**kwargs)
    tags = {"topic": "sports", "style": "happy"}
    tagged = client.chat.completions.create(**kwargs, extra_body=tags)
    assert tagged.usage.prompt_tokens == plain.usage.prompt_tokens + len(tags)
    ids = chat_template.prompt(HI, loaded.tokenizer, 64 - 6, tags=loaded.tags, reply_tags=tags)
    assert tagged.usage.prompt_tokens == len(ids)
    streamed = client.chat.completions.create(**kwargs, extra_body=tags, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == tagged.choices[0].message.content
    models = client.models.list().data
    assert models[0].model_extra["tags"] == {"style": ["happy", "sad"], "topic": ["music", "sports"]}
    with pytest.raises(openai.BadRequestError, match="unknown style 'grumpy'; known: happy, sad"):
        client.chat.completions.create(**kwargs, extra_body={"style": "grumpy"})
