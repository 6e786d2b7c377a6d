"""/dashboard/*: status, info, own bill and logs; each caller sees only itself."""

import time

import pytest

from tests.plugins.reports import add_usage, midnight, new_user

LOG_SQL = (
    "INSERT INTO op_logs (ts, operator_id, target_id, action, details, status)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


@pytest.fixture
async def pair(api):
    """Two siblings under root, the first with a child of its own."""
    a = await new_user(api, "alpha-team", 100, RPM=60, AllowModels="gpt-4o*")
    a1 = await new_user(api, "alpha-dev", 10, key=a[1])
    b = await new_user(api, "beta-team", 50)
    return {"a": a, "a1": a1, "b": b}


async def test_user_status(api, pair):
    aid, akey = pair["a"]
    r = await api.get("/dashboard/x-user-status", key=akey)
    assert r.status == 200
    # alpha-team gave 10 to its child out of its 100
    assert r.body == {
        "object": "user_status",
        "id": aid,
        "name": "alpha-team",
        "email": "alpha-team@example.com",
        "balance": 90.0,
        "dna": f".1.{aid}.",
    }
    root = await api.get("/dashboard/x-user-status")
    assert root.body["id"] == 1 and root.body["dna"] == ".1." and root.body["balance"] is None


async def test_user_info(api, pair):
    aid, akey = pair["a"]
    now = time.time() - 1
    await add_usage(
        api,
        [
            (aid, now, {"prompt": 100, "completion": 10, "cached": 3, "base": 0.5}),
            (aid, now, {"prompt": 50, "completion": 5, "base": 0.25}),
            (aid, midnight("2020-01-01"), {"base": 7.0}),  # long ago: in neither total
            (pair["a1"][0], now, {"base": 1.0}),  # the child's usage is not mine
        ],
    )
    r = await api.get("/dashboard/x-user-info", key=akey)
    assert r.status == 200, r.body
    body = r.body
    assert set(body) == {"object", "user", "balance", "limits", "usage", "whitelists", "mappers"}
    assert body["user"]["ID"] == aid and body["user"]["Name"] == "alpha-team"
    assert body["user"]["DNA"] == f".1.{aid}." and body["user"]["Children"] == 1
    assert "SecretKey" not in body["user"] and akey not in r.raw.decode()
    assert body["balance"]["Balance"] == 90.0
    (grant,) = body["balance"]["CreditBalance"]
    assert grant["Amount"] == 100.0 and grant["Remaining"] == 90.0
    assert grant["ExpiresAt"].endswith("Z")
    limits = body["limits"]
    assert (limits["RPM"], limits["HardLimit"], limits["SoftLimit"]) == (60, 1000, 800)
    assert body["whitelists"]["AllowModels"] == "gpt-4o*"
    expected = {
        "requests": 2,
        "prompt_tokens": 150,
        "completion_tokens": 15,
        "cached_tokens": 3,
        "total_tokens": 165,
        "cost": 0.75,
    }
    assert body["usage"] == {"today": expected, "month": expected}


async def test_own_bill_is_only_the_callers_usage(api, pair):
    (aid, akey), (a1, _) = pair["a"], pair["a1"]
    d = midnight("2025-03-05")
    await add_usage(
        api,
        [
            (aid, d + 5, {"model": "gpt-4o", "prompt": 10, "completion": 1, "base": 0.2}),
            (aid, d + 6, {"model": "o1", "prompt": 20, "completion": 2, "base": 0.3}),
            (a1, d + 7, {"base": 4.0}),
        ],
    )
    r = await api.get("/dashboard/bill", key=akey, params={"d": "2025-03-05"})
    assert r.status == 200, r.body
    assert set(r.body) == {"object", "data", "total_usage"}
    (day,) = r.body["data"]
    assert day["aggregation_timestamp"] == int(d) and day["n_requests"] == 2
    assert set(day["usage_details"]) == {"gpt-4o", "o1"}
    assert r.body["total_usage"] == {"requests": 2, "cost": 0.5}
    # root's own bill holds none of its descendants' usage
    root = await api.get("/dashboard/bill", params={"start": "2025-03-01", "end": "2025-03-31"})
    assert root.body["data"] == [] and root.body["total_usage"]["requests"] == 0


@pytest.mark.parametrize(
    "params", [{"d": "2025-02-30"}, {"days": "0"}, {"s": "2025-03-02", "e": "2025-03-01"}]
)
async def test_own_bill_bad_dates(api, pair, params):
    r = await api.get("/dashboard/bill", key=pair["a"][1], params=params)
    assert r.status == 400 and r.body["error"]["type"] == "invalid_request_error"


async def test_logs_show_mine_and_those_made_on_me(api, pair):
    (aid, akey), (a1, a1key), (b, _) = pair["a"], pair["a1"], pair["b"]
    r = await api.get("/dashboard/x-user-logs", key=akey)
    assert r.status == 200, r.body
    seen = {(log["action"], log["operator_id"], log["target_id"]) for log in r.body["logs"]}
    # root created me; I created my child; root creating beta-team is not mine to see
    assert seen == {("add_user", 1, aid), ("add_user", aid, a1)}
    assert r.body["total"] == 2 and r.body["page"] == 1 and r.body["size"] == 24
    assert r.body["has_more"] is False
    log = r.body["logs"][0]
    assert set(log) == {
        "id",
        "action",
        "operator_id",
        "target_id",
        "details",
        "status",
        "created_at",
    }
    assert len(log["created_at"]) == 19 and log["created_at"][10] == " "
    child = await api.get("/dashboard/x-user-logs", key=a1key)
    assert {(x["operator_id"], x["target_id"]) for x in child.body["logs"]} == {(aid, a1)}
    assert b not in {x["target_id"] for x in child.body["logs"]}


async def test_logs_on_a_key_with_my_id_stay_hidden(api, pair):
    aid, akey = pair["a"]
    # a provider key whose ID equals alpha-team's account ID: root's key log is not alpha's
    await api.gw.store.write([(LOG_SQL, (time.time(), 1, aid, "add_key", "level 1 x", "success"))])
    r = await api.get("/dashboard/x-user-logs", key=akey, params={"action": "add_key"})
    assert r.status == 200 and r.body["logs"] == [] and r.body["total"] == 0


async def test_logs_paging_and_filters(api, pair):
    aid, akey = pair["a"]
    now = time.time()
    rows = [(LOG_SQL, (now, aid, 999, "update_user", f"n={i}", "success")) for i in range(30)]
    rows.append((LOG_SQL, (now, aid, 998, "update_user", "failed one", "failed")))
    await api.gw.store.write(rows)
    first = await api.get("/dashboard/x-user-logs", key=akey)
    assert first.body["total"] == 33 and len(first.body["logs"]) == 24 and first.body["has_more"]
    assert first.body["logs"][0]["details"] == "failed one"  # newest first
    last = await api.get("/dashboard/x-user-logs", key=akey, params={"page": "2"})
    assert len(last.body["logs"]) == 9 and last.body["has_more"] is False
    ids = [x["id"] for x in first.body["logs"] + last.body["logs"]]
    assert len(set(ids)) == 33
    small = await api.get("/dashboard/x-user-logs", key=akey, params={"size": "5", "page": "3"})
    assert len(small.body["logs"]) == 5 and small.body["has_more"] is True
    failed = await api.get("/dashboard/x-user-logs", key=akey, params={"status": "failed"})
    assert [x["target_id"] for x in failed.body["logs"]] == [998]
    by_target = await api.get("/dashboard/x-user-logs", key=akey, params={"target_id": "999"})
    assert by_target.body["total"] == 30
    by_action = await api.get("/dashboard/x-user-logs", key=akey, params={"action": "add_user"})
    assert by_action.body["total"] == 2
    beyond = await api.get("/dashboard/x-user-logs", key=akey, params={"page": "99"})
    assert beyond.status == 200 and beyond.body["logs"] == [] and beyond.body["has_more"] is False


@pytest.mark.parametrize(
    "params",
    [
        {"page": "0"},
        {"size": "0"},
        {"size": "101"},
        {"page": "-1"},
        {"size": "ten"},
        {"target_id": "abc"},
        {"action": "DROP TABLE"},
        {"bogus": "1"},
    ],
)
async def test_logs_bad_input(api, pair, params):
    r = await api.get("/dashboard/x-user-logs", key=pair["a"][1], params=params)
    assert r.status == 400, (params, r.body)
    assert r.body["error"]["type"] == "invalid_request_error"


async def test_dashboard_needs_a_valid_key(api):
    for path in ("/dashboard/x-user-status", "/dashboard/x-user-info", "/dashboard/bill"):
        r = await api.get(path, key="sk-Xvs-not-a-key")
        assert r.status == 401 and r.error_code == "invalid_api_key"
