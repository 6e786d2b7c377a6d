"""Serving: the runner, SIGTERM/SIGINT draining, and JSON answers to malformed HTTP.

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

log = logging.getLogger("xaiproxy.server")


class _Protocol(RequestHandler):
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
    def __call__(self) -> RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections answer malformed requests in the error format."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # same state, our protocol factory
        return server


async def serve(app: web.Application, host: str, port: int, grace: float, **runner_kwargs) -> None:
    """Run until SIGTERM/SIGINT, then stop accepting, drain in-flight requests, clean up."""
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
