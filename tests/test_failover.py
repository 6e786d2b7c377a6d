"""MODEL_FAILOVER (SPEC 6): when every key of every Level failed before the first byte, one
more try with the failover model, checked against AllowModels, billed and marked as served."""

from __future__ import annotations

from tests.fakes import add_key, add_user, chat, set_config

pytest_plugins = ["tests.fakes_fixtures"]

PRICES = {"backup-model": {"input": 100, "output": 100}, "gpt-4o": {"input": 1, "output": 1}}


async def setup(api, make_upstream, **config):
    """gpt-4o on a level-1 key, backup-model on a level-2 key; gpt-4o* fails over to it."""
    main, backup = await make_upstream(), await make_upstream()
    await add_key(api, main, level=1)
    await add_key(api, backup, level=2)
    values = {"LEVEL_MAPPER": "backup*=2", "MODEL_FAILOVER": "gpt-4o*=backup-model"}
    await set_config(api, PRICING=PRICES, **values | config)
    return main, backup


async def usage_of(api, uid: int):
    await api.gw.store.flush()
    return await api.gw.store.fetchall(
        "SELECT model, upstream_model, level, cost_n, failover FROM usage WHERE account_id = ?",
        (uid,),
    )


async def test_every_key_failed_so_the_failover_model_serves(make_gateway, make_upstream):
    api = await make_gateway(max_attempts=2)
    main, backup = await setup(api, make_upstream)
    await add_key(api, main, level=1)  # two keys at level 1: both fail
    uid, ukey = await add_user(api, 10)
    main.fail("500", "503")
    r = await api.post("/v1/chat/completions", chat("gpt-4o"), key=ukey)
    assert r.status == 200, r.body
    assert (len(main.seen), len(backup.seen)) == (2, 1)
    assert backup.last.json["model"] == "backup-model"
    (row,) = await usage_of(api, uid)
    assert (row["model"], row["upstream_model"], row["level"], row["failover"]) == (
        "gpt-4o",
        "backup-model",
        2,
        1,
    )
    assert row["cost_n"] == 17 * 100 * 1000  # 12 + 5 tokens at backup-model's $100/M
    # an answer from the first try is not a failover
    r = await api.post("/v1/chat/completions", chat("gpt-4o"), key=ukey)
    assert r.status == 200 and [u["failover"] for u in await usage_of(api, uid)] == [1, 0]


async def test_streams_fail_over_too(api, make_upstream):
    main, backup = await setup(api, make_upstream)
    uid, ukey = await add_user(api, 10)
    main.fail("429")
    r = await api.post("/v1/chat/completions", chat("gpt-4o", stream=True), key=ukey)
    assert r.status == 200 and r.raw.rstrip().endswith(b"data: [DONE]")
    assert backup.last.json["model"] == "backup-model"
    assert [u["failover"] for u in await usage_of(api, uid)] == [1]


async def test_allow_models_forbids_the_failover(api, make_upstream):
    main, backup = await setup(api, make_upstream)
    pid, pkey = await add_user(api, 100, AllowModels="gpt-4o*")
    uid, ukey = await add_user(api, 10, key=pkey)  # the parent's AllowModels bind it
    main.fail("500")
    r = await api.post("/v1/chat/completions", chat("gpt-4o"), key=ukey)
    assert r.status == 500 and r.body["error"]["code"] == "fake_500"  # the upstream's error
    assert (len(main.seen), len(backup.seen)) == (1, 0)
    assert await usage_of(api, uid) == []


async def test_allow_levels_forbid_it_and_other_errors_never_fail_over(api, make_upstream):
    main, backup = await setup(api, make_upstream)
    uid, ukey = await add_user(api, 10, AllowLevels="1")
    main.fail("500")
    assert (await api.post("/v1/chat/completions", chat("gpt-4o"), key=ukey)).status == 500
    vid, vkey = await add_user(api, 10)
    main.fail("400")  # the client's mistake: passed through, no failover
    assert (await api.post("/v1/chat/completions", chat("gpt-4o"), key=vkey)).status == 400
    main.fail("500")  # no rule for this model
    assert (await api.post("/v1/chat/completions", chat("o3"), key=vkey)).status == 500
    assert len(backup.seen) == 0


async def test_model_failover_config_is_checked(api):
    r = await api.put("/x-config", {"MODEL_FAILOVER": "gpt-4o"})
    assert r.status == 400 and "MODEL_FAILOVER" in r.body["error"]["message"]
    r = await api.put("/x-config", {"MODEL_FAILOVER": {"gpt-4o*": "backup-model"}})
    assert r.status == 200 and r.body["configs"]["MODEL_FAILOVER"] == {"gpt-4o*": "backup-model"}
    assert api.gw.config(1).failover_of("gpt-4o-mini") == "backup-model"
