"""Shared by /x-bill and the dashboard: date ranges from the query, usage read through gw.usage.

Costs are reported in the *viewer's* units: SUM(cost_n) (base worth) x viewer.Rates. So a
parent's report adds up its children's spend at the worth it pays for it, whatever Rates
each child has, and an account's own report equals what left its balance.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

from xaiproxy import usage
from xaiproxy.api import ApiError

DAY = 86400
MAX_DAYS = 3660
# Lists in a report are bounded: the most expensive entries, the rest in one "others".
MAX_MODELS = 50  # per day
MAX_USERS = 100
OTHERS = "others"
_DATE = {"type": "string", "maxLength": 10}
_DAYS = {"type": "string", "pattern": "^[0-9]{1,6}$"}
# The date parameters, short and long names alike (values checked by parse_range).
DATE_QUERY = {
    "d": _DATE,
    "date": _DATE,
    "s": _DATE,
    "start": _DATE,
    "e": _DATE,
    "end": _DATE,
    "days": _DAYS,
}


Scope = usage.Scope
ALL = usage.EVERYTHING


def subtree_scope(state, acc) -> Scope:
    """An account and everything below it."""
    return usage.subtree(acc)


account_scope = usage.account
accounts_scope = usage.accounts


def pick(query: dict, short: str, long: str) -> str | None:
    """A parameter given by its short or long name (not both, unless equal)."""
    a, b = query.get(short), query.get(long)
    if a is not None and b is not None and a != b:
        raise ApiError(400, "invalid_request", f"give either {short} or {long}, not both")
    return a if a is not None else b


def _day(text: str, name: str) -> date:
    try:
        if len(text) == 10:
            return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        pass
    raise ApiError(400, "invalid_date", f"{name} must be a date as YYYY-MM-DD, like 2025-01-31")


def _midnight(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def parse_range(query: dict, now: float | None = None) -> tuple[float, float]:
    """[start, end) epoch seconds from d|date, s|start + e|end, or days; default this month.

    Dates are UTC days and inclusive: start=2025-01-01&end=2025-01-31 is all of January.
    `days=N` is the N days ending today. Combining `date` or `days` with anything else is
    ambiguous and refused.
    """
    today = datetime.fromtimestamp(time.time() if now is None else now, UTC).date()
    one = pick(query, "d", "date")
    start, end = pick(query, "s", "start"), pick(query, "e", "end")
    days = query.get("days")
    if sum(x is not None for x in (one, days, start or end)) > 1:
        raise ApiError(400, "invalid_request", "use one of: date, start/end, or days")
    if one is not None:
        first = last = _day(one, "date")
    elif days is not None:
        count = int(days)
        if not 1 <= count <= MAX_DAYS:
            raise ApiError(400, "invalid_request", f"days must be from 1 to {MAX_DAYS}")
        first, last = today - timedelta(days=count - 1), today
    else:
        last = _day(end, "end") if end else today
        first = _day(start, "start") if start else last.replace(day=1)
    if first > last:
        raise ApiError(400, "invalid_range", "start is after end; swap them")
    if (last - first).days >= MAX_DAYS:
        raise ApiError(400, "invalid_range", f"a report covers at most {MAX_DAYS} days")
    return _midnight(first), _midnight(last) + DAY


money = usage.money


def _dates(span: tuple[float, float]) -> tuple[date, date]:
    """[start, end) epoch seconds at midnights -> first and last day (inclusive)."""
    return usage.day_of(span[0]), usage.day_of(span[1] - DAY)


async def by_day(
    reader: usage.Usage, scope: Scope, span: tuple[float, float], rates: float
) -> dict:
    """{"data": [one entry per day with usage], "total_usage": {requests, cost}} (seed shape)."""
    first, last = _dates(span)
    rows = await reader.read(scope, start=first, end=last, by=("day", "model"), units=rates)
    days: dict[date, dict] = {}
    total_requests, total_n = 0, 0
    for row in rows:
        entry = days.get(row.day) or days.setdefault(row.day, _empty_day(row.day))
        entry["n_requests"] += row.requests
        entry["n_context_tokens_total"] += row.prompt_tokens
        entry["n_generated_tokens_total"] += row.completion_tokens
        entry["n_cached_tokens_total"] += row.cached_tokens
        entry["usage_details"][row.model] = {
            "requests": row.requests,
            "prompt": row.prompt_tokens,
            "completion": row.completion_tokens,
            "cost": row.cost,
        }
        total_requests += row.requests
        total_n += row.cost_n
    for entry in days.values():
        entry["usage_details"] = _top_models(entry["usage_details"])
    return {
        "data": list(days.values()),
        "total_usage": {"requests": total_requests, "cost": money(total_n, rates)},
    }


def _top_models(details: dict) -> dict:
    """The MAX_MODELS costliest models of a day; the rest summed under "others"."""
    if len(details) <= MAX_MODELS:
        return details
    ranked = sorted(details.items(), key=lambda kv: (-kv[1]["cost"], -kv[1]["requests"], kv[0]))
    rest = [use for _, use in ranked[MAX_MODELS:]]
    others = {f: sum(use[f] for use in rest) for f in ("requests", "prompt", "completion", "cost")}
    return {**dict(ranked[:MAX_MODELS]), OTHERS: {**others, "models": len(rest)}}


def _empty_day(day: date) -> dict:
    return {
        "aggregation_timestamp": usage.day_number(day) * DAY,
        "n_requests": 0,
        "n_context_tokens_total": 0,
        "n_generated_tokens_total": 0,
        "n_cached_tokens_total": 0,
        "usage_details": {},
    }


async def by_account(
    reader: usage.Usage, scope: Scope, span: tuple[float, float]
) -> list[tuple[int, int, int]]:
    """(account_id, requests, cost_n) per account, most expensive first."""
    first, last = _dates(span)
    rows = await reader.read(scope, start=first, end=last, by=("account",))
    return sorted(
        ((r.account_id, r.requests, r.cost_n) for r in rows), key=lambda r: (-r[2], -r[1], r[0])
    )


def percent(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


async def totals(reader: usage.Usage, account_id: int, since: float, rates: float) -> dict:
    """One account's requests, tokens and cost since a moment (x-user-info's today / month)."""
    row = await reader.total(usage.account(account_id), start=usage.day_of(since), units=rates)
    return {
        "requests": row.requests,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "cached_tokens": row.cached_tokens,
        "total_tokens": row.total_tokens,
        "cost": row.cost,
    }


def day_start(now: float | None = None) -> float:
    now = time.time() if now is None else now
    return now - now % DAY
