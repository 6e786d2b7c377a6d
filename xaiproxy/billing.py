"""A request's money, in one place: hold before the upstream, settle after it.

hold:   estimate (list price x Factor) -> reserve it (the balance floor) -> HardLimit
        of every account of the chain -> count it as held by the chain.
settle: usage (or estimates where it is missing) -> cost -> give back the hold ->
        debit -> month spend -> usage record queued -> token buckets charged -> hooks.

Used by relay.py (one hold per request), realtime.py (one hold per response of the
session) and admission.py (step 8). Amounts are nano base units, as in ledger.py.
"""

from __future__ import annotations

import math
import time

from . import ledger, months, pricing, providers
from .context import RequestContext
from .errors import ApiError
from .store.ops import UsageRecord


def cost_usd(ctx: RequestContext, prompt: int, completion: int, cached=0, cache_write=0) -> float:
    """The cost formula: the owner's price table x the account's Factor, in base dollars."""
    price = ctx.config.prices(ctx.upstream_model or ctx.model)
    return pricing.cost_usd(price, prompt, completion, cached, cache_write) * ctx.account.factor


class Billing:
    """`gw.billing`: the data plane's holds and settlements of one gateway."""

    def __init__(self, gw) -> None:
        self.gw = gw
        self.settings = gw.settings

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

    def hold_again(self, ctx: RequestContext) -> bool:
        """A realtime session's next response: reserve again, counted as held by the
        chain like the first; False when the balance no longer covers it."""
        acc = ctx.account
        estimate_n = self.estimate_n(ctx)
        if not self._reserve(acc, estimate_n):
            return False
        ledger.hold(acc.chain, estimate_n)
        ctx.reserved_n, ctx.held = estimate_n, acc.chain
        return True

    def _reserve(self, acc, estimate_n: int) -> bool:
        return ledger.reserve(acc, estimate_n, ledger.to_n(self.settings.call_floor, acc.rates))

    @staticmethod
    def release(ctx: RequestContext) -> None:
        """Give back what `hold` took; safe on every path, any number of times."""
        if ctx.reserved_n:
            ledger.release(ctx.account, ctx.reserved_n)
            ledger.hold(ctx.held, -ctx.reserved_n)
            ctx.reserved_n = 0

    # -- settle ------------------------------------------------------------------
    def settle(self, ctx: RequestContext, scanner, complete: bool) -> None:
        """Bill the answer once: release the hold, debit the real cost, queue the usage row."""
        if ctx.billed:
            return
        ctx.billed = True
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
        ctx.cost = ledger.from_n(ctx.cost_n, acc.rates)
        ledger.count_spend(acc, ctx.cost_n, months.current())
        gw = self.gw
        gw.store.submit_usage(_usage_record(ctx), gw.ledger.spend(acc, ctx.cost_n))
        if ctx.limits:
            gw.limiter.charge(ctx.limits, ctx.prompt_tokens + ctx.completion_tokens)
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
