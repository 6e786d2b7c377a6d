"""All money lives here: grants, balances, reservations, spending, transfers.

Amounts are integers in nano base units (`_n`): 1e-9 of a dollar at Rates 1. An
account's balance in its own units is base x Rates, so changing Rates rescales
the balance without moving money. Every function changes memory synchronously
(atomic on the event loop) and returns the store ops that make it durable; the
caller submits them, with the rest of its unit, in one transaction.

Invariant (checked by `audit`): sum of grant remainders + recorded spend + fees
== what root minted net of what came back to it, all in base units.
"""

from __future__ import annotations

import bisect
import math
import time

from . import months
from .errors import ApiError
from .state import Account, Grant, State
from .store import ops as o

NANO = 1_000_000_000
DAY = 86400.0
DEFAULT_DAYS = 365.0
REFUND_DAYS = 180.0
REFUND_FEE = 0.2  # base worth (USD at Rates 1) kept on every refund and delete
UNLIMITED_N = 10**18
# One request costs at most $10M at Rates 1: bounded so sums of deltas stay in SQLite's int64.
MAX_COST_N = 10**16


def to_n(amount: float, rates: float) -> int:
    """An amount in an account's own units -> nano base units."""
    return round(amount / rates * NANO)


def from_n(value_n: int, rates: float = 1.0) -> float:
    return round(value_n * rates / NANO, 9)


def cost_n(usd: float) -> int:
    """A request's cost in nano base units: never negative, never past MAX_COST_N (SQL-safe)."""
    if not usd > 0:  # also NaN
        return 0
    return min(round(min(usd, MAX_COST_N / NANO) * NANO), MAX_COST_N)


def balance_n(acc: Account, now: float | None = None) -> int:
    if acc.is_root:
        return UNLIMITED_N
    now = time.time() if now is None else now
    # Expiry ends what a grant holds, never what it owes: a debt counts until it is paid.
    return sum(g.remaining_n for g in acc.grants if g.expires_at > now or g.remaining_n < 0)


def balance(acc: Account, now: float | None = None) -> float:
    return from_n(balance_n(acc, now), acc.rates)


def available_n(acc: Account) -> int:
    return balance_n(acc) - acc.reserved_n


# -- the data plane ----------------------------------------------------------
def reserve(acc: Account, estimate_n: int, floor_n: int) -> bool:
    """Hold an estimated cost if what remains stays at or above the floor."""
    if acc.is_root:
        return True
    if balance_n(acc) - acc.reserved_n - estimate_n < floor_n:
        return False
    acc.reserved_n += estimate_n
    return True


def release(acc: Account, estimate_n: int) -> None:
    if not acc.is_root:
        acc.reserved_n -= estimate_n


# -- month spend: nano base units, kept here only -------------------------------
# Each account counts its own spend (MonthSpend, SoftLimit) and its subtree's
# (HardLimit) for one calendar month; both are base units, so a Rates change
# revalues them exactly as a restart would.
def _roll(a: Account, month: str) -> None:
    if a.month != month:
        a.month, a.month_n, a.tree_spend_n = month, 0, 0


def month_spend_n(acc: Account, month: str | None = None) -> int:
    """acc's own spend in `month` (default: this month; 0 when it has not spent in it)."""
    return acc.month_n if acc.month == (month or months.current()) else 0


def month_spend(acc: Account, month: str | None = None) -> float:
    """The same in acc's own units (MonthSpend)."""
    return from_n(month_spend_n(acc, month), acc.rates)


def count_spend(acc: Account, cost_n: int, month: str) -> None:
    """Count a settled cost in this month's spend of the account and every ancestor."""
    for a in acc.chain:
        _roll(a, month)
        a.tree_spend_n += cost_n
    acc.month_n += cost_n


def load_month_spend(state: State, month: str, own, by_dna) -> None:
    """At start: (account id, spent_n) rows and (dna, spent_n) rows of this month."""
    for acc in state.accounts.values():
        acc.month, acc.month_n, acc.tree_spend_n = month, 0, 0
    for account_id, spent_n in own:
        acc = state.accounts.get(account_id)
        if acc is not None:
            acc.month_n += spent_n
    for dna, spent_n in by_dna:  # a subtree's spend counts for every account above it
        for part in dna.strip(".").split("."):
            acc = state.accounts.get(int(part)) if part.isdigit() else None
            if acc is not None:
                acc.tree_spend_n += spent_n


# -- HardLimit: every account counts its whole subtree's spend and holds -------------
def over_hard_limit(chain: tuple[Account, ...], estimate_n: int, month: str) -> Account | None:
    """The first account of the chain whose HardLimit this request would pass, else None.

    Month spend + what requests in flight hold + this estimate, so a burst of concurrent
    requests just under the limit cannot overshoot it.
    """
    for a in chain:
        _roll(a, month)
        if a.hard_limit > 0:
            used_n, limit_n = a.tree_spend_n + a.tree_held_n, to_n(a.hard_limit, a.rates)
            if used_n >= limit_n or used_n + estimate_n > limit_n:
                return a
    return None


