"""create_app(settings): wires the gateway together. No logic of its own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import aiohttp
from aiohttp import web

from . import (
    accesslog,
    boot,
    console,
    errors,
    metrics,
    openapi,
    plugins,
    pricing,
    relay,
    responses,
    ssrf,
)
from . import store as stores
from .errors import ApiError
from .plugins import Gateway
from .pool import Pool
from .state import State

log = logging.getLogger("xaiproxy")
GATEWAY = web.AppKey("gateway", Gateway)
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Every failure leaves in the one error format; nothing escapes as a bare 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return errors.from_exc(exc, anthropic=request.path.startswith("/v1/messages"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            message = (
                "request body too large; the limit is %d bytes"
                % request.app[GATEWAY].settings.max_body_bytes
            )
        elif exc.status == 404:
            message = f"no endpoint at {request.path[:100]}"
        else:
            message = exc.reason or "request refused"
        code = _HTTP_CODES.get(exc.status, "invalid_request")
        return errors.response(
            exc.status, code, message, anthropic=request.path.startswith("/v1/messages")
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path[:200])
        return errors.response(500, "internal_error", "internal error; the request was not applied")


async def _healthz(request: web.Request) -> web.Response:
    return responses.json({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    if request.app[GATEWAY].draining:
        return errors.response(503, "draining", "the gateway is shutting down")
    return responses.json({"status": "ready"})


# One cleanup context per resource: aiohttp cleans up only those whose startup finished,
# so a failure at start unwinds exactly what was opened before it.
def _store_ctx(gw: Gateway):
    async def ctx(app: web.Application):
        await gw.store.open()
        try:
            gw.new_root_key = await boot.load(gw)
            yield
        finally:
            await gw.store.close()

    return ctx


def _hot_ctx(gw: Gateway):
    """The shared hot state in Redis, before the store loads (it may be rebuilt from it)."""

    async def ctx(app: web.Application):
        if gw.settings.redis:
            from .hotstate.redis import RedisState  # only instances that use Redis import it

            gw.hot = RedisState(gw.settings.redis)
        try:
            yield
        finally:
            if gw.hot is not None:
                await gw.hot.close()

    return ctx


def _shared_ctx(gw: Gateway):
    """Money and rate limits in Redis, once the store is loaded (Redis is rebuilt from it);
    stopped before the store closes, so the last settles reach it."""

    async def ctx(app: web.Application):
        if gw.hot is None:
            yield
            return
        from .hotstate.wiring import Shared

        gw.shared = Shared(gw)
        await gw.shared.start()
        try:
            yield
        finally:
            await gw.shared.stop()

    return ctx


def _upstream_ctx(gw: Gateway):
    async def ctx(app: web.Application):
        gw.session = _upstream_session(gw.settings, gw.resolver)
        # Its own pool too: a connection made for an unrestricted key is never reused here.
        gw.checked_session = _upstream_session(gw.settings, ssrf.CheckedResolver(gw.resolver))
        gw.upstream = Pool(gw.settings, resolver=gw.resolver)  # the data plane's own client
        try:
            yield
        finally:
            await gw.upstream.close()
            await gw.session.close()
            await gw.checked_session.close()

    return ctx


def _plugins_ctx(gw: Gateway):
    async def ctx(app: web.Application):
        try:
            await plugins.start(gw)  # plugin migrations, startup work, then hooks are frozen
            yield
        finally:  # also after a failed start: a stop that finds nothing started does nothing
            for fn in gw.shutdown:
                try:
                    await fn()
                except Exception:
                    log.exception("plugin shutdown %s failed", getattr(fn, "__qualname__", fn))

    return ctx


def _upstream_session(settings, resolver) -> aiohttp.ClientSession:
    """A pooled keep-alive client; the connector resolves through `resolver` once per DNS TTL."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=0, ttl_dns_cache=300, enable_cleanup_closed=True, resolver=resolver
        ),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.upstream_connect_timeout),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),  # upstream cookies are never kept
    )


async def _drain(app: web.Application) -> None:
    app[GATEWAY].draining = True


def create_app(settings, setup: Sequence[Callable[[Gateway], None]] = ()) -> web.Application:
    """The app of one gateway. `setup`: extra setup(gw) functions loaded as plugins last
    (tests register their hooks and routes this way)."""
    store = stores.create(settings.db, settings.flush_interval)
    gw = Gateway(settings, State(), store, pricing.load(settings.prices))
    app = web.Application(middlewares=[error_middleware], client_max_size=settings.max_body_bytes)
    app[GATEWAY] = gw
    gw.app = app
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    relay.setup(app, gw)  # first: the router tries resources in order, /v1 is the hot one
    plugins.load(gw, [*plugins.names_to_load(settings), *setup])
    plugins.mount(app, gw)
    openapi.setup(app, gw)
    console.setup(app)
    metrics.setup(app, gw)
    accesslog.setup(app, gw)
    app.cleanup_ctx.extend(
        (_hot_ctx(gw), _store_ctx(gw), _shared_ctx(gw), _upstream_ctx(gw), _plugins_ctx(gw))
    )
    app.on_shutdown.append(_drain)
    return app
