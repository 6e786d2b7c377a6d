"""The plugin interface: how management endpoints (and third-party code) attach to the gateway.

A plugin is a module with `setup(gw: Gateway) -> None`. In it, the plugin:

- registers routes with `gw.route(...)`; each handler receives one `Call` and
  returns a `web.Response` (use `call.json(...)`), raising `ApiError` for errors;
- adds hooks with `gw.hooks.on_usage.append(fn)` / `gw.hooks.before_upstream.append(fn)`;
- may add startup/shutdown work with `gw.on_startup(coro_fn)` / `gw.on_shutdown(coro_fn)`.

Plugins reach state only through `gw`: `gw.state` (in-memory accounts, keys, configs),
`gw.store` (reads, and writes as units), `gw.ledger` (all money), `gw.settings`.
Built-in plugins live in `plugins/` (importable as `xaiproxy_plugins.<name>`);
others load by dotted import path or by the entry-point group `xaiproxy.plugins`.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import orjson
from aiohttp import web
from jsonschema import Draft202012Validator

from . import changes, credentials, ledger, limits
from .context import RequestContext
from .errors import ApiError
from .ownerconf import OwnerConfig
from .state import Account, State
from .store import Store
from .store import ops as o

log = logging.getLogger("xaiproxy.plugins")
BUILTIN_PACKAGE = "xaiproxy_plugins"
ENTRY_POINT_GROUP = "xaiproxy.plugins"
# Per-request storage shared by the data plane, plugins, the access log and metrics
# (aiohttp wants typed keys; a plain string key warns).
REQUEST_CTX = web.RequestKey("ctx", RequestContext)  # set by relay.py on every /v1 request
REQUEST_CALLER = web.RequestKey("caller", Account)  # set for every authenticated management call


def context_of(request: web.BaseRequest) -> RequestContext | None:
    """The data plane's RequestContext of a request, if it has one."""
    return request.get(REQUEST_CTX)


@dataclass(slots=True)
class Hooks:
    """Every hook the data plane offers. An empty list costs one truth test per request."""

    # async fn(ctx: RequestContext) -> None; fires after admission, before the first
    # upstream attempt. Raise ApiError to refuse the request (its reservation is released).
    before_upstream: list[Callable[[RequestContext], Awaitable[None]]] = field(default_factory=list)
    # fn(ctx: RequestContext) -> None; fires once per request after its usage is billed
    # and queued. Synchronous and must not block: schedule slow work as a task.
    on_usage: list[Callable[[RequestContext], None]] = field(default_factory=list)
    # fn(ctx: RequestContext) -> None; fires once at the end of EVERY data-plane request,
    # refused ones included (ctx.status, ctx.error set). Synchronous, must not block.
    on_request_end: list[Callable[[RequestContext], None]] = field(default_factory=list)


@dataclass(slots=True)
class RouteSpec:
    """One management endpoint, as registered; /openapi.json is built from these."""

    method: str
    path: str
    handler: Callable[[Call], Awaitable[web.StreamResponse]]
    summary: str = ""
    body: dict | None = None  # JSON Schema of the request body
    query: dict | None = None  # JSON Schema of the query parameters (all strings)
    response: dict | None = None  # JSON Schema of the success body
    owner_only: bool = False
    root_only: bool = False
    auth: bool = True
    tag: str = ""
    validator: Any = None
    query_validator: Any = None


