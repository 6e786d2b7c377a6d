"""The upstream request's header lines: client headers filtered as bytes, a key's own
lines built once and rebuilt when the key changes."""

from __future__ import annotations

from tests.fakes import add_key, chat

pytest_plugins = ["tests.fakes_fixtures"]

CHAT = "/v1/chat/completions"


def seen(upstream) -> dict:
    return {k.lower(): v for k, v in upstream.last.headers.items()}


async def test_key_lines_are_built_once_and_again_when_the_key_changes(make_gateway, upstream):
    api = await make_gateway()
    kid = await add_key(api, upstream, Config={"headers": {"x-extra": "1"}})
    heads, key = api.gw.relay.heads, api.gw.state.keys[kid]
    for _ in range(2):
        assert (await api.post(CHAT, chat())).status == 200
    assert seen(upstream)["x-extra"] == "1"
    (entry,) = heads._keys.values()
    assert (await api.post(CHAT, chat())).status == 200
    assert tuple(heads._keys.values()) == (entry,)  # the same lines, not built again

    secret = "sk-upstream-rotated-abcdefghijklmnop"
    r = await api.put(f"/x-keys/{kid}", {"SecretKey": secret, "Config": {"headers": {"x-n": "2"}}})
    assert r.status == 200, r.body
    assert (await api.post(CHAT, chat())).status == 200
    got = seen(upstream)
    assert got["authorization"] == f"Bearer {secret}" and got["x-n"] == "2"
    assert "x-extra" not in got and key.secret == secret


async def test_a_header_the_key_sets_replaces_the_clients(make_gateway, upstream):
    api = await make_gateway()
    await add_key(api, upstream, Config={"headers": {"User-Agent": "ours/1"}})
    headers = {"User-Agent": "theirs/9", "Accept-Encoding": "br", "x-stainless-os": "Linux"}
    assert (await api.post(CHAT, chat(), headers=headers)).status == 200
    raw = [(k.lower(), v) for k, v in upstream.last.headers.items()]
    assert [v for k, v in raw if k == "user-agent"] == ["ours/1"]
    assert [v for k, v in raw if k == "accept-encoding"] == ["identity"]
    assert ("x-stainless-os", "Linux") in raw
