"""/x-bill: the seed's shape, SQL aggregation by day/model/account, date ranges, subtree scope."""

import time
from datetime import UTC, datetime

import pytest
from xaiproxy_plugins import billing

from tests import fakes
from tests.fakes import PROMPT_TOKENS, add_user, chat, ready
from tests.plugins.reports import add_usage, midnight, new_user
from xaiproxy.ledger import NANO
from xaiproxy.store.sqlite import scope_sql

make_upstream, upstream = fakes.make_upstream, fakes.upstream  # fixtures


async def test_seed_shape_and_aggregation(api, tree):
    (a, _), (a1, _), (b, _) = tree["a"], tree["a1"], tree["b"]
    d1, d2 = midnight("2025-01-10"), midnight("2025-01-11")
    await add_usage(
        api,
        [
            (a, d1 + 10, {"prompt": 100, "completion": 10, "cached": 5, "base": 0.5}),
            (a, d1 + 20, {"prompt": 200, "completion": 20, "base": 0.25}),
            (a1, d1 + 30, {"model": "claude-3-5", "prompt": 50, "completion": 5, "base": 0.25}),
            (b, d2 + 40, {"prompt": 1000, "completion": 100, "cached": 7, "base": 1.0}),
            (b, midnight("2025-02-01"), {"base": 9.0}),  # after the range
        ],
    )
    r = await api.get("/x-bill", params={"start": "2025-01-10", "end": "2025-01-31"})
    assert r.status == 200, r.body
    assert set(r.body) == {"object", "data", "total_usage", "usage_users"}
    assert r.body["object"] == "list"
    day1, day2 = r.body["data"]
    assert day1 == {
        "aggregation_timestamp": int(d1),
        "n_requests": 3,
        "n_context_tokens_total": 350,
        "n_generated_tokens_total": 35,
        "n_cached_tokens_total": 5,
        "usage_details": {
            "gpt-4o": {"requests": 2, "prompt": 300, "completion": 30, "cost": 0.75},
            "claude-3-5": {"requests": 1, "prompt": 50, "completion": 5, "cost": 0.25},
        },
    }
    assert day2["aggregation_timestamp"] == int(d2) and day2["n_cached_tokens_total"] == 7
    assert r.body["total_usage"] == {"requests": 4, "cost": 2.0}
    users = {u["id"]: u for u in r.body["usage_users"]}
    assert set(users) == {a, a1, b}
    assert [u["id"] for u in r.body["usage_users"]][0] == b  # most expensive first
    assert users[a] == {
        "id": a,
        "name": "alpha-team",
        "email": "alpha-team@example.com",
        "total_requests": 2,
        "total_cost": 0.75,
        "usage_analysis": {"request_percentage": 50.0, "cost_percentage": 37.5},
    }


