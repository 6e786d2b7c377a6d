"""The data plane: one handler flow, admit -> route -> forward -> stream -> settle.

Everything here runs from memory (SPEC 9): the account, keys, config, limits and
balances are in `gw.state`; the one write per request (usage row and balance deltas)
is queued with `gw.store.submit` and committed by the batched writer.

Contracts for plugins and operations: `request[plugins.REQUEST_CTX]` holds the RequestContext from
the start; every response carries `x-request-id`; `gw.hooks.on_request_end` fires for
every request in a finally; `gw.streams_open` counts responses being relayed.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from . import (
    catalog,
    credentials,
    errors,
    ledger,
    paths,
    pricing,
    providers,
    realtime,
    sse,
    vendors,
)
from .admission import Admission, client_key, current_month, release
from .context import RequestContext
from .errors import ApiError
from .plugins import REQUEST_CTX
from .probes import Prober
from .routing import Refused, Router
from .store.ops import UsageRecord

RETRY_STATUSES = frozenset((401, 403, 429))  # and every 5xx
ERROR_BODY_CAP = 256 * 1024  # what we keep of a failed attempt's answer to pass on


class Relay:
    def __init__(self, gw) -> None:
        self.gw = gw
        self.settings = gw.settings
        self.hooks = gw.hooks
        self.router = Router(gw)
        self.prober = Prober(gw, self.router)
        self.forward_names, self.forward_prefixes = providers.forwarding(
            gw.settings.forward_headers
        )
        self.admission = Admission(gw)
        self.inflight = 0
        self.busy: dict[int, int] = {}  # account id -> its requests in flight (0s dropped)
        self._prefix = "req_" + secrets.token_hex(4)
        self._seq = itertools.count(1)

    # -- the handler -----------------------------------------------------------
    def new_context(self, request: web.Request) -> RequestContext:
        normal = paths.normalise(request.raw_path)
        path = normal[0] if normal else request.path
        protocol = providers.for_path(path)
        ctx = RequestContext(
            request,
            f"{self._prefix}{next(self._seq):x}",
            time.perf_counter(),
            path,
            anthropic=protocol.anthropic_errors,
            attempt_log=[],
            protocol=protocol,
        )
        request[REQUEST_CTX] = ctx
        if normal:
            ctx.target = normal[1]
        return ctx

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ctx = self.new_context(request)
        held = False
        try:
            if not ctx.target:
                raise paths.invalid_path()
            self.admission.identify(ctx)  # no slot, no body before the key is known
            self._hold(ctx.account.id)
            held = True
            await self.admission.admit(ctx)
            query = paths.upstream_query(request.raw_path.partition("?")[2], client_key(request))
            if query:
                ctx.target += "?" + query
            for hook in self.hooks.before_upstream:
                await hook(ctx)
            return await self.forward(ctx)
        except ApiError as exc:
            response = self._error(ctx, exc)
            if exc.status == 408:  # send it and close: the rest of a late body is not awaited
                await response.prepare(request)
                await response.write_eof()
                request.protocol.force_close()
            return response
        except asyncio.CancelledError:
            ctx.status, ctx.error = ctx.status or 499, ctx.error or "client_closed"
            raise
        finally:
            if held:
                self._unhold(ctx.account.id)
            release(ctx)
            if ctx.account is not None and ctx.account.deleted:
                self._settle_deleted(ctx.account)
            self._finish(ctx, None)

    def _settle_deleted(self, acc) -> None:
        """Deleted mid-request: the last request out settles the rest with the parent."""
        if ops := self.gw.ledger.settle_deleted(acc):
            self.gw.store.submit(ops)

    def _hold(self, account_id: int) -> None:
        """Take a data-plane slot and one of the account's (SPEC 5), or refuse fast."""
        if self.inflight >= self.settings.max_inflight:
            raise ApiError(
                503,
                "overloaded",
                "the gateway is at capacity; retry in a moment",
                {"Retry-After": "1"},
            )
        mine = self.busy.get(account_id, 0)
        if mine >= self.settings.account_max_inflight:
            raise ApiError(
                429,
                "too_many_concurrent_requests",
                f"this key already has {mine} requests in flight; wait for one to finish",
                {"Retry-After": "1"},
            )
        self.inflight += 1
        self.busy[account_id] = mine + 1

    def _unhold(self, account_id: int) -> None:
        self.inflight -= 1
        left = self.busy.pop(account_id) - 1
        if left:
            self.busy[account_id] = left

    def _finish(self, ctx: RequestContext, response):
        if self.hooks.on_request_end:
            for fn in self.hooks.on_request_end:
                fn(ctx)
        return response

    def _error(self, ctx: RequestContext, exc: ApiError) -> web.Response:
        ctx.status, ctx.error = exc.status, exc.code
        headers = {**(exc.headers or {}), "x-request-id": ctx.request_id}
        return errors.response(exc.status, exc.code, exc.message, headers, ctx.anthropic)

    # -- route and forward -------------------------------------------------------
    async def forward(self, ctx: RequestContext) -> web.StreamResponse:
        """Try candidate keys until one answers; before the first byte, failures move on."""
        cfg, owner_id = ctx.config, ctx.account.owner_acc.id
        ctx.level = cfg.level_of(ctx.upstream_model) if ctx.upstream_model else 1
        last = None
        for level, key in self.router.candidates(owner_id, cfg.switch_over, ctx.level):
            if ctx.attempts >= self.settings.max_attempts:
                break
            ctx.attempts += 1
            ctx.key, ctx.level = key, level
            resp, outcome = await self._attempt(ctx, key)
            ctx.attempt_log.append((key.id, level, outcome))
            if resp is None:
                continue
            if resp.status in RETRY_STATUSES or resp.status >= 500:
                last = await self._failed(ctx, key, resp)
                if ctx.plan is not None and ctx.plan.answer is not None:
                    status, _ctype, body = last  # in the client's protocol's error shape
                    last = (status, "application/json", ctx.plan.answer.error(status, body))
                continue
            return await self.relay(ctx, resp)
        return self._all_failed(ctx, last, owner_id)

    async def _attempt(self, ctx: RequestContext, key):
        """One upstream request until its headers: (response, status) or (None, failure)."""
        request = ctx.request
        try:
            self.router.guard(key)
            url = self.router.url(key, ctx.target)
            plan = ctx.plan = vendors.plan(
                ctx, key, self.router.base(key), self.settings.default_max_tokens
            )
        except ValueError:  # a stored provider URL yarl cannot read: this key cannot serve
            return None, "bad_provider"
        try:
            async with asyncio.timeout(self.settings.upstream_headers_timeout):
                resp = await self.router.session(key).request(
                    request.method,
                    plan.url if plan else url,
                    data=plan.body if plan else ctx.body or None,
                    headers=self._headers(ctx, key),
                    allow_redirects=False,
                )
        except TimeoutError:
            return None, "timeout"
        except Refused:
            return None, "refused"
        except aiohttp.ClientConnectorError as exc:
            return None, "refused" if isinstance(exc.os_error, Refused) else "connect_error"
        except (aiohttp.ClientError, OSError):
            return None, "connect_error"
        return resp, resp.status

    def _headers(self, ctx: RequestContext, key) -> CIMultiDict:
        """Client headers from the allowlist (never one its Connection header names), then auth."""
        client = ctx.request.headers
        names, prefixes, never = self.forward_names, self.forward_prefixes, providers.NEVER_FORWARD
        hop = {t.strip().lower() for t in client.get("Connection", "").split(",")}
        headers = CIMultiDict(
            (k, v)
            for k, v in client.items()
            if ((low := k.lower()) in names or (low.startswith(prefixes) and low not in never))
            and low not in hop
        )
        protocol, plan = ctx.protocol, ctx.plan
        version = (
            ctx.request.headers.get(protocol.version_header) if protocol.version_header else None
        )
        headers.update(
            providers.auth_headers(
                plan.upstream if plan else protocol,
                key.secret,
                key.config,
                version,
                self.settings.anthropic_version,
                plan.auth if plan else "",
            )
        )
        headers["Accept-Encoding"] = "identity"  # the scanner must read usage
        return headers

    async def _failed(self, ctx: RequestContext, key, resp) -> tuple[int, str, bytes]:
        """Read (bounded) and close a failed answer; rest the key on 429, probe it on 401/403."""
        body = await self._error_body(key, resp)
        if resp.status == 429:
            self.router.sleep(
                key, _retry_after(resp) or self.settings.key_sleep_429, "rate_limited"
            )
        elif resp.status in (401, 403):
            self.prober.schedule(key, ctx.protocol)  # the key sleeps only if the probe fails
        return resp.status, resp.headers.get("Content-Type", "application/json"), body

    async def _error_body(self, key, resp) -> bytes:
        """An upstream error answer (bounded, then closed), scrubbed of the provider key."""
        body = b""
        try:
            async with asyncio.timeout(self.settings.upstream_idle_timeout):
                body = await resp.content.read(ERROR_BODY_CAP)
        except (TimeoutError, aiohttp.ClientError, OSError):
            pass
        finally:
            resp.close()
        return credentials.scrub(body, key.secret)

    def _all_failed(self, ctx: RequestContext, last, owner_id: int) -> web.Response:
        if last is not None:
            status, ctype, body = last
            ctx.status, ctx.error = status, "upstream_error"
            return web.Response(
                status=status,
                body=body,
                headers={"Content-Type": ctype, "x-request-id": ctx.request_id},
            )
        if ctx.attempts:
            raise ApiError(
                502,
                "upstream_unavailable",
                "no provider could be reached for this request; retry later",
            )
        wait = self.router.resting(owner_id, ctx.config.switch_over, ctx.level)
        if wait:
            raise ApiError(
                503,
                "no_provider_key",
                f"every provider key for level {ctx.level} is resting after errors; retry later",
                {"Retry-After": str(max(int(wait), 1))},
            )
        raise ApiError(
            503,
            "no_provider_key",
            f"no provider key serves level {ctx.level} (model {ctx.upstream_model[:100]!r});"
            " the owner must add one with POST /x-keys",
        )

    # -- stream --------------------------------------------------------------------
    async def relay(self, ctx: RequestContext, up: aiohttp.ClientResponse) -> web.StreamResponse:
        """Copy the upstream answer to the client as it arrives; bill it if it succeeded."""
        ctx.status = up.status
        if up.status >= 400:  # an error answer, passed on whole once the key is scrubbed out
            headers = self._response_headers(ctx, up, None)
            headers.popall("Content-Length", None)
            body = await self._error_body(ctx.key, up)
            if ctx.plan is not None and ctx.plan.answer is not None:
                body = ctx.plan.answer.error(up.status, body)  # in the client's protocol's shape
            return web.Response(status=up.status, body=body, headers=headers)
        if ctx.plan is not None and ctx.plan.answer is not None:
            scanner = self._translated(ctx, up, True)
        else:
            ctype = up.headers.get("Content-Type", "")
            scanner = sse.scanner_for(ctype, ctx.protocol.usage, ctx.strip_usage)
        out = web.StreamResponse(status=up.status, headers=self._response_headers(ctx, up, scanner))
        self.gw.streams_open += 1
        complete = False
        try:
            await out.prepare(ctx.request)
            complete = await self._pump(ctx, up, out, scanner)
        except asyncio.CancelledError:
            up.close()  # the client went away: stop the upstream at once
            ctx.error = ctx.error or "client_closed"
            raise
        finally:
            self.gw.streams_open -= 1
            self.settle(ctx, scanner, complete)
        return out

    @staticmethod
    def _translated(ctx: RequestContext, up, billable: bool):
        """The attempt went to a key of the other protocol: scan its bytes, translate them."""
        ctype = up.headers.get("Content-Type", "")
        usage = ctx.plan.upstream.usage
        inner = sse.scanner_for(ctype, usage, False) if billable else sse.NullScanner()
        return ctx.plan.answer.wrap(inner, ctype, up.status)

    def _response_headers(self, ctx: RequestContext, up, scanner) -> CIMultiDict:
        drop, prefixes = providers.DROP_RESPONSE, providers.DROP_RESPONSE_PREFIXES
        headers = CIMultiDict(
            (k, v)
            for k, v in up.headers.items()
            if (low := k.lower()) not in drop and not low.startswith(prefixes)
        )
        if ctx.strip_usage or ctx.plan is not None and ctx.plan.answer is not None:
            headers.popall("Content-Length", None)
        headers["x-request-id"] = ctx.request_id
        if ctx.limits:
            headers.update(self.gw.limiter.headers(ctx.limits))
        return headers

    async def _pump(self, ctx: RequestContext, up, out: web.StreamResponse, scanner) -> bool:
        """Relay chunks; True when the upstream ended cleanly. Ends a broken SSE with an error event."""
        idle = self.settings.upstream_idle_timeout
        slack = idle / 8  # re-arm at most this often: it fires after 7/8 to 1 x idle of silence
        clock = asyncio.get_running_loop().time
        feed = scanner.feed
        try:
            async with asyncio.timeout(idle) as timer:
                armed = clock()
                async for chunk in up.content.iter_any():
                    data = feed(chunk)
                    if data and not await _write(ctx, out, data):
                        up.close()
                        return False
                    now = clock()
                    if now - armed > slack:
                        timer.reschedule(now + idle)
                        armed = now
            tail = scanner.finish()
            return not tail or await _write(ctx, out, tail)
        except TimeoutError:
            up.close()
            await self._broken(ctx, out, scanner, 504, "upstream_timeout", "the upstream stalled")
        except (aiohttp.ClientError, OSError):
            up.close()
            await self._broken(
                ctx, out, scanner, 502, "upstream_broken", "the upstream connection broke"
            )
        return False

    async def _broken(self, ctx, out, scanner, status: int, code: str, what: str) -> None:
        """After the first byte there is no retry: end the stream with an error event."""
        ctx.error = code
        if isinstance(getattr(scanner, "inner", scanner), sse.StreamScanner):
            event = ctx.protocol.error_event(
                status, code, f"{what} mid-answer; the answer is incomplete"
            )
            await _write(ctx, out, event)
        elif ctx.request.transport is not None:
            ctx.request.transport.close()  # a cut JSON body must not look complete

    # -- settle ---------------------------------------------------------------------
    def settle(self, ctx: RequestContext, scanner, complete: bool) -> None:
        """Bill the answer once: release the hold, debit the real cost, queue the usage row."""
        if ctx.billed:
            return
        ctx.billed = True
        release(ctx)
        _tokens(ctx, scanner, complete)
        acc, price = ctx.account, ctx.config.prices(ctx.upstream_model or ctx.model)
        usd = pricing.cost_usd(
            price,
            ctx.prompt_tokens,
            ctx.completion_tokens,
            ctx.cached_tokens,
            ctx.cache_write_tokens,
        )
        ctx.cost_n = ledger.cost_n(usd * acc.factor)
        ctx.cost = ledger.from_n(ctx.cost_n, acc.rates)
        ledger.month_spend(acc, ctx.cost_n, current_month())
        self.gw.store.submit_usage(self._usage_row(ctx), self.gw.ledger.spend(acc, ctx.cost_n))
        if ctx.limits:
            self.gw.limiter.charge(ctx.limits, ctx.prompt_tokens + ctx.completion_tokens)
        for fn in self.hooks.on_usage:
            fn(ctx)

    @staticmethod
    def _usage_row(ctx: RequestContext) -> UsageRecord:
        acc = ctx.account
        return UsageRecord(
            time.time(),
            acc.id,
            acc.owner_acc.id,
            acc.dna,
            ctx.model,
            ctx.upstream_model,
            ctx.level,
            ctx.key.id if ctx.key else 0,
            ctx.path,
            ctx.prompt_tokens,
            ctx.completion_tokens,
            ctx.cached_tokens,
            ctx.cost,
            ctx.cost_n,
            ctx.status,
            (time.perf_counter() - ctx.started) * 1000.0,
            int(ctx.estimated),
            ctx.request_id,
        )

    # -- GET /v1/models ---------------------------------------------------------------
    async def models(self, request: web.Request) -> web.StreamResponse:
        ctx = self.new_context(request)
        try:
            acc = ctx.account = self.admission.account(request)
            ctx.config = self.gw.config(acc.owner_acc.id)
            self.admission.check_ip(ctx)
            self.admission.check_resources(ctx)
            data = catalog.entries(self.gw, ctx)
            ctx.status = 200
            return web.Response(
                body=orjson.dumps({"object": "list", "data": data}),
                content_type="application/json",
                headers={"x-request-id": ctx.request_id},
            )
        except ApiError as exc:
            return self._error(ctx, exc)
        finally:
            self._finish(ctx, None)


