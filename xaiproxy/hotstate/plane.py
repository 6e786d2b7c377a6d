"""The data plane's money and rate limits in Redis (SPEC 12): one round trip to admit a
request, one to settle it.

admit:  the hold (balance less reservations, call floor), the HardLimit of every account
        of the chain and every rate-limit scope of `limits.scopes()`, in one `admit`
        script; its verdict becomes the same 403/429 errors and x-ratelimit-* headers as
        the in-process path. Redis unreachable or empty: 503 `state_unavailable` with
        Retry-After (and a rebuild is started when it is empty). Never admits unheld.
settle: one `settle` script (release the hold, debit the cost, month spend, token
        buckets); its per-grant takes become `GrantDelta` ops written with the usage
        record by the batched writer. It runs in the background: the answer is sent.

When a settle cannot reach Redis, the store is told at once (the usage record with a
draw from this instance's copy of the grants: usage is never lost, kill -9 loses at most
a flush interval as always) and the settle is retried as `late` until Redis answers:
- same generation: Redis applies it (once: settle is idempotent per id and generation);
  where its per-grant takes differ from the local draw, a unit of deltas that sum to
  zero makes the store agree with Redis;
- rebuilt since: skipped if the rebuild's snapshot counts this cost, i.e. the store
  committed the usage before the snapshot was read (the generation carries that Redis
  time; the settle sends how long ago its commit was); else debited in the new
  generation as a plain debit (no hold to release), so Redis and the store agree.

A rebuild starts every reservation at zero, but requests admitted before it still run.
Each instance keeps its holds in flight (`holding`) and, on seeing a new generation, holds
them again under it (`REHOLD`, one round trip, each hold atomic against its own settle);
their settles then release them as usual. The rebuild keeps admits and management draws
out (503) for `SETTLING` seconds meanwhile, so nothing is admitted against them.

This instance's memory (grants, reservations, month spend) is a display copy: it applies
its own takes and holds at once, and `Mirror` refreshes the accounts any instance
touched (a Redis set) every second.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import secrets
import time

from .. import changes, ledger, limits, months
from ..errors import ApiError
from ..store import ops as o
from . import StateUnavailable
from .moves import show_grants
from .redis import MAX_DELTA_N, Ask

log = logging.getLogger("xaiproxy.hotstate")
RETRY_FIRST, RETRY_MOST = 0.2, 5.0  # seconds between retries of a settle Redis missed
DRAIN_PATIENCE = 5.0  # at stop: how long settles wait for Redis before giving up on it
INHERIT_LOCK, INHERIT_GAP, INHERIT_TRIES = 30.0, 0.05, 200  # a deleted account's rest, once


@dataclasses.dataclass(slots=True)
class Ticket:
    """`ctx.limits` in Redis mode: what the request was admitted under."""

    ask: Ask
    generation: str
    settle_id: str  # the settle record's id: unique per hold (a realtime session has many)
    headers: dict[str, str]

    def __bool__(self) -> bool:  # relay adds headers only for a truthy ticket
        return bool(self.headers)


@dataclasses.dataclass(slots=True, eq=False)
class Pending:
    """A settle Redis has not answered yet."""

    ticket: Ticket
    account: object
    cost_n: int
    tokens: int
    local: list  # the GrantDelta ops drawn from this instance's copy and already queued
    committed: float | None = None  # time.monotonic() once the store committed its usage


class Plane:
    """`gw.billing.shared` in Redis mode: holds and settlements through `gw.hot`."""

    def __init__(self, gw, rebuilder) -> None:
        self.gw = gw
        self.hot = gw.hot
        self.rebuilder = rebuilder
        self.floor = gw.settings.call_floor
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(6) + ":"
        self.tasks: set[asyncio.Task] = set()  # settles in flight
        self.holding: dict[str, Ticket] = {}  # settle id -> the holds of requests in flight
        self.inheriting: set[asyncio.Task] = set()  # deleted accounts' rests being settled
        self._reholding: asyncio.Task | None = None
        self._clean = ""  # a generation every hold in `holding` is under ("": unknown)
        self.late: list[Pending] = []  # settles waiting for Redis
        self._retrying: asyncio.Task | None = None

    # -- admit ---------------------------------------------------------------------
    def ask(self, ctx, estimate_n: int, with_limits: bool = True) -> Ask:
        acc = ctx.account
        chain = tuple(
            (a.id, ledger.to_n(a.hard_limit, a.rates) if a.hard_limit > 0 else 0) for a in acc.chain
        )
        scopes = ()
        if with_limits:
            found = limits.scopes(acc, ctx.config.model_limits, ctx.model)
            scopes = tuple((s.name, s.values) for s in found)
        return Ask(
            acc.id,
            min(estimate_n, MAX_DELTA_N),
            ledger.to_n(self.floor, acc.rates),
            chain,
            scopes,
            months.current(),
            acc.is_root,
        )

    async def admit(self, ctx, estimate_n: int) -> None:
        """Hold, HardLimits and rate limits in one round trip, or refuse as memory mode does."""
        ask = self.ask(ctx, estimate_n)
        verdict = await self._admit(ask)
        headers = _headers(verdict.limits)
        if verdict.code == "ok":
            self._held(ctx, Ticket(ask, verdict.generation, self._next_id(), headers))
            return
        acc = ctx.account
        if verdict.code == "insufficient_balance":
            raise insufficient(acc)
        if verdict.code == "hard_limit_reached":
            raise hard_limit(acc, acc.chain[verdict.over])
        raise limits.refusal(verdict.wait, headers)

    async def hold_again(self, ctx, estimate_n: int) -> bool:
        """A realtime session's next response: hold again (no rate-limit check, as in memory)."""
        ask = self.ask(ctx, estimate_n, with_limits=False)
        verdict = await self._admit(ask)
        if verdict.code != "ok":
            return False
        # Settle with the session's scopes, so its tokens count against its token buckets.
        full = dataclasses.replace(ctx.limits.ask, estimate_n=ask.estimate_n, chain=ask.chain)
        self._held(ctx, Ticket(full, verdict.generation, self._next_id(), ctx.limits.headers))
        return True

    async def _admit(self, ask: Ask):
        try:
            verdict = await self.hot.admit(ask)
        except StateUnavailable as exc:
            self.rebuilder.kick()  # no-op unless Redis is back and empty (or just rebuilt)
            raise exc.api_error() from None
        self.notice(verdict.generation)
        return verdict

    def _held(self, ctx, ticket: Ticket) -> None:
        if ticket.ask.estimate_n:
            self.holding[ticket.settle_id] = ticket
            if ticket.generation != self._clean:
                self._clean = ""
        ctx.limits, ctx.reserved_n = ticket, ticket.ask.estimate_n
        if not ctx.account.is_root:
            ctx.account.reserved_n += ticket.ask.estimate_n  # the display copy, this instance

    def _next_id(self) -> str:
        return f"{self._prefix}{next(self._ids):x}"

    # -- settle --------------------------------------------------------------------
    def release(self, ctx) -> None:
        """A request that ends unbilled: give the hold back (a settle of nothing)."""
        self._spawn(self._unhold(ctx), None, 0, 0, None)

    def settle(self, ctx, record, tokens: int) -> None:
        """Release the hold and debit ctx.cost_n; the usage record follows the takes."""
        self._spawn(self._unhold(ctx), ctx.account, ctx.cost_n, tokens, record)

    def _unhold(self, ctx) -> Ticket:
        ticket, acc = ctx.limits, ctx.account
        self.holding.pop(ticket.settle_id, None)
        if not acc.is_root:
            acc.reserved_n -= ctx.reserved_n
        ctx.reserved_n = 0
        return ticket

    def _spawn(self, ticket: Ticket, acc, cost_n: int, tokens: int, record) -> None:
        self._track(
            asyncio.get_running_loop().create_task(
                self._settle(ticket, acc, cost_n, tokens, record)
            )
        )

    async def _settle(self, ticket: Ticket, acc, cost_n: int, tokens: int, record) -> None:
        store = self.gw.store
        try:
            takes = await self.hot.settle(
                ticket.ask, ticket.generation, ticket.settle_id, cost_n, tokens
            )
        except StateUnavailable as exc:
            # The store first: the usage and a draw from this copy; Redis when it is back.
            local = self.gw.ledger.spend(acc, cost_n) if acc is not None else []
            if record is not None:
                store.submit_usage(record, local)
            pending = Pending(ticket, acc, cost_n, tokens, local)
            self.late.append(pending)
            self._watch_commit(pending)
            self._retry_soon()
            log.warning("settle %s waits for redis: %s", ticket.settle_id, exc)
            return
        except Exception:
            log.exception("settle %s failed", ticket.settle_id)  # a bug: keep the usage
            if record is not None:
                store.submit_usage(record, self.gw.ledger.spend(acc, cost_n))
            return
        ops = self.apply(acc, takes or [])
        if record is not None:
            store.submit_usage(record, ops)
        elif ops:
            store.submit(ops)

    def apply(self, acc, takes: list[tuple[int, int]]) -> list:
        """Redis's takes as store ops, applied to this instance's copy of the grants."""
        ops: list = []
        for grant_id, take in takes:
            if grant_id == 0:  # debt run up with no grant: recorded as a debt grant
                g, put = self.gw.ledger.new_grant(acc, 0, 0, "debt")
                g.remaining_n = -take
                ops.append(dataclasses.replace(put, remaining_n=-take))
                continue
            g = _grant(acc, grant_id)
            if g is not None:
                g.remaining_n -= take
            ops.append(o.GrantDelta(grant_id, take))
        return ops

    def settle_deleted(self, acc) -> None:
        """A deleted account's rest (or debt) to its heir, as a unit through Redis."""
        task = asyncio.get_running_loop().create_task(self._settle_deleted(acc))
        self._track(task)
        self.inheriting.add(task)
        task.add_done_callback(self.inheriting.discard)

    async def _settle_deleted(self, acc) -> None:
        """After this instance's settles so far (their costs are Redis's to count), and only
        when no request of the account is held anywhere: its rest as Redis has it goes to
        the heir, or its debt is paid by it (SPEC 4), once (a lock per account)."""
        gw = self.gw
        settles = [t for t in self.tasks if t not in self.inheriting]
        await asyncio.gather(*settles, return_exceptions=True)
        if any(t.ask.account_id == acc.id for t in self.holding.values()):
            return  # this instance's last request of it settles it
        name = f"inherit:{acc.id}"
        try:
            for _ in range(INHERIT_TRIES):  # another instance may be at it: wait for it
                if token := await self.hot.lock(name, INHERIT_LOCK):
                    break
                await asyncio.sleep(INHERIT_GAP)
            else:
                log.warning("deleted account %d not settled: its lock stayed taken", acc.id)
                return
            try:
                found, reserved = await self.hot.holdings(acc.id)
                if reserved:  # another instance's request still runs: its end settles it
                    return
                show_grants(acc, found)  # the display copy as Redis has it: the rest is exact
                acc.reserved_n = 0
                if not ledger.balance_n(acc):
                    return  # nothing left and nothing owed (settled already, or by the delete)
                await changes.commit(
                    gw.state, gw.store, lambda: (None, gw.ledger.settle_deleted(acc))
                )
            finally:
                await self.hot.unlock(name, token)
        except StateUnavailable as exc:
            log.warning("deleted account %d not settled yet: %s", acc.id, exc)
        except ApiError as exc:  # Redis away, or a request admitted meanwhile: left as it is
            log.warning("deleted account %d not settled yet: %s", acc.id, exc.message)

    def _track(self, task: asyncio.Task) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- holds in flight across a rebuild ---------------------------------------------
    def notice(self, generation: str) -> None:
        """Redis answered under `generation`: hold again what this instance holds under an
        older one (in the background; one pass at a time)."""
        if generation == self._clean:  # known: no scan of every hold on each admit
            return
        if not generation or (self._reholding is not None and not self._reholding.done()):
            return
        if any(t.generation != generation for t in self.holding.values()):
            self._clean = ""
            self._reholding = asyncio.get_running_loop().create_task(self._rehold_loop())
        else:
            self._clean = generation

    async def _rehold_loop(self) -> None:
        try:
            while await self.rehold():
                pass
        except StateUnavailable as exc:  # the next notice tries again
            log.warning("requests in flight not held again yet: %s", exc)
        except Exception:
            log.exception("holding requests in flight again failed")

    async def rehold(self) -> bool:
        """One pass: hold again, under Redis's generation, each hold of an older one; True
        when Redis moved on meanwhile (another pass is due)."""
        self._clean = ""  # generations of holds change here
        gen = await self.hot.loaded()
        stale = [t for t in self.holding.values() if t.generation != gen]
        if not gen or not stale:
            return False
        replies = await self.hot.rehold([(t.ask, t.settle_id) for t in stale], gen)
        for ticket, reply in zip(stale, replies, strict=True):
            if reply in ("ok", "done"):
                ticket.generation = gen
        if "ok" in replies:
            log.warning("%d requests in flight held again after a rebuild", replies.count("ok"))
        return "other" in replies

    # -- settles that missed Redis ---------------------------------------------------
    def _watch_commit(self, p: Pending) -> None:
        """Note when the store commits p's usage (queued before this empty unit): a rebuild
        whose snapshot was read after that counted it."""
        try:
            fut = self.gw.store.submit([], wait=True)
        except RuntimeError:  # the store is closing: its retry will not run either
            return

        def done(f: asyncio.Future) -> None:
            if f.cancelled():
                return
            if f.exception() is None:
                p.committed = time.monotonic()
            elif any(x is p for x in self.late):  # the batch failed: its usage was requeued
                self._watch_commit(p)

        fut.add_done_callback(done)

    def _retry_soon(self) -> None:
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.get_running_loop().create_task(self._retry_loop())

    async def _retry_loop(self, patience: float | None = None) -> None:
        """Retry the late settles until Redis answers them all (or `patience` runs out)."""
        loop = asyncio.get_running_loop()
        deadline = None if patience is None else loop.time() + patience
        gap = RETRY_FIRST
        while self.late:
            try:
                await self.retry_late()
            except StateUnavailable:
                if deadline is not None and loop.time() > deadline:
                    return
                await asyncio.sleep(gap)
                gap = min(gap * 2, RETRY_MOST)
                self.rebuilder.kick()

    async def retry_late(self) -> None:
        """One pass over the late settles; raises StateUnavailable at the first Redis miss."""
        while self.late:
            p = self.late[0]
            t = p.ticket
            age = -1.0 if p.committed is None else time.monotonic() - p.committed
            takes = await self.hot.settle(
                t.ask, t.generation, t.settle_id, p.cost_n, p.tokens, late=age
            )
            self.late.pop(0)
            if takes is not None and p.account is not None:
                self._correct(p, takes)

    def _correct(self, p: Pending, takes: list[tuple[int, int]]) -> None:
        """Redis took `takes` where the store was told `p.local`: queue the difference."""
        ops = self.apply(p.account, takes)
        for op in p.local:
            if isinstance(op, o.GrantDelta):
                g = _grant(p.account, op.grant_id)
                if g is not None:
                    g.remaining_n += op.take_n
                ops.append(o.GrantDelta(op.grant_id, -op.take_n))
        net: dict[int, int] = {}
        rest = []
        for op in ops:
            if isinstance(op, o.GrantDelta):
                net[op.grant_id] = net.get(op.grant_id, 0) + op.take_n
            else:
                rest.append(op)
        ops = rest + [o.GrantDelta(g, n) for g, n in net.items() if n]
        if ops:
            self.gw.store.submit(ops)

    # -- lifecycle ---------------------------------------------------------------------
    async def drain(self, patience: float = DRAIN_PATIENCE) -> None:
        """Wait for the settles in flight, then give late ones `patience` to reach Redis."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        if self._retrying is not None and not self._retrying.done():
            self._retrying.cancel()
            await asyncio.gather(self._retrying, return_exceptions=True)
        if self.late:
            await self._retry_loop(patience)
        if self.late:
            log.error(
                "%d settles never reached redis; the store has them: rebuild redis"
                " (DEL %sloaded) to count them there",
                len(self.late),
                self.hot.prefix,
            )


def _grant(acc, grant_id: int):
    for g in acc.grants:
        if g.id == grant_id:
            return g
    return None


def _headers(found: dict[str, tuple[int, int, int]]) -> dict[str, str]:
    """x-ratelimit-* from the script's (limit, remaining, ms until empty) per kind."""
    headers: dict[str, str] = {}
    for kind, (limit, remaining, ms) in found.items():
        headers[f"x-ratelimit-limit-{kind}"] = str(limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
        headers[f"x-ratelimit-reset-{kind}"] = limits.duration(ms / 1000)
    return headers


def insufficient(acc) -> ApiError:
    return ApiError(
        403,
        "insufficient_balance",
        f"the balance ({ledger.balance(acc):.4f}, less requests in flight) cannot cover "
        "this request; recharge the account or lower max_tokens",
    )


def hard_limit(acc, over) -> ApiError:
    whose = "this account's" if over is acc else "an account above this one's"
    return ApiError(
        403,
        "hard_limit_reached",
        f"this month's spend, with requests in flight, would pass {whose} HardLimit"
        f" of {over.hard_limit:g}; ask for a higher limit or wait for next month",
    )


class SharedLimiter:
    """`gw.limiter` in Redis mode: the limits are checked by `Plane.admit` with the money;
    this answers the data plane's headers, and admits limits alone for anyone else."""

    def __init__(self, plane: Plane) -> None:
        self.plane = plane

    async def admit(self, acc, owner_limits, model: str) -> Ticket:
        scopes = tuple((s.name, s.values) for s in limits.scopes(acc, owner_limits, model))
        ask = Ask(acc.id, 0, 0, (), scopes, months.current(), True)
        verdict = await self.plane._admit(ask)
        headers = _headers(verdict.limits)
        if verdict.code != "ok":
            raise limits.refusal(verdict.wait, headers)
        return Ticket(ask, verdict.generation, "", headers)

    @staticmethod
    def charge(ticket, tokens: int) -> None:
        """Token buckets are charged by the settle script."""

    @staticmethod
    def headers(ticket) -> dict[str, str]:
        return ticket.headers if ticket else {}

    @staticmethod
    def forget(account_id: int) -> None:
        """Redis forgets idle buckets by itself (each expires once drained)."""
