"""The plugin interface: how management endpoints (and third-party code) attach to the gateway.

A plugin is a module with `setup(gw: Gateway) -> None`. In it, the plugin:

- registers routes with `gw.route(...)`; each handler receives one `Call` and
  returns a `web.Response` (use `call.json(...)`), raising `ApiError` for errors;
- adds hooks with `gw.hooks.<name>.append(fn)` (declared in `hooks.py`);
- declares typed options with `gw.options(Option(...), ...)` and its own tables with
  `gw.migrations(...)`;
- may add startup/shutdown work with `gw.on_startup(coro_fn)` / `gw.on_shutdown(coro_fn)`.

Plugins reach state only through `gw`: `gw.state` (in-memory accounts, keys, configs),
`gw.usage` (usage reports), `gw.store` (reads, and writes as units), `gw.ledger` (all
money), `gw.settings`. `xaiproxy.api` re-exports every name a plugin needs.
Built-in plugins live in `plugins/` (importable as `xaiproxy_plugins.<name>`); how other
names resolve is in `load` (and plugins/README.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import pkgutil
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import orjson
from aiohttp import web
from jsonschema import Draft202012Validator

from . import admission, billing, changes, credentials, ledger, limits, objects, responses
from .context import RequestContext
from .errors import ApiError, StartError
from .hooks import Hooks
from .ownerconf import OwnerConfig
from .settings import Settings, SettingsError, _cast
from .state import Account, State
from .store import Store, tables
from .store import ops as o
from .usage import Usage

log = logging.getLogger("xaiproxy.plugins")
BUILTIN_PACKAGE = "xaiproxy_plugins"
ENTRY_POINT_GROUP = "xaiproxy.plugins"
# Per-request storage shared by the data plane, plugins, the access log and metrics
# (aiohttp wants typed keys; a plain string key warns).
# The query schema of a route that takes no query parameters: any is refused (400).
NO_QUERY = {"type": "object", "additionalProperties": False}
REQUEST_CTX = web.RequestKey("ctx", RequestContext)  # set by relay.py on every /v1 request
REQUEST_CALLER = web.RequestKey("caller", Account)  # set for every authenticated management call
# Paths the core serves; a plugin route there would never be reached.
CORE_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/metrics"})
_PARAM = re.compile(r"\{[^}]*\}")


def context_of(request: web.BaseRequest) -> RequestContext | None:
    """The data plane's RequestContext of a request, if it has one."""
    return request.get(REQUEST_CTX)


@dataclass(slots=True)
class RouteSpec:
    """One management endpoint, as registered; /openapi.json is built from these."""

    method: str
    path: str
    handler: Callable[[Call], Awaitable[web.StreamResponse]]
    summary: str = ""
    body: dict | None = None  # JSON Schema of the request body
    query: dict | None = None  # JSON Schema of the query parameters (values coerced to it)
    response: dict | None = None  # JSON Schema of the success body
    owner_only: bool = False
    root_only: bool = False
    auth: bool = True
    tag: str = ""
    validator: Any = None
    query_validator: Any = None
    plugin: str = ""  # the plugin that registered it


@dataclass(frozen=True, slots=True)
class Option:
    """One typed plugin option: read from `[plugin.<section>]` or `XAI_<SECTION>_<NAME>`.

    `type` is str, int, float, bool or tuple (a list of strings: a TOML list, or space-
    or comma-separated in the environment). Values are checked once, at start.
    """

    name: str
    type: type
    default: Any
    help: str = ""


class Options:
    """A plugin's option values, by attribute: `opts.max_days`."""

    def __init__(self, section: str, values: dict[str, Any]) -> None:
        self._section = section
        self.__dict__.update(values)

    def __repr__(self) -> str:
        values = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return f"Options({self._section!r}, {values!r})"


