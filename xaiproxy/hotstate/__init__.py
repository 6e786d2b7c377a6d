"""The shared hot state of many instances (SPEC 12): balances and reservations, rate-limit
counters, key sleeps, idempotency locks and change events, in Redis (`redis.py`).

One process on SQLite keeps all of this in memory (ledger.py, limits.py) and needs none
of it. Every failure to reach the shared state is one exception, `StateUnavailable`,
which the data plane answers with 503 `state_unavailable` and Retry-After: it fails
closed rather than admit a request it cannot account for.
"""

from __future__ import annotations

from ..errors import ApiError


class StateUnavailable(Exception):
    """Redis is unreachable, or empty and not rebuilt yet: refuse, retry shortly."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def api_error(self) -> ApiError:
        return ApiError(
            503,
            "state_unavailable",
            "the gateway's shared state is unavailable; retry shortly",
            {"Retry-After": str(self.retry_after)},
        )
