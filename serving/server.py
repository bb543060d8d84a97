"""HTTP (and optional gRPC) server for an exported tfchat model.

    python -m serving.server --model exports/tfchat [--port 8501] [--grpc-port 8500] [--max-batch 8]

REST API of TensorFlow Serving (so `serving.client` and TF Serving clients work
against either):

    GET  /v1/models/NAME[/versions/N]            version status
    GET  /v1/models/NAME[/versions/N]/metadata   signature defs
    POST /v1/models/NAME[/versions/N]:predict    {"signature_name": ..., "instances": [...]} or {"inputs": ...}

Errors are `{"error": "..."}` with 400 (bad input) or 404 (unknown model,
version, signature). Unlike TF Serving, the sampling inputs of
`generate`/`chat`/`prefill` (max_new_tokens, temperature, top_k, top_p, seed)
may be left out; defaults: min(64, max_len // 2), 0 (greedy), 0, 1.0, 0.

OpenAI-compatible API (`stream: true` gives server-sent events):

    GET  /v1/models
    POST /v1/chat/completions   {"messages": [...], "max_tokens", "temperature", "top_p", "top_k", "seed", "stream"}
    POST /v1/completions        {"prompt": str | [str], ...same}

Plus `GET /healthz` and a small web chat at `/`. All model calls go through
one queue (`serving.backend.Backend`); generation requests that arrive
together run as one batch.

Example:

    curl -s localhost:8501/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi!"}]}'
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import random
import time
import uuid

import numpy as np
import tensorflow as tf
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from serving.backend import DEFAULTS, Backend, BadRequest, GenRequest, NotFound, tf_error_message

log = logging.getLogger("serving.server")

SAMPLING_INPUTS = {"max_new_tokens", "temperature", "top_k", "top_p", "seed"}


# ------------------------------------------------------------------------------ TF Serving JSON <-> tensors


def _decode_value(value, dtype: tf.DType):
    """JSON value -> numpy-friendly value; strings may be {"b64": ...} (TF Serving's binary form)."""
    if dtype == tf.string:
        if isinstance(value, list):
            return [_decode_value(v, dtype) for v in value]
        if isinstance(value, dict) and set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        if isinstance(value, str):
            return value.encode("utf-8")
        raise BadRequest(f"expected a string, got {json.dumps(value)[:60]}")
    return value


def to_tensor(name: str, value, spec: tf.TensorSpec) -> tf.Tensor:
    try:
        array = np.array(_decode_value(value, spec.dtype), dtype=object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype)
    except BadRequest:
        raise
    except (TypeError, ValueError) as e:
        raise BadRequest(f"input '{name}': cannot convert to {spec.dtype.name} ({e})") from e
    if array.dtype == object and spec.dtype != tf.string:
        raise BadRequest(f"input '{name}': ragged or mixed values")
    if spec.dtype == tf.string and any(not isinstance(v, bytes) for v in array.reshape(-1)):
        raise BadRequest(f"input '{name}': ragged or non-string values")
    if not spec.shape.is_compatible_with(array.shape):
        raise BadRequest(f"input '{name}': shape {list(array.shape)} does not match the signature's {spec.shape}")
    return tf.constant(array, spec.dtype)


def _json_value(array: np.ndarray):
    if array.dtype == object:
        def text(b):
            try:
                return b.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(b).decode()}

        return np.vectorize(text, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def parse_predict(body, specs: dict, defaults: dict | None = None) -> tuple[dict, bool]:
    """TF Serving predict body -> ({input: tensor}, row_format); `defaults` fill missing sampling inputs."""
    defaults = defaults or DEFAULTS
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if ("instances" in body) == ("inputs" in body):
        raise BadRequest('request must have exactly one of "instances" (row format) or "inputs" (columnar format)')
    names = sorted(specs)
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise BadRequest('"instances" must be a non-empty list')
        if all(isinstance(r, dict) and "b64" not in r for r in rows):
            keys = set(rows[0])
            if any(set(r) != keys for r in rows):
                raise BadRequest("all instances must have the same named inputs")
            columns = {k: [r[k] for r in rows] for k in keys}
        elif len(names) == 1:
            columns = {names[0]: rows}
        else:
            raise BadRequest(f"signature has inputs {names}: instances must be objects naming them")
        batch = len(rows)
    else:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and not (set(inputs) == {"b64"}):
            columns = dict(inputs)
        elif len(names) == 1:
            columns = {names[0]: inputs}
        else:
            raise BadRequest(f"signature has inputs {names}: \"inputs\" must be an object naming them")
        batch = None
    unknown = sorted(set(columns) - set(specs))
    if unknown:
        raise BadRequest(f"unknown input(s) {unknown}; signature inputs: {names}")
    missing = sorted(set(specs) - set(columns))
    if missing and set(missing) <= SAMPLING_INPUTS:
        # Our extension: sampling inputs default per row.
        first = next(iter(columns.values()), [])
        batch = batch or (len(first) if isinstance(first, list) else 1)
        for k in missing:
            columns[k] = [defaults[k]] * batch
    elif missing:
        raise BadRequest(f"missing input(s) {missing}")
    return {k: to_tensor(k, v, specs[k]) for k, v in columns.items()}, "instances" in body


def format_predict(outputs: dict, row_format: bool) -> dict:
    if not row_format:
        if len(outputs) == 1:
            return {"outputs": _json_value(next(iter(outputs.values())))}
        return {"outputs": {k: _json_value(v) for k, v in outputs.items()}}
    sizes = {v.shape[0] if v.ndim else None for v in outputs.values()}
    if len(sizes) != 1 or None in sizes:
        raise BadRequest("outputs do not share a batch dimension; use the columnar \"inputs\" format")
    if len(outputs) == 1:
        return {"predictions": _json_value(next(iter(outputs.values())))}
    columns = {k: _json_value(v) for k, v in outputs.items()}
    return {"predictions": [{k: columns[k][i] for k in columns} for i in range(sizes.pop())]}


def _spec_json(spec: tf.TensorSpec, name: str) -> dict:
    dims = [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape.as_list()]
    from tensorflow.core.framework import types_pb2

    dtype = types_pb2.DataType.Name(spec.dtype.as_datatype_enum)
    return {"dtype": dtype, "tensor_shape": {"dim": dims, "unknown_rank": False}, "name": name}


# ------------------------------------------------------------------------------ app


def create_app(backend: Backend) -> FastAPI:
    """The FastAPI app around a loaded `Backend`."""
    app = FastAPI(title="tfchat", docs_url="/docs")
    app.state.backend = backend

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def openai_error(status: int, message: str, code: str | None = None) -> JSONResponse:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status)

    def check_model(name: str, version: str | None) -> None:
        if name != backend.name:
            raise NotFound(f"Servable not found for request: Latest({name})")
        if version is not None and version != str(backend.version):
            raise NotFound(f"Servable not found for request: Specific({name}, {version})")

    # ---------------------------------------------------------------- TF Serving REST

    def status(name, version=None):
        try:
            check_model(name, version)
        except NotFound as e:
            return error(404, str(e))
        return {"model_version_status": [
            {"version": str(backend.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]}

    def metadata(name, version=None):
        try:
            check_model(name, version)
        except NotFound as e:
            return error(404, str(e))
        defs = {}
        for sig in backend.signatures:
            inputs, outputs = backend.signature_specs(sig)
            defs[sig] = {
                "inputs": {k: _spec_json(s, k) for k, s in inputs.items()},
                "outputs": {k: _spec_json(s, k) for k, s in outputs.items()},
                "method_name": "tensorflow/serving/predict",
            }
        return {
            "model_spec": {"name": backend.name, "signature_name": "", "version": str(backend.version)},
            "metadata": {"signature_def": {"signature_def": defs}},
        }

    async def predict(request: Request, name: str, version: str | None = None):
        try:
            check_model(name, version)
            body = await _json_body(request)
            signature = body.get("signature_name") or "serving_default" if isinstance(body, dict) else "serving_default"
            inputs_spec, _ = backend.signature_specs(signature)
            inputs, row_format = parse_predict(body, inputs_spec, backend.defaults)
            outputs = await _in_thread(backend.predict, signature, inputs)
            return format_predict(outputs, row_format)
        except NotFound as e:
            return error(404, str(e))
        except BadRequest as e:
            return error(400, str(e))
        except tf.errors.InvalidArgumentError as e:
            return error(400, tf_error_message(e))

    app.get("/v1/models/{name}")(status)
    app.get("/v1/models/{name}/versions/{version}")(status)
    app.get("/v1/models/{name}/metadata")(metadata)
    app.get("/v1/models/{name}/versions/{version}/metadata")(metadata)
    app.post("/v1/models/{name}:predict")(predict)
    app.post("/v1/models/{name}/versions/{version}:predict")(predict)

    # ---------------------------------------------------------------- OpenAI-compatible

    @app.get("/v1/models")
    def list_models():
        return {"object": "list", "data": [{"id": backend.name, "object": "model", "created": 0, "owned_by": "tfchat"}]}

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "model": backend.name, "version": backend.version, "largest_batch": backend.largest_batch}

    @app.get("/", response_class=HTMLResponse)
    def index():
        return CHAT_PAGE.replace("__MODEL__", backend.name)

    async def openai(request: Request, chat: bool):
        try:
            body = await _json_body(request)
            if not isinstance(body, dict):
                raise BadRequest("request body must be a JSON object")
            if body.get("model") not in (None, backend.name):
                return openai_error(404, f"The model `{body['model']}` does not exist", "model_not_found")
            if body.get("n", 1) != 1:
                raise BadRequest("only n=1 is supported")
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise BadRequest("stream must be a boolean")
            sampling = _openai_sampling(body, backend.max_len)
            if chat:
                if "messages" not in body:
                    raise BadRequest("'messages' is required")
                requests = [GenRequest(messages=_openai_messages(body["messages"]), **sampling)]
            else:
                prompt = body.get("prompt")
                prompts = [prompt] if isinstance(prompt, str) else prompt
                if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
                    raise BadRequest("'prompt' must be a string or a non-empty list of strings")
                if stream and len(prompts) > 1:
                    raise BadRequest("stream=true takes a single prompt")
                requests = [GenRequest(prompt=p, **sampling) for p in prompts]
            for r in requests:
                backend.validate(r)
        except BadRequest as e:
            return openai_error(400, str(e))
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        base = {"id": rid, "created": created, "model": backend.name}
        if stream:
            pieces = backend.stream(requests[0])
            return StreamingResponse(_sse_until_disconnect(pieces, requests[0], base, chat),
                                     media_type="text/event-stream")
        try:
            results = await _in_thread(lambda: [f.result() for f in [backend.submit(r) for r in requests]])
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
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
        return {**base, "object": "chat.completion" if chat else "text_completion", "choices": choices, "usage": usage}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await openai(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await openai(request, chat=False)

    return app


async def _json_body(request: Request):
    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"invalid JSON body: {e}") from e


async def _in_thread(fn, *args):
    import anyio

    return await anyio.to_thread.run_sync(lambda: fn(*args))


def _openai_sampling(body: dict, max_len: int) -> dict:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = min(256, max_len // 2)
    seed = body.get("seed")
    if seed is None:
        seed = random.randrange(2**31)  # unseeded requests differ, like OpenAI's
    return dict(
        max_new_tokens=max_tokens,
        temperature=body.get("temperature", 1.0),
        top_p=body.get("top_p", 1.0),
        top_k=body.get("top_k", 0),
        seed=seed,
    )


def _openai_messages(messages) -> list[dict]:
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


# ------------------------------------------------------------------------------ gRPC (TF Serving PredictionService)


def create_grpc_server(backend: Backend, port: int, host: str = "[::]"):
    """A gRPC server speaking TF Serving's PredictionService (Predict, GetModelMetadata) and ModelService status."""
    from concurrent import futures

    import grpc
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )
    from tensorflow.core.protobuf import meta_graph_pb2

    def resolve(spec, context):
        version = spec.version.value if spec.HasField("version") else None
        if spec.name != backend.name or (version is not None and version != backend.version):
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {spec.name} {version or ''}".strip())

    class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            resolve(request.model_spec, context)
            signature = request.model_spec.signature_name or "serving_default"
            try:
                specs, _ = backend.signature_specs(signature)
                inputs = {}
                for k, proto in request.inputs.items():
                    if k not in specs:
                        raise BadRequest(f"unknown input '{k}'; signature inputs: {sorted(specs)}")
                    inputs[k] = tf.constant(tf.make_ndarray(proto), specs[k].dtype)
                missing = sorted(set(specs) - set(inputs))
                if missing and set(missing) <= SAMPLING_INPUTS and inputs:
                    batch = int(next(iter(inputs.values())).shape[0])
                    for k in missing:
                        inputs[k] = tf.constant([backend.defaults[k]] * batch, specs[k].dtype)
                elif missing:
                    raise BadRequest(f"missing input(s) {missing}")
                outputs = backend.predict(signature, inputs)
            except NotFound as e:
                context.abort(grpc.StatusCode.NOT_FOUND, str(e))
            except (BadRequest, tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, tf_error_message(e))
            response = predict_pb2.PredictResponse()
            response.model_spec.name = backend.name
            response.model_spec.version.value = backend.version
            response.model_spec.signature_name = signature
            for k, v in outputs.items():
                response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
            return response

        def GetModelMetadata(self, request, context):
            resolve(request.model_spec, context)
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for name in backend.signatures:
                inputs, outputs = backend.signature_specs(name)
                sig = sig_map.signature_def[name]
                sig.method_name = "tensorflow/serving/predict"
                for group, specs in ((sig.inputs, inputs), (sig.outputs, outputs)):
                    for k, s in specs.items():
                        info = meta_graph_pb2.TensorInfo(name=k, dtype=s.dtype.as_datatype_enum)
                        info.tensor_shape.CopyFrom(s.shape.as_proto())
                        group[k].CopyFrom(info)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = backend.name
            response.model_spec.version.value = backend.version
            response.metadata["signature_def"].Pack(sig_map)
            return response

    class Models(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            resolve(request.model_spec, context)
            response = get_model_status_pb2.GetModelStatusResponse()
            status = response.model_version_status.add()
            status.version = backend.version
            status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Prediction(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(Models(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    server.bound_port = bound
    return server


# ------------------------------------------------------------------------------ running


class ServerThread:
    """Runs an app with uvicorn in a background thread (tests, notebooks, benchmarks).

    >>> with ServerThread(create_app(backend)) as url:  # doctest: +SKIP
    ...     httpx.get(url + "/healthz")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import threading

        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.url = None

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------------------ main

CHAT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tfchat: __MODEL__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,sans-serif;max-width:760px;margin:0 auto;padding:1rem;background:#fafafa}
 #log{min-height:60vh;border:1px solid #ddd;background:#fff;padding:.75rem;border-radius:8px;overflow-y:auto}
 .msg{margin:.4rem 0;white-space:pre-wrap}.user{color:#0b5394}.assistant{color:#222}.err{color:#b00}
 form{display:flex;gap:.5rem;margin-top:.75rem}#input{flex:1;padding:.5rem}
 .opts{font-size:.85rem;color:#555;margin-top:.5rem}.opts input{width:4.5rem}
</style></head><body>
<h2>tfchat &middot; __MODEL__</h2>
<div id="log"></div>
<form id="form"><input id="input" autocomplete="off" placeholder="Say something" autofocus>
<button id="send">Send</button><button type="button" id="reset">Reset</button></form>
<div class="opts">temperature <input id="temperature" type="number" step="0.1" min="0" value="0.8">
 top_p <input id="top_p" type="number" step="0.05" min="0.01" max="1" value="0.95">
 max tokens <input id="max_tokens" type="number" min="1" value="128">
 system <input id="system" style="width:16rem" placeholder="(optional system prompt)"></div>
<script>
let history = [];
const log = document.getElementById("log"), input = document.getElementById("input");
function add(role, text) {
  const div = document.createElement("div"); div.className = "msg " + role;
  div.textContent = (role === "user" ? "You: " : role === "assistant" ? "Bot: " : "") + text;
  log.appendChild(div); log.scrollTop = log.scrollHeight; return div;
}
document.getElementById("reset").onclick = () => { history = []; log.innerHTML = ""; };
document.getElementById("form").onsubmit = async (e) => {
  e.preventDefault();
  const text = input.value.trim(); if (!text) return;
  // One reply at a time: a second send mid-stream would put two user turns in a row into the history.
  const send = document.getElementById("send"); send.disabled = true; input.disabled = true;
  input.value = ""; add("user", text); history.push({role: "user", content: text});
  const sys = document.getElementById("system").value.trim();
  const messages = (sys ? [{role: "system", content: sys}] : []).concat(history);
  const div = add("assistant", ""); let reply = "";
  try {
    const res = await fetch("/v1/chat/completions", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({messages, stream: true,
        temperature: parseFloat(document.getElementById("temperature").value),
        top_p: parseFloat(document.getElementById("top_p").value),
        max_tokens: parseInt(document.getElementById("max_tokens").value)})});
    if (!res.ok) {
      const body = await res.text(); let msg;
      try { const err = JSON.parse(body).error; msg = (err && (err.message || (typeof err === "string" ? err : ""))) || body; }
      catch (_) { msg = ""; }  // not JSON (e.g. a plain-text 500): report the status instead
      throw new Error(msg || ("HTTP " + res.status + " " + res.statusText + (body ? ": " + body.slice(0, 200) : "")));
    }
    const reader = res.body.getReader(), dec = new TextDecoder(); let buf = "";
    while (true) {
      const {value, done} = await reader.read(); if (done) break;
      buf += dec.decode(value, {stream: true});
      let i; while ((i = buf.indexOf("\\n\\n")) >= 0) {
        const line = buf.slice(0, i).trim(); buf = buf.slice(i + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const chunk = JSON.parse(line.slice(6));
        if (chunk.error) throw new Error(chunk.error.message);
        const piece = chunk.choices[0].delta.content; if (piece) { reply += piece; div.textContent = "Bot: " + reply; }
      }
    }
    history.push({role: "assistant", content: reply});
  } catch (err) { div.className = "msg err"; div.textContent = "Error: " + err.message; history.pop(); }
  finally { send.disabled = false; input.disabled = false; input.focus(); }
};
</script></body></html>
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.server", description="Serve an exported tfchat model.")
    parser.add_argument("--model", required=True, help="export base path (latest version served) or a version dir")
    parser.add_argument("--name", default=None, help="model name in URLs (default: the export folder's name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8501, help="REST port (TF Serving's default is 8501)")
    parser.add_argument("--grpc-port", type=int, default=None, help="also serve TF Serving's gRPC API (e.g. 8500)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    try:
        backend = Backend(args.model, args.name, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms)
    except (OSError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    grpc_server = create_grpc_server(backend, args.grpc_port) if args.grpc_port is not None else None
    if grpc_server:
        log.info("gRPC on port %d", grpc_server.bound_port)
    try:
        uvicorn.run(create_app(backend), host=args.host, port=args.port, log_level="info")
    finally:
        if grpc_server:
            grpc_server.stop(grace=1)
        backend.close()


if __name__ == "__main__":
    main()