class Call:
    """One management request: who calls, what they sent, and how to answer.

    `caller` (the authenticated Account, None on `auth=False` routes), `body` (the
    parsed JSON, validated against the route's `body` schema), `query` (a dict; values
    coerced to the types of the route's `query` schema, strings otherwise),
    `param(name)` (a `{name}` path segment), `request` (the aiohttp request), `gw`.
    """

    __slots__ = ("request", "gw", "caller", "body", "query")

    def __init__(self, request: web.Request, gw: Gateway, caller: Account | None, spec: RouteSpec):
        self.request = request
        self.gw = gw
        self.caller = caller
        self.body: Any = None
        self.query: dict[str, Any] = coerce_query(spec.query, request.query)

    def param(self, name: str) -> str:
        return self.request.match_info.get(name, "")

    json = staticmethod(responses.json)  # the one JSON answer (xaiproxy/responses.py)

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
        self.usage = Usage(store)  # usage reports (usage.py)
        self.prices = prices  # shipped price table (pricing.Prices)
        self.ledger = ledger.Ledger(state)  # all money movements of this gateway
        self.hooks = Hooks()
        self.changes = changes.Changes(self)  # the one way to change accounts and keys
        self.billing = billing.Billing(self)  # a request's hold and settlement (data plane)
        self.limiter = limits.create(settings.limiter)  # rate limits (limits.Limiter)
        self.routes: list[RouteSpec] = []
        self.startup: list[Callable[[], Awaitable[None]]] = []
        self.shutdown: list[Callable[[], Awaitable[None]]] = []
        self.plugins: list[str] = []
        self.plugin_options: dict[str, Options] = {}  # section -> values
        self.plugin_option_specs: dict[str, tuple[Option, ...]] = {}  # section -> declared
        self.plugin_migrations: dict[str, list] = {}  # name -> steps
        self.app: web.Application | None = None
        self.session = None  # aiohttp.ClientSession for calls off the data plane, set at start
        self.checked_session = None  # the same for keys under the SSRF rule (ssrf.py)
        self.upstream = None  # the data plane's pool (pool.Pool), set at start
        self.metrics = None  # metrics.Metrics when settings.metrics is on
        self.resolver = None  # DNS under the sessions and the pool (None: system); tests set one
        self.box = credentials.SecretBox(settings.secret_key)  # provider keys at rest
        self.draining = False
        self.streams_open = 0  # data-plane responses being relayed right now (relay.py)
        self.objects = objects.Objects(self)  # who made each stateful provider object
        self.hot = None  # hotstate.redis.RedisState when settings.redis is set (SPEC 12)
        self.shared = None  # hotstate.wiring.Shared: money and limits in Redis (with `hot`)
        self.sync = None  # sync.Sync: follows other instances' changes, with `hot`

    # -- registration ----------------------------------------------------
    def route(self, method: str, path: str, handler, **options) -> RouteSpec:
        """Register an endpoint; see plugins/README.md for the options."""
        spec = RouteSpec(method.upper(), path, handler, plugin=self.hooks.loading, **options)
        _check_route(self.routes, spec)
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

    def options(self, *declared: Option, section: str | None = None) -> Options:
        """Declare this plugin's options; returns their values (checked now, at start).

        `section` defaults to the plugin's name (its last dotted part, `-` as `_`): the
        file's `[plugin.<section>]` table and the `XAI_<SECTION>_<NAME>` variables.
        """
        section = section or _section(self.hooks.loading)
        if section in self.plugin_options:
            raise StartError(f"plugin options [plugin.{section}] are declared twice")
        values = {opt.name: _option_value(self.settings, section, opt) for opt in declared}
        self.plugin_options[section] = opts = Options(section, values)
        self.plugin_option_specs[section] = declared
        return opts

    def migrations(self, *steps, name: str | None = None) -> None:
        """Declare this plugin's tables as data: step N (an `ops.Table` or `ops.AddColumn`, or
        a list of them applied as one unit) runs once, at start, on a database whose `name`
        is at version N-1; a table is created only if absent. Append steps; never edit one
        that has shipped. `name` defaults to the plugin's section name."""
        name = name or _section(self.hooks.loading)
        if name in self.plugin_migrations:
            raise StartError(f"plugin migrations {name!r} are declared twice")
        declared = tables.Tables()
        for number, step in enumerate(steps, start=1):
            try:
                declared.declare(tables.step_items(step))
            except ValueError as exc:
                raise StartError(f"plugin migration {name!r}: step {number}: {exc}") from None
        self.plugin_migrations[name] = list(steps)

    # -- services for plugins ---------------------------------------------
    def authenticate(self, request: web.Request) -> Account:
        """The account whose key the request carries (401/403 otherwise)."""
        key = credentials.client_key(request)
        acc = self.state.by_key.get(credentials.hash_key(key)) if key else None
        if acc is None:
            raise ApiError(401, "invalid_api_key", "missing or invalid API key")
        if not acc.enabled():
            raise ApiError(403, "account_disabled", "this account or one above it is disabled")
        if acc.suspended:
            raise admission.suspended()
        return acc

    def config(self, owner_id: int) -> OwnerConfig:
        cfg = self.state.configs.get(owner_id)
        if cfg is None:
            cfg = OwnerConfig.build(owner_id, 0, {}, self.prices)
            self.state.configs[owner_id] = cfg
        return cfg

    def set_config(self, owner_id: int, values: dict) -> tuple[OwnerConfig, list]:
        """Replace an owner's config values in memory (a new version, applied at once);
        returns it and the store ops, for a unit run by `changes.commit`."""
        old = self.config(owner_id)
        cfg = OwnerConfig.build(owner_id, old.version + 1, values, self.prices)
        configs = self.state.configs
        configs[owner_id] = cfg

        def restore() -> None:  # unless a later change replaced it meanwhile
            if configs.get(owner_id) is cfg:
                configs[owner_id] = old

        self.state.remember(restore)
        texts = {k: orjson.dumps(v).decode() for k, v in values.items()}
        return cfg, [o.ConfigSet(owner_id, cfg.version, texts)]

    async def save_config(self, owner_id: int, values: dict, extra_ops: list = ()) -> OwnerConfig:
        """Replace an owner's config values, bump its version, persist, apply at once
        (all or nothing: if the unit is not stored, the old config stays)."""

        def work():
            cfg, ops = self.set_config(owner_id, values)
            return cfg, [*ops, *extra_ops]

        return await self.changes.commit(work)

    @staticmethod
    def oplog(
        operator: Account, action: str, target_id: int, details: str, status: str = "success"
    ) -> o.OpLog:
        """An operation-log row, to add to the unit of the change it records. Never put secrets in details."""
        return o.OpLog(time.time(), operator.id, target_id, action, details[:1000], status)


