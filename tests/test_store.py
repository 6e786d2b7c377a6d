"""The batched writer's usage lane keeps the usage_daily rollup itself, one upsert per group."""

from __future__ import annotations

from xaiproxy.store import UsageRecord
from xaiproxy.store.sqlite import USAGE_COLUMNS
from xaiproxy.store.sqlite import SQLiteStore as Store

DAY = 86400


def row(
    ts: float, account: int, model: str, prompt: int, cost_n: int, dna: str = ".1."
) -> UsageRecord:
    values = {
        "ts": ts,
        "account_id": account,
        "owner_id": 1,
        "dna": dna,
        "model": model,
        "prompt_tokens": prompt,
        "completion_tokens": 2,
        "cached_tokens": 1,
        "cost_n": cost_n,
    }
    return UsageRecord._make(
        values.get(c, "" if c in ("path", "request_id") else 0) for c in USAGE_COLUMNS
    )


async def test_usage_folded_into_daily_rollup_per_batch(tmp_path):
    store = Store(str(tmp_path / "s.db"), flush_interval=0.01)
    await store.open()
    try:
        assert not await store.fetchall("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        batches = [
            [row(10 * DAY + 5, 2, "m1", 10, 100), row(10 * DAY + 6, 2, "m1", 20, 200)],
            [row(10 * DAY + 7, 2, "m1", 1, 1, ".1.2."), row(11 * DAY, 2, "m1", 5, 50)],
            [row(10 * DAY + 8, 3, "m1", 7, 70), row(10 * DAY + 9, 2, "m2", 3, 30)],
        ]
        for batch in batches:
            for r in batch:
                store.submit_usage(r, [])
            await store.flush()
        raw = await store.fetchall(
            "SELECT CAST(ts / 86400 AS INTEGER), account_id, model, COUNT(*), SUM(prompt_tokens),"
            " SUM(completion_tokens), SUM(cached_tokens), SUM(cost_n) FROM usage"
            " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        )
        daily = await store.fetchall(
            "SELECT day, account_id, model, requests, prompt_tokens, completion_tokens,"
            " cached_tokens, cost_n FROM usage_daily ORDER BY 1, 2, 3"
        )
        assert [tuple(r) for r in daily] == [tuple(r) for r in raw]
        assert tuple(daily[0]) == (10, 2, "m1", 3, 31, 6, 3, 301)
        dna = await store.scalar("SELECT dna FROM usage_daily WHERE day = 10 AND account_id = 2")
        assert dna == ".1.2."  # the latest row's, as the trigger kept it
    finally:
        await store.close()


async def test_row_by_row_fallback_folds_only_the_rows_it_stores(tmp_path):
    """A bad row fails the lane's savepoint: each row is then written alone with its own
    fold, so the rollup still matches the stored rows exactly (the bad one in neither)."""
    store = Store(str(tmp_path / "s.db"), flush_interval=0.01)
    await store.open()
    try:
        store.submit_usage(row(10 * DAY + 1, 2, "m1", 10, 100), [])
        store.submit_usage(row(10 * DAY + 2, 2, "m1", 2**64, 1), [])  # OverflowError when bound
        store.submit_usage(row(10 * DAY + 3, 2, "m1", 5, 50), [])
        await store.flush()
        assert await store.scalar("SELECT COUNT(*) FROM usage") == 2
        daily = await store.fetchall(
            "SELECT day, account_id, model, requests, prompt_tokens, cost_n FROM usage_daily"
        )
        assert [tuple(r) for r in daily] == [(10, 2, "m1", 2, 15, 150)]
    finally:
        await store.close()
