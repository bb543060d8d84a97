"""TF Serving's REST API, so `serving.client` and TF Serving clients work against tfchat's server too.

    GET  /v1/models/NAME[/versions/N]            version status
    GET  /v1/models/NAME[/versions/N]/metadata   signature defs
    POST /v1/models/NAME[/versions/N]:predict    {"signature_name": ..., "instances": [...]} or {"inputs": ...}

Errors are `{"error": "..."}` with 400 (bad input), 404 (unknown model,
version, signature), 413 (body too large) or 415 (not JSON); a GET of a
`:predict` path is 405. Unlike TF Serving, the sampling inputs of
`generate`/`chat`/`prefill` may be left out (`serving.codec`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.convertors import Convertor, register_url_convertor

from serving.backend import Backend
from serving.codec import batch_rows, format_predict, parse_predict, spec_json
from serving.errors import BadRequest, NotFound
from serving.http import MAX_RESPONSE_VALUES, check_rows, json_body, results_unless_gone
from serving.openapi import PREDICT_REQUEST, TF_SERVING_ERROR, documented
from tfchat.cli import tf_error_message


class _ModelName(Convertor):
    """A model name never holds ':' (so `NAME:predict` is never read as a model called that)."""

    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("model", _ModelName())


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def router(backend: Backend) -> APIRouter:
    api = APIRouter()

    def check_model(name: str, version: int | None) -> None:
        if name != backend.name:
            raise NotFound(f"Servable not found for request: Latest({name})")
        if version is not None and version != backend.version:
            raise NotFound(f"Servable not found for request: Specific({name}, {version})")

    def status(name: str, version: int | None = None):
        try:
            check_model(name, version)
        except NotFound as e:
            return error(404, str(e))
        return {"model_version_status": [
            {"version": str(backend.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]}

    def metadata(name: str, version: int | None = None):
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

    async def predict(request: Request, name: str, version: int | None = None):
        try:
            check_model(name, version)
            body = await json_body(request)
            signature = body.get("signature_name", "serving_default") if isinstance(body, dict) else "serving_default"
            if not isinstance(signature, str):
                raise BadRequest("signature_name must be a string")
            inputs_spec, _ = backend.signature_specs(signature or "serving_default")
            inputs, row_format = parse_predict(body, inputs_spec, backend.defaults)
            check_rows(request, batch_rows(inputs), "rows")
            job = backend.predict_job(signature or "serving_default", inputs)
            outputs, = await results_unless_gone(request, [job])
            values = sum(int(np.size(o)) for o in outputs.values())
            if values > MAX_RESPONSE_VALUES:  # JSON of a prefill's caches: ~50k numbers a token
                raise BadRequest(f"the answer holds {values:,} numbers, over {MAX_RESPONSE_VALUES:,}: send fewer rows "
                                 "or tokens (or use the gRPC API)")
            return format_predict(outputs, row_format)
        except (NotFound, BadRequest) as e:
            return error(e.status, str(e))
        except tf.errors.InvalidArgumentError as e:
            return error(400, tf_error_message(e))

    api.get("/v1/models/{name:model}")(status)
    api.get("/v1/models/{name:model}/versions/{version:int}")(status)
    api.get("/v1/models/{name:model}/metadata")(metadata)
    api.get("/v1/models/{name:model}/versions/{version:int}/metadata")(metadata)
    docs = documented(PREDICT_REQUEST, TF_SERVING_ERROR)
    api.post("/v1/models/{name:model}:predict", **docs)(predict)
    api.post("/v1/models/{name:model}/versions/{version:int}:predict", **docs)(predict)
    return api
