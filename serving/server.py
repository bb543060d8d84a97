"""Serve an exported tfchat model: TF Serving's REST (and gRPC) API, OpenAI's API, and a web chat.

    python -m serving.server --model exports/tfchat [--port 8501] [--grpc-port 8500] [--max-batch 8]
    python -m serving.server --model exports/tfchat --content-filter runs/moderation [--filter-threshold 0.5]

Then open http://127.0.0.1:8501/ for the web chat, or talk to it:

    curl -s localhost:8501/v1/chat/completions -H 'Content-Type: application/json' \
        -d '{"messages": [{"role": "user", "content": "Hi!"}]}'
    python -m serving.chat --server http://127.0.0.1:8501

Routes: `serving/routes/tf_serving.py` (TF Serving REST), `serving/routes/openai.py`
(OpenAI), `serving/grpc_service.py` (TF Serving gRPC); the web chat is
`serving/static/index.html`. With `--content-filter` (a `training.classify
--task moderation` run or its export), flagged input is refused and replies
are screened as they are generated (`serving/content_filter.py`), and
`POST /v1/moderations` serves the classifier (`serving/routes/moderation.py`).
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
    p.add_argument("--plain-signatures", action="store_true",
                   help="decode with the exported XLA-free prefill/decode signatures (one call per token, batches "
                        "start and end together) instead of the XLA fast path with continuous batching")
    p.add_argument("--chunk", type=cli.positive_int, default=8,
                   help="fast path: tokens decoded per call (streamed together; requests join between chunks)")
    p.add_argument("--max-request-bytes", type=cli.positive_int, default=1 << 20,
                   help="largest request body; larger ones get HTTP 413 before they are read")
    g = p.add_argument_group("content filter")
    g.add_argument("--content-filter", default=None, metavar="DIR",
                   help="moderation classifier (python -m training.classify run directory or its export): refuse "
                        "flagged input, stop flagged replies, serve POST /v1/moderations")
    g.add_argument("--filter-threshold", type=cli.probability, default=None,
                   help="flag at or above this 'flagged' score (default: the threshold stored with the classifier)")
    g.add_argument("--filter-every", type=cli.positive_int, default=4,
                   help="check a reply being generated every this many tokens")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.content_filter is None and args.filter_threshold is not None:
        p.error("--filter-threshold needs --content-filter")

    def run() -> int:
        cli.setup(args.verbose)
        import uvicorn

        from serving.app import create_app
        from serving.backend import Backend
        from serving.grpc_service import create_grpc_server

        content_filter = None
        if args.content_filter:  # loaded first: a bad classifier fails before the model loads
            from tfchat.inference.classifier import ContentFilter

            content_filter = ContentFilter.load(args.content_filter, args.filter_threshold)
            log.info("content filter %s: flagged at %.3f", args.content_filter, content_filter.threshold)
        backend = Backend(args.model, args.name, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                          fast=not args.plain_signatures, chunk=args.chunk)
        backend.warmup()
        if content_filter is not None:
            from serving.content_filter import FilteredBackend

            backend = FilteredBackend(backend, content_filter, check_every=args.filter_every)
        grpc_server = create_grpc_server(backend, args.grpc_port) if args.grpc_port is not None else None
        if grpc_server:
            log.info("gRPC on port %d", grpc_server.bound_port)
        log.info("web chat: http://%s:%d/", args.host, args.port)
        try:
            app = create_app(backend, max_request_bytes=args.max_request_bytes)
            if content_filter is not None:
                from serving.routes import moderation

                app.include_router(moderation.router(content_filter))
            uvicorn.run(app, host=args.host, port=args.port, log_level="info")
        finally:
            if grpc_server:
                grpc_server.stop(grace=1)
            backend.close()
        return 0

    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