def hold(chain: tuple[Account, ...], amount_n: int) -> None:
    for a in chain:
        a.tree_held_n += amount_n


def _give_back(g: Grant, take_n: int) -> None:
    g.remaining_n += take_n


def _grant_delta(g: Grant, take_n: int) -> o.GrantDelta:
    # Deltas commute, so the order of queued units never matters.
    return o.GrantDelta(g.id, take_n)


# -- grants and movements (management) ----------------------------------------
def _journal(
    src: Account, dst: Account, amount_n: int, fee_n: int, kind: str, op_id: int
) -> o.Transfer:
    return o.Transfer(time.time(), src.id, dst.id, amount_n, fee_n, kind, op_id)


def check_amount(amount) -> float:
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not math.isfinite(amount):
        raise ApiError(400, "invalid_amount", "CreditGranted must be a finite number")
    if abs(amount) > 1e9:
        raise ApiError(400, "invalid_amount", "CreditGranted is too large (at most 1e9)")
    return float(amount)


def _in_flight() -> ApiError:
    """Redis mode: requests in flight on other instances hold part of what was to move."""
    return ApiError(
        409,
        "requests_in_flight",
        "requests in flight hold part of this account's balance; retry when they end",
    )


# -- audit ------------------------------------------------------------------
async def audit(store) -> dict:
    """Base-unit totals for the invariant; `ok` is True when nothing was lost or made."""
    t = await store.audit_totals()
    held, spent, fees = t["held_n"], t["spent_n"], t["fees_n"]
    net = t["minted_n"] - t["returned_n"]
    return {
        "minted_n": net,
        "held_n": held,
        "spent_n": spent,
        "fees_n": fees,
        "ok": held + spent + fees == net,
    }


