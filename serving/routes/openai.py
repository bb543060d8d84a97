"""OpenAI-compatible routes: existing OpenAI clients and SDKs talk to a tfchat model unchanged.

    GET  /v1/models
    POST /v1/chat/completions   {"messages": [...], "max_tokens", "temperature", "top_p", "top_k", "seed", "stream"}
    POST /v1/completions        {"prompt": str | [str], ...same}

`stream: true` gives server-sent events in OpenAI's chunk format, ending
with `data: [DONE]`. Sampling settings a request leaves out come from the
model's `SamplingParams`. Errors are OpenAI-shaped:
`{"error": {"message", "type", "param", "code"}}`.

Example:

    curl -s localhost:8501/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi!"}]}'
"""

from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from serving.backend import Backend, GenRequest
from serving.errors import BadRequest
from serving.http import in_thread, json_body


def openai_error(status: int, message: str, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status)


def sampling_of(body: dict, backend: Backend):
    """The request's sampling settings over the model's defaults (OpenAI names: max_tokens, max_completion_tokens)."""
    changes = {k: body[k] for k in ("temperature", "top_p", "top_k", "seed") if body.get(k) is not None}
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
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        role = "system" if m.get("role") == "developer" else m.get("role")
        out.append({"role": role, "content": content})
    return out


def router(backend: Backend) -> APIRouter:
    api = APIRouter()

    @api.get("/v1/models")
    def list_models():
        return {"object": "list", "data": [{"id": backend.name, "object": "model", "created": 0, "owned_by": "tfchat"}]}

    async def complete(request: Request, chat: bool):
        try:
            body = await json_body(request)
            if not isinstance(body, dict):
                raise BadRequest("request body must be a JSON object")
            if body.get("model") not in (None, backend.name):
                return openai_error(404, f"The model `{body['model']}` does not exist", "model_not_found")
            if body.get("n", 1) != 1:
                raise BadRequest("only n=1 is supported")
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise BadRequest("stream must be a boolean")
            sampling = sampling_of(body, backend)
            if chat:
                if "messages" not in body:
                    raise BadRequest("'messages' is required")
                requests = [GenRequest(messages=messages_of(body["messages"]), sampling=sampling)]
            else:
                prompt = body.get("prompt")
                prompts = [prompt] if isinstance(prompt, str) else prompt
                if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
                    raise BadRequest("'prompt' must be a string or a non-empty list of strings")
                if stream and len(prompts) > 1:
                    raise BadRequest("stream=true takes a single prompt")
                requests = [GenRequest(prompt=p, sampling=sampling) for p in prompts]
            for r in requests:
                backend.validate(r)
        except BadRequest as e:
            return openai_error(400, str(e))
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        base = {"id": rid, "created": int(time.time()), "model": backend.name}
        if stream:
            pieces = backend.stream(requests[0])
            return StreamingResponse(_sse_until_disconnect(pieces, requests[0], base, chat),
                                     media_type="text/event-stream")
        try:
            results = await in_thread(lambda: [f.result() for f in [backend.submit(r) for r in requests]])
        except BadRequest as e:
            return openai_error(400, str(e))
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for i, c in enumerate(results):
            prompt_tokens += c.prompt_tokens
            completion_tokens += len(c.token_ids)
            if chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason})
            else:
                choices.append({"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason})
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        return {**base, "object": "chat.completion" if chat else "text_completion", "choices": choices, "usage": usage}

    @api.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    @api.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, chat=False)

    return api


async def _sse_until_disconnect(pieces, request: GenRequest, base: dict, chat: bool):
    """`_sse`, iterated off the event loop. Starlette cancels this generator when
    the client disconnects; the blocking iterator in its thread would not notice,
    so the row is cancelled here and the backend stops decoding it."""
    from starlette.concurrency import iterate_in_threadpool

    try:
        async for chunk in iterate_in_threadpool(_sse(pieces, request, base, chat)):
            yield chunk
    finally:
        request.cancelled = True


def _sse(pieces, request: GenRequest, base: dict, chat: bool):
    """Server-sent events in OpenAI's chunk format; ends with `data: [DONE]`."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(delta_text: str | None, finish: str | None, first: bool = False):
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": delta_text} if delta_text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta_text or "", "logprobs": None, "finish_reason": finish}
        return f"data: {json.dumps({**base, 'object': kind, 'choices': [choice]}, ensure_ascii=False)}\n\n"

    try:
        if chat:
            yield event(None, None, first=True)
        for piece in pieces:
            yield event(piece, None)
        yield event(None, request.future.result().finish_reason)
    except Exception as e:  # noqa: BLE001  (headers are sent: report in-band)
        yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
    finally:
        pieces.close()
    yield "data: [DONE]\n\n"
