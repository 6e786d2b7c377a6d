"""Rate limits: RPM/RPH/RPD and TPM/TPH/TPD per account, then per model.

Each limit is an aiolimiter leaky bucket (`Bucket`): full capacity as a burst, draining
at limit / period. The data plane never waits for capacity: it asks `fits()` and
refuses with 429 and the time until it would fit. Request buckets take 1 when a
request is admitted; token buckets are charged the tokens actually billed after the
answer, and refuse new requests while they are over their limit.

`gw.limiter` is the one object the data plane asks (`Limiter`); the in-process one keeps
its buckets in its own table keyed by account id, built lazily and rebuilt when the
limit values change. A request counts against every account of its chain
(SPEC 3): each account's own RPM..TPD and its ModelLimits, shared by its subtree; the
owner's MODEL_LIMITS apply in addition, to each account below the owner (and to the
owner's own requests). Per-model buckets are keyed by the matched pattern, never by
the raw model name, so random model names cannot grow memory.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Protocol

from aiolimiter import AsyncLimiter

from .errors import ApiError
from .globs import GlobTable

PERIODS = (("m", 60.0), ("h", 3600.0), ("d", 86400.0))
FIELDS = ("rpm", "rph", "rpd", "tpm", "tph", "tpd")


class Bucket(AsyncLimiter):
    """AsyncLimiter with non-blocking checks; `_level` and `_leak()` are aiolimiter's own."""

    __slots__ = ()

    def fits(self, amount: float) -> bool:
        self._leak()
        return self._level + amount <= self.max_rate

    def take(self, amount: float) -> None:
        """Add to the level; token charges may push it past the limit (refusing until it drains)."""
        self._leak()
        self._level += amount

    def remaining(self) -> int:
        self._leak()
        return max(int(self.max_rate - self._level), 0)

    def reset_after(self, amount: float) -> float:
        """Seconds until `amount` more would fit (0 when it fits now)."""
        self._leak()
        over = self._level + amount - self.max_rate
        return max(over / self._rate_per_sec, 0.0)

    def full_for(self) -> float:
        """Seconds until the level drops below the limit (token buckets refuse until then)."""
        self._leak()
        if self._level < self.max_rate:
            return 0.0
        return (self._level - self.max_rate) / self._rate_per_sec + 1e-3

    def empty_after(self) -> float:
        """Seconds until the bucket is back to its initial state (OpenAI's reset headers)."""
        self._leak()
        return self._level / self._rate_per_sec


class Limits:
    """The request and token buckets of one scope (an account, or an account and a model)."""

    __slots__ = ("values", "requests", "tokens")

    def __init__(self, values: tuple[int, ...]) -> None:
        self.values = values
        self.requests = _buckets(values[:3])
        self.tokens = _buckets(values[3:])

    def blocked_for(self) -> float:
        """0 when a request may pass now; else seconds until it could."""
        wait = 0.0
        for b in self.requests:
            if not b.fits(1):
                wait = max(wait, b.reset_after(1))
        for b in self.tokens:
            wait = max(wait, b.full_for())
        return wait

    def take_request(self) -> None:
        for b in self.requests:
            b.take(1)

    def charge(self, tokens: int) -> None:
        for b in self.tokens:
            b.take(tokens)


def _buckets(per_period: tuple[int, ...]) -> list[Bucket]:
    return [Bucket(n, p) for n, (_, p) in zip(per_period, PERIODS, strict=True) if n > 0]


class AccountLimits:
    """One account's row of the limiter's table: its own buckets, and one `Limits` per
    matched model pattern."""

    __slots__ = ("own", "models")

    def __init__(self) -> None:
        self.own: Limits | None = None
        self.models: dict[tuple[str, str], Limits] = {}  # (source, pattern) -> buckets


class Scope(NamedTuple):
    """One set of limits a request counts against: whose, which, and how much."""

    account_id: int
    source: str  # "" = the account's own RPM..TPD; "account" / "owner" = a ModelLimits entry
    pattern: str  # the matched model pattern ("" for the account's own)
    values: tuple[int, ...]  # RPM, RPH, RPD, TPM, TPH, TPD; 0 = none

    @property
    def name(self) -> str:
        """A flat key for shared counters (the Redis limiter's scope name)."""
        return f"{self.account_id}:{self.source}:{self.pattern}"


def _values(obj) -> tuple[int, ...]:
    return tuple(int(getattr(obj, f)) for f in FIELDS)


def match(table: GlobTable, model: str) -> tuple[str, tuple[int, ...]] | None:
    """(pattern, limits) of the entry that governs `model`: exact name, else first glob."""
    hit = table.lookup(model)
    if hit is None:
        return None
    key, entry = hit
    values = tuple(int(entry.get(f, 0)) for f in FIELDS)
    return (key, values) if any(values) else None


_compiled: dict[int, tuple[dict, GlobTable]] = {}  # account id -> (its ModelLimits, compiled)


def _account_table(acc) -> GlobTable:
    """acc's ModelLimits, compiled once per value (a change makes a new dict)."""
    found = _compiled.get(acc.id)
    if found is None or found[0] is not acc.model_limits:
        found = _compiled[acc.id] = (
            acc.model_limits,
            GlobTable(acc.model_limits.items(), exact_first=True),
        )
    return found[1]


