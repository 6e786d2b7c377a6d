"""Rate limits: RPM/RPH/RPD and TPM/TPH/TPD per account, then per model.

Each limit is an aiolimiter leaky bucket (`Bucket`): full capacity as a burst, draining
at limit / period. The data plane never waits for capacity: it asks `fits()` and
refuses with 429 and the time until it would fit. Request buckets take 1 when a
request is admitted; token buckets are charged the tokens actually billed after the
answer, and refuse new requests while they are over their limit.

Buckets live in memory per account (`acc.limiter`), built lazily and rebuilt when the
account's limit values change. Per-model limits come from the account's ModelLimits,
else the owner's MODEL_LIMITS (glob keys allowed), and are kept per account and model.
"""

from __future__ import annotations

import fnmatch
import math

from aiolimiter import AsyncLimiter

from .errors import ApiError

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
    """acc.limiter: the account's own buckets plus one `Limits` per model that has limits."""

    __slots__ = ("own", "models")

    def __init__(self, values: tuple[int, ...]) -> None:
        self.own = Limits(values) if any(values) else None
        self.models: dict[str, Limits] = {}


def _values(obj) -> tuple[int, ...]:
    return tuple(int(getattr(obj, f)) for f in FIELDS)


def _model_values(limits: dict, model: str) -> tuple[int, ...] | None:
    entry = limits.get(model)
    if entry is None:
        entry = next((v for k, v in limits.items() if fnmatch.fnmatchcase(model, k)), None)
    if not entry:
        return None
    return tuple(int(entry.get(f, 0)) for f in FIELDS)


def scopes(acc, owner_limits: dict, model: str) -> list[Limits]:
    """The Limits that apply to this request: the account's, then its model's."""
    values = _values(acc)
    al = acc.limiter
    if al is None or (al.own.values if al.own else (0,) * 6) != values:
        al = acc.limiter = AccountLimits(values)
    out = [al.own] if al.own else []
    if not model or not (acc.model_limits or owner_limits):
        return out
    mv = _model_values(acc.model_limits, model) if acc.model_limits else None
    if mv is None and owner_limits:
        mv = _model_values(owner_limits, model)
    if mv is None or not any(mv):
        return out
    ml = al.models.get(model)
    if ml is None or ml.values != mv:
        ml = al.models[model] = Limits(mv)
    out.append(ml)
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
