"""The errors serving code raises for clients: each maps to one HTTP status and one gRPC code."""


class BadRequest(ValueError):
    """Invalid client input (HTTP 400, gRPC INVALID_ARGUMENT)."""


class NotFound(LookupError):
    """Unknown model, version or signature (HTTP 404, gRPC NOT_FOUND)."""
