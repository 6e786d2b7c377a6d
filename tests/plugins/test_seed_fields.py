"""More account fields of the seed service (SPEC 3), through the real gateway: each one
accepted on create and update, validated, shown, logged, persisted and honoured."""

from __future__ import annotations

import sqlite3

from tests.fakes import add_key, add_user, chat, set_config
from tests.helpers import ROOT_KEY, start_gateway
from xaiproxy import ledger, months
from xaiproxy.credentials import hash_key
from xaiproxy.store.sqlite_schema import MIGRATIONS

pytest_plugins = ["tests.fakes_fixtures"]


async def op_details(api, action: str, target: int) -> list[str]:
    rows = await api.gw.store.fetchall(
        "SELECT details FROM op_logs WHERE action = ? AND target_id = ?", (action, target)
    )
    return [r["details"] for r in rows]


# -- ModelMapper / LevelMapper ------------------------------------------------------
async def sent_model(api, fake, key: str, model: str) -> str:
    r = await api.post("/v1/chat/completions", chat(model), key=key)
    assert r.status == 200, r.body
    return fake.last.json["model"]


async def test_the_nearest_model_mapper_wins(api, upstream):
    await add_key(api, upstream)
    await set_config(api, MODEL_MAPPER="gpt-3.5*=gpt-4o-mini")
    pid, pkey = await add_user(api, 100, ModelMapper="gpt-3.5*=parent-model, alias-*=gpt-4o")
    cid, ckey = await add_user(api, 10, key=pkey)
    r = await api.put(f"/x-users/{cid}", {"ModelMapper": {"gpt-3.5-turbo": "child-model"}})
    assert r.status == 200 and r.body["User"]["Updates"] == {
        "ModelMapper": {"gpt-3.5-turbo": "child-model"}
    }
    sid, skey = await add_user(api, 10)
    assert await sent_model(api, upstream, ckey, "gpt-3.5-turbo") == "child-model"
    assert await sent_model(api, upstream, ckey, "gpt-3.5-x") == "parent-model"
    assert await sent_model(api, upstream, ckey, "alias-a") == "gpt-4o"
    assert await sent_model(api, upstream, pkey, "gpt-3.5-turbo") == "parent-model"
    assert await sent_model(api, upstream, skey, "gpt-3.5-turbo") == "gpt-4o-mini"
    # the owner locks accounts' own mappers: only its config counts
    await set_config(api, LOCK_USER_MAPPER=True)
    assert (await api.get("/x-config")).body["configs"]["LOCK_USER_MAPPER"] is True
    assert await sent_model(api, upstream, ckey, "gpt-3.5-turbo") == "gpt-4o-mini"
    assert await sent_model(api, upstream, ckey, "alias-a") == "alias-a"
    await set_config(api, LOCK_USER_MAPPER="false")
    assert await sent_model(api, upstream, ckey, "gpt-3.5-turbo") == "child-model"
    # "" clears the account's own rules
    assert (await api.put(f"/x-users/{cid}", {"ModelMapper": ""})).status == 200
    assert await sent_model(api, upstream, ckey, "gpt-3.5-turbo") == "parent-model"


async def test_the_nearest_level_mapper_wins(api, make_upstream):
    one, two = await make_upstream(), await make_upstream()
    await add_key(api, one, level=1)
    await add_key(api, two, level=2)
    pid, pkey = await add_user(api, 100, LevelMapper="gpt-4o*=2")
    cid, ckey = await add_user(api, 10, key=pkey, LevelMapper={"gpt-4o-mini": 1})
    await sent_model(api, two, ckey, "gpt-4o")  # the parent's rule
    await sent_model(api, one, ckey, "gpt-4o-mini")  # its own rule beats the parent's
    await sent_model(api, two, pkey, "gpt-4o-mini")
    assert (len(one.seen), len(two.seen)) == (1, 2)
    await set_config(api, LOCK_USER_MAPPER=True)
    await sent_model(api, one, pkey, "gpt-4o")  # the config has no rule: level 1
    assert (len(one.seen), len(two.seen)) == (2, 2)


