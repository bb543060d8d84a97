"""Serve an exported tfchat model: TF Serving's REST (and gRPC) API, OpenAI's API, and a web chat.

    python -m serving.server --model exports/tfchat [--port 8501] [--grpc-port 8500] [--max-batch 8]

Then open http://127.0.0.1:8501/ for the web chat, or talk to it:

    curl -s localhost:8501/v1/chat/completions -H 'Content-Type: application/json' \
        -d '{"messages": [{"role": "user", "content": "Hi!"}]}'
    python -m serving.chat --server http://127.0.0.1:8501

Routes: `serving/routes/tf_serving.py` (TF Serving REST), `serving/routes/openai.py`
(OpenAI), `serving/grpc_service.py` (TF Serving gRPC); the web chat is
`serving/static/index.html`.
"""

from __future__ import annotations

import logging
import sys

from tfchat import cli

log = logging.getLogger("serving.server")


def parser():
    p = cli.parser("python -m serving.server", __doc__)
    p.add_argument("--model", required=True, help="export base path (the latest version is served) or a version dir")
    p.add_argument("--name", default=None, help="model name in URLs (default: the export folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=cli.port, default=8501, help="REST port (TF Serving's default is 8501)")
    p.add_argument("--grpc-port", type=cli.port, default=None, help="also serve TF Serving's gRPC API on this port (e.g. 8500)")
    p.add_argument("--max-batch", type=cli.positive_int, default=8, help="most generation requests decoded together")
    p.add_argument("--batch-wait-ms", type=cli.non_negative_float, default=5.0,
                   help="how long the first request of a batch waits for others to join")
    p.add_argument("--max-request-bytes", type=cli.positive_int, default=1 << 20,
                   help="largest request body; larger ones get HTTP 413 before they are read")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def run() -> int:
        cli.setup(args.verbose)
        import uvicorn

        from serving.app import create_app
        from serving.backend import Backend
        from serving.grpc_service import create_grpc_server

        backend = Backend(args.model, args.name, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms)
        grpc_server = create_grpc_server(backend, args.grpc_port) if args.grpc_port is not None else None
        if grpc_server:
            log.info("gRPC on port %d", grpc_server.bound_port)
        log.info("web chat: http://%s:%d/", args.host, args.port)
        try:
            uvicorn.run(create_app(backend, max_request_bytes=args.max_request_bytes), host=args.host, port=args.port,
                        log_level="info")
        finally:
            if grpc_server:
                grpc_server.stop(grace=1)
            backend.close()
        return 0

    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
