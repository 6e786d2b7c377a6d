"""The Tier-2 `user` rule, tested with xaiproxy's installed test kit alone."""

from xaiproxy.testing import add_key, add_user, anthropic_body, chat

CHAT = "/v1/chat/completions"


async def test_tier2_requests_without_user_get_a_clear_400(make_gateway, upstream):
    api = await make_gateway(extra_plugins=["require-user"])
    await add_key(api, upstream)
    t2_id, t2 = await add_user(api, credit=10, Tier=2)
    _, t1 = await add_user(api, credit=10, Tier=1)
    r = await api.post(CHAT, chat(), key=t2)
    assert (r.status, r.body["error"]["code"]) == (400, "missing_user")
    assert "Tier 2 must name the end user" in r.body["error"]["message"]
    assert not upstream.seen and api.gw.state.accounts[t2_id].reserved_n == 0
    assert (await api.post(CHAT, chat(user="customer-42"), key=t2)).status == 200
    assert (await api.post(CHAT, chat(), key=t1)).status == 200  # other tiers are free
    body = anthropic_body(metadata={"user_id": "customer-42"})
    assert (await api.post("/v1/messages", body, key=t2)).status == 200