class Call:
    """One management request: who calls, what they sent, and how to answer."""

    __slots__ = ("request", "gw", "caller", "body", "query", "spec")

    def __init__(self, request: web.Request, gw: Gateway, caller: Account | None, spec: RouteSpec):
        self.request = request
        self.gw = gw
        self.caller = caller
        self.spec = spec
        self.body: Any = None
        self.query: dict[str, str] = dict(request.query)

    def param(self, name: str) -> str:
        return self.request.match_info.get(name, "")

    @staticmethod
    def json(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
        return web.Response(
            status=status,
            body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
            content_type="application/json",
            headers=headers,
        )

    def require_api_balance(self) -> None:
        """Management changes need the caller's balance >= the owner's USER_API_BALANCE."""
        caller = self.caller
        if caller.is_root:
            return
        need = self.gw.config(caller.owner_acc.id).number("USER_API_BALANCE")
        have = ledger.balance(caller)
        if have < need:
            raise ApiError(
                403,
                "insufficient_balance",
                f"management changes need a balance of at least {need:g}; yours is {have:.4f}",
            )


class Gateway:
    """What plugins stand on. One per app; reachable as `request.app[GATEWAY]`."""

    def __init__(self, settings, state: State, store: Store, prices) -> None:
        self.settings = settings
        self.state = state
        self.store = store
        self.prices = prices  # shipped price table (pricing.Prices)
        self.ledger = ledger.Ledger(state)  # all money movements of this gateway
        self.hooks = Hooks()
        self.changes = changes.Changes(self)  # the one way to change accounts and keys
        self.limiter = limits.MemoryLimiter()  # rate limits; a shared one replaces it (SPEC 12)
        self.routes: list[RouteSpec] = []
        self.startup: list[Callable[[], Awaitable[None]]] = []
        self.shutdown: list[Callable[[], Awaitable[None]]] = []
        self.plugins: list[str] = []
        self.app: web.Application | None = None
        self.session = None  # aiohttp.ClientSession for calls off the data plane, set at start
        self.checked_session = None  # the same for keys under the SSRF rule (ssrf.py)
        self.upstream = None  # the data plane's pool (pool.Pool), set at start
        self.resolver = None  # DNS under the sessions and the pool (None: system); tests set one
        self.box = credentials.SecretBox(settings.secret_key)  # provider keys at rest
        self.draining = False
        self.streams_open = 0  # data-plane responses being relayed right now (relay.py)

    # -- registration ----------------------------------------------------
    def route(self, method: str, path: str, handler, **options) -> RouteSpec:
        spec = RouteSpec(method.upper(), path, handler, **options)
        if spec.body is not None:
            spec.validator = Draft202012Validator(spec.body)
        if spec.query is not None:
            spec.query_validator = Draft202012Validator(spec.query)
        self.routes.append(spec)
        return spec

    def on_startup(self, fn: Callable[[], Awaitable[None]]) -> None:
        self.startup.append(fn)

    def on_shutdown(self, fn: Callable[[], Awaitable[None]]) -> None:
        self.shutdown.append(fn)

    # -- services for plugins ---------------------------------------------
    def authenticate(self, request: web.Request) -> Account:
        """The account whose key the request carries (401/403 otherwise)."""
        key = _client_key(request)
        acc = self.state.by_key.get(credentials.hash_key(key)) if key else None
        if acc is None:
            raise ApiError(401, "invalid_api_key", "missing or invalid API key")
        if not acc.enabled():
            raise ApiError(403, "account_disabled", "this account or one above it is disabled")
        return acc

    def config(self, owner_id: int) -> OwnerConfig:
        cfg = self.state.configs.get(owner_id)
        if cfg is None:
            cfg = OwnerConfig.build(owner_id, 0, {}, self.prices)
            self.state.configs[owner_id] = cfg
        return cfg

    async def save_config(self, owner_id: int, values: dict, extra_ops: list = ()) -> OwnerConfig:
        """Replace an owner's config values, bump its version, persist, apply at once."""
        version = self.config(owner_id).version + 1
        cfg = OwnerConfig.build(owner_id, version, values, self.prices)
        texts = {k: orjson.dumps(v).decode() for k, v in values.items()}
        self.state.configs[owner_id] = cfg
        await self.store.write([o.ConfigSet(owner_id, version, texts), *extra_ops])
        return cfg

    @staticmethod
    def oplog(
        operator: Account, action: str, target_id: int, details: str, status: str = "success"
    ) -> o.OpLog:
        """An operation-log row, to add to the unit of the change it records. Never put secrets in details."""
        return o.OpLog(time.time(), operator.id, target_id, action, details[:1000], status)


def _client_key(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key", "").strip()


def load(gw: Gateway, names: tuple[str, ...] | list[str]) -> None:
    """Import each named plugin and call its setup(gw)."""
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    for name in names:
        if name in found:
            module = found[name].load()
        elif "." in name:
            module = importlib.import_module(name)
        else:
            module = importlib.import_module(f"{BUILTIN_PACKAGE}.{name}")
        setup = getattr(module, "setup", None)
        if setup is None:
            raise RuntimeError(f"plugin {name!r} has no setup(gw) function")
        setup(gw)
        gw.plugins.append(name)
        log.debug("plugin %s loaded", name)


# -- mounting registered routes on the app -------------------------------------
_MESSAGES = {
    "type": lambda e: f"must be of type {e.validator_value}",
    "minLength": lambda e: f"must be at least {e.validator_value} characters",
    "maxLength": lambda e: f"must be at most {e.validator_value} characters",
    "pattern": lambda e: "has an invalid format",
    "minimum": lambda e: f"must be >= {e.validator_value}",
    "maximum": lambda e: f"must be <= {e.validator_value}",
    "exclusiveMinimum": lambda e: f"must be > {e.validator_value}",
    "enum": lambda e: f"must be one of {e.validator_value}",
    "minItems": lambda e: f"must have at least {e.validator_value} items",
    "maxItems": lambda e: f"must have at most {e.validator_value} items",
}


def schema_error(validator, data: Any, where: str) -> ApiError | None:
    """The first schema violation as a 400 that never echoes the value (it may be a secret)."""
    err = next(iter(validator.iter_errors(data)), None)
    if err is None:
        return None
    path = ".".join(str(p) for p in err.absolute_path) or where
    render = _MESSAGES.get(err.validator)
    text = f"{path}: {render(err)}" if render else f"{path}: {err.message[:200]}"
    return ApiError(400, "invalid_request", text)


def _wrap(gw: Gateway, spec: RouteSpec):
    async def handler(request: web.Request) -> web.StreamResponse:
        caller = gw.authenticate(request) if spec.auth else None
        if caller is not None:
            request[REQUEST_CALLER] = caller  # for the access log and metrics
        if spec.root_only and not caller.is_root:
            raise ApiError(403, "permission_denied", "only root may call this endpoint")
        if spec.owner_only and caller.owner_acc is not caller:
            raise ApiError(403, "permission_denied", "only an owner account may call this endpoint")
        call = Call(request, gw, caller, spec)
        if spec.query_validator is not None:
            err = schema_error(spec.query_validator, call.query, "query")
            if err:
                raise err
        if spec.validator is not None:
            call.body = await _read_json(request)
            err = schema_error(spec.validator, call.body, "body")
            if err:
                raise err
        return await spec.handler(call)

    handler.__name__ = getattr(spec.handler, "__name__", "handler")
    return handler


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None


def mount(app: web.Application, gw: Gateway) -> None:
    for spec in gw.routes:
        app.router.add_route(spec.method, spec.path, _wrap(gw, spec))
