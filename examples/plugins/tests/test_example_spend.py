"""GET /x-spend, tested with xaiproxy's installed test kit alone (fixtures from `xaiproxy.testing`)."""

from datetime import timedelta

from xaiproxy.api import usage
from xaiproxy.testing import add_key, add_usage, add_user, chat, flush


async def test_spend_per_day_of_the_caller_only(make_gateway):
    api = await make_gateway(extra_plugins=["spend"])  # the built-ins stay loaded
    uid, key = await add_user(api, credit=50)
    other, _ = await add_user(api, credit=50)
    today = usage.today()
    await add_usage(api, uid, cost=0.5, day=today)
    await add_usage(api, uid, cost=0.25, prompt=10, completion=5, day=today - timedelta(days=2))
    await add_usage(api, uid, cost=9.0, day=today - timedelta(days=3))  # outside the span
    await add_usage(api, other, cost=1.0, day=today)  # someone else's
    r = await api.get("/x-spend", key=key, params={"days": "3"})
    assert r.status == 200, r.body
    assert r.body["days"] == [
        {"date": str(today - timedelta(days=2)), "requests": 1, "tokens": 15, "cost": 0.25},
        {"date": str(today - timedelta(days=1)), "requests": 0, "tokens": 0, "cost": 0.0},
        {"date": str(today), "requests": 1, "tokens": 120, "cost": 0.5},
    ]
    assert r.body["total_cost"] == 0.75


async def test_a_real_request_shows_after_a_flush(make_gateway, upstream):
    api = await make_gateway(extra_plugins=["spend"])
    await add_key(api, upstream)
    uid, key = await add_user(api, credit=50)
    assert (await api.post("/v1/chat/completions", chat(), key=key)).status == 200
    await flush(api)  # usage is written by the batched writer: readable after its commit
    r = await api.get("/x-spend?days=1", key=key)
    assert r.body["days"][0]["requests"] == 1 and r.body["total_cost"] > 0


async def test_days_is_checked_against_the_max_days_option(make_gateway):
    api = await make_gateway(extra_plugins=["spend"], plugin_options={"spend": {"max_days": 5}})
    r = await api.get("/x-spend?days=6")
    assert (r.status, r.body["error"]["message"]) == (400, "days: must be <= 5")
    r = await api.get("/x-spend?days=two")
    assert (r.status, r.body["error"]["message"]) == (400, "days: must be of type integer")