# -- loading -------------------------------------------------------------------
def names_to_load(settings) -> list[str]:
    """`plugins` then `extra_plugins`, each name once, in order."""
    out: list[str] = []
    for name in (*settings.plugins, *settings.extra_plugins):
        if name not in out:
            out.append(name)
    return out


def load(gw: Gateway, names: Sequence[str | Callable[[Gateway], None]]) -> None:
    """Import each named plugin and call its setup(gw); a problem stops the start (StartError)."""
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    for item in names:
        if callable(item):  # a setup function given directly (create_app's `setup`)
            name, setup = f"{item.__module__}.{item.__qualname__}", item
        else:
            name, module = item, resolve(item, found)
            setup = getattr(module, "setup", None)
            if not callable(setup):
                raise StartError(f"plugin {name!r} ({module.__name__}) has no setup(gw) function")
        gw.hooks.loading = name
        try:
            setup(gw)
        finally:
            gw.hooks.loading = "core"
        gw.plugins.append(name)
        log.debug("plugin %s loaded", name)
    _check_option_sections(gw)


def resolve(name: str, found: dict | None = None):
    """The module a plugin name means. The resolution order (plugins/README.md):

    1. a dotted name is that import path (`xaiproxy_plugins.news` is the built-in news);
    2. a bare name is a built-in (`xaiproxy_plugins.<name>`) or an entry point of the
       group `xaiproxy.plugins`; when it is both, the start stops: name one by path;
    3. otherwise a top-level module of that name.
    A built-in chosen while a top-level module of its name exists is logged as a warning.
    """
    if found is None:
        found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if "." in name:
        return _import(name, name)
    builtin = f"{BUILTIN_PACKAGE}.{name}"
    is_builtin = not name.startswith("_") and _spec(builtin) is not None
    ep = found.get(name)
    if is_builtin and ep is not None:
        raise StartError(
            f"plugin name {name!r} is ambiguous: the built-in {builtin} and the entry point"
            f" {name} = {ep.value}; name it by import path ({builtin} or {ep.module})"
        )
    if is_builtin:
        if name.isidentifier() and _spec(name) is not None:
            log.warning(
                "plugin %r is the built-in %s; the importable module %r of the same name"
                " is not loaded (declare it as an entry point to load it)",
                name,
                builtin,
                name,
            )
        return _import(name, builtin)
    if ep is not None:
        try:
            return ep.load()
        except ImportError as exc:
            raise StartError(f"plugin {name!r} (entry point {ep.value}): {exc}") from None
    if name.isidentifier() and _spec(name) is not None:
        return _import(name, name)
    raise StartError(
        f"unknown plugin {name!r}: not a built-in ({', '.join(builtins())}), an entry point"
        f" of {ENTRY_POINT_GROUP!r}, or an importable module"
    )


