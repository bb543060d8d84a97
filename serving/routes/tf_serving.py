"""TF Serving's REST API, so `serving.client` and TF Serving clients work against tfchat's server too.

    GET  /v1/models/NAME[/versions/N]            version status
    GET  /v1/models/NAME[/versions/N]/metadata   signature defs
    POST /v1/models/NAME[/versions/N]:predict    {"signature_name": ..., "instances": [...]} or {"inputs": ...}

Errors are `{"error": "..."}` with 400 (bad input) or 404 (unknown model,
version, signature). Unlike TF Serving, the sampling inputs of
`generate`/`chat`/`prefill` may be left out (`serving.codec`).
"""

from __future__ import annotations

import tensorflow as tf
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serving.backend import Backend, tf_error_message
from serving.codec import format_predict, parse_predict, spec_json
from serving.errors import BadRequest, NotFound
from serving.http import in_thread, json_body


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def router(backend: Backend) -> APIRouter:
    api = APIRouter()

    def check_model(name: str, version: str | None) -> None:
        if name != backend.name:
            raise NotFound(f"Servable not found for request: Latest({name})")
        if version is not None and version != str(backend.version):
            raise NotFound(f"Servable not found for request: Specific({name}, {version})")

    def status(name: str, version: str | None = None):
        try:
            check_model(name, version)
        except NotFound as e:
            return error(404, str(e))
        return {"model_version_status": [
            {"version": str(backend.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]}

    def metadata(name: str, version: str | None = None):
        try:
            check_model(name, version)
        except NotFound as e:
            return error(404, str(e))
        defs = {}
        for sig in backend.signatures:
            inputs, outputs = backend.signature_specs(sig)
            defs[sig] = {
                "inputs": {k: spec_json(s, k) for k, s in inputs.items()},
                "outputs": {k: spec_json(s, k) for k, s in outputs.items()},
                "method_name": "tensorflow/serving/predict",
            }
        return {
            "model_spec": {"name": backend.name, "signature_name": "", "version": str(backend.version)},
            "metadata": {"signature_def": {"signature_def": defs}},
        }

    async def predict(request: Request, name: str, version: str | None = None):
        try:
            check_model(name, version)
            body = await json_body(request)
            signature = body.get("signature_name") or "serving_default" if isinstance(body, dict) else "serving_default"
            inputs_spec, _ = backend.signature_specs(signature)
            inputs, row_format = parse_predict(body, inputs_spec, backend.defaults)
            outputs = await in_thread(backend.predict, signature, inputs)
            return format_predict(outputs, row_format)
        except NotFound as e:
            return error(404, str(e))
        except BadRequest as e:
            return error(400, str(e))
        except tf.errors.InvalidArgumentError as e:
            return error(400, tf_error_message(e))

    api.get("/v1/models/{name}")(status)
    api.get("/v1/models/{name}/versions/{version}")(status)
    api.get("/v1/models/{name}/metadata")(metadata)
    api.get("/v1/models/{name}/versions/{version}/metadata")(metadata)
    api.post("/v1/models/{name}:predict")(predict)
    api.post("/v1/models/{name}/versions/{version}:predict")(predict)
    return api
