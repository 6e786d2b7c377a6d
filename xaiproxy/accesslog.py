"""The access log: one JSON line per request, with a request id that is also `x-request-id`.

aiohttp calls `JsonAccessLogger.log` once a response has been sent in full (streams
included), so durations are real. `runner_kwargs(settings)` gives what `web.run_app`
or an `AppRunner` needs. The data plane keeps its `RequestContext` at
`request[plugins.REQUEST_CTX]`; from it the line gets the account, model, level, key id, tokens,
cost and time to first byte. Never logged: request headers, query strings, bodies;
anything in a path that looks like a key is cut to its display prefix.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import secrets
import sys
from datetime import UTC, datetime

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from . import credentials
from .plugins import REQUEST_CALLER, context_of

REQUEST_ID = "x-request-id"
_RID = web.RequestKey("request_id", str)
_KEYLIKE = re.compile(r"sk-[A-Za-z0-9_\-]{16,}")


def new_request_id() -> str:
    return secrets.token_hex(8)


def request_id(request: web.BaseRequest) -> str:
    """The request's id: the data plane's, or one made (once) for any other request."""
    ctx = context_of(request)
    if ctx is not None and ctx.request_id:
        return ctx.request_id
    rid = request.get(_RID)
    if rid is None:
        rid = request[_RID] = new_request_id()
    return rid


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    if REQUEST_ID not in response.headers:
        response.headers[REQUEST_ID] = request_id(request)


def _redact(path: str) -> str:
    # Redact before cutting, so no cut can leave part of a key unmatched.
    return _KEYLIKE.sub(lambda m: credentials.display_prefix(m.group()), path[:4096])[:300]


def _context_fields(ctx) -> dict:
    """What the data plane knows about the request; a display prefix at most for keys."""
    acc = ctx.account
    fields = {
        "account": acc.id if acc else None,
        "owner": acc.owner_acc.id if acc and acc.owner_acc else None,
        "model": ctx.model or None,
        "upstream_model": ctx.upstream_model or None,
        "level": ctx.level,
        "key": ctx.key.id if ctx.key else None,
        "attempts": ctx.attempts,
        "stream": ctx.stream,
        "prompt_tokens": ctx.prompt_tokens,
        "completion_tokens": ctx.completion_tokens,
        "cached_tokens": ctx.cached_tokens,
        "cost": round(ctx.cost, 9),
        "estimated": ctx.estimated,
        "ttfb_ms": round(ctx.ttfb * 1000, 1),
    }
    if ctx.error:
        fields["error"] = ctx.error
    return fields


def line(request: web.BaseRequest, response: web.StreamResponse, elapsed: float) -> bytes:
    """One access-log record as a JSON line (without the newline)."""
    record = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "rid": response.headers.get(REQUEST_ID) or request_id(request),
        "remote": request.remote,
        "method": request.method,
        "path": _redact(request.path),
        "status": response.status,
        "bytes": response.body_length,
        "ms": round(elapsed * 1000, 1),
        "ua": request.headers.get("User-Agent", "")[:120],
    }
    caller = request.get(REQUEST_CALLER)
    if caller is not None:
        record["caller"] = caller.id
    ctx = context_of(request)
    if ctx is not None:
        record.update(_context_fields(ctx))
    return orjson.dumps(record)


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp access logger writing `line(...)` through a logging.Logger (see `make_logger`)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # `time` is aiohttp's name for the seconds the request took.
        try:
            self.logger.info(line(request, response, time).decode())
        except Exception:  # a log line must never break a request
            self.logger.exception("access log line failed")


def make_logger(target: str) -> logging.Logger | None:
    """A logger writing bare lines to stderr ("-") or a file (reopened after rotation)."""
    if not target:
        return None
    logger = logging.getLogger(f"xaiproxy.access.{target}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        if target == "-":
            handler: logging.Handler = logging.StreamHandler(sys.stderr)
        else:
            handler = logging.handlers.WatchedFileHandler(target, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    return logger


def runner_kwargs(settings) -> dict:
    """Keyword arguments for web.run_app / AppRunner: our logger, or none at all."""
    logger = make_logger(settings.access_log)
    if logger is None:
        return {"access_log": None}
    return {"access_log_class": JsonAccessLogger, "access_log": logger}


def close_logger(target: str) -> None:
    """Close the handlers make_logger opened (tests, and a clean stop)."""
    logger = logging.getLogger(f"xaiproxy.access.{target}")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def setup(app: web.Application, gw) -> None:
    """Every response carries x-request-id; the data plane's id wins when it set one."""
    app.on_response_prepare.append(_add_request_id)