def builtins() -> list[str]:
    package = importlib.import_module(BUILTIN_PACKAGE)
    return [m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")]


def _spec(module: str):
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def _import(name: str, module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise StartError(f"unknown plugin {name!r}: no module named {module!r}") from None
        raise StartError(f"plugin {name!r} ({module}) cannot be imported: {exc}") from None


def _check_route(routes: list[RouteSpec], spec: RouteSpec) -> None:
    """Two plugins on one route, or a plugin on a core path, stop the start naming both."""
    path = spec.path
    if path in CORE_PATHS or path == "/v1" or path.startswith("/v1/"):
        raise StartError(
            f"plugin {spec.plugin!r} claims {spec.method} {path}, a path the core serves"
        )
    shape = _PARAM.sub("{}", path)
    for other in routes:
        same_method = "*" in (spec.method, other.method) or spec.method == other.method
        if same_method and _PARAM.sub("{}", other.path) == shape:
            raise StartError(
                f"route {spec.method} {path} is claimed by two plugins:"
                f" {other.plugin!r} and {spec.plugin!r}"
            )


# -- options -------------------------------------------------------------------
def _section(name: str) -> str:
    return name.rsplit(".", 1)[-1].replace("-", "_")


def _option_value(settings, section: str, opt: Option) -> Any:
    where = f"plugin option {section}.{opt.name}"
    env_name = f"XAI_{section}_{opt.name}".upper()
    if f"{section}_{opt.name}" in Settings.__dataclass_fields__:
        raise StartError(f"{where}: its variable {env_name} is a core setting; rename it")
    if opt.type not in (str, int, float, bool, tuple) or not isinstance(opt.default, opt.type):
        raise StartError(
            f"{where}: type must be str, int, float, bool or tuple, with a default of it"
        )
    raw = settings.plugin_env.get(env_name, settings.plugin_options.get(section, {}).get(opt.name))
    if raw is None:
        return opt.default
    try:
        return _cast(where, opt.default, raw)
    except SettingsError:
        kind = "a list" if opt.type is tuple else opt.type.__name__
        raise StartError(f"{where}: cannot use {str(raw)[:100]!r} as {kind}") from None


def _check_option_sections(gw: Gateway) -> None:
    """Every [plugin.<section>] key in the config file must be a declared option."""
    declared = gw.plugin_option_specs
    for section, values in gw.settings.plugin_options.items():
        names = {o.name for o in declared.get(section, ())}
        if section not in declared:
            raise StartError(f"config [plugin.{section}]: no loaded plugin declares these options")
        unknown = sorted(set(values) - names)
        if unknown:
            raise StartError(
                f"config [plugin.{section}]: unknown option {unknown[0]!r}"
                f" (known: {', '.join(sorted(names)) or 'none'})"
            )


# -- start ---------------------------------------------------------------------
async def start(gw: Gateway) -> None:
    """At start, state loaded: apply plugin migrations, run startup work, freeze hooks."""
    await migrate(gw)
    for fn in gw.startup:
        await fn()
    gw.hooks.freeze()


async def migrate(gw: Gateway) -> None:
    """Apply each plugin's new migration steps (the store keeps the versions)."""
    for name, steps in gw.plugin_migrations.items():
        try:
            done = await gw.store.migrate_plugin(name, steps)
        except Exception as exc:  # the backend's error, whatever its kind: one line
            raise StartError(f"plugin migration {name!r}: {exc}") from None
        for number in done:
            log.info("plugin %s schema migrated to version %d", name, number)


# -- query parameters ----------------------------------------------------------------
_INT = re.compile(r"[+-]?[0-9]{1,18}")
_BOOLS = {"true": True, "false": False, "1": True, "0": False}


def coerce_query(schema: dict | None, query) -> dict[str, Any]:
    """Query values as the schema's types (integer, number, boolean, arrays of them).

    A value that does not parse stays a string, so the schema check names it.
    """
    if not schema:
        return dict(query)
    props = schema.get("properties", {})
    out: dict[str, Any] = {}
    for name in query:
        if name in out:
            continue
        prop = props.get(name) or {}
        if prop.get("type") == "array":
            item = prop.get("items") or {}
            out[name] = [_coerce(v, item.get("type")) for v in query.getall(name)]
        else:
            out[name] = _coerce(query[name], prop.get("type"))
    return out


def _coerce(value: str, types) -> Any:
    for t in [types] if isinstance(types, str) else types or ():
        if t == "integer" and _INT.fullmatch(value):
            return int(value)
        if t == "number":
            try:
                number = float(value)
            except ValueError:
                continue
            if math.isfinite(number):
                return int(number) if _INT.fullmatch(value) else number
        if t == "boolean" and value.lower() in _BOOLS:
            return _BOOLS[value.lower()]
    return value


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
