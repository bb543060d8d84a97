"""Chinese through the SavedModel signatures, the server (streamed and not), the OpenAI route and the terminal chat.

The model is trained to answer ZH_QUESTION with ZH_REPLY, whose 小明, 🙂 and 龘 are spelt in byte-fallback ids:
a reply streamed token by token must equal the non-streamed reply byte for byte, with no U+FFFD.
"""

import io
import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the SavedModel's SentencePiece ops)
from fastapi.testclient import TestClient

from serving import chat as chat_cli
from serving.app import create_app
from serving.backend import Backend, GenRequest
from tfchat.inference.sampling import SamplingParams
from tfchat.text import chat_template
from tests.fixtures import ZH_QUESTION, ZH_REPLY, chinese_chat_export

QUESTION = [{"role": "user", "content": ZH_QUESTION}]
GREEDY = SamplingParams(max_new_tokens=40, temperature=0.0)
TEXTS = ["漢語維基百科是自由的百科全書。", "汉语维基百科", "你好，世界！🙂 café", "龘"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("zh")
    loaded, path = chinese_chat_export(root)
    backend = Backend(str(root / "tfchat"))
    yield loaded, tf.saved_model.load(path), backend
    backend.close()


def _sampling(n, max_new=40):
    return dict(max_new_tokens=tf.fill([n], max_new), temperature=tf.zeros([n]), top_k=tf.zeros([n], tf.int32),
                top_p=tf.ones([n]), seed=tf.zeros([n], tf.int32))


def test_chinese_through_the_signatures(setup):
    loaded, sm, _ = setup
    tok = loaded.tokenizer
    out = sm.signatures["tokenize"](text=tf.constant(TEXTS))
    for b, text in enumerate(TEXTS):
        ids = out["token_ids"].numpy()[b, : out["num_tokens"][b]].tolist()
        assert ids == tok.encode(text)
    back = sm.signatures["detokenize"](token_ids=out["token_ids"], num_tokens=out["num_tokens"])["text"].numpy()
    assert [t.decode("utf-8") for t in back] == TEXTS  # Traditional and Simplified as written
    table = sm.signatures["token_bytes"](token_ids=tf.range(tok.vocab_size)[None])["token_bytes"].numpy()[0]
    assert table.tolist() == list(tok.token_bytes())
    with pytest.raises(tf.errors.InvalidArgumentError, match="token ids must be in"):
        sm.signatures["token_bytes"](token_ids=tf.constant([[tok.vocab_size]]))
    conversation = [{"role": "system", "content": "你是一个乐于助人的助手。"}, *QUESTION]
    roles = tf.constant([[m["role"] for m in conversation]])
    contents = tf.constant([[m["content"] for m in conversation]])
    prompt = sm.signatures["chat_prompt"](roles=roles, contents=contents, max_new_tokens=tf.constant([40]))
    want = chat_template.prompt(conversation, tok, max_len=64 - 40)
    assert prompt["token_ids"].numpy()[0, : prompt["num_tokens"][0]].tolist() == want
    reply = sm.signatures["chat"](roles=tf.constant([["user"]]), contents=tf.constant([[ZH_QUESTION]]), **_sampling(1))
    assert reply["reply"].numpy()[0].decode("utf-8") == ZH_REPLY


def test_streamed_reply_equals_the_plain_reply_byte_for_byte(setup):
    loaded, _, backend = setup
    plain = backend.complete(GenRequest(messages=QUESTION, sampling=GREEDY))
    request = GenRequest(messages=QUESTION, sampling=GREEDY)
    deltas = list(backend.stream(request))
    assert plain.text.encode("utf-8") == "".join(deltas).encode("utf-8") == ZH_REPLY.encode("utf-8")
    assert request.future.result().text == ZH_REPLY and plain.finish_reason == "stop"
    assert not any("\ufffd" in d for d in deltas)
    # Deltas end on character boundaries: every byte-fallback id before a character's last adds nothing.
    table = loaded.tokenizer.token_bytes()
    content = [t for t in plain.token_ids if t not in backend.stop_ids]
    assert sum(len(table[t]) == 1 and table[t][0] >= 0x80 for t in content) >= 3 * 5 + 4
    assert len(deltas) < len(content)


def test_a_reply_cut_inside_a_character_leaves_it_out_streamed_or_not(setup):
    loaded, _, backend = setup
    table = loaded.tokenizer.token_bytes()
    full = backend.complete(GenRequest(messages=QUESTION, sampling=GREEDY)).token_ids
    cut = next(k for k in range(1, len(full)) if len(table[full[k - 1]]) == 1 and table[full[k - 1]][0] >= 0xC0)
    short = GREEDY.replace(max_new_tokens=cut)  # stops right after a lead byte
    plain = backend.complete(GenRequest(messages=QUESTION, sampling=short))
    streamed = "".join(backend.stream(GenRequest(messages=QUESTION, sampling=short)))
    assert plain.finish_reason == "length" and plain.text == streamed
    assert "\ufffd" not in streamed and ZH_REPLY.startswith(streamed)


def test_exports_without_token_bytes_still_stream_whole_characters(setup):
    _, _, backend = setup
    saved, backend.token_bytes = backend.token_bytes, None  # what an export made before the signature gives
    try:
        deltas = list(backend.stream(GenRequest(messages=QUESTION, sampling=GREEDY)))
    finally:
        backend.token_bytes = saved
    assert "".join(deltas) == ZH_REPLY and not any("\ufffd" in d for d in deltas)


def _sse(response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_openai_route_and_terminal_chat_in_chinese(setup):
    _, _, backend = setup
    client = TestClient(create_app(backend))
    body = {"model": "tfchat", "messages": QUESTION, "max_tokens": 40, "temperature": 0}
    plain = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
        pieces = [c["choices"][0]["delta"].get("content", "") for c in _sse(s)]
    assert plain == "".join(pieces) == ZH_REPLY and not any("\ufffd" in p for p in pieces)
    out = io.StringIO()
    code = chat_cli.main(["--model", backend.path, "--max-tokens", "40", "--temperature", "0"],
                         stdin=io.StringIO(f"{ZH_QUESTION}\n/exit\n"), stdout=out)
    assert code == 0 and f"bot> {ZH_REPLY}\n" in out.getvalue()


def test_chinese_scores_like_the_library(setup):
    loaded, sm, _ = setup
    from tfchat.eval.logprobs import score_texts

    out = sm.signatures["score"](text=tf.constant(TEXTS[:2]))
    want, _ = score_texts(loaded.model, loaded.tokenizer, TEXTS[:2], 65, 2)
    np.testing.assert_allclose(out["total_log_prob"].numpy(), want, rtol=1e-4, atol=1e-3)
