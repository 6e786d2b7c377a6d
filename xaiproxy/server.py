"""Serving: the runner, SIGTERM/SIGINT draining, JSON answers to malformed HTTP, and
the header deadline.

A request's headers must arrive within `client_header_timeout` of its first byte, or
the connection gets a 408 and is closed (slowloris); an idle keep-alive connection
is aiohttp's keep-alive timeout's business. The body deadline is admission's.

aiohttp answers a request it cannot parse (control bytes in a header, a broken
request line) itself, in text that quotes the offending line, and logs it with
the line. That line may be an Authorization header, so our protocol answers in
the error format without echoing or logging any of the input.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from . import errors
from .app import GATEWAY
from .plugins import REQUEST_CTX

log = logging.getLogger("xaiproxy.server")
_HEAD_TIMEOUT_BODY = errors.body(
    408, "request_timeout", "the request headers did not arrive in time; the connection is closed"
)
HEAD_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(_HEAD_TIMEOUT_BODY)
) + _HEAD_TIMEOUT_BODY


class _Protocol(RequestHandler):
    header_timeout = 0.0  # seconds; 0 = no deadline (set per server by GatewayRunner)
    _head_timer = None
    _awaiting_head = True  # between requests: the next bytes are a request's head

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued or self._upgraded or self._payload_parser is not None:
            self._awaiting_head = False  # a head is complete (or this is no longer HTTP)
            self._stop_head_timer()
        elif self._awaiting_head and self._head_timer is None and data and self.header_timeout:
            self._head_timer = self._loop.call_later(self.header_timeout, self._head_late)

    async def finish_response(self, request, resp, start_time):
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._awaiting_head = True  # what comes next is the next request's head
            # The data plane's context and its request refer to each other: with the
            # answer sent and logged, drop the request's side, so reference counting
            # frees the request's objects now (not the cycle collector, later).
            request.pop(REQUEST_CTX, None)

    def connection_lost(self, exc) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._awaiting_head and self.transport is not None and not self._force_close:
            log.info("request headers not received within %gs: closing", self.header_timeout)
            self.transport.write(HEAD_TIMEOUT_ANSWER)
            self.force_close()  # closes the transport once the answer is flushed

    def handle_error(self, request, status=500, exc=None, message=None) -> web.StreamResponse:
        if status >= 500:
            log.error("internal error on %s", getattr(request, "path", "?")[:100], exc_info=exc)
        else:
            log.info("malformed request refused (%d, %s)", status, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        code = "internal_error" if status >= 500 else "malformed_request"
        text = (
            "internal error"
            if status >= 500
            else "malformed HTTP request: invalid characters in the request line or a header"
        )
        resp = errors.response(status, code, text)
        resp.force_close()
        return resp


class _Server(web.Server):
    header_timeout = 0.0

    def __call__(self) -> RequestHandler:
        protocol = _Protocol(self, loop=self._loop, **self._kwargs)
        protocol.header_timeout = self.header_timeout
        return protocol


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections answer malformed requests in the error format and
    hold a slow request head for at most `client_header_timeout`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # same state, our protocol factory
        server.header_timeout = self._app[GATEWAY].settings.client_header_timeout
        return server


async def serve(app: web.Application, host: str, port: int, grace: float, **runner_kwargs) -> None:
    """Run until SIGTERM/SIGINT, then stop accepting, drain in-flight requests, clean up."""
    runner_kwargs.setdefault("keepalive_timeout", 75.0)  # idle keep-alive connections
    runner = GatewayRunner(app, handler_cancellation=True, shutdown_timeout=grace, **runner_kwargs)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("stopping: draining in-flight requests (up to %gs)", grace)
    finally:
        await runner.cleanup()
