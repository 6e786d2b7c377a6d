"""Every name a plugin needs, from one place: `from xaiproxy.api import ApiError, Gateway, ...`.

The names here are the plugin interface (SPEC 8, plugins/README.md); what they point at
may move inside xaiproxy, these imports stay.

- `Gateway`, `Call`, `RouteSpec`, `Option`, `Options`: registering and answering.
- `Hooks` and the hook declarations `BeforeUpstream`, `OnUsage`, `OnRequestEnd`.
- `RequestContext`: what hooks receive. `Account`, `ProviderKey`, `State`: the
  in-memory views (`gw.state`); read them, change them only through core operations.
- `Usage`, `UsageRow`, `usage` (scopes, dates): reading usage (`gw.usage`).
- `responses`: `responses.json(data, status, headers)`, the JSON answer `call.json` gives.
- `months`: the calendar month (UTC), `months.current()` and `months.start(now)`.
- `ApiError`, `Code`: errors answered as `{"error": {"message", "type", "code"}}`;
  `StartError`: a problem that stops the start with one line.
- `Table`, `Column`, `AddColumn`: a plugin's own tables, declared as data (`gw.migrations`).
- `StateUnavailable`: what `gw.hot` (the shared state in Redis, SPEC 12) raises when
  Redis cannot answer.
"""

from . import months, responses, usage
from .context import RequestContext
from .errors import ApiError, Code, StartError
from .hooks import BeforeUpstream, Hooks, HooksFrozen, OnRequestEnd, OnUsage
from .hotstate import StateUnavailable
from .plugins import NO_QUERY, Call, Gateway, Option, Options, RouteSpec, context_of
from .state import Account, ProviderKey, State
from .store.ops import AddColumn, Column, Table
from .usage import Usage, UsageRow

__all__ = [
    "Account",
    "AddColumn",
    "Column",
    "Table",
    "ApiError",
    "BeforeUpstream",
    "Call",
    "Code",
    "Gateway",
    "NO_QUERY",
    "Hooks",
    "HooksFrozen",
    "OnRequestEnd",
    "OnUsage",
    "Option",
    "Options",
    "ProviderKey",
    "RequestContext",
    "RouteSpec",
    "StartError",
    "StateUnavailable",
    "State",
    "Usage",
    "UsageRow",
    "context_of",
    "months",
    "responses",
    "usage",
]