async def _write(ctx: RequestContext, out: web.StreamResponse, data: bytes) -> bool:
    """Write to the client; False when it has gone (then we stop and bill what it got)."""
    try:
        await out.write(data)
    except ConnectionResetError:
        ctx.error = "client_closed"
        return False
    if not ctx.ttfb:
        ctx.ttfb = time.perf_counter() - ctx.started
    return True


def _tokens(ctx: RequestContext, scanner, complete: bool) -> None:
    """Usage from the answer; estimates (marked) where it is missing or the answer was cut."""
    protocol = ctx.plan.upstream if ctx.plan is not None else ctx.protocol
    counts = providers.normalize_usage(protocol.usage, scanner.usage) if scanner.usage else None
    p, c, cached, write = counts or (0, 0, 0, 0)
    ctx.estimated = counts is None or not complete
    if ctx.estimated:
        p = p or ctx.prompt_estimate
        c = max(c, scanner.estimate_completion())
    ctx.prompt_tokens, ctx.completion_tokens = p, c
    ctx.cached_tokens, ctx.cache_write_tokens = cached, write


def _retry_after(resp) -> float:
    try:
        return min(max(float(resp.headers.get("Retry-After", "")), 0.0), 3600.0)
    except ValueError:
        return 0.0


def setup(app: web.Application, gw) -> None:
    relay = Relay(gw)
    gw.relay = relay
    app.router.add_get("/v1/models", relay.models)
    app.router.add_get("/v1/realtime", realtime.Realtime(gw, relay).handle)
    app.router.add_route("*", "/v1/{tail:.*}", relay.handle)
