"""POST /x-conf: an owner's batch pushed down to every descendant, all or nothing, through
the real gateway."""

from __future__ import annotations

from tests.fakes import add_key, add_user, chat

pytest_plugins = ["tests.fakes_fixtures"]

BATCH = {
    "ModelMapper": "alias-*=gpt-4o-mini",
    "LevelMapper": {"gpt-4o*": 1},
    "ModelLimits": {"gpt-4o-mini": {"rpm": 2}},
    "Resources": "/v1/chat/completions",
    "AllowLevels": "1",
}


def own(acc) -> tuple:
    return acc.model_mapper, acc.level_mapper, acc.model_limits, acc.resources, acc.allow_levels


async def logs(api, action: str) -> list:
    return await api.gw.store.fetchall("SELECT * FROM op_logs WHERE action = ?", (action,))


async def test_a_batch_reaches_every_descendant_in_one_unit(api, upstream):
    await add_key(api, upstream)
    pid, pkey = await add_user(api, 100, AllowLevels="1 2 3")
    cid, ckey = await add_user(api, 10, key=pkey, ModelLimits={"o1": {"rpm": 1}})
    sid, _ = await add_user(api, 10)
    r = await api.post("/x-conf", BATCH)
    assert r.status == 200, r.body
    assert r.body["accounts"] == [pid, cid, sid] and r.body["fields"] == sorted(BATCH)
    state = api.gw.state
    for uid in (pid, cid, sid):
        acc = state.accounts[uid]
        assert acc.model_mapper == {"alias-*": "gpt-4o-mini"} and acc.level_mapper == {"gpt-4o*": 1}
        assert (acc.resources, acc.allow_levels) == ("/v1/chat/completions", "1")
    # ModelLimits merge into what each account had
    assert state.accounts[cid].model_limits == {"o1": {"rpm": 1}, "gpt-4o-mini": {"rpm": 2}}
    # one op-log entry, and the store holds what memory holds
    (log,) = await logs(api, "cascade_config")
    assert log["operator_id"] == 1 and "3 descendants" in log["details"]
    row = await api.gw.store.fetchone(
        "SELECT model_mapper, resources, allow_levels FROM accounts WHERE id = ?", (cid,)
    )
    assert tuple(row) == ('{"alias-*":"gpt-4o-mini"}', "/v1/chat/completions", "1")
    # the data plane honours it at once
    assert (await api.post("/v1/chat/completions", chat("alias-x"), key=ckey)).status == 200
    assert upstream.last.json["model"] == "gpt-4o-mini"
    r = await api.post("/v1/embeddings", {"model": "m", "input": "x"}, key=ckey)
    assert r.error_code == "resource_not_allowed"
    for _ in range(2):
        assert (await api.post("/v1/chat/completions", chat(), key=ckey)).status == 200
    r = await api.post("/v1/chat/completions", chat(), key=ckey)
    assert r.error_code == "rate_limit_exceeded"  # rpm 2 for gpt-4o-mini
    info = (await api.get("/dashboard/x-user-logs", key=api.root)).body
    assert any(e["action"] == "cascade_config" for e in info["logs"])


async def test_one_bad_value_refuses_the_whole_batch(api):
    pid, pkey = await add_user(api, 100, AllowLevels="1 2")
    cid, _ = await add_user(api, 10, key=pkey)
    before = {uid: own(api.gw.state.accounts[uid]) for uid in (pid, cid)}
    for bad, words in (
        (BATCH | {"AllowLevels": "1 two"}, "AllowLevels"),
        (BATCH | {"ModelMapper": "broken"}, "ModelMapper"),
        (BATCH | {"ModelLimits": {"gpt-4o": {"rpm": -1}}}, "ModelLimits"),
        (BATCH | {"Resources": "not-a-path"}, "Resources"),
        (BATCH | {"RPM": 5}, "RPM"),  # not a field the cascade carries
    ):
        r = await api.post("/x-conf", bad)
        assert r.status == 400 and words in r.body["error"]["message"], r.body
        assert {uid: own(api.gw.state.accounts[uid]) for uid in (pid, cid)} == before
    assert await logs(api, "cascade_config") == []
    rows = await api.gw.store.fetchall("SELECT allow_levels FROM accounts WHERE id = ?", (pid,))
    assert rows[0]["allow_levels"] == "1 2"


async def test_owners_only_and_a_tenant_keeps_its_own_subtree(api):
    tid, tkey = await add_user(api, 100, Owner=True)
    tcid, tckey = await add_user(api, 10, key=tkey)
    uid, ukey = await add_user(api, 10)
    r = await api.post("/x-conf", {"AllowLevels": "2"}, key=ukey)
    assert (r.status, r.error_code) == (403, "permission_denied")
    # the tenant's cascade stays in its subtree
    r = await api.post("/x-conf", {"AllowLevels": "2"}, key=tkey)
    assert r.status == 200 and r.body["accounts"] == [tcid]
    state = api.gw.state
    assert state.accounts[tcid].allow_levels == "2" and state.accounts[uid].allow_levels == ""
    # root's reaches its own accounts, not the tenant or the tenant's
    r = await api.post("/x-conf", {"AllowLevels": "3"})
    assert r.status == 200 and r.body["accounts"] == [uid]
    assert state.accounts[tid].allow_levels == "" and state.accounts[tcid].allow_levels == "2"
