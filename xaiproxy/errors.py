"""The one error format: {"error": {"message", "type", "code"}} for every answer that fails."""

from __future__ import annotations

from enum import StrEnum

import orjson
from aiohttp import web

from . import responses

# HTTP status -> error family (`type`).
TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "api_error",
}


class Code(StrEnum):
    """The error codes clients see (SPEC 7). A plugin may use these or its own snake_case codes."""

    INVALID_REQUEST = "invalid_request"  # 400, the message says what was wrong
    INVALID_JSON = "invalid_json"  # 400
    INVALID_API_KEY = "invalid_api_key"  # 401
    ACCOUNT_DISABLED = "account_disabled"  # 403
    PERMISSION_DENIED = "permission_denied"  # 403: no right to this endpoint
    IP_NOT_ALLOWED = "ip_not_allowed"  # 403
    MODEL_NOT_ALLOWED = "model_not_allowed"  # 403
    RESOURCE_NOT_ALLOWED = "resource_not_allowed"  # 403
    INSUFFICIENT_BALANCE = "insufficient_balance"  # 403
    HARD_LIMIT_REACHED = "hard_limit_reached"  # 403
    NOT_FOUND = "not_found"  # 404: missing, or outside the caller's subtree
    ALREADY_EXISTS = "already_exists"  # 409
    REQUEST_TOO_LARGE = "request_too_large"  # 413
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"  # 429
    INTERNAL_ERROR = "internal_error"  # 500
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"  # 502
    NO_PROVIDER_KEY = "no_provider_key"  # 503


class ApiError(Exception):
    """Raise anywhere below a handler; the error middleware renders it."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


class StartError(Exception):
    """A problem that stops the start (a plugin, its options, a route); the message is one line."""


def body(status: int, code: str, message: str, anthropic: bool = False) -> bytes:
    err = {"message": message, "type": TYPES.get(status, "api_error"), "code": code}
    if anthropic:
        # Anthropic's SDK reads the top-level "type": "error".
        return orjson.dumps({"type": "error", "error": err})
    return orjson.dumps({"error": err})


def response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    anthropic: bool = False,
) -> web.Response:
    return responses.encoded(body(status, code, message, anthropic), status, headers)


def from_exc(exc: ApiError, anthropic: bool = False) -> web.Response:
    return response(exc.status, exc.code, exc.message, exc.headers, anthropic)
