"""The errors serving code raises for clients: each maps to one HTTP status and one gRPC code."""


class BadRequest(ValueError):
    """Invalid client input (HTTP 400, gRPC INVALID_ARGUMENT)."""

    status = 400


class PayloadTooLarge(BadRequest):
    """A request body over the server's `--max-request-bytes` (HTTP 413)."""

    status = 413


class UnsupportedMediaType(BadRequest):
    """A body that is not declared as JSON (HTTP 415)."""

    status = 415


class NotFound(LookupError):
    """Unknown model, version or signature (HTTP 404, gRPC NOT_FOUND)."""

    status = 404


# Prompts in one completion request, rows in one :predict (REST and gRPC): the server's --max-rows default.
DEFAULT_MAX_ROWS = 64


def within_rows(rows: int, limit: int, what: str) -> None:
    """Refuses a request of more than `limit` rows (`what`: "prompts", "rows") with a BadRequest."""
    if rows > limit:
        raise BadRequest(f"{rows} {what} in one request; at most {limit} (the server's --max-rows)")
