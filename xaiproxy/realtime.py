"""/v1/realtime: a WebSocket relayed to an OpenAI-style key (SPEC 13).

The client's key comes from `Authorization: Bearer`, `x-api-key`, or the subprotocol
browsers use (`openai-insecure-api-key.<key>`). Admission runs at connect, as for any
request (key, enabled, IP, resources, model, AllowModels, balance, rate limits), and
refusals are plain HTTP errors before the upgrade. The session then holds one
reservation: each `response.done` from the upstream is billed from its usage (one usage
row per response) and the hold is taken again; when the balance no longer covers it,
the client gets an `error` event and both sockets are closed cleanly. When the client
goes, the upstream socket is closed at once.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
from aiohttp import web

from . import errors, mappers, providers, retry
from .context import RequestContext
from .errors import ApiError
from .routing import Refused

SUBPROTOCOL_KEY = "openai-insecure-api-key."
SPEAKS = ("openai", "openai-compatible")  # key types with OpenAI's /v1/realtime
DONE = '"response.done"'
POOR = ApiError(
    403,
    "insufficient_balance",
    "the balance no longer covers another response; recharge the account",
)
REALTIME = providers.Protocol(
    name="openai",
    auth_header="Authorization",
    auth_prefix="Bearer ",
    version_header="",
    usage=providers.UsageFields(
        prompt=("input_tokens",),
        completion=("output_tokens",),
        cached=(("input_token_details", "cached_tokens"),),
        cache_write=(),
        prompt_excludes_cache=False,
        containers=("response",),
    ),
    anthropic_errors=False,
)


class Usage:
    """A scanner-shaped holder for one response's usage, for Billing.settle."""

    __slots__ = ("usage",)

    def __init__(self, usage: dict | None) -> None:
        self.usage = usage

    def estimate_completion(self) -> int:
        return 1


