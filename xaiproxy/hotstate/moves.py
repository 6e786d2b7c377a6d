"""Management money moves in Redis mode (fund, refund, delete): Redis decides, the store
records, memory shows.

A unit's work() still runs synchronously on this instance's memory (the display copy),
so its checks and its answer read as on one process; every money move it makes is
registered here as well. Between work() and the store write, `changes.commit` calls
`before_write`:
- each draw (money leaving an account) is taken in Redis with the `draw` script,
  atomic against every instance's requests (balance less their reservations); a
  refusal refuses the unit with the same error memory mode gives; Redis unreachable is
  503 `state_unavailable`. The unit's ops then carry Redis's per-grant takes.
- a unit that only adds money (root funding) checks that Redis is there, or is 503:
  money never moves in the store without its hot copy.
After the commit, new grants are put (kept if a rebuild already loaded them) and debts
paid are added (once, and only under the generation that took the money). A unit the
store refused gives its draws back.

A delete refunds all that is free: the balance less every instance's reservations, which
only Redis knows. Its draw is exact (the `draw` script takes it only if Redis's figures
are the ones work() used); when they differ, the account's display copy is set from
Redis and work() runs again with Redis's reservations (`prepare`, a few times at most).
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
import time
from collections.abc import Callable

from ..errors import ApiError
from ..state import Grant
from ..store import ops as o
from . import StateUnavailable

log = logging.getLogger("xaiproxy.hotstate")
QUOTES = 4  # a delete's tries before giving up (settles keep moving its balance)


class Requote(Exception):
    """Redis's balance or reservations of `account` are not what work() used: run it again."""

    def __init__(self, account) -> None:
        super().__init__(account.id)
        self.account = account


@dataclasses.dataclass(slots=True)
class Draw:
    account: object
    amount_n: int
    allow_debt: bool
    ops: list  # the ops the memory draw made (replaced by Redis's takes)
    refusal: Callable[[], ApiError]
    exact: int | None = None  # a delete's: the reservations Redis must show (see `prepare`)


@dataclasses.dataclass(slots=True)
class Unit:
    """The Redis side of one unit, between its draws and its commit."""

    taken: list  # (Draw, hotstate.redis.Drawn)
    puts: list  # (account id, (grant id, remaining, expires))
    adds: list  # (account id, grant id, amount)
    shown: list  # (grant, delta) made to memory to show Redis's takes


