"""The one error format: {"error": {"message", "type", "code"}} for every answer that fails."""

from __future__ import annotations

import orjson
from aiohttp import web

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
    return web.Response(
        status=status,
        body=body(status, code, message, anthropic),
        content_type="application/json",
        headers=headers,
    )


def from_exc(exc: ApiError, anthropic: bool = False) -> web.Response:
    return response(exc.status, exc.code, exc.message, exc.headers, anthropic)


def bad_request(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, message)


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def forbidden(message: str, code: str = "permission_denied") -> ApiError:
    return ApiError(403, code, message)
