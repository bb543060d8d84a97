"""Request and error schemas for the server's OpenAPI spec (`/openapi.json`, `/docs`).

The routes read their bodies themselves (`serving.http.json_body`: size,
depth and content-type limits, errors in each API's own shape), so the spec
is written here instead of derived from pydantic models. Each route passes
`**documented(REQUEST_SCHEMA, ERROR_SCHEMA)` to its decorator.
"""

from __future__ import annotations

from tfchat.text.special_tokens import ROLES

STATUS_TEXT = {400: "Invalid request", 404: "Unknown model, version or signature", 405: "Method not allowed",
               413: "Request body too large (--max-request-bytes)", 415: "Content-Type is not application/json"}

# --------------------------------------------------------------------------------- OpenAI

OPENAI_ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}

_SAMPLING = {
    "model": {"type": "string", "description": "the served model's name (optional)"},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1, "description": "most new tokens"},
    "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1, "description": "same as max_tokens"},
    "temperature": {"type": ["number", "null"], "minimum": 0, "description": "0 = greedy"},
    "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
    "top_k": {"type": ["integer", "null"], "minimum": 0, "maximum": 2**31 - 1, "description": "0 = off"},
    "seed": {"type": ["integer", "null"], "minimum": -(2**31), "maximum": 2**31 - 1},
    "n": {"type": "integer", "enum": [1]},
    "stream": {"type": "boolean", "description": "server-sent events ending with data: [DONE]"},
}

CHAT_REQUEST = {
    "type": "object", "required": ["messages"],
    "properties": {
        "messages": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["role", "content"],
            "properties": {
                "role": {"type": "string", "enum": [*ROLES, "developer"]},
                "content": {"oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "object", "required": ["type", "text"], "properties": {
                        "type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}},
                ]},
            }}},
        **_SAMPLING,
        "logprobs": {"type": ["boolean", "null"], "description": "return each reply token's log-probability"},
        "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20,
                         "description": "with logprobs: the most likely tokens at each position"},
        "knowledge": {"type": ["string", "null"],
                      "description": "tfchat extension: text for the knowledge segment (instead of the server's "
                                     "retrieval)"},
        "topic": {"type": ["string", "null"], "description": "tfchat extension: the reply's topic tag (a value of the "
                                                             "model's tag vocabulary, GET /v1/models)"},
        "style": {"type": ["string", "null"], "description": "tfchat extension: the reply's style tag"},
        "guidance": {"type": ["number", "null"], "minimum": 0, "maximum": 30,
                     "description": "tfchat extension: classifier-free guidance of a tagged reply (1 = off; "
                                    "higher steers harder, at twice the compute)"},
        "tags": {"type": ["object", "null"], "additionalProperties": {"type": ["string", "null"]},
                 "description": "tfchat extension: control tags {name: value}, any name of the model's vocabulary"},
    },
}

COMPLETION_REQUEST = {
    "type": "object", "required": ["prompt"],
    "properties": {
        "prompt": {"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}}]},
        **_SAMPLING,
        "logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 5,
                     "description": "return log-probabilities of each token and of this many likeliest ones"},
    },
}

# --------------------------------------------------------------------------------- TF Serving

TF_SERVING_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}

PREDICT_REQUEST = {
    "type": "object",
    "description": 'exactly one of "instances" (row format) or "inputs" (columnar format)',
    "properties": {
        "signature_name": {"type": "string", "description": "default: serving_default (= generate)"},
        "instances": {"type": "array", "minItems": 1, "items": {}},
        "inputs": {"description": "{input: value} or, for a one-input signature, the value"},
    },
}


def documented(request_schema: dict, error_schema: dict, errors=(400, 404, 413, 415)) -> dict:
    """Route decorator arguments that describe a JSON request body and the error responses."""
    return {
        "openapi_extra": {"requestBody": {"required": True, "content": {"application/json": {"schema": request_schema}}}},
        "responses": {code: {"description": STATUS_TEXT[code], "content": {"application/json": {"schema": error_schema}}}
                      for code in errors},
    }
