"""A request's money, in one place: hold before the upstream, settle after it.

hold:   estimate (list price x Factor) -> reserve it (the balance floor) -> HardLimit
        of every account of the chain -> count it as held by the chain.
settle: usage (or estimates where it is missing) -> cost -> give back the hold ->
        debit -> month spend -> usage record queued -> token buckets charged -> hooks.

Used by relay.py (one hold per request), realtime.py (one hold per response of the
session) and admission.py (steps 8 and 9: `admit`). Amounts are nano base units, as in
ledger.py. With `redis` set (`shared`, hotstate/plane.py) the hold and the rate limits
are one Redis round trip and so is the settlement; this module still prices the request
and builds its usage record.
"""

from __future__ import annotations

import math
import time

from . import ledger, months, pricing, providers
from .context import RequestContext
from .errors import ApiError
from .store.ops import UsageRecord

MAX_DELTA_N = 2**53 - 1  # hotstate.redis.MAX_DELTA_N (not imported: redis is optional)


def cost_usd(ctx: RequestContext, prompt: int, completion: int, cached=0, cache_write=0) -> float:
    """The cost formula: the owner's price table x the account's Factor, in base dollars."""
    price = ctx.config.prices(ctx.upstream_model or ctx.model)
    return pricing.cost_usd(price, prompt, completion, cached, cache_write) * ctx.account.factor


class Billing:
    """`gw.billing`: the data plane's holds and settlements of one gateway."""

    def __init__(self, gw) -> None:
        self.gw = gw
        self.settings = gw.settings
        self.shared = None  # hotstate.plane.Plane when the money lives in Redis

    async def admit(self, ctx: RequestContext) -> None:
        """Steps 8 and 9: hold the estimate (balance, HardLimits), then the rate limits;
        403/429 otherwise (a hold taken before a 429 is released by `release`)."""
        if self.shared is not None:
            await self.shared.admit(ctx, self.estimate_n(ctx))
            return
        self.hold(ctx)
        ctx.limits = await self.gw.limiter.admit(ctx.account, ctx.config.model_limits, ctx.model)

    # -- hold --------------------------------------------------------------------
    def estimate_n(self, ctx: RequestContext) -> int:
        """Prompt estimate plus the completion cap times the answers asked for (`n`,
        `best_of`, images), at list price x Factor."""
        cap, copies = self.settings.default_max_tokens, ctx.copies  # a form's n
        if isinstance(ctx.payload, dict):
            for name in providers.MAX_TOKENS_FIELDS:
                value = _positive(ctx.payload.get(name))
                if value:
                    cap = value
                    break
            copies = max(_positive(ctx.payload.get(f)) for f in providers.COPIES_FIELDS) or 1
        ctx.prompt_estimate = max(ctx.prompt_estimate, 1)
        usd = cost_usd(ctx, ctx.prompt_estimate, cap * copies)
        return math.ceil(usd * ledger.NANO)  # a hold rounds up

    def hold(self, ctx: RequestContext) -> None:
        """Reserve the estimate and count it against every HardLimit, or refuse (403)."""
        acc = ctx.account
        estimate_n = self.estimate_n(ctx)
        if not self._reserve(acc, estimate_n):
            raise ApiError(
                403,
                "insufficient_balance",
                f"the balance ({ledger.balance(acc):.4f}, less requests in flight) cannot cover "
                "this request; recharge the account or lower max_tokens",
            )
        over = ledger.over_hard_limit(acc.chain, estimate_n, months.current())
        if over is not None:
            ledger.release(acc, estimate_n)
            whose = "this account's" if over is acc else "an account above this one's"
            raise ApiError(
                403,
                "hard_limit_reached",
                f"this month's spend, with requests in flight, would pass {whose} HardLimit"
                f" of {over.hard_limit:g}; ask for a higher limit or wait for next month",
            )
        ledger.hold(acc.chain, estimate_n)
        ctx.reserved_n, ctx.held = estimate_n, acc.chain

    async def hold_again(self, ctx: RequestContext) -> bool:
        """A realtime session's next response: reserve again, counted as held by the
        chain like the first; False when the balance no longer covers it."""
        acc = ctx.account
        estimate_n = self.estimate_n(ctx)
        if self.shared is not None:
            return await self.shared.hold_again(ctx, estimate_n)
        if not self._reserve(acc, estimate_n):
            return False
        ledger.hold(acc.chain, estimate_n)
        ctx.reserved_n, ctx.held = estimate_n, acc.chain
        return True

    def _reserve(self, acc, estimate_n: int) -> bool:
        return ledger.reserve(acc, estimate_n, ledger.to_n(self.settings.call_floor, acc.rates))

    def release(self, ctx: RequestContext) -> None:
        """Give back what `hold` took; safe on every path, any number of times."""
        if ctx.reserved_n:
            if self.shared is not None:
                self.shared.release(ctx)
                return
            ledger.release(ctx.account, ctx.reserved_n)
            ledger.hold(ctx.held, -ctx.reserved_n)
            ctx.reserved_n = 0

    def settle_deleted(self, acc) -> None:
        """A deleted account's last request ended: its rest goes to the nearest live ancestor."""
        if self.shared is None:
            if ops := self.gw.ledger.settle_deleted(acc):
                self.gw.store.submit(ops)
            return
        self.shared.settle_deleted(acc)

    # -- settle ------------------------------------------------------------------
    def settle(self, ctx: RequestContext, scanner, complete: bool) -> None:
        """Bill the answer once: release the hold, debit the real cost, queue the usage row."""
        if ctx.billed:
            return
        ctx.billed = True
        shared = self.shared
        if shared is None:
            self.release(ctx)
        _tokens(ctx, scanner, complete)
        acc = ctx.account
        ctx.cost_n = ledger.cost_n(
            cost_usd(
                ctx,
                ctx.prompt_tokens,
                ctx.completion_tokens,
                ctx.cached_tokens,
                ctx.cache_write_tokens,
            )
        )
        if shared is not None:
            ctx.cost_n = min(ctx.cost_n, MAX_DELTA_N)  # what one Redis delta carries exactly
        ctx.cost = ledger.from_n(ctx.cost_n, acc.rates)
        ledger.count_spend(acc, ctx.cost_n, months.current())
        gw = self.gw
        tokens = ctx.prompt_tokens + ctx.completion_tokens
        if shared is not None:
            shared.settle(ctx, _usage_record(ctx), tokens)  # hold, debit, buckets: one trip
        else:
            gw.store.submit_usage(_usage_record(ctx), gw.ledger.spend(acc, ctx.cost_n))
            if ctx.limits:
                gw.limiter.charge(ctx.limits, tokens)
        if gw.hooks.on_usage:
            gw.hooks.on_usage.fire(ctx)  # a raising hook is logged and skipped


