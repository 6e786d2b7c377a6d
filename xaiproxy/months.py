"""Calendar months (UTC): the one helper for "this month" and when it began."""

from __future__ import annotations

import time
from datetime import UTC, datetime

_current = ["", 0.0]  # "YYYY-MM" and the time it stops being current


def current() -> str:
    """This month as "YYYY-MM"; cheap on the hot path (recomputed once a month)."""
    now = time.time()
    if now >= _current[1]:
        dt = datetime.fromtimestamp(now, UTC)
        nxt = datetime(dt.year + dt.month // 12, dt.month % 12 + 1, 1, tzinfo=UTC)
        _current[0], _current[1] = dt.strftime("%Y-%m"), nxt.timestamp()
    return _current[0]


def start(now: float | None = None) -> tuple[str, float]:
    """The month of `now` (default: now) and the epoch second it began."""
    dt = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    first = dt.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return first.strftime("%Y-%m"), first.timestamp()
