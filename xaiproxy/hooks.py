"""The data plane's hooks: each declared once here, with when it fires and its return rule.

A plugin adds a hook in its `setup(gw)`: `gw.hooks.on_usage.append(fn)` (also usable as a
decorator). The lists are frozen when the gateway starts; adding later raises `HooksFrozen`.
The data plane calls them through `HookList.fire` / `HookList.run`, which log an exception
with the plugin's name and skip that hook: a failing hook never changes an answer, a
stream, billing, or the hooks after it. The only exception on purpose: `before_upstream`
may raise `ApiError` to refuse the request. An empty list costs one truth test.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from .errors import ApiError, StartError

if TYPE_CHECKING:
    from .context import RequestContext

log = logging.getLogger("xaiproxy.hooks")
LOG_EVERY = 10.0  # seconds between two log lines about one failing hook


class BeforeUpstream(Protocol):
    """`async fn(ctx) -> None`: after admission, before the first upstream attempt.

    Fires: once per admitted data-plane request (key, whitelists, limits and credit
    checked; `ctx.account`, `ctx.config`, `ctx.payload`, `ctx.model` are set).
    May: read the context; await short work. Must not change `ctx` or the body.
    Return rule: return None to let the request go on; raise `ApiError` to refuse it
    (the client gets that error, the reservation is released, nothing is billed).
    Any other exception is logged with the plugin's name and this hook is skipped.
    """

    async def __call__(self, ctx: RequestContext, /) -> None: ...


class OnUsage(Protocol):
    """`fn(ctx) -> None`: once per billed request, after its usage is queued.

    Fires: when an answer that succeeded is settled (streams at their end, cut ones
    too); `ctx.prompt_tokens`, `ctx.completion_tokens`, `ctx.cost` (account's units)
    and `ctx.cost_n` are final. The usage row is queued, not yet readable: see flush.
    May: read the context, count, schedule work with `asyncio.create_task`.
    Synchronous and must not block (it runs on the request's path).
    Return rule: the return value is ignored; an exception is logged with the plugin's
    name and skipped (billing and the answer are already done).
    """

    def __call__(self, ctx: RequestContext, /) -> None: ...


class OnRequestEnd(Protocol):
    """`fn(ctx) -> None`: once at the end of every data-plane request.

    Fires: for every request under /v1, refused and failed ones included
    (`ctx.status`, `ctx.error`, `ctx.attempt_log`, `ctx.ttfb` are set).
    May: read the context, count, schedule work. Synchronous, must not block.
    Return rule: the return value is ignored; an exception is logged with the plugin's
    name and skipped (the response is already decided).
    """

    def __call__(self, ctx: RequestContext, /) -> None: ...


# name -> its declaration. The one list of hooks: Hooks, the docs test and README follow it.
DECLARED: dict[str, type] = {
    "before_upstream": BeforeUpstream,
    "on_usage": OnUsage,
    "on_request_end": OnRequestEnd,
}
ASYNC_HOOKS = frozenset({"before_upstream"})

F = TypeVar("F", bound=Callable)


class HooksFrozen(RuntimeError):
    """A hook was added after the gateway started."""


class HookList(Generic[F]):
    """The functions of one hook, in the order plugins added them, each with its plugin."""

    __slots__ = ("name", "_fns", "_owners", "_hooks", "_failed", "_logged")

    def __init__(self, name: str, hooks: Hooks) -> None:
        self.name = name
        self._fns: tuple[F, ...] = ()
        self._owners: tuple[str, ...] = ()
        self._hooks = hooks
        self._failed: dict[int, int] = {}  # index -> failures not yet logged
        self._logged: dict[int, float] = {}  # index -> when last logged

    @property
    def doc(self) -> str:
        """When this hook fires, what it may do, its return rule."""
        return DECLARED[self.name].__doc__

    def append(self, fn: F) -> F:
        """Add fn (returned, so this works as a decorator). Only before the gateway starts."""
        if self._hooks.frozen:
            raise HooksFrozen(
                f"gw.hooks.{self.name} is frozen: the gateway has started;"
                " add hooks in your plugin's setup(gw)"
            )
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
        )
        if is_async != (self.name in ASYNC_HOOKS):
            want = "an async function" if self.name in ASYNC_HOOKS else "a plain (sync) function"
            raise StartError(f"gw.hooks.{self.name} takes {want}; {_name(fn)} is not one")
        self._fns += (fn,)
        self._owners += (self._hooks.loading,)
        return fn

    def __iter__(self) -> Iterator[F]:
        return iter(self._fns)

    def __len__(self) -> int:
        return len(self._fns)

    def __bool__(self) -> bool:
        return bool(self._fns)

    def owners(self) -> list[tuple[str, F]]:
        """(plugin name, function) for each hook, in call order."""
        return list(zip(self._owners, self._fns, strict=True))

    # -- calling (the data plane) -------------------------------------------
    def fire(self, ctx: RequestContext) -> None:
        """Call every sync hook; one that raises is logged and skipped."""
        for i, fn in enumerate(self._fns):
            try:
                fn(ctx)
            except Exception as exc:
                self._failure(i, exc)

    async def run(self, ctx: RequestContext) -> None:
        """Await every async hook; ApiError refuses the request, other errors are skipped."""
        for i, fn in enumerate(self._fns):
            try:
                await fn(ctx)
            except ApiError:
                raise
            except Exception as exc:
                self._failure(i, exc)

    def _failure(self, i: int, exc: Exception) -> None:
        """Log a failing hook with its plugin: a traceback the first time, then a count."""
        count = self._failed.get(i, 0) + 1
        last = self._logged.get(i)
        now = time.monotonic()
        if last is not None and now - last < LOG_EVERY:
            self._failed[i] = count
            return
        self._failed[i], self._logged[i] = 0, now
        where = f"hook {self.name} {_name(self._fns[i])} of plugin {self._owners[i]!r}"
        if last is None:
            log.error("%s raised; skipped", where, exc_info=exc)
        else:
            log.error("%s raised %d times (last: %s); skipped", where, count, type(exc).__name__)


class Hooks:
    """Every hook the data plane offers (see DECLARED), one HookList each."""

    __slots__ = ("before_upstream", "on_usage", "on_request_end", "frozen", "loading")

    def __init__(self) -> None:
        self.frozen = False
        self.loading = "core"  # the plugin whose setup(gw) is running: owner of new hooks
        self.before_upstream: HookList[BeforeUpstream] = HookList("before_upstream", self)
        self.on_usage: HookList[OnUsage] = HookList("on_usage", self)
        self.on_request_end: HookList[OnRequestEnd] = HookList("on_request_end", self)

    def freeze(self) -> None:
        self.frozen = True


def _name(fn) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return name.rsplit("<locals>.", 1)[-1]
