"""The daily usage rollup of one batch, folded in memory by every backend's writer."""

from __future__ import annotations

from .ops import UsageRecord


def daily_rollup(usage: list[UsageRecord]) -> list[tuple]:
    """Usage rows summed per (day, account, model): the batch's usage_daily upserts.

    Each is (day, account_id, model, dna, requests, prompt, completion, cached, cost_n),
    the DNA of the group's last row, in first-seen order."""
    groups: dict[tuple, list] = {}
    for r in usage:
        key = (int(r.ts // 86400), r.account_id, r.model)
        g = groups.get(key)
        if g is None:
            groups[key] = [
                r.dna,
                1,
                r.prompt_tokens,
                r.completion_tokens,
                r.cached_tokens,
                r.cost_n,
            ]
        else:
            g[0] = r.dna
            g[1] += 1
            g[2] += r.prompt_tokens
            g[3] += r.completion_tokens
            g[4] += r.cached_tokens
            g[5] += r.cost_n
    return [(*key, *g) for key, g in groups.items()]
