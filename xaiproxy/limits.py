"""Rate limits: RPM/RPH/RPD and TPM/TPH/TPD per account, then per model.

Each limit is an aiolimiter leaky bucket (`Bucket`): full capacity as a burst, draining
at limit / period. The data plane never waits for capacity: it asks `fits()` and
refuses with 429 and the time until it would fit. Request buckets take 1 when a
request is admitted; token buckets are charged the tokens actually billed after the
answer, and refuse new requests while they are over their limit.

Buckets live in memory per account (`acc.limiter`), built lazily and rebuilt when the
account's limit values change. A request counts against every account of its chain
(SPEC 3): each account's own RPM..TPD and its ModelLimits, shared by its subtree; the
owner's MODEL_LIMITS apply in addition, to each account below the owner (and to the
owner's own requests). Per-model buckets are keyed by the matched pattern, never by
the raw model name, so random model names cannot grow memory.
"""

from __future__ import annotations

import math

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
    """acc.limiter: the account's own buckets plus one `Limits` per matched model pattern."""

    __slots__ = ("values", "own", "models", "source", "table")

    def __init__(self, values: tuple[int, ...]) -> None:
        self.values = values
        self.own = Limits(values) if any(values) else None
        self.models: dict[tuple[str, str], Limits] = {}  # (source, pattern) -> buckets
        self.source: dict | None = None  # the account's ModelLimits that `table` compiles
        self.table = GlobTable(())

    def own_table(self, model_limits: dict) -> GlobTable:
        """The account's ModelLimits, compiled once per value (a change makes a new dict)."""
        if self.source is not model_limits:
            self.source = model_limits
            self.table = GlobTable(model_limits.items(), exact_first=True)
        return self.table


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


def _limiter(acc) -> AccountLimits:
    """acc's buckets; its own are rebuilt when its values change (per-model ones keep
    their level: editing an account never resets the owner's MODEL_LIMITS buckets)."""
    values = _values(acc)
    al = acc.limiter
    if al is None:
        al = acc.limiter = AccountLimits(values)
    elif al.values != values:
        al.values, al.own = values, Limits(values) if any(values) else None
    return al


def _model_scope(al: AccountLimits, source: str, table: GlobTable, model: str) -> Limits | None:
    found = match(table, model)
    if found is None:
        return None
    pattern, values = found
    ml = al.models.get((source, pattern))
    if ml is None or ml.values != values:
        ml = al.models[(source, pattern)] = Limits(values)
    return ml


def scopes(acc, owner_limits: GlobTable, model: str) -> list[Limits]:
    """Every Limits this request counts against, from root down to the account."""
    out: list[Limits] = []
    below_owner = False
    for a in acc.chain:
        al = _limiter(a)
        if al.own:
            out.append(al.own)
        tables = [("account", al.own_table(a.model_limits))] if a.model_limits else []
        if owner_limits and (below_owner or a is acc):
            tables.append(("owner", owner_limits))
        if model:
            out += [s for s in (_model_scope(al, *t, model) for t in tables) if s]
        below_owner = below_owner or a is acc.owner_acc
    return out


def admit(scoped: list[Limits]) -> None:
    """Take one request from every scope, or refuse with 429 and Retry-After (taking nothing)."""
    wait = max((s.blocked_for() for s in scoped), default=0.0)
    if wait > 0:
        headers = headers_for(scoped)
        headers["Retry-After"] = str(max(math.ceil(wait), 1))
        raise ApiError(
            429,
            "rate_limit_exceeded",
            f"rate limit reached; retry in {max(math.ceil(wait), 1)} s or ask for a higher limit",
            headers,
        )
    for s in scoped:
        s.take_request()


def charge(scoped: list[Limits], tokens: int) -> None:
    if tokens > 0:
        for s in scoped:
            s.charge(tokens)


def _duration(seconds: float) -> str:
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
        headers[f"x-ratelimit-reset-{kind}"] = _duration(bucket.empty_after())
    return headers


class MemoryLimiter:
    """`gw.limiter`: the in-process limiter, the one object the data plane asks.

    A shared limiter (Redis, SPEC 12) implements the same three calls over shared
    counters; `admit` is async so that one can do its round trip there.
    """

    async def admit(self, acc, owner_limits: dict, model: str) -> list[Limits]:
        """The scopes this request counts against, each having taken it; 429 otherwise."""
        scoped = scopes(acc, owner_limits, model)
        if scoped:
            admit(scoped)
        return scoped

    @staticmethod
    def charge(scoped: list[Limits], tokens: int) -> None:
        """Count the tokens a request was billed for (after its answer)."""
        charge(scoped, tokens)

    @staticmethod
    def headers(scoped: list[Limits]) -> dict[str, str]:
        return headers_for(scoped)
