"""What the HTTP routes share: reading a JSON body safely, waiting for the model without outliving the client.

`json_body` accepts only bodies declared as JSON (`Content-Type:
application/json`): a web page can send a cross-origin POST without a CORS
preflight only as text/plain, a form or without a type, so refusing those
keeps other sites from making a local server generate. It refuses bodies
over the app's `max_request_bytes` before reading them whole (from
Content-Length, else while streaming), nesting deeper than `MAX_DEPTH`,
integers longer than `MAX_INT_DIGITS`, NaN/Infinity (not JSON) and lone
UTF-16 surrogates (not text); each is a 4xx with a one-line message.
`check_rows` holds a request to the app's `max_rows` (prompts of a
completion, rows of a `:predict`): the backend runs a request's rows before
later requests' turns, so one request of many rows would make everyone wait.

Example:

>>> _depth(b'{"a": [1, [2, "]]]"]]}')
3
"""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
from fastapi import Request

from serving.errors import DEFAULT_MAX_ROWS, BadRequest, PayloadTooLarge, UnsupportedMediaType, within_rows

DEFAULT_MAX_REQUEST_BYTES = 1 << 20
# Numbers in one :predict answer (a prefill's cache is ~50k numbers a token): JSON of 4M numbers is ~50 MB.
MAX_RESPONSE_VALUES = 1 << 22
MAX_DEPTH = 64  # the deepest body the APIs need is ~8 (a rank-6 tensor in "inputs")
MAX_INT_DIGITS = 20  # int64 and uint64 fit
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


def _depth(raw: bytes) -> int:
    """Deepest bracket nesting of a JSON text, strings ignored (linear, no recursion)."""
    codes = np.frombuffer(_STRING.sub(b"", raw), np.uint8)
    steps = np.isin(codes, _OPEN).astype(np.int32) - np.isin(codes, _CLOSE)
    return int(np.cumsum(steps).max(initial=0))


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BadRequest(f"invalid JSON: an integer of {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _constant(name: str):
    raise BadRequest(f"invalid JSON: {name} is not a JSON number")


def parse_json(raw: bytes):
    """JSON text -> Python value, or BadRequest naming what is wrong."""
    if _depth(raw) > MAX_DEPTH:
        raise BadRequest(f"invalid JSON: nested deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(raw or b"null", parse_int=_int, parse_constant=_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadRequest(f"invalid JSON body: {e}") from None
    try:  # a lone surrogate ("\ud800") parses, but is no text: it would fail later, deep in the model
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("invalid JSON body: a string holds a lone UTF-16 surrogate (not valid Unicode)") from None
    return value


async def json_body(request: Request):
    """The request's JSON body, read within the app's size limit (see the module docstring)."""
    limit = getattr(request.app.state, "max_request_bytes", DEFAULT_MAX_REQUEST_BYTES)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {kind or 'none'} (curl: -H 'Content-Type: application/json')")
    too_large = PayloadTooLarge(f"request body over {limit:,} bytes (the server's --max-request-bytes)")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():  # a client that hangs up raises ClientDisconnect (the app handles it)
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


def check_rows(request: Request, rows: int, what: str) -> None:
    """Refuses more than the app's `max_rows` rows in one request (BadRequest, a 400)."""
    within_rows(rows, getattr(request.app.state, "max_rows", DEFAULT_MAX_ROWS), what)


class ClientGone(Exception):
    """The client hung up before its answer was ready (the app answers nobody, quietly)."""


async def results_unless_gone(request: Request, jobs: list, poll: float = 0.25) -> list:
    """The results of backend jobs (anything with `.future` and `.cancelled`), in order. If the client
    disconnects first, the jobs are cancelled (queued ones never run, decoding rows stop at the next
    token) and `ClientGone` is raised."""
    waiting = asyncio.gather(*(asyncio.wrap_future(j.future) for j in jobs))
    while True:
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), poll)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                for job in jobs:
                    job.cancelled = True
                waiting.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody will read it
                raise ClientGone() from None
