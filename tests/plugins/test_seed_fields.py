"""More account fields of the seed service (SPEC 3), through the real gateway: each one
accepted on create and update, validated, shown, logged, persisted and honoured."""

from __future__ import annotations

from tests.fakes import add_key, add_user, chat
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


async def test_suspended_persists_across_a_restart(aiohttp_server, tmp_path):
    path = tmp_path / "susp.db"
    api = await start_gateway(aiohttp_server, path)
    uid, ukey = await add_user(api, 10)
    assert (await api.put(f"/x-users/{uid}", {"Suspended": True})).status == 200
    await api.close()
    api = await start_gateway(aiohttp_server, path)
    try:
        assert api.gw.state.accounts[uid].suspended is True
        assert (await api.get("/x-users", key=ukey)).error_code == "account_suspended"
    finally:
        await api.close()
