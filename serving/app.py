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

import html
import importlib.resources
import json
import threading
import time

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from serving.backend import Backend
from serving.routes import openai, tf_serving


def chat_page(backend: Backend) -> str:
    """The web chat, named for the model, with the model's sampling defaults filled in."""
    page = importlib.resources.files("serving").joinpath("static", "index.html").read_text(encoding="utf-8")
    defaults = json.dumps(backend.defaults.to_dict()).replace("</", "<\\/")
    return page.replace("__MODEL__", html.escape(backend.name)).replace("__DEFAULTS__", defaults)


def create_app(backend: Backend) -> FastAPI:
    """The FastAPI app around a loaded `Backend`."""
    app = FastAPI(title="tfchat", docs_url="/docs")
    app.state.backend = backend
    app.include_router(tf_serving.router(backend))
    app.include_router(openai.router(backend))

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "model": backend.name, "version": backend.version, "largest_batch": backend.largest_batch}

    page = chat_page(backend)

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page

    return app


class ServerThread:
    """Runs an app with uvicorn in a background thread (tests, notebooks, benchmarks)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
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
