"""More account fields of the seed service (SPEC 3), through the real gateway: each one
accepted on create and update, validated, shown, logged, persisted and honoured."""

from __future__ import annotations

from tests.fakes import add_key, add_user, chat, set_config
from tests.helpers import start_gateway

pytest_plugins = ["tests.fakes_fixtures"]


async def op_details(api, action: str, target: int) -> list[str]:
    rows = await api.gw.store.fetchall(
        "SELECT details FROM op_logs WHERE action = ? AND target_id = ?", (action, target)
    )
    return [r["details"] for r in rows]


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


# -- every field, across a restart -------------------------------------------------
async def test_fields_persist_across_a_restart(aiohttp_server, tmp_path):
    path = tmp_path / "fields.db"
    api = await start_gateway(aiohttp_server, path)
    uid, ukey = await add_user(api, 10)
    fields = {"Suspended": True, "AllowLevels": "1 3"}
    assert (await api.put(f"/x-users/{uid}", fields)).status == 200
    await api.close()
    api = await start_gateway(aiohttp_server, path)
    try:
        shown = (await api.get(f"/x-users/{uid}")).body
        assert {k: shown[k] for k in fields} == fields
        assert api.gw.state.accounts[uid].level_set == {1, 3}
        assert (await api.get("/x-users", key=ukey)).error_code == "account_suspended"
    finally:
        await api.close()