async def test_mapper_fields_are_checked_shown_and_logged(api):
    uid, ukey = await add_user(api, 10)
    for body, words in (
        ({"ModelMapper": "no-pair"}, "ModelMapper: 'no-pair' is not a k=v pair"),
        ({"LevelMapper": "gpt-4o=high"}, "LevelMapper: level 'high'"),
        ({"ModelMapper": 5}, "ModelMapper"),
        ({"LevelMapper": {f"m{i}": 1 for i in range(201)}}, "LevelMapper"),
    ):
        r = await api.put(f"/x-users/{uid}", body)
        assert r.status == 400 and words in r.body["error"]["message"], r.body
    r = await api.put("/x-config", {"LOCK_USER_MAPPER": "maybe"})
    assert r.status == 400 and "LOCK_USER_MAPPER" in r.body["error"]["message"]
    acc = api.gw.state.accounts[uid]
    assert (acc.model_mapper, acc.level_mapper) == ({}, {})
    fields = {"ModelMapper": {"gpt-3.5*": "gpt-4o-mini"}, "LevelMapper": {"claude*": 3}}
    assert (await api.put(f"/x-users/{uid}", fields)).status == 200
    assert {k: (await api.get(f"/x-users/{uid}")).body[k] for k in fields} == fields
    info = (await api.get("/dashboard/x-user-info", key=ukey)).body
    assert info["mappers"] == fields
    assert "changed LevelMapper, ModelMapper" in await op_details(api, "update_user", uid)


# -- Suspended -------------------------------------------------------------------
async def test_suspended_parent_stops_itself_but_not_its_child(api, upstream):
    await add_key(api, upstream)
    pid, pkey = await add_user(api, 100)
    cid, ckey = await add_user(api, 10, key=pkey)
    r = await api.put(f"/x-users/{pid}", {"Suspended": True})
    assert r.status == 200 and r.body["User"]["Updates"] == {"Suspended": True}

    for reply in (
        await api.post("/v1/chat/completions", chat(), key=pkey),
        await api.get("/x-users", key=pkey),
        await api.get("/dashboard/x-user-info", key=pkey),
    ):
        assert (reply.status, reply.error_code) == (403, "account_suspended"), reply.body
        assert reply.body["error"]["type"] == "permission_error"
    # its child keeps working, data plane and management
    assert (await api.post("/v1/chat/completions", chat(), key=ckey)).status == 200
    assert (await api.get("/dashboard/x-user-info", key=ckey)).status == 200

    shown = (await api.get(f"/x-users/{pid}")).body
    assert shown["Suspended"] is True
    assert "changed Suspended" in (await op_details(api, "update_user", pid))
    assert (await api.put(f"/x-users/{pid}", {"Suspended": False})).status == 200
    assert (await api.post("/v1/chat/completions", chat(), key=pkey)).status == 200


async def test_any_ancestor_suspends_and_the_field_is_checked(api):
    pid, pkey = await add_user(api, 100)
    cid, ckey = await add_user(api, 10, key=pkey, Suspended=True)  # on create too
    assert api.gw.state.accounts[cid].suspended is True
    assert (await api.get("/x-users", key=ckey)).error_code == "account_suspended"
    r = await api.put(f"/x-users/{cid}", {"Suspended": "yes"}, key=pkey)
    assert r.status == 400 and "Suspended" in r.body["error"]["message"]
    assert api.gw.state.accounts[cid].suspended is True
    assert (await api.put(f"/x-users/{cid}", {"Suspended": False}, key=pkey)).status == 200
    assert (await api.get("/x-users", key=ckey)).status == 200


# -- AllowLevels -----------------------------------------------------------------
async def two_levels(api, make_upstream):
    """Keys at level 1 and 2; gpt-4o routes to 2, o3* to 3; SWITCH_OVER 2 -> 1."""
    one, two = await make_upstream(), await make_upstream()
    await add_key(api, one, level=1)
    await add_key(api, two, level=2)
    await set_config(api, LEVEL_MAPPER="gpt-4o=2, o3*=3", SWITCH_OVER="2=1")
    return one, two


async def test_a_parents_allow_levels_narrow_its_childs(api, make_upstream):
    one, two = await two_levels(api, make_upstream)
    pid, pkey = await add_user(api, 100)
    cid, ckey = await add_user(api, 10, key=pkey, AllowLevels="1,2")
    assert (await api.post("/v1/chat/completions", chat("gpt-4o"), key=ckey)).status == 200
    assert (len(one.seen), len(two.seen)) == (0, 1)

    r = await api.put(f"/x-users/{pid}", {"AllowLevels": [1]})
    assert r.status == 200 and r.body["User"]["Updates"] == {"AllowLevels": "1"}
    # level 2 is now outside the parent's list: SWITCH_OVER takes the child to level 1
    assert (await api.post("/v1/chat/completions", chat("gpt-4o"), key=ckey)).status == 200
    assert (len(one.seen), len(two.seen)) == (1, 1)
    await api.gw.store.flush()
    rows = await api.gw.store.fetchall(
        "SELECT level FROM usage WHERE account_id = ? ORDER BY id", (cid,)
    )
    assert [r["level"] for r in rows] == [2, 1]
    # a model whose level chain has no allowed level is refused before any upstream call
    r = await api.post("/v1/chat/completions", chat("o3-mini"), key=ckey)
    assert (r.status, r.error_code) == (403, "level_not_allowed"), r.body
    assert (len(one.seen), len(two.seen)) == (1, 1)
    # the child itself still has its own list; the parent's own requests are narrowed too
    assert (await api.post("/v1/chat/completions", chat("gpt-4o"), key=pkey)).status == 200
    assert (len(one.seen), len(two.seen)) == (2, 1)


