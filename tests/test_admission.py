"""Admission (SPEC 5, steps 1-8): each check refuses with its own code and changes nothing."""

from __future__ import annotations

import orjson

from tests.fakes import (
    add_user,
    anthropic_body,
    chat,
    ready,
    set_config,
    update_user,
)

pytest_plugins = ["tests.fakes_fixtures"]

CHAT = "/v1/chat/completions"


async def test_missing_or_wrong_key_is_401(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    r = await api.post(CHAT, chat(), key="")
    assert (r.status, r.error_code) == (401, "invalid_api_key")
    r = await api.post(CHAT, chat(), key="sk-Xvs" + "x" * 45)
    assert (r.status, r.error_code) == (401, "invalid_api_key")
    assert r.headers["x-request-id"]
    assert upstream.seen == []


async def test_x_api_key_header_authenticates(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    _, key = await add_user(api)
    r = await api.post("/v1/messages", anthropic_body(), key="", headers={"x-api-key": key})
    assert r.status == 200, r.body
    r = await api.post("/v1/messages", anthropic_body(), key="", headers={"x-api-key": "nope"})
    assert (r.status, r.error_code) == (401, "invalid_api_key")
    assert r.body["type"] == "error"  # Anthropic's SDK reads the top-level type


async def test_disabled_ancestor_stops_the_child(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    parent_id, parent_key = await add_user(api, credit=100)
    _, child_key = await add_user(api, credit=5, key=parent_key)
    assert (await api.post(CHAT, chat(), key=child_key)).status == 200
    await update_user(api, parent_id, Status=False)
    r = await api.post(CHAT, chat(), key=child_key)
    assert (r.status, r.error_code) == (403, "account_disabled")


async def test_allow_ips_of_account_and_ancestors(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api, AllowIPs="10.0.0.0/8, 2001:db8::/32")
    r = await api.post(CHAT, chat(), key=key)
    assert (r.status, r.error_code) == (403, "ip_not_allowed")
    await update_user(api, uid, AllowIPs="127.0.0.1/32 ::1")
    assert (await api.post(CHAT, chat(), key=key)).status == 200


async def test_forwarded_for_only_from_trusted_proxies(make_gateway, upstream):
    xff = {"X-Forwarded-For": "203.0.113.7"}
    api = await ready(make_gateway, upstream)
    _, key = await add_user(api, AllowIPs="203.0.113.0/24")
    r = await api.post(CHAT, chat(), key=key, headers=xff)
    assert r.error_code == "ip_not_allowed"  # 127.0.0.1 is not a trusted proxy here

    trusted = await make_gateway(trusted_proxies=("127.0.0.1",))
    from tests.fakes import add_key

    await add_key(trusted, upstream)
    _, key = await add_user(trusted, AllowIPs="203.0.113.0/24")
    assert (await trusted.post(CHAT, chat(), key=key, headers=xff)).status == 200
    spoof = {"X-Forwarded-For": "203.0.113.7, 198.51.100.1"}
    r = await trusted.post(CHAT, chat(), key=key, headers=spoof)
    assert r.error_code == "ip_not_allowed"  # the nearest untrusted hop is the client


async def test_resources_of_account_and_owner(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    _, key = await add_user(api, Resources="/v1/chat/*")
    assert (await api.post(CHAT, chat(), key=key)).status == 200
    r = await api.post("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}, key=key)
    assert (r.status, r.error_code) == (403, "resource_not_allowed")
    await set_config(api, RESOURCES="/v1/embeddings")
    r = await api.post(CHAT, chat(), key=key)
    assert (r.status, r.error_code) == (403, "resource_not_allowed")


async def test_body_checks(make_gateway, upstream):
    api = await ready(make_gateway, upstream, max_body_bytes=2000)
    r = await api.post(CHAT, chat(content="x" * 5000))
    assert (r.status, r.error_code) == (413, "request_too_large")
    assert "2000" in r.body["error"]["message"]
    r = await api.post(CHAT, data=b"{not json", headers={"Content-Type": "application/json"})
    assert (r.status, r.error_code) == (400, "invalid_json")
    r = await api.post(CHAT, {"messages": []})
    assert (r.status, r.error_code) == (400, "missing_model")
    r = await api.post(CHAT, [1, 2])
    assert r.status == 400
    r = await api.post(CHAT, {"model": 5})
    assert r.status == 400
    assert upstream.seen == []


async def test_allow_models_checks_the_requested_model(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    await set_config(api, MODEL_MAPPER="alias-mini=gpt-4o-mini")
    _, key = await add_user(api, AllowModels="alias-*")
    r = await api.post(CHAT, chat("gpt-4o-mini"), key=key)
    assert (r.status, r.error_code) == (403, "model_not_allowed")
    r = await api.post(CHAT, chat("alias-mini"), key=key)
    assert r.status == 200
    assert upstream.last.json["model"] == "gpt-4o-mini"


async def test_insufficient_balance_and_release(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api, credit=2)  # call floor is 1: almost nothing to reserve
    acc = api.gw.state.accounts[uid]
    r = await api.post(CHAT, chat("gpt-4o", max_tokens=2_000_000), key=key)
    assert (r.status, r.error_code) == (403, "insufficient_balance")
    assert acc.reserved_n == 0
    r = await api.post(CHAT, chat("gpt-4o", max_tokens=100), key=key)
    assert r.status == 200
    assert acc.reserved_n == 0


async def test_hard_limit_reached(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api, credit=10, HardLimit=0.01)
    big = {"x-fake-usage": '{"completion_tokens": 20000}'}  # bills $0.012
    # 0 spent + about $0.0025 estimated fits under the limit
    assert (await api.post(CHAT, chat(), key=key, headers=big)).status == 200
    r = await api.post(CHAT, chat(), key=key)
    assert (r.status, r.error_code) == (403, "hard_limit_reached")
    assert api.gw.state.accounts[uid].reserved_n == 0


async def test_refusals_are_error_format_and_change_nothing(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api, AllowModels="gpt-4o")
    acc = api.gw.state.accounts[uid]
    before = api.gw.ledger.balance_n(acc)
    r = await api.post(CHAT, chat("o3"), key=key)
    assert set(r.body["error"]) == {"message", "type", "code"}
    assert r.body["error"]["type"] == "permission_error"
    await api.gw.store.flush()
    assert await api.gw.store.scalar("SELECT COUNT(*) FROM usage") == 0
    assert api.gw.ledger.balance_n(acc) == before and acc.reserved_n == 0


async def test_odd_header_bytes_are_a_clean_401(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    raw = orjson.dumps(chat())
    r = await api.post(CHAT, data=raw, key="", headers={"Authorization": "Bearer \u00e9\u00ff"})
    assert (r.status, r.error_code) == (401, "invalid_api_key")
