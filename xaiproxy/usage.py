"""Reading usage: requests, tokens and cost per account or subtree, by day and/or model.

`gw.usage.read(...)` and `gw.usage.total(...)` are the one way plugins (the built-in
reports included) read usage. Days are whole UTC days; a range is inclusive at both ends.
Cost comes in the units asked for: the base worth (`cost_n`, nano units at Rates 1)
times a viewer's Rates, so a parent's report values its children's spend at the worth
it pays for it, and an account's own report equals what left its balance.

Usage is written by the batched writer: a request's usage becomes readable after the
writer's next commit (`await gw.store.flush()` waits for it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from .ledger import NANO
from .store import ops as o

if TYPE_CHECKING:
    from .state import Account
    from .store import Store

DAY = 86400
EPOCH = date(1970, 1, 1)
GROUPS = {"day": "day", "model": "model", "account": "account_id"}  # by= -> the store's names


Scope = o.Scope  # which usage a read covers; build it with the helpers below
EVERYTHING = o.ALL


def subtree(acc: Account) -> Scope:
    """An account and everything below it."""
    return EVERYTHING if acc.is_root else Scope(dna=acc.dna)


def account(account_id: int) -> Scope:
    """One account's own usage, without its subaccounts."""
    return Scope(account_ids=(account_id,))


def accounts(ids: Sequence[int]) -> Scope:
    """Exactly these accounts."""
    return Scope(account_ids=tuple(ids))


@dataclass(slots=True, frozen=True)
class UsageRow:
    """One group of usage. `day`, `model`, `account_id` are None unless grouped by."""

    day: date | None
    model: str | None
    account_id: int | None
    requests: int
    prompt_tokens: int  # cached ones included
    completion_tokens: int
    cached_tokens: int
    cost_n: int  # base worth, nano units (1e-9 USD at Rates 1)
    cost: float  # in the units asked for

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def money(value_n: int | None, rates: float) -> float:
    """Nano base units as money in the units of an account with these Rates."""
    return round((value_n or 0) * rates / NANO, 9)


def today() -> date:
    return datetime.now(UTC).date()


def day_of(ts: float) -> date:
    """The UTC day of an epoch time."""
    return datetime.fromtimestamp(ts, UTC).date()


def day_number(day: date) -> int:
    """Days since 1970-01-01 (what the rollup stores); day_number(d) * 86400 is its midnight."""
    return (day - EPOCH).days


def last_days(n: int, until: date | None = None) -> tuple[date, date]:
    """(start, end) of the n days ending `until` (today), for read(start=..., end=...)."""
    end = until or today()
    return end - timedelta(days=n - 1), end


class Usage:
    """Usage reports from the daily rollup (never the raw rows)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def read(
        self,
        of: Account | Scope,
        *,
        start: date | None = None,
        end: date | None = None,
        by: Sequence[str] = ("day",),
        units: Account | float | None = None,
        subtree_too: bool = True,
    ) -> list[UsageRow]:
        """Usage of `of` from `start` to `end` (inclusive; None = unbounded), one row per group.

        `of`: an Account (with its subtree unless `subtree_too=False`) or a Scope.
        `by`: any of "day", "model", "account"; rows come ordered by them.
        `units`: whose money units costs are in: an Account (its Rates) or a Rates
        number; default the Account read, or base worth (1.0) for a Scope.
        """
        groups = tuple(GROUPS[g] for g in by)  # KeyError: not a grouping
        scope, rates = _scope(of, subtree_too), _rates(units, of)
        first = None if start is None else day_number(start)
        last = None if end is None else day_number(end)
        rows = await self.store.usage_grouped(scope, first, last, groups)
        n = len(groups)
        return [_row(dict(zip(groups, r[:n], strict=True)), r[n:], rates) for r in rows]

    async def total(
        self,
        of: Account | Scope,
        *,
        start: date | None = None,
        end: date | None = None,
        units: Account | float | None = None,
        subtree_too: bool = True,
    ) -> UsageRow:
        """All of `of`'s usage in the range as one row (zeros when there is none)."""
        (row,) = await self.read(
            of, start=start, end=end, by=(), units=units, subtree_too=subtree_too
        )
        return row


def _scope(of, subtree_too: bool) -> Scope:
    if isinstance(of, Scope):
        return of
    return subtree(of) if subtree_too else account(of.id)


def _rates(units, of) -> float:
    if units is None:
        units = 1.0 if isinstance(of, Scope) else of
    return float(getattr(units, "rates", units))


def _row(keys: dict, sums, rates: float) -> UsageRow:
    requests, prompt, completion, cached, cost_n = sums
    day = keys.get("day")
    return UsageRow(
        day=EPOCH + timedelta(days=day) if day is not None else None,
        model=keys.get("model"),
        account_id=keys.get("account_id"),
        requests=requests,
        prompt_tokens=prompt or 0,
        completion_tokens=completion or 0,
        cached_tokens=cached or 0,
        cost_n=cost_n or 0,
        cost=money(cost_n, rates),
    )