async def test_switch_over_never_leaves_allow_levels(api, make_upstream):
    one, two = await two_levels(api, make_upstream)
    uid, ukey = await add_user(api, 10, AllowLevels="2")
    two.fail("500")
    r = await api.post("/v1/chat/completions", chat("gpt-4o"), key=ukey)
    assert r.status == 500 and (len(one.seen), len(two.seen)) == (0, 1)
    uid2, ukey2 = await add_user(api, 10)  # unrestricted: the failure moves on to level 1
    two.fail("500")
    assert (await api.post("/v1/chat/completions", chat("gpt-4o"), key=ukey2)).status == 200
    assert (len(one.seen), len(two.seen)) == (1, 2)


async def test_allow_levels_edits_and_errors(api):
    uid, ukey = await add_user(api, 10, AllowLevels="1 2 3")
    acc = api.gw.state.accounts[uid]
    assert (await api.put(f"/x-users/{uid}", {"AllowLevels": "-2"})).status == 200
    assert acc.allow_levels == "1 3" and acc.level_set == {1, 3}
    for bad in ("x", "100", "-1.5", ["1", "two"]):
        r = await api.put(f"/x-users/{uid}", {"AllowLevels": bad})
        assert r.status == 400 and r.body["error"]["message"].startswith("AllowLevels"), r.body
    assert acc.allow_levels == "1 3"
    assert (await api.get(f"/x-users/{uid}")).body["AllowLevels"] == "1 3"
    info = (await api.get("/dashboard/x-user-info", key=ukey)).body
    assert info["whitelists"]["AllowLevels"] == "1 3"
    assert "changed AllowLevels" in await op_details(api, "update_user", uid)
    assert (await api.put(f"/x-users/{uid}", {"AllowLevels": "*"})).status == 200
    assert acc.allow_levels == "" and acc.level_set is None
    assert (await api.put(f"/x-users/{uid}", {"AllowLevels": "-*"})).status == 200
    assert acc.level_set == frozenset()


# -- AutoQuota ---------------------------------------------------------------------
def limits(api, uid) -> tuple:
    acc = api.gw.state.accounts[uid]
    return acc.auto_quota, acc.credit_granted, acc.hard_limit, acc.soft_limit


async def test_auto_quota_follows_a_recharge_and_a_refund(api, upstream):
    await add_key(api, upstream)
    uid, ukey = await add_user(api, 10)
    assert limits(api, uid) == (True, 10, 100, 80)
    r = await api.put(f"/x-users/{uid}", {"CreditGranted": 5})
    assert r.status == 200 and limits(api, uid) == (True, 15, 150, 120)
    assert (r.body["User"]["Updates"]["HardLimit"], r.body["User"]["Updates"]["SoftLimit"]) == (
        150,
        120,
    )
    r = await api.put(f"/x-users/{uid}", {"CreditGranted": -6})
    assert r.status == 200 and limits(api, uid) == (True, 9, 90, 72)
    # the data plane reads the new HardLimit at once: 85 spent this month leaves no room
    acc = api.gw.state.accounts[uid]
    acc.month, acc.tree_spend_n = months.current(), ledger.to_n(85, acc.rates)
    assert (await api.post("/v1/chat/completions", chat(), key=ukey)).status == 200
    assert (await api.put(f"/x-users/{uid}", {"CreditGranted": -1})).status == 200
    assert limits(api, uid) == (True, 8, 80, 64)
    r = await api.post("/v1/chat/completions", chat(), key=ukey)
    assert (r.status, r.error_code) == (403, "hard_limit_reached"), r.body
    row = await api.gw.store.fetchone(
        "SELECT auto_quota, credit_granted, hard_limit, soft_limit FROM accounts WHERE id = ?",
        (uid,),
    )
    assert tuple(row) == (1, 8, 80, 64)