class Realtime:
    def __init__(self, gw, relay) -> None:
        self.gw = gw
        self.relay = relay
        self.admission = relay.admission
        self.billing = gw.billing

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ctx = self.relay.new_context(request)
        ctx.protocol = REALTIME
        try:
            await self.admit(ctx)
            upstream = await self.connect(ctx)
        except ApiError as exc:
            self.billing.release(ctx)
            self.relay._request_end(ctx)
            return self.relay._error(ctx, exc)
        try:
            return await self.session(ctx, upstream)
        finally:
            self.billing.release(ctx)
            if not upstream.closed:
                await upstream.close()
            self.relay._request_end(ctx)

    # -- connect ---------------------------------------------------------------------
    async def admit(self, ctx: RequestContext) -> None:
        request, adm = ctx.request, self.admission
        adm.identify(ctx, _subprotocol_key(request))
        acc = ctx.account
        model = request.query.get("model", "").strip()
        if not model or len(model) > 256:
            raise ApiError(400, "missing_model", "/v1/realtime needs ?model=<a realtime model>")
        ctx.model = model
        ctx.upstream_model = mappers.map_model(acc, ctx.config, model)
        adm.check_models(acc, model)
        adm.route_level(ctx)
        ctx.prompt_estimate = 1
        await self.billing.admit(ctx)

    async def connect(self, ctx: RequestContext) -> aiohttp.ClientWebSocketResponse:
        """The first OpenAI-style key on the model's level chain that accepts the socket."""
        router, settings = self.relay.router, self.gw.settings
        cfg = ctx.config
        owner = ctx.account.owner_acc.id
        allowed = ctx.account.level_allowed
        for level, key in router.candidates(owner, cfg.switch_over, ctx.level, allowed):
            if key.type not in SPEAKS or ctx.attempts >= settings.max_attempts:
                continue
            ctx.attempts += 1
            ctx.key, ctx.level = key, level
            try:
                router.guard(key)
                async with asyncio.timeout(settings.upstream_headers_timeout):
                    return await router.session(key).ws_connect(
                        router.url(key, "/v1/realtime").with_query(model=ctx.upstream_model),
                        headers=self._headers(ctx, key),
                        autoping=True,
                        max_msg_size=0,
                    )
            except (TimeoutError, Refused, ValueError, aiohttp.ClientError, OSError) as exc:
                ctx.attempt_log.append((key.id, level, getattr(exc, "status", "connect_error")))
                self._after_refusal(key, exc)
        raise ApiError(
            502 if ctx.attempts else 503,
            "upstream_unavailable" if ctx.attempts else "no_provider_key",
            "no OpenAI-style provider key accepted the realtime session; retry later",
        )

    def _after_refusal(self, key, exc: Exception) -> None:
        """A handshake the upstream answered: the retry policy rests or probes the key."""
        if isinstance(exc, aiohttp.WSServerHandshakeError):
            retry_after = (exc.headers or {}).get("Retry-After")
            action = retry.classify(exc.status)
            self.relay.retry.apply(action, key, providers.OPENAI, retry_after)

    def _headers(self, ctx: RequestContext, key) -> dict:
        headers = providers.auth_headers(providers.OPENAI, key.secret, key.config, None, "")
        beta = ctx.request.headers.get("OpenAI-Beta")
        if beta:
            headers["OpenAI-Beta"] = beta
        return headers

    # -- the session -------------------------------------------------------------------
    async def session(self, ctx: RequestContext, upstream) -> web.WebSocketResponse:
        client = web.WebSocketResponse(protocols=("realtime",), max_msg_size=0)
        await client.prepare(ctx.request)
        ctx.status = 101
        up_task = asyncio.create_task(self._from_upstream(ctx, upstream, client))
        try:
            await self._from_client(client, upstream)
        finally:
            up_task.cancel()
            await asyncio.gather(up_task, return_exceptions=True)
            await upstream.close()  # the client went (or was cut off): stop the upstream
            if not client.closed:
                await client.close()
        return client

    async def _from_client(self, client, upstream) -> None:
        async for msg in client:
            if upstream.closed:
                break
            if msg.type == aiohttp.WSMsgType.TEXT:
                await upstream.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await upstream.send_bytes(msg.data)

    async def _from_upstream(self, ctx: RequestContext, upstream, client) -> None:
        async for msg in upstream:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await client.send_str(msg.data)
                if DONE in msg.data and (why := await self._settle(ctx, msg.data)):
                    await self._cut_off(ctx, client, why)
                    return
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await client.send_bytes(msg.data)
        await client.close()  # the upstream ended the session

    async def _settle(self, ctx: RequestContext, data: str) -> ApiError | None:
        """Bill one response.done; why the session ends when no next response can be held."""
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(event, dict) or event.get("type") != "response.done":
            return None
        response = event.get("response") if isinstance(event.get("response"), dict) else {}
        usage = response.get("usage")
        one = RequestContext(
            ctx.request,
            ctx.request_id,
            time.perf_counter(),
            ctx.path,
            account=ctx.account,
            config=ctx.config,
            model=ctx.model,
            upstream_model=ctx.upstream_model,
            level=ctx.level,
            key=ctx.key,
            status=200,
            protocol=REALTIME,
            limits=ctx.limits,
            prompt_estimate=1,
            reserved_n=ctx.reserved_n,  # the session's hold is released by this bill
            held=ctx.held,
        )
        ctx.reserved_n = 0
        self.billing.settle(one, Usage(usage if isinstance(usage, dict) else None), True)
        try:
            if await self.billing.hold_again(ctx):
                return None
        except ApiError as exc:  # the shared state is unreachable: no hold, no next response
            return exc
        return POOR

    async def _cut_off(self, ctx: RequestContext, client, why: ApiError) -> None:
        """An error event, then a close: 1008 when the balance ran out, 1013 (try again
        later) when the shared state could not hold the next response."""
        ctx.error = why.code
        err = {
            "type": errors.TYPES.get(why.status, "api_error"),
            "code": why.code,
            "message": why.message,
        }
        await client.send_str(orjson.dumps({"type": "error", "error": err}).decode())
        if why is POOR:
            code, reason = aiohttp.WSCloseCode.POLICY_VIOLATION, b"insufficient balance"
        else:
            code, reason = aiohttp.WSCloseCode.TRY_AGAIN_LATER, why.code.encode()
        await client.close(code=code, message=reason)


def _subprotocol_key(request: web.Request) -> str | None:
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    for proto in offered.split(","):
        proto = proto.strip()
        if proto.startswith(SUBPROTOCOL_KEY):
            return proto[len(SUBPROTOCOL_KEY) :]
    return None