class Ledger:
    """The movements that create grants, bound to one gateway's state (grant ids come from it).

    `gw.ledger` is one; it also offers this module's pure helpers (`balance`, `reserve`,
    `to_n`, ...) so plugins need nothing else for money.
    """

    to_n = staticmethod(to_n)
    balance = staticmethod(balance)
    balance_n = staticmethod(balance_n)
    audit = staticmethod(audit)

    def __init__(self, state: State) -> None:
        self.state = state

    def new_grant(
        self, acc: Account, amount_n: int, days: float, reference: str, now: float | None = None
    ) -> tuple[Grant, o.GrantPut]:
        now = time.time() if now is None else now
        days = DEFAULT_DAYS if days is None else days
        g = Grant(
            self.state.next_id("grants"),
            acc.id,
            amount_n,
            amount_n,
            now,
            now + days * DAY,
            reference,
        )
        bisect.insort(acc.grants, g, key=lambda x: x.expires_at)
        self.state.remember(lambda: acc.grants.remove(g))
        op = o.GrantPut(g.id, acc.id, amount_n, amount_n, g.granted_at, g.expires_at, reference)
        return g, op

    def spend(self, acc: Account, cost_n: int, now: float | None = None) -> list:
        """Debit cost, soonest-expiring grant first; a shortfall becomes debt on the last one."""
        if acc.is_root or cost_n <= 0:
            return []
        now = time.time() if now is None else now
        return self._draw(acc, cost_n, now, allow_debt=True)

    def _draw(self, acc: Account, amount_n: int, now: float, allow_debt: bool) -> list:
        ops: list = []
        left = amount_n
        live = [g for g in acc.grants if g.expires_at > now]
        for g in live:
            if left <= 0:
                break
            take = min(g.remaining_n, left)
            if take > 0:
                ops.append(self._take(g, take))
                left -= take
        if left > 0:
            if not allow_debt:
                raise AssertionError("draw beyond balance")
            g = live[-1] if live else (acc.grants[-1] if acc.grants else None)
            if g is None:
                g, op = self.new_grant(acc, 0, 0, "debt", now)
                ops.append(op)
            ops.append(self._take(g, left))
        return ops

    def _take(self, g: Grant, take_n: int) -> o.GrantDelta:
        g.remaining_n -= take_n
        self.state.remember(lambda: _give_back(g, take_n))
        return _grant_delta(g, take_n)

    # Management moves: with the money in Redis (`state.moves`, hotstate/moves.py) each is
    # also registered, for `changes.commit` to make in Redis first (draws) or after (puts).
    def _move_out(
        self, acc: Account, amount_n: int, allow_debt: bool, refusal, exact: int | None = None
    ) -> list:
        ops = self._draw(acc, amount_n, time.time(), allow_debt)
        if self.state.moves is not None:
            self.state.moves.draw(acc, amount_n, allow_debt, list(ops), refusal, exact)
        return ops

    def _move_in(self, acc: Account, amount_n: int, days: float, reference: str, now=None):
        g, op = self.new_grant(acc, amount_n, days, reference, now)
        if self.state.moves is not None:
            self.state.moves.put(acc, g)
        return g, op

    def _credit(self, acc: Account, g: Grant, amount_n: int) -> o.GrantDelta:
        if self.state.moves is not None:
            self.state.moves.add(acc, g, amount_n)
        return self._take(g, -amount_n)

    def fund(
        self,
        parent: Account,
        child: Account,
        amount: float,
        days: float | None,
        operator: Account,
        kind: str,
        rates: float | None = None,
    ) -> list:
        """Give `amount` (in `rates` units, default child's) to child; parent pays the same
        base worth (root mints)."""
        amount_n = to_n(amount, child.rates if rates is None else rates)
        if amount_n <= 0:
            raise ApiError(400, "invalid_amount", "the amount must be positive")
        ops: list = []
        if not parent.is_root:

            def refused() -> ApiError:
                return ApiError(
                    403,
                    "insufficient_balance",
                    f"your balance {balance(parent):.4f} cannot cover {from_n(amount_n, parent.rates):.4f}",
                )

            if available_n(parent) < amount_n:
                raise refused()
            ops += self._move_out(parent, amount_n, False, refused)
        _, op = self._move_in(child, amount_n, DEFAULT_DAYS if days is None else days, kind)
        ops.append(op)
        ops.append(_journal(parent, child, amount_n, 0, kind, operator.id))
        return ops

    def refund(
        self,
        child: Account,
        parent: Account,
        amount: float,
        operator: Account,
        kind: str,
        rates: float | None = None,
    ) -> tuple[list, float]:
        """Move `amount` (in `rates` units, default child's) back to parent, less the fee,
        as a 180-day grant.

        Never more than the balance less what requests in flight reserved. Returns the ops
        and what the parent received, in the parent's units.
        """
        free_n = max(balance_n(child) - child.reserved_n, 0)
        rates = child.rates if rates is None else rates
        amount_n = to_n(amount, rates)

        def refused() -> ApiError:
            return ApiError(
                400,
                "insufficient_balance",
                f"cannot refund {from_n(amount_n, rates):.4f}: the account holds "
                f"{from_n(free_n, rates):.4f}",
            )

        if amount_n > free_n:
            raise refused()
        return self._refund_n(child, parent, amount_n, operator, kind, REFUND_FEE, refused)

    def _refund_n(
        self,
        child: Account,
        parent: Account,
        amount_n: int,
        operator: Account,
        kind: str,
        fee: float,
        refusal=None,
        exact: int | None = None,
    ) -> tuple[list, float]:
        """`exact` (a delete in Redis mode): the amount is all that is free with these
        reservations; Redis takes it only if it agrees (hotstate/moves.py)."""
        moves = self.state.moves
        if amount_n <= 0:
            if exact is not None and moves is not None:  # Redis must agree nothing is free
                moves.draw(child, 0, False, [], refusal or _in_flight, exact)
            return [], 0.0
        now = time.time()
        ops = self._move_out(child, amount_n, False, refusal or _in_flight, exact)
        fee_n = min(to_n(fee, 1.0), amount_n)
        back_n = amount_n - fee_n
        if back_n > 0 and not parent.is_root:
            _, op = self._move_in(parent, back_n, REFUND_DAYS, kind, now)
            ops.append(op)
        ops.append(_journal(child, parent, back_n, fee_n, kind, operator.id))
        return ops, from_n(back_n, parent.rates)

    # -- delete ------------------------------------------------------------------
    def leave(self, acc: Account, operator: Account) -> tuple[list, float]:
        """Deleting acc: refund its balance less what requests in flight reserved (less the
        fee) to its parent; with nothing in flight, settle the rest (a debt) at once.

        Requests still in flight keep their reservation on acc; when the last one ends,
        `settle_deleted` moves what is left (or what is owed) to the nearest live ancestor.
        With the money in Redis, "in flight" is every instance's (`moves.reserved_n`).
        """
        moves = self.state.moves
        reserved_n = acc.reserved_n if moves is None else moves.reserved_n(acc)
        free_n = balance_n(acc) - reserved_n
        ops, back = self._refund_n(
            acc, acc.parent, free_n, operator, "delete", REFUND_FEE, exact=reserved_n
        )
        acc.deleted = True
        self.state.remember(lambda: setattr(acc, "deleted", False))
        if reserved_n:  # the last request out, on whichever instance, settles the rest
            return ops, back
        return ops + self.settle_deleted(acc), back

    def settle_deleted(self, acc: Account) -> list:
        """A deleted account with nothing in flight: its rest goes to, or its debt is paid by,
        the nearest live ancestor (no fee: the delete took it). Never written off."""
        if not acc.deleted or acc.reserved_n:
            return []
        heir = acc.parent
        while heir.deleted:
            heir = heir.parent
        rest_n = balance_n(acc)
        if rest_n > 0:
            return self._refund_n(acc, heir, rest_n, acc, "delete", 0.0)[0]
        if rest_n == 0:
            return []
        owed_n = -rest_n
        ops = [] if heir.is_root else self._move_out(heir, owed_n, True, _in_flight)
        left = owed_n
        for g in acc.grants:
            if g.remaining_n < 0 and left > 0:
                pay = min(-g.remaining_n, left)
                ops.append(self._credit(acc, g, pay))
                left -= pay
        ops.append(_journal(heir, acc, owed_n, 0, "delete_debt", acc.id))
        return ops
