"""The data plane: one handler flow, admit -> route -> forward -> stream -> settle.

Everything here runs from memory (SPEC 9): the account, keys, config, limits and
balances are in `gw.state`; the one write per request (usage row and balance deltas)
is queued with `gw.store.submit` and committed by the batched writer.

Contracts for plugins and operations: `request[plugins.REQUEST_CTX]` holds the RequestContext
from the start until the answer is sent and logged (server.py then drops it); every response
carries `x-request-id`; `gw.hooks.on_request_end` fires for every request in a finally;
`gw.streams_open` counts responses being relayed.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time

from aiohttp import web
from multidict import CIMultiDict

from . import (
    catalog,
    credentials,
    errors,
    paths,
    providers,
    realtime,
    responses,
    retry,
    sse,
    vendors,
)
from .admission import Admission
from .context import RequestContext
from .errors import ApiError
from .heads import Heads
from .plugins import REQUEST_CTX
from .probes import Prober
from .routing import Refused, Router
from .upstream import ClientGone, UpstreamError, UpstreamTimeout

ERROR_BODY_CAP = 256 * 1024  # what we keep of a failed attempt's answer to pass on
# Response headers are filtered on the parser's bytes, decoded only when kept.
DROP_RESPONSE = frozenset(n.encode() for n in providers.DROP_RESPONSE) | {b"content-length"}
DROP_RESPONSE_PREFIXES = tuple(p.encode() for p in providers.DROP_RESPONSE_PREFIXES)


class Relay:
    def __init__(self, gw) -> None:
        self.gw = gw
        self.settings = gw.settings
        self.hooks = gw.hooks
        self.router = Router(gw)
        self.prober = Prober(gw, self.router)
        self.retry = retry.Policy(self.router, self.prober, gw.settings)  # retry.py decides
        self.heads = Heads(gw.settings)
        self.admission = Admission(gw)
        self.billing = gw.billing
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
            query = paths.upstream_query(
                request.raw_path.partition("?")[2], credentials.client_key(request)
            )
            if query:
                ctx.target += "?" + query
            if self.hooks.before_upstream:
                await self.hooks.before_upstream.run(ctx)  # ApiError refuses; others skipped
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
            self.billing.release(ctx)
            if ctx.account is not None and ctx.account.deleted:
                self._settle_deleted(ctx.account)
            self._request_end(ctx)

    def _settle_deleted(self, acc) -> None:
        """Deleted mid-request: the last request out settles the rest with the parent."""
        self.billing.settle_deleted(acc)

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

    def _request_end(self, ctx: RequestContext) -> None:
        if self.hooks.on_request_end:
            self.hooks.on_request_end.fire(ctx)  # a raising hook is logged and skipped

    def _error(self, ctx: RequestContext, exc: ApiError) -> web.Response:
        ctx.status, ctx.error = exc.status, exc.code
        headers = {**(exc.headers or {}), "x-request-id": ctx.request_id}
        return errors.response(exc.status, exc.code, exc.message, headers, ctx.anthropic)

    # -- route and forward -------------------------------------------------------
    async def forward(self, ctx: RequestContext) -> web.StreamResponse:
        """Try candidate keys until one answers; when none did, once more with the
        MODEL_FAILOVER model, if one applies."""
        resp, last = await self._route(ctx, self.settings.max_attempts)
        if resp is None and self.admission.failover(ctx):
            resp, again = await self._route(ctx, ctx.attempts + self.settings.max_attempts)
            last = again or last
        if resp is None:
            return self._all_failed(ctx, last, ctx.account.owner_acc.id)
        if ctx.objects is not None and ctx.objects.mode == "list":
            return await ctx.objects.list_answer(resp, self._response_headers(ctx, resp))
        return await self.stream(ctx, resp)

    async def _route(self, ctx: RequestContext, budget: int):
        """(answer, None) from the first key that answers, else (None, the last error
        answer); before the first byte, failures move on."""
        cfg, owner_id = ctx.config, ctx.account.owner_acc.id
        last = None
        allowed = ctx.account.level_allowed
        for level, key in self.router.candidates(owner_id, cfg.switch_over, ctx.level, allowed):
            if ctx.attempts >= budget:
                break
            ctx.attempts += 1
            ctx.key, ctx.level = key, level
            resp, outcome = await self._attempt(ctx, key)
            ctx.attempt_log.append((key.id, level, outcome))
            if resp is None:
                continue
            if (action := retry.classify(resp.status)) != retry.PASS:
                last = await self._failed(ctx, key, resp, action)
                if ctx.plan is not None and ctx.plan.answer is not None:
                    status, _ctype, body = last  # in the client's protocol's error shape
                    last = (status, "application/json", ctx.plan.answer.error(status, body))
                continue
            return resp, None
        return None, last

    async def _attempt(self, ctx: RequestContext, key):
        """One upstream request until its headers: (answer, status) or (None, failure).

        The pool resolves the provider once and applies the SSRF rule to the address it
        connects to; a reused connection that dies before any answer byte is a connect error.
        """
        request = ctx.request
        try:
            self.router.guard(key)
            plan = ctx.plan = vendors.plan(
                ctx, key, self.router.base(key), self.settings.default_max_tokens
            )
        except ValueError:  # a stored provider URL yarl cannot read: this key cannot serve
            return None, "bad_provider"
        except Refused:
            return None, "refused"
        if plan is None:
            base, target, body = self.router.base(key), ctx.target, ctx.body
        else:  # the vendor's own URL (an Azure deployment and query, Gemini's prefix…)
            base, target, body = str(plan.url.origin()), plan.url.raw_path_qs, plan.body
        try:
            up = await self.gw.upstream.request(
                base,
                request.method,
                target,
                self._headers(ctx, key),
                body or b"",
                self.router.guarded(key),
            )
        except ValueError:  # a provider URL the pool cannot read (a port out of range…)
            return None, "bad_provider"
        except Refused:
            return None, "refused"
        except UpstreamTimeout:
            return None, "timeout"
        except UpstreamError:
            return None, "connect_error"
        return up, up.status

    def _headers(self, ctx: RequestContext, key) -> bytes:
        """The header lines sent upstream: filtered client headers, then the key's own."""
        return self.heads.block(ctx, key)

    async def _failed(self, ctx: RequestContext, key, resp, action: str) -> tuple[int, str, bytes]:
        """Read (bounded) and close a failed answer; the retry policy rests or probes the key."""
        status, ctype = resp.status, resp.header(b"content-type") or "application/json"
        retry_after = resp.header(b"retry-after")
        body = await self._error_body(key, resp)  # releases `resp`: its head is read above
        self.retry.apply(action, key, ctx.protocol, retry_after)
        return status, ctype, body

    async def _error_body(self, key, resp) -> bytes:
        """An upstream error answer (bounded, then released), scrubbed of the provider key.

        The connection's own idle timer bounds the wait; a broken answer gives what came.
        """
        try:
            body = await resp.read(ERROR_BODY_CAP)
        finally:
            resp.release()
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
        allowed = ctx.account.level_allowed
        wait = self.router.resting(owner_id, ctx.config.switch_over, ctx.level, allowed)
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
    async def stream(self, ctx: RequestContext, up) -> web.StreamResponse:
        """Copy the upstream answer to the client as it arrives; bill it if it succeeded."""
        ctx.status = up.status
        headers = self._response_headers(ctx, up)
        if (status := up.status) >= 400:  # an error answer, passed on whole once scrubbed
            body = await self._error_body(ctx.key, up)
            if ctx.plan is not None and ctx.plan.answer is not None:
                body = ctx.plan.answer.error(status, body)  # in the client's protocol's shape
            return web.Response(status=status, body=body, headers=headers)
        if ctx.plan is not None and ctx.plan.answer is not None:
            scanner = self._translated(ctx, up)
        else:
            ctype = up.header(b"content-type") or ""
            scanner = sse.scanner_for(ctype, ctx.protocol.usage, ctx.strip_usage)
        if ctx.objects is not None:
            scanner = ctx.objects.tee(scanner)  # to record the objects the answer names
        if up.complete and not isinstance(getattr(scanner, "inner", scanner), sse.StreamScanner):
            return self._whole(ctx, up, scanner, headers)
        out = _Streamed(status=up.status, headers=headers)
        self.gw.streams_open += 1
        complete = False
        try:
            await out.prepare(ctx.request)  # the headers wait for the first bytes
            complete = await self._pump(ctx, up, scanner, out)
        except asyncio.CancelledError:
            up.close()  # the client went away: stop the upstream at once
            ctx.error = ctx.error or "client_closed"
            raise
        finally:
            self.gw.streams_open -= 1
            self.billing.settle(ctx, scanner, complete)
        return out

    @staticmethod
    def _translated(ctx: RequestContext, up):
        """The attempt went to a key of the other protocol: scan its bytes, translate them."""
        ctype = up.header(b"content-type") or ""
        inner = sse.scanner_for(ctype, ctx.plan.upstream.usage, False)
        return ctx.plan.answer.wrap(inner, ctype, up.status)

    def _whole(self, ctx: RequestContext, up, scanner, headers) -> web.Response:
        """A plain answer that is already all here: one Response, one write."""
        raw, status, complete = up.body_so_far(), up.status, up.error is None
        up.release()
        body = scanner.feed(raw) + scanner.finish()  # as is, or translated
        ctx.ttfb = time.perf_counter() - ctx.started
        self.billing.settle(ctx, scanner, complete)
        return web.Response(status=status, body=body, headers=headers)

    def _response_headers(self, ctx: RequestContext, up) -> CIMultiDict:
        """The upstream's headers minus hop-by-hop, the provider's ids and limits and
        Content-Length (aiohttp frames the answer itself: scanned SSE, a translated or a
        scrubbed answer may change length)."""
        headers = CIMultiDict()
        add = headers.add
        for name, value in up.raw_headers:
            low = name.lower()
            if low not in DROP_RESPONSE and not low.startswith(DROP_RESPONSE_PREFIXES):
                add(name.decode("latin-1"), value.decode("latin-1"))
        headers["x-request-id"] = ctx.request_id
        if ctx.limits:
            headers.update(self.gw.limiter.headers(ctx.limits))
        return headers

    async def _pump(self, ctx: RequestContext, up, scanner, out) -> bool:
        """Relay the answer from the upstream connection's callbacks straight to the client's
        transport; True when it ended cleanly. Only a full client transport wakes this
        coroutine before the end: it pauses the upstream, waits for the drain, resumes.
        The last read's bytes go out with the end of the answer, in one write."""
        sink = _Sink(ctx)
        feed, write = scanner.feed, sink.write
        last: list[bytes] = []

        def on_data(piece: bytes) -> None:
            data = feed(piece)
            if not data:
                return
            if up.complete:  # this read ends the answer
                last.append(data)
            elif write(data):
                up.pause()

        try:
            up.stream(on_data)
            while not await up.wait():
                await ctx.request.writer.drain()
                up.resume()
            last.append(scanner.finish())
            await sink.end(out, b"".join(last))
            up.release()
            return True
        except (ClientGone, ConnectionResetError):
            up.close()
            ctx.error = "client_closed"
        except UpstreamTimeout:
            self._broken(ctx, sink, scanner, 504, "upstream_timeout", "the upstream stalled")
        except UpstreamError:
            self._broken(
                ctx, sink, scanner, 502, "upstream_broken", "the upstream connection broke"
            )
        finally:
            sink.done()
        return False

    def _broken(self, ctx, sink, scanner, status: int, code: str, what: str) -> None:
        """After the first byte there is no retry: end the stream with one error event.

        The scanner passes only whole events, so the event always starts on a fresh line.
        """
        ctx.error = code
        if isinstance(getattr(scanner, "inner", scanner), sse.StreamScanner):
            event = ctx.protocol.error_event(
                status, code, f"{what} mid-answer; the answer is incomplete"
            )
            try:
                sink.write(event)
            except ClientGone:
                ctx.error = "client_closed"
        elif ctx.request.transport is not None:
            ctx.request.transport.close()  # a cut JSON body must not look complete

    # -- GET /v1/models ---------------------------------------------------------------
    async def models(self, request: web.Request) -> web.StreamResponse:
        ctx = self.new_context(request)
        try:
            self.admission.identify(ctx)
            data = catalog.entries(self.gw, ctx)
            ctx.status = 200
            body = {"object": "list", "data": data}
            return responses.json(body, headers={"x-request-id": ctx.request_id})
        except ApiError as exc:
            return self._error(ctx, exc)
        finally:
            self._request_end(ctx)


