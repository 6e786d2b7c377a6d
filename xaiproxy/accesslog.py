"""The access log: one JSON line per request, with a request id that is also `x-request-id`.

aiohttp calls `JsonAccessLogger.log` once a response has been sent in full (streams
included), so durations are real. `runner_kwargs(settings)` gives what `web.run_app`
or an `AppRunner` needs. The data plane keeps its `RequestContext` at
`request[plugins.REQUEST_CTX]`; from it the line gets the account, model, level, key id, tokens,
cost and time to first byte. Never logged: request headers, query strings, bodies;
anything in a path that looks like a key is cut to its display prefix.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import secrets
import sys
import time
from datetime import UTC, datetime

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from . import credentials
from .plugins import REQUEST_CALLER, context_of

log = logging.getLogger("xaiproxy.accesslog")
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
    if "sk-" not in path:  # nothing key-like: the common case, no regex pass
        return path[:300]
    # Redact before cutting, so no cut can leave part of a key unmatched.
    return _KEYLIKE.sub(lambda m: credentials.display_prefix(m.group()), path[:4096])[:300]


_second = [-1, ""]  # the last whole second formatted, and its text up to the seconds


def timestamp(now: float) -> str:
    """`now` as ISO 8601 UTC with milliseconds (as datetime.isoformat gives it); the date
    and time part is formatted once per second, not per line."""
    frac, whole = math.modf(now)  # rounded to the microsecond as datetime does
    whole, micros = int(whole), round(frac * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    if whole != _second[0]:
        text = datetime.fromtimestamp(whole, UTC).isoformat(timespec="seconds")[:-6]
        _second[0], _second[1] = whole, text
    return f"{_second[1]}.{micros // 1000:03d}+00:00"


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
        "ts": timestamp(time.time()),
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


class LineSink:
    """Buffered line writer: one write per flush (every 0.1 s or 256 lines), not per request.

    A file target is reopened when logrotate moves it (checked once per flush).
    """

    FLUSH_SECONDS = 0.1
    MAX_LINES = 256

    def __init__(self, target: str) -> None:
        self.target = target
        self._lines: list[bytes] = []
        self._handle = None
        self._scheduled = False

    def write(self, line: bytes) -> None:
        self._lines.append(line)
        if len(self._lines) >= self.MAX_LINES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(self.FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        data = b"\n".join(self._lines) + b"\n"
        self._lines.clear()
        try:
            handle = self._open()
            handle.write(data)
            handle.flush()
        except OSError as exc:  # a full disk must not break requests
            log.error("access log write failed: %s", exc)

    def _open(self):
        if self.target == "-":
            return sys.stderr.buffer
        if self._handle is not None:
            try:
                moved = os.stat(self.target).st_ino != os.fstat(self._handle.fileno()).st_ino
            except FileNotFoundError:
                moved = True
            if not moved:
                return self._handle
            self._handle.close()
        self._handle = open(self.target, "ab")  # noqa: SIM115 - kept open across flushes
        return self._handle

    def close(self) -> None:
        self.flush()
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp access logger writing `line(...)` to a LineSink (see `make_logger`)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # `time` is aiohttp's name for the seconds the request took.
        try:
            self.logger.write(line(request, response, time))
        except Exception:  # a log line must never break a request
            log.exception("access log line failed")


_SINKS: dict[str, LineSink] = {}


def make_logger(target: str) -> LineSink | None:
    """The sink for stderr ("-") or a file; one per target in a process."""
    if not target:
        return None
    sink = _SINKS.get(target)
    if sink is None:
        sink = _SINKS[target] = LineSink(target)
    return sink


def runner_kwargs(settings) -> dict:
    """Keyword arguments for web.run_app / AppRunner: our logger, or none at all."""
    logger = make_logger(settings.access_log)
    if logger is None:
        return {"access_log": None}
    return {"access_log_class": JsonAccessLogger, "access_log": logger}


def close_logger(target: str) -> None:
    """Flush and close the sink make_logger opened (tests, and a clean stop)."""
    sink = _SINKS.pop(target, None)
    if sink is not None:
        sink.close()


def setup(app: web.Application, gw) -> None:
    """Every response carries x-request-id; the data plane's id wins when it set one."""
    app.on_response_prepare.append(_add_request_id)
