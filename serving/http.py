"""Small HTTP helpers the routes share: reading a JSON body, running blocking work off the event loop."""

from __future__ import annotations

import json

from fastapi import Request

from serving.errors import BadRequest


async def json_body(request: Request):
    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"invalid JSON body: {e}") from e


async def in_thread(fn, *args):
    import anyio

    return await anyio.to_thread.run_sync(lambda: fn(*args))
