"""OpenAI-compatible routes: existing OpenAI clients and SDKs talk to a tfchat model unchanged.

    GET  /v1/models
    POST /v1/chat/completions   {"messages": [...], "max_tokens", "temperature", "top_p", "top_k", "seed", "stream",
                                 "logprobs": bool, "top_logprobs": 0..20}
    POST /v1/completions        {"prompt": str | [str], ...same, "logprobs": 0..5}

`stream: true` gives server-sent events in OpenAI's chunk format, ending
with `data: [DONE]`. Sampling settings a request leaves out come from the
model's `SamplingParams`. Log-probabilities come in OpenAI's shapes (chat:
`choices[].logprobs.content[]` with token, logprob, bytes, top_logprobs;
completions: `logprobs.tokens`, `token_logprobs`, `top_logprobs`,
`text_offset`), streamed with the chunk that carries their text. Errors are
OpenAI-shaped: `{"error": {"message", "type", "param", "code"}}`.

Control tags (extensions; the `openai` SDK sends them with
`extra_body={"topic": "music", "style": "happy"}`): a chat request may carry
each name of the model's tag vocabulary (`topic`, `style`) as a top-level
field, or `"tags": {name: value}`. An unknown value, or tags for a model
trained without them, is a 400 naming the known values. `GET /v1/models`
lists the vocabulary as each model's `"tags": {name: [values]}` (absent for
a model without tags), so clients (the web chat's drop-downs) can offer it.
`"guidance": 0 .. 30` (default 1, off) steers a tagged reply harder with
classifier-free guidance (`tfchat.inference.guidance`; twice the compute).

Knowledge (extensions OpenAI clients ignore): a chat request may carry
`"knowledge": str`, text for the chat template's knowledge segment. With a
dialogue manager (`serving.server --intent/--index`), every chat turn is
routed (`tfchat.dialogue.manager`: template, retrieve, generate, refuse) and
the response carries `"tfchat": {"route", "intent", "confidence",
"sources"}` and `"sources": [{"title", "snippet", "url", "score"}]` (the
first chunk of a stream carries both; the web chat shows the sources under
the reply). A template or refusal is answered without the model.

Example:

    curl -s localhost:8501/v1/chat/completions -H 'Content-Type: application/json' \
        -d '{"messages": [{"role": "user", "content": "Hi!"}], "logprobs": true, "top_logprobs": 2}'
"""

from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from serving.backend import Backend, GenRequest, TokenLogprob
from serving.errors import BadRequest
from serving.http import check_rows, json_body, results_unless_gone
from serving.openapi import CHAT_REQUEST, COMPLETION_REQUEST, OPENAI_ERROR, documented


def openai_error(status: int, message: str, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status)


def sampling_of(body: dict, backend: Backend):
    """The request's sampling settings over the model's defaults (OpenAI names: max_tokens, max_completion_tokens)."""
    changes = {k: body[k] for k in ("temperature", "top_p", "top_k", "seed", "guidance") if body.get(k) is not None}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        changes["max_new_tokens"] = max_tokens
    try:
        return backend.defaults.replace(**changes)
    except (ValueError, TypeError) as e:
        raise BadRequest(str(e)) from None


def messages_of(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: this model reads text ones only
            texts = []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise BadRequest(f"messages[{i}].content[{j}]: only text parts are supported by this text model"
                                     + (f", not {kind!r}" if isinstance(kind, str) else ""))
                if not isinstance(part.get("text"), str):
                    raise BadRequest(f"messages[{i}].content[{j}].text must be a string")
                texts.append(part["text"])
            content = "".join(texts)
        role = "system" if m.get("role") == "developer" else m.get("role")
        out.append({"role": role, "content": content})
    return out


# Tag names read as top-level fields even where the model has no vocabulary: a model trained without tags
# refuses them (400) rather than silently ignoring them.
TAG_FIELDS = ("topic", "style")
# Request fields a vocabulary name must not shadow (such a name is given in "tags" only).
_REQUEST_FIELDS = {"messages", "prompt", "model", "n", "stream", "stream_options", "max_tokens",
                   "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "guidance", "logprobs",
                   "top_logprobs", "knowledge", "tags", "user"}


def tags_of(body: dict, backend: Backend) -> dict | None:
    """The request's control tags: `"tags": {name: value}` and top-level fields named like the model's tag
    names (or `TAG_FIELDS`); `Backend.validate` checks them against the vocabulary."""
    tags = body.get("tags")
    if tags is not None and not isinstance(tags, dict):
        raise BadRequest("'tags' must be an object of name: value, e.g. {\"topic\": \"music\"}")
    out = dict(tags or {})
    vocabulary = getattr(backend, "tags", None)  # a stand-in backend may have none
    names = set(TAG_FIELDS) | set(vocabulary.tags if vocabulary is not None else ())
    for name in sorted(names - _REQUEST_FIELDS):
        if body.get(name) is None:
            continue
        if out.get(name, body[name]) != body[name]:
            raise BadRequest(f"'{name}' and 'tags.{name}' differ; give one")
        out[name] = body[name]
    return out or None


def logprobs_of(body: dict, chat: bool) -> int | None:
    """How many top log-probabilities the request wants per token: None = no log-probabilities at all."""
    if chat:
        wanted, top = body.get("logprobs"), body.get("top_logprobs")
        if wanted is not None and not isinstance(wanted, bool):
            raise BadRequest("logprobs must be a boolean")
        if top is not None and not wanted:
            raise BadRequest("top_logprobs requires logprobs: true")
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20):
            raise BadRequest(f"top_logprobs must be an integer in 0 .. 20, got {top!r}")
        return (top or 0) if wanted else None
    top = body.get("logprobs")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 5):
        raise BadRequest(f"logprobs must be an integer in 0 .. 5, got {top!r}")
    return top


