"""The FastAPI app of tfchat's server: the API routes, the web chat, health, and a thread to run it in.

    create_app(backend)   TF Serving REST (`serving.routes.tf_serving`), OpenAI (`serving.routes.openai`),
                          `GET /healthz`, and the web chat at `/` (`serving/static/index.html`)

All model calls go through one queue (`serving.backend.Backend`);
generation requests that arrive together run as one batch.

Example:

>>> with ServerThread(create_app(backend)) as url:  # doctest: +SKIP
...     httpx.get(url + "/healthz")
"""

from __future__ import annotations

import base64
import hashlib
import html
import importlib.resources
import json
import re
import threading
import time

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from serving.backend import Backend
from serving.errors import DEFAULT_MAX_ROWS
from serving.http import DEFAULT_MAX_REQUEST_BYTES, ClientGone
from serving.routes import openai, tf_serving


def chat_page(backend: Backend) -> str:
    """The web chat, named for the model, with the model's sampling defaults filled in.

    The page's Content-Security-Policy lets its one inline script run by hash, so nothing that ever got
    into the page (an inline event handler, another script) could run, and it reaches no other origin."""
    page = importlib.resources.files("serving").joinpath("static", "index.html").read_text(encoding="utf-8")
    values = {"__MODEL__": html.escape(backend.name), "__DEFAULTS__": json.dumps(backend.defaults.to_dict()).replace("</", "<\\/")}
    page = re.sub("|".join(values), lambda m: values[m.group(0)], page)
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return page.replace("__SCRIPT_HASH__", f"'sha256-{digest}'", 1)


def create_app(backend: Backend, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, dialogue=None,
               max_rows: int = DEFAULT_MAX_ROWS) -> FastAPI:
    """The FastAPI app around a loaded `Backend`; request bodies over `max_request_bytes` get a 413, requests
    of more than `max_rows` prompts or :predict rows a 400;
    `dialogue`: a `tfchat.dialogue.manager.DialogueManager` routing OpenAI chat turns."""
    app = FastAPI(title="tfchat", docs_url="/docs")
    app.state.backend = backend
    app.state.max_request_bytes = max_request_bytes
    app.state.max_rows = max_rows

    async def client_gone(request, exc):  # hung up mid-upload or before the answer: nobody to tell
        return Response(status_code=499)

    async def http_error(request, exc):  # an unknown route or method: the API's error shape, not {"detail": ...}
        chat = request.url.path.startswith(("/v1/chat/", "/v1/completions"))
        response = (openai.openai_error if chat else tf_serving.error)(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})  # a 405 names the allowed methods
        return response

    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(ClientGone, client_gone)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.include_router(tf_serving.router(backend))
    app.include_router(openai.router(backend, dialogue))

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "model": backend.name, "version": backend.version, "largest_batch": backend.largest_batch,
                "compiling": backend.compiling}

    page = chat_page(backend)

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page

    return app


class ServerThread:
    """Runs an app with uvicorn in a background thread (tests, notebooks, benchmarks)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        # log_config=None: uvicorn's records go to the root logger. Its own handlers would hold on to whatever
        # sys.stderr was at the first start (in a test, a capture that is closed afterwards).
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", log_config=None))
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