class _Streamed(web.StreamResponse):
    """A streamed answer whose headers go out with its first bytes, in one write."""

    _send_headers_immediately = False  # aiohttp >= 3.12: StreamWriter.send_headers


class _Sink:
    """Writes answer bytes to the client's transport, in aiohttp's framing (chunked or not)."""

    __slots__ = ("ctx", "writer", "transport", "chunked", "high", "sent")

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.writer = ctx.request.writer
        self.transport = ctx.request.transport
        self.chunked = self.writer.chunked
        self.high = self.transport.get_write_buffer_limits()[1] if self.transport else 0
        self.sent = 0

    def write(self, data: bytes) -> bool:
        """Send; True when the client's transport is full (pause the upstream)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ClientGone()
        if not self.sent:
            self.ctx.ttfb = time.perf_counter() - self.ctx.started
            self.writer.send_headers()  # still buffered when these are the first bytes
        self.sent += len(data)
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)
        return transport.get_write_buffer_size() > self.high

    async def end(self, out: web.StreamResponse, data: bytes) -> None:
        """The last bytes and the end of the answer in one write (with the headers, when
        nothing went out yet: a whole answer that came in one read)."""
        if data and not self.sent:
            self.ctx.ttfb = time.perf_counter() - self.ctx.started
        await out.write_eof(data)

    def done(self) -> None:
        self.writer.output_size += self.sent  # for the access log's byte count


def setup(app: web.Application, gw) -> None:
    relay = Relay(gw)
    gw.relay = relay
    app.router.add_get("/v1/models", relay.models)
    app.router.add_get("/v1/realtime", realtime.Realtime(gw, relay).handle)
    app.router.add_route("*", "/v1/{tail:.*}", relay.handle)