def _token(data: bytes) -> str:
    """A token's text as OpenAI shows it: a piece of a character spelled in byte tokens as bytes:\\xNN."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


def _top_dict(top: list) -> dict:
    """{token text: log-probability}, likeliest first; two tokens with one text (byte tokens of partial
    characters all read as U+FFFD) keep the likelier."""
    out: dict = {}
    for _, data, logprob in top:
        out.setdefault(_token(data), logprob)
    return out


def chat_logprobs(tokens: list[TokenLogprob]) -> dict:
    def entry(data: bytes, logprob: float) -> dict:
        return {"token": _token(data), "logprob": logprob, "bytes": list(data)}

    return {"content": [{**entry(t.bytes, t.logprob), "top_logprobs": [entry(b, lp) for _, b, lp in t.top]}
                        for t in tokens], "refusal": None}


def completion_logprobs(tokens: list[TokenLogprob], before: bytes = b"") -> dict:
    """The legacy completions shape; `before`: the reply's bytes preceding `tokens` (for text_offset)."""
    offsets, seen = [], before
    for t in tokens:
        offsets.append(len(seen.decode("utf-8", errors="ignore")))
        seen += t.bytes
    return {
        "tokens": [_token(t.bytes) for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [_top_dict(t.top) for t in tokens],
        "text_offset": offsets,
    }


def usage_of(completions: list) -> dict:
    prompt = sum(c.prompt_tokens for c in completions)
    generated = sum(len(c.token_ids) for c in completions)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


def router(backend: Backend, dialogue=None) -> APIRouter:
    """The routes; `dialogue`: an optional `tfchat.dialogue.manager.DialogueManager` routing chat turns."""
    api = APIRouter()

    @api.get("/v1/models")
    def list_models():
        model = {"id": backend.name, "object": "model", "created": 0, "owned_by": "tfchat"}
        vocabulary = getattr(backend, "tags", None)
        if vocabulary is not None:  # the control tags its chat requests may carry
            model["tags"] = vocabulary.to_dict()
        return {"object": "list", "data": [model]}

    async def complete(request: Request, chat: bool):
        try:
            body = await json_body(request)
            if not isinstance(body, dict):
                raise BadRequest("request body must be a JSON object")
            if body.get("model") not in (None, backend.name):
                return openai_error(404, f"The model `{body['model']}` does not exist", "model_not_found")
            if body.get("n") not in (None, 1):  # null means the default, as in OpenAI's API
                raise BadRequest("only n=1 is supported")
            stream = False if body.get("stream") is None else body["stream"]
            if not isinstance(stream, bool):
                raise BadRequest("stream must be a boolean")
            sampling = sampling_of(body, backend)
            logprobs = logprobs_of(body, chat)
            tags = tags_of(body, backend)
            decision = None
            if chat:
                if "messages" not in body:
                    raise BadRequest("'messages' is required")
                messages, knowledge = messages_of(body["messages"]), body.get("knowledge")
                if knowledge is not None and not isinstance(knowledge, str):
                    raise BadRequest("'knowledge' must be a string")
                if dialogue is not None and knowledge is None:
                    from starlette.concurrency import run_in_threadpool

                    decision = await run_in_threadpool(dialogue.decide, messages)  # a classifier call: off the loop
                    knowledge = decision.knowledge
                requests = [GenRequest(messages=messages, sampling=sampling, logprobs=logprobs, knowledge=knowledge,
                                       tags=tags)]
            else:
                prompt = body.get("prompt")
                prompts = [prompt] if isinstance(prompt, str) else prompt
                if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
                    raise BadRequest("'prompt' must be a string or a non-empty list of strings")
                if stream and len(prompts) > 1:
                    raise BadRequest("stream=true takes a single prompt")
                check_rows(request, len(prompts), "prompts")
                requests = [GenRequest(prompt=p, sampling=sampling, logprobs=logprobs, tags=tags) for p in prompts]
            for r in requests:
                backend.validate(r)
            rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
            base = {"id": rid, "created": int(time.time()), "model": backend.name}
            extra = {"tfchat": decision.to_json(), "sources": decision.sources} if decision is not None else {}
            if decision is not None and decision.reply is not None:  # template or refusal: no model call
                return _fixed_reply(decision.reply, base, extra, stream, "content_filter" if decision.route == "refuse"
                                    else "stop")
            if stream:
                pieces = backend.stream_with_logprobs(requests[0])
                return StreamingResponse(_sse_until_disconnect(pieces, requests[0], base, chat, extra),
                                         media_type="text/event-stream")
            for r in requests:
                backend.submit(r)
            results = await results_unless_gone(request, requests)
        except BadRequest as e:
            return openai_error(e.status, str(e))
        choices = []
        for i, c in enumerate(results):
            if chat:
                lp = chat_logprobs(c.logprobs) if c.logprobs is not None else None
                choices.append({"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": lp,
                                "finish_reason": c.finish_reason})
            else:
                lp = completion_logprobs(c.logprobs) if c.logprobs is not None else None
                choices.append({"index": i, "text": c.text, "logprobs": lp, "finish_reason": c.finish_reason})
        kind = "chat.completion" if chat else "text_completion"
        return {**base, "object": kind, "choices": choices, "usage": usage_of(results), **extra}

    @api.post("/v1/chat/completions", **documented(CHAT_REQUEST, OPENAI_ERROR))
    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    @api.post("/v1/completions", **documented(COMPLETION_REQUEST, OPENAI_ERROR))
    async def completions(request: Request):
        return await complete(request, chat=False)

    return api


def _fixed_reply(text: str, base: dict, extra: dict, stream: bool, finish: str):
    """A chat completion (or its stream) whose whole reply is `text` (a template or a refusal)."""
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    if not stream:
        return {**base, "object": "chat.completion", "usage": usage, **extra, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}]}
    chunk = {**base, "object": "chat.completion.chunk"}
    events = [_data({**chunk, **extra, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                    "logprobs": None, "finish_reason": None}]}),
              _data({**chunk, "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None,
                                           "finish_reason": None}]}),
              _data({**chunk, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]}),
              "data: [DONE]\n\n"]
    return StreamingResponse(iter(events), media_type="text/event-stream")