def _tokens(ctx: RequestContext, scanner, complete: bool) -> None:
    """Usage from the answer; estimates (marked) where it is missing or the answer was cut."""
    protocol = ctx.plan.upstream if ctx.plan is not None else ctx.protocol
    counts = providers.normalize_usage(protocol.usage, scanner.usage) if scanner.usage else None
    p, c, cached, write = counts or (0, 0, 0, 0)
    ctx.estimated = counts is None or not complete
    if ctx.estimated:
        p = p or ctx.prompt_estimate
        c = max(c, scanner.estimate_completion())
    ctx.prompt_tokens, ctx.completion_tokens = p, c
    ctx.cached_tokens, ctx.cache_write_tokens = cached, write


def _usage_record(ctx: RequestContext) -> UsageRecord:
    acc = ctx.account
    return UsageRecord(
        time.time(),
        acc.id,
        acc.owner_acc.id,
        acc.dna,
        ctx.model,
        ctx.upstream_model,
        ctx.level,
        ctx.key.id if ctx.key else 0,
        ctx.path,
        ctx.prompt_tokens,
        ctx.completion_tokens,
        ctx.cached_tokens,
        ctx.cost,
        ctx.cost_n,
        ctx.status,
        (time.perf_counter() - ctx.started) * 1000.0,
        int(ctx.estimated),
        ctx.request_id,
        int(ctx.failover),
    )


def _positive(value) -> int:
    """A positive integer field of the body, else 0 (the upstream refuses what is wrong)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