def scopes(acc, owner_limits: GlobTable, model: str) -> list[Scope]:
    """Every scope this request counts against, from root down to the account.

    Pure (no buckets): a shared limiter sends these, names and values, in its one
    round trip."""
    out: list[Scope] = []
    below_owner = False
    for a in acc.chain:
        own = _values(a)
        if any(own):
            out.append(Scope(a.id, "", "", own))
        tables = [("account", _account_table(a))] if a.model_limits else []
        if owner_limits and (below_owner or a is acc):
            tables.append(("owner", owner_limits))
        if model:
            for source, table in tables:
                found = match(table, model)
                if found is not None:
                    out.append(Scope(a.id, source, *found))
        below_owner = below_owner or a is acc.owner_acc
    return out


def admit(scoped: list[Limits]) -> None:
    """Take one request from every scope, or refuse with 429 and Retry-After (taking nothing)."""
    wait = max((s.blocked_for() for s in scoped), default=0.0)
    if wait > 0:
        raise refusal(wait, headers_for(scoped))
    for s in scoped:
        s.take_request()


def refusal(wait: float, headers: dict[str, str]) -> ApiError:
    """The 429 of a request that would fit in `wait` seconds (any limiter's)."""
    seconds = max(math.ceil(wait), 1)
    return ApiError(
        429,
        "rate_limit_exceeded",
        f"rate limit reached; retry in {seconds} s or ask for a higher limit",
        {**headers, "Retry-After": str(seconds)},
    )


def charge(scoped: list[Limits], tokens: int) -> None:
    if tokens > 0:
        for s in scoped:
            s.charge(tokens)


def duration(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 1h2m3s, 20ms."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    s = math.ceil(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{sec}s"


def _tightest(buckets: list[Bucket]) -> Bucket | None:
    return min(buckets, key=lambda b: b.remaining(), default=None)


def headers_for(scoped: list[Limits]) -> dict[str, str]:
    """x-ratelimit-* headers from the tightest request and token buckets that apply."""
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        bucket = _tightest([b for s in scoped for b in getattr(s, kind)])
        if bucket is None:
            continue
        headers[f"x-ratelimit-limit-{kind}"] = str(int(bucket.max_rate))
        headers[f"x-ratelimit-remaining-{kind}"] = str(bucket.remaining())
        headers[f"x-ratelimit-reset-{kind}"] = duration(bucket.empty_after())
    return headers


class Limiter(Protocol):
    """What the data plane asks of `gw.limiter` (chosen by the `limiter` setting).

    `admit` returns an opaque ticket for the request (what it was admitted under), or
    raises the 429 `ApiError`; `charge` and `headers` take that ticket. `admit` is async
    so a shared limiter (Redis, SPEC 12) can check and take every scope in one round
    trip: `scopes()` gives it their names and values without touching a bucket.
    """

    async def admit(self, acc, owner_limits: GlobTable, model: str) -> Any: ...

    def charge(self, ticket: Any, tokens: int) -> None: ...

    def headers(self, ticket: Any) -> dict[str, str]: ...

    def forget(self, account_id: int) -> None: ...


class MemoryLimiter:
    """`limiter = "memory"`: in-process buckets in a table keyed by account id.

    An account's own buckets are rebuilt when its limit values change; per-model ones
    when their entry's values change (editing an account never resets the owner's
    MODEL_LIMITS buckets).
    """

    def __init__(self) -> None:
        self.table: dict[int, AccountLimits] = {}

    async def admit(self, acc, owner_limits: GlobTable, model: str) -> list[Limits]:
        """The buckets this request counts against, each having taken it; 429 otherwise."""
        scoped = [self._buckets(s) for s in scopes(acc, owner_limits, model)]
        if scoped:
            admit(scoped)
        return scoped

    def _buckets(self, scope: Scope) -> Limits:
        row = self.table.get(scope.account_id)
        if row is None:
            row = self.table[scope.account_id] = AccountLimits()
        if not scope.source:
            if row.own is None or row.own.values != scope.values:
                row.own = Limits(scope.values)
            return row.own
        key = (scope.source, scope.pattern)
        found = row.models.get(key)
        if found is None or found.values != scope.values:
            found = row.models[key] = Limits(scope.values)
        return found

    @staticmethod
    def charge(scoped: list[Limits], tokens: int) -> None:
        """Count the tokens a request was billed for (after its answer)."""
        charge(scoped, tokens)

    @staticmethod
    def headers(scoped: list[Limits]) -> dict[str, str]:
        return headers_for(scoped)

    def forget(self, account_id: int) -> None:
        """An account is gone: drop its buckets."""
        self.table.pop(account_id, None)
        _compiled.pop(account_id, None)


class RedisLimiter:
    """`limiter = "redis"`: the limits are checked with the money in one Redis round trip;
    the app replaces this placeholder at start (hotstate/plane.py `SharedLimiter`)."""

    def __getattr__(self, name: str):
        raise RuntimeError("the redis limiter is set up when the app starts")


LIMITERS = {"memory": MemoryLimiter, "redis": RedisLimiter}


def create(name: str) -> Limiter:
    """The limiter the `limiter` setting names."""
    try:
        return LIMITERS[name or "memory"]()
    except KeyError:
        raise ValueError(
            f"limiter {name!r} is not supported (supported: {', '.join(LIMITERS)})"
        ) from None