class Moves:
    """`state.moves` in Redis mode; the ledger registers, `changes.commit` applies."""

    def __init__(self, gw, plane) -> None:
        self.gw = gw
        self.hot = gw.hot
        self.plane = plane
        self.order = asyncio.Lock()  # changes.commit: one money unit at a time, in order
        self.draws: list[Draw] = []
        self.puts: list = []
        self.adds: list = []
        self.quotes: dict[int, int] = {}  # account -> its reservations as Redis told them

    def reserved_n(self, acc) -> int:
        """What requests in flight hold of acc: every instance's, once Redis said it."""
        return self.quotes.get(acc.id, acc.reserved_n)

    async def prepare(self, state, work) -> tuple:
        """work() and its draws in Redis: (result, ops, Unit, undo). A delete whose figures
        Redis does not share runs again with Redis's (the display copy set from it)."""
        try:
            for _ in range(QUOTES):
                self.clear()
                with state.recording() as undo:
                    result, ops = work()
                try:
                    ops, unit = await self.before_write(ops)
                except Requote as again:
                    undo()  # before the display copy is set from Redis
                    await self._quote(again.account)
                    continue
                except BaseException:
                    undo()
                    raise
                return result, ops, unit, undo
            raise ApiError(
                409,
                "requests_in_flight",
                "requests in flight keep changing this account's balance; retry in a moment",
            )
        finally:
            self.quotes.clear()

    async def _quote(self, acc) -> None:
        try:
            found, reserved = await self.hot.holdings(acc.id)
        except StateUnavailable as exc:
            raise exc.api_error() from None
        show_grants(acc, found)
        self.quotes[acc.id] = reserved

    # -- registered by the ledger during work() ----------------------------------------
    def clear(self) -> None:
        self.draws, self.puts, self.adds = [], [], []

    def draw(self, acc, amount_n: int, allow_debt: bool, ops: list, refusal, exact=None) -> None:
        self.draws.append(Draw(acc, amount_n, allow_debt, ops, refusal, exact))

    def put(self, acc, grant) -> None:
        self.puts.append((acc.id, (grant.id, grant.remaining_n, grant.expires_at)))

    def add(self, acc, grant, amount_n: int) -> None:
        self.adds.append((acc.id, grant.id, amount_n))

    # -- applied by changes.commit ---------------------------------------------------
    async def before_write(self, ops: list) -> tuple[list, Unit | None]:
        """Take the unit's draws in Redis; its ops with Redis's takes in place of memory's."""
        draws, puts, adds = self.draws, self.puts, self.adds
        self.clear()
        if not (draws or puts or adds):
            return ops, None
        unit = Unit([], puts, adds, [])
        try:
            if not draws and not await self.hot.loaded():
                self.plane.rebuilder.kick()
                raise StateUnavailable("redis holds no state yet: rebuilding")
            for d in draws:
                drawn = await self.hot.take(d.account.id, d.amount_n, d.allow_debt, d.exact)
                if drawn is None:
                    if d.exact is not None:
                        raise Requote(d.account)
                    raise d.refusal()
                unit.taken.append((d, drawn))
        except StateUnavailable as exc:
            await self.give_back(unit)
            raise exc.api_error() from None
        except BaseException:
            await self.give_back(unit)
            raise
        drop = {id(op) for d in draws for op in d.ops}
        ops = [op for op in ops if id(op) not in drop]
        for d, drawn in unit.taken:
            ops += self._show(d, drawn.takes, unit.shown)
        return ops, unit

    def _show(self, d: Draw, takes: list, shown: list) -> list:
        """Memory follows Redis: undo the memory draw, apply Redis's takes (for display)."""
        acc = d.account
        for op in d.ops:
            if isinstance(op, o.GrantDelta):
                g = _grant(acc, op.grant_id)
                if g is not None:
                    g.remaining_n += op.take_n
                    shown.append((g, op.take_n))
        before = len(acc.grants)
        new = self.plane.apply(acc, takes)
        for g in acc.grants[before:]:  # debt grants `apply` made: kept only if stored
            shown.append((g, None))
        for op in new:
            if isinstance(op, o.GrantDelta) and (g := _grant(acc, op.grant_id)) is not None:
                shown.append((g, -op.take_n))
        return new

    async def rollback(self, unit: Unit) -> None:
        """The store refused the unit: memory as before Redis's takes, the draws given back."""
        for g, delta in reversed(unit.shown):
            if delta is None:
                acc = self.gw.state.accounts.get(g.account_id)
                if acc is not None and g in acc.grants:
                    acc.grants.remove(g)
            else:
                g.remaining_n -= delta
        await self.give_back(unit)

    async def give_back(self, unit: Unit) -> None:
        for d, drawn in unit.taken:
            adds = [(gid, take) for gid, take in drawn.takes if gid]
            try:
                await self.hot.adjust(d.account.id, drawn.generation, adds=adds)
            except StateUnavailable as exc:  # Redis shows less than the store: a rebuild fixes it
                log.error("could not give back a refused draw to redis: %s", exc)
        unit.taken = []

    async def after_commit(self, unit: Unit) -> None:
        """Put the unit's new grants and paid debts in Redis."""
        gen = unit.taken[0][1].generation if unit.taken else self.hot.generation
        by_acc: dict[int, tuple[list, list]] = {}
        for acc_id, grant in unit.puts:
            by_acc.setdefault(acc_id, ([], []))[0].append(grant)
        for acc_id, grant_id, amount in unit.adds:
            by_acc.setdefault(acc_id, ([], []))[1].append((grant_id, amount))
        for acc_id, (puts, adds) in by_acc.items():
            try:
                if puts:  # any generation: a rebuild that loaded the grant keeps its value
                    await self.hot.adjust(acc_id, "", puts=puts)
                if adds:
                    await self.hot.adjust(acc_id, gen, adds=adds)
            except StateUnavailable as exc:
                log.error(
                    "a committed money move did not reach redis (%s); account %d shows less"
                    " there until redis is rebuilt",
                    exc,
                    acc_id,
                )


def _grant(acc, grant_id: int):
    for g in acc.grants:
        if g.id == grant_id:
            return g
    return None


def show_grants(acc, found: list[tuple[int, int, float]]) -> None:
    """acc's display copy as Redis has it, (grant id, remaining, expires) each: grants
    another instance made are added, those Redis lacks show nothing; its balance is Redis's."""
    have = {g.id: g for g in acc.grants}
    seen = set()
    for grant_id, remaining, expires in found:
        seen.add(grant_id)
        g = have.get(grant_id)
        if g is None:
            g = Grant(grant_id, acc.id, 0, remaining, time.time(), expires)
            bisect.insort(acc.grants, g, key=lambda x: x.expires_at)
        g.remaining_n = remaining
    for g in acc.grants:
        if g.id not in seen:
            g.remaining_n = 0