async def _sse_until_disconnect(pieces, request: GenRequest, base: dict, chat: bool, extra: dict | None = None):
    """`_sse`, iterated off the event loop. Starlette cancels this generator when
    the client disconnects; the blocking iterator in its thread would not notice,
    so the row is cancelled here and the backend stops decoding it."""
    from starlette.concurrency import iterate_in_threadpool

    try:
        async for chunk in iterate_in_threadpool(_sse(pieces, request, base, chat, extra)):
            yield chunk
    finally:
        request.cancelled = True


def _sse(pieces, request: GenRequest, base: dict, chat: bool, extra: dict | None = None):
    """Server-sent events in OpenAI's chunk format; ends with `data: [DONE]`. `extra` (the dialogue
    manager's decision and sources) rides on the first chunk."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    sent = b""  # the reply's bytes so far (completions' text_offset)

    def event(delta_text: str | None, finish: str | None, tokens: list | None = None, first: bool = False):
        nonlocal sent
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": delta_text} if delta_text else {})
            lp = chat_logprobs(tokens) if tokens else None
            choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}
        else:
            lp = completion_logprobs(tokens, sent) if tokens else None
            choice = {"index": 0, "text": delta_text or "", "logprobs": lp, "finish_reason": finish}
        sent += (delta_text or "").encode("utf-8")
        return _data({**base, "object": kind, **(extra or {} if first else {}), "choices": [choice]})

    try:
        if chat:
            yield event(None, None, first=True)
        for piece, tokens in pieces:
            yield event(piece, None, tokens if request.logprobs is not None else None)
        yield event(None, request.future.result().finish_reason)
    except Exception as e:  # noqa: BLE001  (headers are sent: report in-band)
        yield _data({"error": {"message": str(e), "type": "server_error"}})
    finally:
        pieces.close()
    yield "data: [DONE]\n\n"


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