async def test_default_is_this_month_and_days_counts_back(api, tree):
    a = tree["a"][0]
    now = time.time()
    month_start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    before = month_start.timestamp() - 3600
    await add_usage(api, [(a, now - 1), (a, before, {"base": 5.0})])
    r = await api.get("/x-bill")
    assert r.status == 200 and r.body["total_usage"] == {"requests": 1, "cost": 0.01}
    r = await api.get("/x-bill", params={"days": "1"})
    assert r.body["total_usage"]["requests"] == 1
    day = datetime.fromtimestamp(before, UTC).strftime("%Y-%m-%d")
    r = await api.get("/x-bill", params={"d": day})
    assert r.body["total_usage"] == {"requests": 1, "cost": 5.0}
    days_back = int((now - before) // 86400) + 2
    r = await api.get("/x-bill", params={"days": str(days_back)})
    assert r.body["total_usage"]["requests"] == 2


async def test_scope_is_the_callers_subtree(api, tree):
    (a, a_key), (a1, a1_key), (b, b_key) = tree["a"], tree["a1"], tree["b"]
    now = time.time() - 1
    await add_usage(api, [(1, now), (a, now), (a1, now), (a1, now), (b, now)])
    mine = await api.get("/x-bill", key=a_key)
    assert mine.status == 200
    assert {u["id"] for u in mine.body["usage_users"]} == {a, a1}
    assert mine.body["total_usage"]["requests"] == 3
    leaf = await api.get("/x-bill", key=a1_key)
    assert {u["id"] for u in leaf.body["usage_users"]} == {a1}
    everything = await api.get("/x-bill")
    assert everything.body["total_usage"]["requests"] == 5
    # u narrows to an account's subtree; outside the caller's subtree is 404
    narrowed = await api.get("/x-bill", key=a_key, params={"user": "alpha-dev"})
    assert {u["id"] for u in narrowed.body["usage_users"]} == {a1}
    assert (await api.get("/x-bill", key=a_key, params={"u": "alpha-team"})).status == 200
    for outside in ("beta-team", str(b), "root", "beta-team@example.com", "nobody-here"):
        r = await api.get("/x-bill", key=a_key, params={"u": outside})
        assert r.status == 404 and r.error_code == "not_found", outside
    r = await api.get("/x-bill", key=a1_key, params={"u": "alpha-team"})
    assert r.status == 404
    assert (await api.get("/x-bill", key=b_key)).body["usage_users"] == [
        {
            "id": b,
            "name": "beta-team",
            "email": "beta-team@example.com",
            "total_requests": 1,
            "total_cost": 0.01,
            "usage_analysis": {"request_percentage": 100.0, "cost_percentage": 100.0},
        }
    ]


async def test_filters_select_matching_accounts_below_the_caller(api, tree):
    (a, a_key), (a1, _), (b, _) = tree["a"], tree["a1"], tree["b"]
    now = time.time() - 1
    await add_usage(api, [(a, now), (a1, now), (b, now)])
    level2 = await api.get("/x-bill", params={"user": "L2"})
    assert {u["id"] for u in level2.body["usage_users"]} == {a1}
    level1 = await api.get("/x-bill", params={"u": "L1"})
    assert {u["id"] for u in level1.body["usage_users"]} == {a, b}
    # a filter never reaches outside the caller's subtree (nor the caller itself)
    r = await api.get("/x-bill", key=a_key, params={"u": "L1"})
    assert r.status == 200 and r.body["usage_users"] == [] and r.body["data"] == []
    assert r.body["total_usage"] == {"requests": 0, "cost": 0.0}


async def test_costs_are_in_the_callers_units(api):
    cid, ckey = await new_user(api, "rated-user", 10, Rates=2.0)
    await add_usage(api, [(cid, time.time() - 1, {"base": 0.5})])
    assert (await api.get("/x-bill")).body["total_usage"]["cost"] == 0.5
    own = await api.get("/x-bill", key=ckey)
    assert own.body["total_usage"]["cost"] == 1.0
    assert own.body["usage_users"][0]["total_cost"] == 1.0


async def test_deleted_accounts_keep_their_history(api, tree):
    b = tree["b"][0]
    await add_usage(api, [(b, time.time() - 1)])
    assert (await api.delete(f"/x-users/{b}")).status == 200
    r = await api.get("/x-bill")
    assert r.status == 200
    assert r.body["usage_users"][0]["id"] == b and r.body["usage_users"][0]["name"] == ""


@pytest.mark.parametrize(
    "params",
    [
        {"date": "2025-13-01"},
        {"d": "yesterday"},
        {"d": "2025-1-1"},
        {"start": "2025-02-01", "end": "2025-01-01"},
        {"days": "0"},
        {"days": "3661"},
        {"days": "-3"},
        {"days": "ten"},
        {"d": "2025-01-01", "days": "3"},
        {"start": "2000-01-01", "end": "2025-01-01"},
        {"u": "alpha-team", "user": "beta-team"},
        {"s": "2025-01-01", "start": "2025-01-02"},
        {"month": "2025-01"},
        {"u": ""},
    ],
)
async def test_bad_input_is_400(api, tree, params):
    r = await api.get("/x-bill", params=params)
    assert r.status == 400, (params, r.body)
    assert set(r.body["error"]) == {"message", "type", "code"}
    assert r.body["error"]["type"] == "invalid_request_error"


async def test_needs_a_key(api):
    r = await api.get("/x-bill", key="sk-Xvs" + "z" * 45)
    assert r.status == 401 and r.error_code == "invalid_api_key"


async def test_real_requests_show_up_in_the_bill(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api, credit=50)
    for model in ("gpt-4o-mini", "gpt-4o-mini", "gpt-4o"):
        r = await api.post("/v1/chat/completions", chat(model), key=key)
        assert r.status == 200, r.body
    await api.gw.store.flush()
    spent_n = await api.gw.store.scalar(
        "SELECT SUM(cost_n) FROM usage WHERE account_id = ?", (uid,)
    )
    r = await api.get("/x-bill", params={"days": "1"})
    assert r.status == 200
    (day,) = r.body["data"]
    assert day["n_requests"] == 3 and day["n_context_tokens_total"] == 3 * PROMPT_TOKENS
    assert day["usage_details"]["gpt-4o-mini"]["requests"] == 2
    assert r.body["total_usage"] == {"requests": 3, "cost": round(spent_n / NANO, 9)}
    assert [u["id"] for u in r.body["usage_users"]] == [uid]
    own = await api.get("/dashboard/bill", key=key, params={"days": "1"})
    assert own.body["total_usage"] == r.body["total_usage"]


async def test_branch_report_reads_the_rollup_by_dna_index(api, tree):
    for i in range(8):
        await new_user(api, f"filler-{i}", 2)
    (a1, a1_key), (a, _) = tree["a1"], tree["a"]
    scope = billing.scope_for(api.gw, api.gw.state.accounts[a1], None)
    where, params = scope_sql(scope)  # how the SQLite store renders it
    plan = await api.gw.store.fetchall(
        "EXPLAIN QUERY PLAN SELECT SUM(requests) FROM usage_daily WHERE " + where, params
    )
    assert "usage_daily_dna" in " ".join(row[-1] for row in plan)
    await add_usage(api, [(a1, time.time() - 1), (a, time.time() - 1)])
    r = await api.get("/x-bill", key=a1_key)
    assert r.status == 200 and [u["id"] for u in r.body["usage_users"]] == [a1]


async def test_rollup_matches_raw_usage_exactly(api, tree):
    (a1, _), (a, _) = tree["a1"], tree["a"]
    now = time.time()
    await add_usage(api, [(a1, now - 1), (a1, now - 2), (a, now - 86400 * 3), (a, now - 5)])
    raw = await api.gw.store.fetchall(
        "SELECT CAST(ts / 86400 AS INTEGER), account_id, model, COUNT(*), SUM(prompt_tokens),"
        " SUM(completion_tokens), SUM(cost_n) FROM usage GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )
    rolled = await api.gw.store.fetchall(
        "SELECT day, account_id, model, requests, prompt_tokens, completion_tokens, cost_n"
        " FROM usage_daily ORDER BY 1, 2, 3"
    )
    assert [tuple(r) for r in raw] == [tuple(r) for r in rolled] and len(raw) >= 3


async def test_lists_are_bounded_with_an_others_bucket(api):
    from xaiproxy.store import UsageRecord
    from xaiproxy.store.sqlite import USAGE_COLUMNS

    day = midnight("2025-03-05") + 60

    def record(account_id: int, dna: str, model: str, cost_n: int) -> UsageRecord:
        values = {"ts": day, "account_id": account_id, "owner_id": 1, "dna": dna}
        values |= {"model": model, "upstream_model": model, "prompt_tokens": 1}
        values |= {"completion_tokens": 1, "cost_n": cost_n, "path": "", "request_id": ""}
        return UsageRecord._make(values.get(c, 0) for c in USAGE_COLUMNS)

    # 60 models for root itself, and 105 accounts (deleted ones keep their history).
    rows = [record(1, ".1.", f"model-{i:02d}", 1000 + i) for i in range(60)]
    rows += [record(5000 + i, f".1.{5000 + i}.", "gpt-4o", 10 + i) for i in range(105)]
    for row in rows:
        api.gw.store.submit_usage(row, [])
    await api.gw.store.flush()
    r = await api.get("/x-bill", params={"date": "2025-03-05"})
    assert r.status == 200
    (entry,) = r.body["data"]
    details = entry["usage_details"]
    # 61 models: the 50 costliest (gpt-4o, model-59 .. model-11), then the 11 others.
    assert len(details) == 51 and details["others"]["models"] == 11
    assert details["others"]["requests"] == 11
    assert "model-11" in details and "model-10" not in details
    users = r.body["usage_users"]
    assert (
        len(users) == 101 and users[-1]["name"] == "others" and users[-1]["accounts"] == 6
    )  # of 106
    total = r.body["total_usage"]
    assert sum(u["total_requests"] for u in users) == total["requests"] == 165
    assert sum(u["total_cost"] for u in users) == pytest.approx(total["cost"])