async def test_explicit_limits_turn_auto_quota_off_and_true_turns_it_back_on(api):
    uid, ukey = await add_user(api, 10)
    assert (await api.put(f"/x-users/{uid}", {"HardLimit": 50})).status == 200
    assert limits(api, uid) == (False, 10, 50, 40)
    assert (await api.put(f"/x-users/{uid}", {"CreditGranted": 5})).status == 200
    assert limits(api, uid) == (False, 15, 50, 40)
    assert (await api.get(f"/x-users/{uid}")).body["AutoQuota"] is False
    info = (await api.get("/dashboard/x-user-info", key=ukey)).body
    assert info["limits"]["AutoQuota"] is False
    r = await api.put(f"/x-users/{uid}", {"AutoQuota": True, "HardLimit": 10})
    assert r.status == 400 and "AutoQuota" in r.body["error"]["message"]
    assert limits(api, uid) == (False, 15, 50, 40)
    r = await api.put(f"/x-users/{uid}", {"AutoQuota": True})
    assert r.status == 200 and limits(api, uid) == (True, 15, 150, 120)
    assert r.body["User"]["Updates"] == {"AutoQuota": True, "HardLimit": 150, "SoftLimit": 120}
    assert "changed AutoQuota" in await op_details(api, "update_user", uid)
    # SoftLimit alone turns it off too; so does AutoQuota false on create
    assert (await api.put(f"/x-users/{uid}", {"SoftLimit": 100})).status == 200
    assert limits(api, uid) == (False, 15, 150, 100)
    vid, _ = await add_user(api, 10, AutoQuota=False)
    assert (await api.put(f"/x-users/{vid}", {"CreditGranted": 10})).status == 200
    assert limits(api, vid) == (False, 20, 100, 80)


async def test_auto_quota_stays_under_the_parents_hard_limit(api):
    pid, pkey = await add_user(api, 100, HardLimit=120)
    cid, _ = await add_user(api, 10, key=pkey)
    assert limits(api, cid) == (True, 10, 100, 80)
    r = await api.put(f"/x-users/{cid}", {"CreditGranted": 5}, key=pkey)
    assert r.status == 200 and limits(api, cid) == (True, 15, 120, 96)


async def test_migration_keeps_hand_set_limits_off_auto_quota(aiohttp_server, tmp_path):
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    for number, script in enumerate(MIGRATIONS[:7], start=1):  # before AutoQuota
        conn.executescript(f"{script}\nPRAGMA user_version={number};")
    sql = (
        "INSERT INTO accounts (id, name, email, parent_id, dna, level, hard_limit, soft_limit,"
        " credit_granted, key_hash, key_prefix, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'sk-Xvs', 0, 0)"
    )
    conn.execute(sql, (1, "root", "root@localhost", None, ".1.", 0, 0, 0, 0, hash_key(ROOT_KEY)))
    conn.execute(sql, (2, "derived", "d@example.com", 1, ".1.2.", 1, 100, 80, 10, "h2"))
    conn.execute(sql, (3, "by-hand", "h@example.com", 1, ".1.3.", 1, 70, 56, 10, "h3"))
    conn.commit()
    conn.close()
    api = await start_gateway(aiohttp_server, db)
    try:
        state = api.gw.state
        assert (state.accounts[2].auto_quota, state.accounts[3].auto_quota) == (True, False)
    finally:
        await api.close()


# -- every field, across a restart -------------------------------------------------
async def test_fields_persist_across_a_restart(aiohttp_server, tmp_path):
    path = tmp_path / "fields.db"
    api = await start_gateway(aiohttp_server, path)
    uid, ukey = await add_user(api, 10)
    fields = {"Suspended": True, "AllowLevels": "1 3", "AutoQuota": False}
    fields |= {"ModelMapper": {"a*": "b"}, "LevelMapper": {"b": 2}}
    assert (await api.put(f"/x-users/{uid}", fields)).status == 200
    await api.close()
    api = await start_gateway(aiohttp_server, path)
    try:
        shown = (await api.get(f"/x-users/{uid}")).body
        assert {k: shown[k] for k in fields} == fields
        acc = api.gw.state.accounts[uid]
        assert acc.level_set == {1, 3} and acc.model_rules[0][0]("a1")
        assert (await api.get("/x-users", key=ukey)).error_code == "account_suspended"
    finally:
        await api.close()
