"""Serve an exported tfchat model: TF Serving's REST (and gRPC) API, OpenAI's API, and a web chat.

    python -m serving.server --model exports/tfchat [--port 8501] [--grpc-port 8500] [--max-batch 8]
    python -m serving.server --model exports/tfchat --reward-model exports/reward --best-of 4
    python -m serving.server --model exports/tfchat --content-filter runs/moderation [--filter-threshold 0.5]
    python -m serving.server --model exports/tfchat --intent runs/intent --index runs/index   # dialogue manager

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
With `--reward-model`, every chat reply is the best of `--best-of` sampled
candidates by the reward model's score (`serving/best_of.py`).
With `--intent` (a `training.classify --task intent` run) and/or `--index` (a
`training.index` run), chat turns go through the dialogue manager
(`tfchat/dialogue/manager.py`): templates, retrieved knowledge, the model, or
a refusal; responses name the route and the sources.
A model trained with control tags (its export's metadata "tags") steers
chat replies by them: `"topic": "music", "style": "happy"` (or `"tags": {...}`)
in an OpenAI chat request, the `chat_tagged` signature over TF Serving's
APIs, a drop-down per tag name in the web chat (`GET /v1/models` lists them).
"""

from __future__ import annotations

import logging
import sys

from serving.errors import DEFAULT_MAX_ROWS
from tfchat import cli

log = logging.getLogger("serving.server")


def parser():
    p = cli.parser("python -m serving.server", __doc__)
    p.add_argument("--model", required=True, help="export base path (the latest version is served) or a version dir")
    p.add_argument("--name", default=None, help="model name in URLs (default: the export folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=cli.port, default=8501, help="REST port (TF Serving's default is 8501)")
    p.add_argument("--grpc-port", type=cli.port, default=None, help="also serve TF Serving's gRPC API on this port (e.g. 8500)")
    p.add_argument("--max-batch", type=cli.positive_int, default=8,
                   help="most rows decoded together: one per generation request, two for a guided one")
    p.add_argument("--batch-wait-ms", type=cli.non_negative_float, default=5.0,
                   help="how long the first request of a batch waits for others to join")
    p.add_argument("--plain-signatures", action="store_true",
                   help="decode with the exported XLA-free prefill/decode signatures (one call per token, batches "
                        "start and end together) instead of the XLA fast path with continuous batching")
    p.add_argument("--chunk", type=cli.positive_int, default=8,
                   help="fast path: tokens decoded per call (streamed together; requests join between chunks)")
    p.add_argument("--max-request-bytes", type=cli.positive_int, default=1 << 20,
                   help="largest request body; larger ones get HTTP 413 before they are read")
    p.add_argument("--max-rows", type=cli.positive_int, default=DEFAULT_MAX_ROWS,
                   help="most prompts in one /v1/completions request and rows in one :predict (HTTP 400 beyond)")
    g = p.add_argument_group("content filter")
    g.add_argument("--content-filter", default=None, metavar="DIR",
                   help="moderation classifier (python -m training.classify run directory or its export): refuse "
                        "flagged input, stop flagged replies, serve POST /v1/moderations")
    g.add_argument("--filter-threshold", type=cli.probability, default=None,
                   help="flag at or above this 'flagged' score (default: the threshold stored with the classifier)")
    g.add_argument("--filter-every", type=cli.positive_int, default=4,
                   help="check a reply being generated every this many tokens")
    g = p.add_argument_group("dialogue manager (knowledge and intents)")
    g.add_argument("--intent", default=None, metavar="DIR", help="intent classifier (training.classify --task intent)")
    g.add_argument("--index", default=None, metavar="DIR", help="knowledge index (training.index run directory)")
    g.add_argument("--rules", default=None, metavar="FILE",
                   help="dialogue rules JSON (default: the bundled tfchat/resources/dialogue-rules.json)")
    g.add_argument("--passages", type=cli.positive_int, default=3, help="retrieved passages put into a prompt")
    add_best_of_flags(p)
    return p


def add_best_of_flags(p) -> None:
    """--reward-model and --best-of (serving.best_of), shared with serving.chat."""
    g = p.add_argument_group("best-of-n")
    g.add_argument("--reward-model", default=None, metavar="EXPORT",
                   help="a reward model export (serving.export of a training.reward run): answer each chat request "
                        "with the best of --best-of sampled replies by its score")
    g.add_argument("--best-of", type=cli.positive_int, default=None, metavar="N",
                   help="candidates per chat request, up to 64 (default 4 with --reward-model)")


def check_best_of_flags(args) -> None:
    """`cli.UsageError` for a bad --reward-model / --best-of combination (before anything is loaded)."""
    if args.best_of is not None and args.reward_model is None:
        raise cli.UsageError("--best-of needs --reward-model EXPORT (the reward model that picks the best reply)")
    if args.best_of is not None and args.best_of > 64:
        raise cli.UsageError(f"--best-of must be at most 64, got {args.best_of}")


def best_of(args):
    """The `BestOfN` of parsed (checked) flags, or None."""
    if args.reward_model is None:
        return None
    from serving.best_of import BestOfN, RewardScorer

    return BestOfN(RewardScorer(args.reward_model), 4 if args.best_of is None else args.best_of)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.content_filter is None and args.filter_threshold is not None:
        p.error("--filter-threshold needs --content-filter")

    def run() -> int:
        check_best_of_flags(args)
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
        reranker = best_of(args)  # best-of-n hook (serving.best_of)
        dialogue = None
        if args.intent or args.index or args.rules:  # loaded before the model too: bad paths fail fast
            from tfchat.dialogue.manager import DialogueManager

            dialogue = DialogueManager.load(args.intent, args.index, args.rules, k=args.passages)
            dialogue.content_filter = content_filter
        backend = Backend(args.model, args.name, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                          fast=not args.plain_signatures, chunk=args.chunk)
        backend.best_of = reranker
        backend.warmup()
        if content_filter is not None:
            from serving.content_filter import FilteredBackend

            backend = FilteredBackend(backend, content_filter, check_every=args.filter_every)
        grpc_server = (create_grpc_server(backend, args.grpc_port, max_rows=args.max_rows)
                       if args.grpc_port is not None else None)
        if grpc_server:
            log.info("gRPC on port %d", grpc_server.bound_port)
        log.info("web chat: http://%s:%d/", args.host, args.port)
        try:
            app = create_app(backend, max_request_bytes=args.max_request_bytes, dialogue=dialogue,
                             max_rows=args.max_rows)
            if content_filter is not None:
                from serving.routes import moderation

                app.include_router(moderation.router(content_filter))
            uvicorn.run(app, host=args.host, port=args.port, log_level="info")
        finally:
            if grpc_server:
                grpc_server.stop(grace=1)
            backend.close()
            if reranker:
                reranker.close()
        return 0

    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
