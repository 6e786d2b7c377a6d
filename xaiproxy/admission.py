"""Admission: the checks of SPEC section 5, in order, each with its own error.

1 key -> account, 2 enabled, 3 client IP, 4 resources, 5 body, 6 MODEL_MAPPER,
7 AllowModels (and the routing level within AllowLevels), 8 reservation and HardLimit, 9 rate
limits. A refusal raises ApiError and changes nothing (a hold taken in step 8, by
`gw.billing`, is released by the caller's `gw.billing.release`, which runs on every path).
"""

from __future__ import annotations

import asyncio
import ipaddress

import orjson
from aiohttp import web

from . import credentials, forms, mappers, providers, whitelists
from .context import RequestContext
from .errors import ApiError
from .routing import Router
from .state import Account

MULTIPART_PROMPT_ESTIMATE = 1000  # tokens; a file upload's size says nothing about its tokens


class Admission:
    def __init__(self, gw) -> None:
        self.gw = gw
        self.settings = gw.settings
        # Parsed once: the hot path only tests membership.
        self.trusted = tuple(
            ipaddress.ip_network(p, strict=False) for p in gw.settings.trusted_proxies
        )

    def identify(self, ctx: RequestContext, key: str | None = None) -> None:
        """Checks 1-4: before the request holds a data-plane slot or its body is read.
        `key`: the client key when it came some other way than the headers (realtime)."""
        acc = ctx.account = self.authenticate(ctx.request, key)
        ctx.config = self.gw.config(acc.owner_acc.id)
        self.check_ip(ctx)
        self.check_resources(ctx)
        self.gw.objects.admit(ctx)

    async def admit(self, ctx: RequestContext) -> None:
        """Checks 5-9, after `identify`; on return ctx holds model, body and reservation."""
        acc = ctx.account
        await self.read_body(ctx)
        self.gw.objects.check_body(ctx)
        self.map_model(ctx)
        self.check_models(acc, ctx.model)
        self.route_level(ctx)
        await self.gw.billing.admit(ctx)  # 8 and 9 (one Redis round trip with `redis` set)

    # -- 1, 2 ---------------------------------------------------------------
    def authenticate(self, request: web.Request, key: str | None = None) -> Account:
        key = key or credentials.client_key(request)
        acc = self.gw.state.by_key.get(credentials.hash_key(key)) if key else None
        if acc is None:
            raise ApiError(
                401,
                "invalid_api_key",
                "missing or invalid API key; send it as 'Authorization: Bearer <key>' or 'x-api-key'",
            )
        if not acc.enabled():
            raise ApiError(
                403, "account_disabled", "this account or one above it is disabled; ask its parent"
            )
        if acc.suspended:
            raise suspended()
        return acc

    # -- 3 ------------------------------------------------------------------
    def client_ip(self, request: web.Request):
        """The caller's address; X-Forwarded-For counts only when a trusted proxy sent it."""
        ip = _ip(request.remote)
        if ip is None or not self.trusted or not any(ip in n for n in self.trusted):
            return ip
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")]
        for hop in reversed(hops):
            addr = _ip(hop)
            if addr is None:
                return None
            if not any(addr in n for n in self.trusted):
                return addr
        return ip

    def check_ip(self, ctx: RequestContext) -> None:
        chain = ctx.account.chain
        if all(a.ip_nets is None for a in chain):
            return
        ip = self.client_ip(ctx.request)
        ctx.client_ip = str(ip or "")
        if not all(whitelists.ip_allowed(a.ip_nets, ip) for a in chain):
            raise ApiError(
                403,
                "ip_not_allowed",
                f"requests from {ctx.client_ip or 'this address'} are not allowed for this key;"
                " add the address to AllowIPs",
            )

    # -- 4 ------------------------------------------------------------------
    def check_resources(self, ctx: RequestContext) -> None:
        path = ctx.path
        matchers = [a.resource_match for a in ctx.account.chain]
        matchers.append(ctx.config.resource_match)
        if not all(m is None or m(path) for m in matchers):
            raise ApiError(
                403,
                "resource_not_allowed",
                f"{path[:100]} is not in this account's allowed Resources",
            )

    # -- 5 ------------------------------------------------------------------
    async def read_body(self, ctx: RequestContext) -> None:
        request, cap = ctx.request, self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > cap:
            raise _too_large(cap)
        try:
            if request.content.is_eof():  # all of it came with the head: no deadline to arm
                body = await request.read()
            else:
                async with asyncio.timeout(self.settings.client_body_timeout):
                    body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _too_large(cap) from None
        except TimeoutError:
            raise ApiError(
                408,
                "request_timeout",
                f"the request body did not arrive within {self.settings.client_body_timeout:g}s;"
                " the connection is closed",
            ) from None
        ctx.body = body
        ctype = request.headers.get("Content-Type", "")
        if ctype[:19].lower() == "multipart/form-data":
            model = self._form_model(ctx, ctype)
        else:
            model = self._json_model(ctx)
        if not model:
            model = providers.DEFAULT_MODELS.get(ctx.path, "")
            if not model and ctx.path in providers.MODEL_REQUIRED:
                raise ApiError(
                    400, "missing_model", f"{ctx.path} needs a 'model'; name the model to use"
                )
        ctx.model = model

    def _json_model(self, ctx: RequestContext) -> str:
        body = ctx.body
        if not body.strip():
            return ""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ApiError(
                400, "invalid_json", "the request body is not valid JSON; send a JSON object"
            ) from None
        if not isinstance(payload, dict):
            raise ApiError(400, "invalid_request", "the request body must be a JSON object")
        ctx.payload = payload
        ctx.stream = payload.get("stream") is True
        ctx.prompt_estimate = max(len(body) // 4, 1)
        return _model_name(payload.get("model"))

    def _form_model(self, ctx: RequestContext, ctype: str) -> str:
        ctx.prompt_estimate = MULTIPART_PROMPT_ESTIMATE
        form = forms.read(ctx.body, forms.boundary(ctype))
        ctx.copies = form.copies or 1
        field = form.model
        if field is None:
            return ""
        ctx.payload = field  # (value, start, end) of the model in the original bytes
        try:
            return _model_name(field[0].decode())
        except UnicodeDecodeError:
            raise ApiError(400, "invalid_request", "model must be a text field") from None

    # -- 6 ------------------------------------------------------------------
    def map_model(self, ctx: RequestContext) -> None:
        """ModelMapper (nearest rule wins); and for OpenAI chat streams, ask for usage.
        Re-encode only on change."""
        model = ctx.model
        upstream = mappers.map_model(ctx.account, ctx.config, model) if model else ""
        ctx.upstream_model = upstream
        payload = ctx.payload
        if isinstance(payload, tuple):  # multipart: splice the new name into the bytes
            if upstream != ctx.model:
                _, start, end = payload
                ctx.body = ctx.body[:start] + upstream.encode() + ctx.body[end:]
            return
        if payload is None:
            return
        changed = upstream != ctx.model
        if changed:
            payload["model"] = upstream
        if ctx.stream and ctx.path in providers.INCLUDE_USAGE_PATHS:
            opts = payload.get("stream_options")
            if not (isinstance(opts, dict) and opts.get("include_usage") is True):
                payload["stream_options"] = {
                    **(opts if isinstance(opts, dict) else {}),
                    "include_usage": True,
                }
                ctx.strip_usage = changed = True
        if changed:
            ctx.body = orjson.dumps(payload)

    # -- 7 ------------------------------------------------------------------
    @staticmethod
    def check_models(acc: Account, model: str) -> None:
        if not model:
            return
        if not all(a.model_match is None or a.model_match(model) for a in acc.chain):
            raise ApiError(
                403,
                "model_not_allowed",
                f"model {model[:100]!r} is not allowed for this key; see GET /v1/models",
            )

    @staticmethod
    def route_level(ctx: RequestContext) -> None:
        """LevelMapper (nearest rule wins) gives the level; AllowLevels (own and ancestors')
        must leave one on its SWITCH_OVER chain."""
        cfg, acc, upstream = ctx.config, ctx.account, ctx.upstream_model
        ctx.level = level = mappers.level_of(acc, cfg, upstream) if upstream else 1
        if not Router.levels(cfg.switch_over, level, acc.level_allowed):
            raise ApiError(
                403,
                "level_not_allowed",
                f"model {ctx.model[:100]!r} routes to level {level}, which AllowLevels of this"
                " account or one above it excludes",
            )

    def failover(self, ctx: RequestContext) -> bool:
        """MODEL_FAILOVER, after every key failed before the first byte: serve the request
        with the failover model instead, once, if AllowModels and AllowLevels let it."""
        if ctx.failover or not isinstance(ctx.payload, dict):
            return False
        cfg, acc = ctx.config, ctx.account
        target = cfg.failover_of(ctx.upstream_model)
        if not target or target == ctx.upstream_model:
            return False
        if not all(a.model_match is None or a.model_match(target) for a in acc.chain):
            return False
        level = mappers.level_of(acc, cfg, target)
        if not Router.levels(cfg.switch_over, level, acc.level_allowed):
            return False
        ctx.failover, ctx.upstream_model, ctx.level = True, target, level
        ctx.payload["model"] = target
        ctx.body = orjson.dumps(ctx.payload)
        return True


def suspended() -> ApiError:
    return ApiError(403, "account_suspended", "this account is suspended; ask the account above it")


def _model_name(value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 256:
        raise ApiError(400, "invalid_request", "model must be a string of at most 256 characters")
    return value.strip()


def _ip(text: str | None):
    try:
        return ipaddress.ip_address(text) if text else None
    except ValueError:
        return None


def _too_large(cap: int) -> ApiError:
    return ApiError(413, "request_too_large", f"request body too large; the limit is {cap} bytes")
