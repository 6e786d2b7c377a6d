"""/v1/realtime: key from header or subprotocol, admission at connect, billing per
response.done, a clean cut-off when the balance runs out, upstream closed with the client."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest

from tests.fakes import add_key, add_user, set_config
from tests.vendor_fakes import RealtimeFake

pytest_plugins = ["tests.fakes_fixtures", "tests.vendor_fixtures"]

MODEL = "gpt-realtime"
# $1 per 1k output tokens: a response of 10 output tokens costs 0.01.
PRICING = {MODEL: {"input": 100, "output": 1000, "cached_input": 10}}


async def served(make_gateway, make_vendor, credit=100.0, floor=0.5, max_tokens=100, **user):
    fake = await make_vendor(RealtimeFake)
    api = await make_gateway(default_max_tokens=max_tokens, call_floor=floor)
    await add_key(api, fake, Type="openai")
    await set_config(api, PRICING=PRICING)
    uid, key = await add_user(api, credit=credit, **user)
    return api, fake, uid, key


async def next_of(ws, kind: str) -> dict:
    while True:
        event = await asyncio.wait_for(ws.receive_json(), 5)
        if event["type"] == kind:
            return event


async def rows(api, uid):
    await api.gw.store.flush()
    sql = (
        "SELECT path, prompt_tokens, completion_tokens, cached_tokens, cost_n, estimated FROM usage"
    )
    return [tuple(r) for r in await api.gw.store.fetchall(sql + " WHERE account_id = ?", (uid,))]


async def test_header_key_session_billed_per_response(make_gateway, make_vendor):
    api, fake, uid, key = await served(make_gateway, make_vendor)
    acc = api.gw.state.accounts[uid]
    before = api.gw.ledger.balance_n(acc)
    url = f"{api.url}/v1/realtime?model={MODEL}"
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(
            url, headers={"Authorization": f"Bearer {key}", "OpenAI-Beta": "realtime=v1"}
        ) as ws,
    ):
        assert (await next_of(ws, "session.created"))["session"]["model"] == MODEL
        for _ in range(2):
            await ws.send_json({"type": "response.create"})
            done = await next_of(ws, "response.done")
            assert done["response"]["usage"]["output_tokens"] == 10
    seen = fake.last.headers
    assert seen["Authorization"].startswith("Bearer sk-upstream-") and key not in str(seen)
    assert seen["OpenAI-Beta"] == "realtime=v1" and fake.last.path == f"/v1/realtime?model={MODEL}"
    cost_n = round((15 * 100 + 5 * 10 + 10 * 1000) / 1e6 * 1e9)
    assert await rows(api, uid) == [("/v1/realtime", 20, 10, 5, cost_n, 0)] * 2
    assert before - api.gw.ledger.balance_n(acc) == 2 * cost_n
    await asyncio.sleep(0.05)
    assert acc.reserved_n == 0 and fake.closed == 1  # the hold is given back; upstream closed


async def test_browser_subprotocol_key(make_gateway, make_vendor):
    api, fake, uid, key = await served(make_gateway, make_vendor)
    protocols = ("realtime", f"openai-insecure-api-key.{key}", "openai-beta.realtime-v1")
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(f"{api.url}/v1/realtime?model={MODEL}", protocols=protocols) as ws,
    ):
        assert ws.protocol == "realtime"
        await ws.send_json({"type": "response.create"})
        await next_of(ws, "response.done")
    assert key not in str(fake.last.headers)
    assert len(await rows(api, uid)) == 1


@pytest.mark.parametrize(
    ("headers", "query", "status", "code"),
    [
        ({"Authorization": "Bearer sk-wrong"}, f"model={MODEL}", 401, "invalid_api_key"),
        (None, "", 400, "missing_model"),
        (None, "model=gpt-4o-mini-realtime", 403, "model_not_allowed"),
    ],
)
async def test_admission_at_connect(make_gateway, make_vendor, headers, query, status, code):
    api, fake, _, key = await served(make_gateway, make_vendor, AllowModels="gpt-realtime")
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await s.ws_connect(
                f"{api.url}/v1/realtime?{query}",
                headers=headers or {"Authorization": f"Bearer {key}"},
            )
        assert exc.value.status == status
        async with s.get(
            f"{api.url}/v1/realtime?{query}",
            headers={
                **(headers or {"Authorization": f"Bearer {key}"}),
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },  # fmt: skip
        ) as r:
            assert (await r.json())["error"]["code"] == code
    assert fake.sessions == 0


async def test_balance_cut_off_sends_an_error_and_closes(make_gateway, make_vendor):
    # Credit 2, floor 1.9: the hold is 0.0101 (1 + 10 tokens); each response costs 0.01155;
    # after the eighth the next hold would dip below the floor.
    api, fake, uid, key = await served(
        make_gateway, make_vendor, credit=2.0, floor=1.9, max_tokens=10
    )
    events = []
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(
            f"{api.url}/v1/realtime?model={MODEL}", headers={"Authorization": f"Bearer {key}"}
        ) as ws,
    ):
        await ws.send_json({"type": "response.create"})
        while True:
            msg = await asyncio.wait_for(ws.receive(), 5)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            events.append(msg.json())
            if events[-1]["type"] == "response.done":
                with contextlib.suppress(ConnectionResetError):
                    await ws.send_json({"type": "response.create"})
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1008)
    assert [e["type"] for e in events].count("response.done") == 8
    assert events[-1] == {
        "type": "error",
        "error": {
            "type": "permission_error",
            "code": "insufficient_balance",
            "message": "the balance no longer covers another response; recharge the account",
        },
    }
    billed = await rows(api, uid)
    assert len(billed) == 8 and all(r[2] == 10 for r in billed)
    await asyncio.sleep(0.05)
    acc = api.gw.state.accounts[uid]
    assert acc.reserved_n == 0 and fake.closed == 1
    assert [a.tree_held_n for a in acc.chain] == [0] * len(acc.chain)  # HardLimit holds too
    assert api.gw.ledger.balance_n(acc) == round(2e9) - sum(r[4] for r in billed)
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        async with aiohttp.ClientSession() as s:
            await s.ws_connect(
                f"{api.url}/v1/realtime?model={MODEL}", headers={"Authorization": f"Bearer {key}"}
            )
    assert exc.value.status == 403


async def test_upstream_closed_when_the_client_goes(make_gateway, make_vendor):
    api, fake, _, key = await served(make_gateway, make_vendor)
    s = aiohttp.ClientSession()
    ws = await s.ws_connect(
        f"{api.url}/v1/realtime?model={MODEL}", headers={"Authorization": f"Bearer {key}"}
    )
    await next_of(ws, "session.created")
    assert fake.sessions == 1 and fake.closed == 0
    await s.close()  # drops the connection without a close handshake
    for _ in range(100):
        if fake.closed:
            break
        await asyncio.sleep(0.02)
    assert fake.closed == 1


async def test_a_429_handshake_rests_the_key_by_the_retry_policy(make_gateway, make_vendor):
    api, fake, _, key = await served(make_gateway, make_vendor)
    fake.busy = 1
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        async with aiohttp.ClientSession() as s:
            await s.ws_connect(
                f"{api.url}/v1/realtime?model={MODEL}", headers={"Authorization": f"Bearer {key}"}
            )
    assert exc.value.status == 502
    (pkey,) = api.gw.state.keys.values()
    assert pkey.sleep_reason == "rate_limited"
    assert 25 < pkey.sleep_until - time.time() <= 30  # the upstream's Retry-After


# -- with the money in Redis (SPEC 12) --------------------------------------------------
async def redis_served(make_gateway, make_vendor, url, credit=100.0, floor=0.5, max_tokens=100):
    fake = await make_vendor(RealtimeFake)
    api = await make_gateway(default_max_tokens=max_tokens, call_floor=floor, redis=url)
    await add_key(api, fake, Type="openai")
    await set_config(api, PRICING=PRICING)
    uid, key = await add_user(api, credit=credit)
    return api, fake, uid, key


async def until_closed(ws, events: list) -> aiohttp.WSMessage:
    """Ask for responses one after another until the gateway closes; its close message."""
    await ws.send_json({"type": "response.create"})
    while True:
        msg = await asyncio.wait_for(ws.receive(), 5)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return msg
        events.append(msg.json())
        if events[-1]["type"] == "response.done":
            with contextlib.suppress(ConnectionResetError):
                await ws.send_json({"type": "response.create"})


async def test_redis_holds_and_settles_each_response_and_cuts_off_alike(
    make_gateway, make_vendor, redis_url
):
    api, fake, uid, key = await redis_served(
        make_gateway, make_vendor, redis_url, credit=2.0, floor=1.9, max_tokens=10
    )
    hot = api.gw.hot
    events = []
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(
            f"{api.url}/v1/realtime?model={MODEL}", headers={"Authorization": f"Bearer {key}"}
        ) as ws,
    ):
        await next_of(ws, "session.created")
        assert (await hot.balance(uid))[1] == round(0.0101e9)  # the session's hold, in Redis
        msg = await until_closed(ws, events)
    # The same cut-off as in memory: eight responses, then an error event and 1008.
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1008)
    assert [e["type"] for e in events].count("response.done") == 8
    assert events[-1]["error"]["code"] == "insufficient_balance"
    await api.gw.shared.drain()
    billed = await rows(api, uid)
    assert len(billed) == 8 and all(r[2] == 10 for r in billed)
    balance, reserved = await hot.balance(uid)
    assert reserved == 0 and fake.closed == 1
    assert balance == round(2e9) - sum(r[4] for r in billed)
    acc = api.gw.state.accounts[uid]
    for a in acc.chain[1:]:  # the HardLimit holds of the chain, released in Redis too
        assert int(await hot.redis.get(f"xai:a:{a.id}:held") or 0) == 0
    assert api.gw.ledger.balance_n(acc) == balance and acc.reserved_n == 0
    assert (await api.gw.ledger.audit(api.gw.store))["ok"]


async def test_redis_down_mid_session_closes_with_state_unavailable(
    make_gateway, make_vendor, own_redis
):
    api, fake, uid, key = await redis_served(make_gateway, make_vendor, own_redis.url())
    events = []
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(
            f"{api.url}/v1/realtime?model={MODEL}", headers={"Authorization": f"Bearer {key}"}
        ) as ws,
    ):
        await next_of(ws, "session.created")
        plane = api.gw.shared.plane
        first = set(plane.holding)
        await ws.send_json({"type": "response.create"})
        await next_of(ws, "response.done")
        for _ in range(500):  # until the next response is held
            if set(plane.holding) not in (first, set()):
                break
            await asyncio.sleep(0.01)
        own_redis.kill()
        msg = await until_closed(ws, events)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1013)  # try again later
    assert events[-1] == {
        "type": "error",
        "error": {
            "type": "api_error",
            "code": "state_unavailable",
            "message": "the gateway's shared state is unavailable; retry shortly",
        },
    }
    assert [e["type"] for e in events].count("response.done") == 1
    # Both responses are billed: the second's settle went to the store without Redis.
    assert len(await rows(api, uid)) == 2
    await asyncio.sleep(0.05)
    assert fake.closed == 1
