"""Requests in flight when the shared money state changes under them (SPEC 12): Redis
restarted empty and rebuilt while they stream; their account deleted on another instance."""

from __future__ import annotations

import asyncio

from tests.fakes import add_user, chat, ready
from tests.test_shared_money import CHAT, settled, spent, store_balance

pytest_plugins = ["tests.fakes_fixtures"]


async def back(api, key) -> None:
    """Until Redis is rebuilt and admits again (probing with another account's key)."""
    for _ in range(200):
        r = await api.post(CHAT, chat(), key=key)
        if r.status == 200:
            return
        assert r.error_code == "state_unavailable", r.body
        await asyncio.sleep(0.05)
    raise AssertionError("redis was not rebuilt")


async def test_holds_in_flight_are_held_again_after_a_rebuild(make_gateway, upstream, own_redis):
    api = await ready(make_gateway, upstream, redis=own_redis.url(), account_max_inflight=200)
    uid, key = await add_user(api, credit=3)  # floor 1: 2 to hold, ~0.1 held per request
    _, probe = await add_user(api, credit=50)
    long = {"x-fake-delay": "2.5"}  # 3 chunks: ~7 s in flight
    body = chat("gpt-4o", stream=True, max_tokens=10_000)
    flying = [asyncio.ensure_future(api.post(CHAT, body, key=key, headers=long)) for _ in range(12)]
    await asyncio.sleep(0.5)
    held_before = (await api.gw.hot.balance(uid))[1]
    assert 11 * 10**8 < held_before < 13 * 10**8
    own_redis.kill()
    own_redis.start()  # empty
    await back(api, probe)
    assert api.gw.shared.rebuilder.rebuilds == 2
    balance, reserved = await api.gw.hot.balance(uid)
    assert reserved == held_before  # the streams hold again what they held
    assert not any(f.done() for f in flying)
    # About 8 more fit next to the streams' holds (20 without them).
    more = await asyncio.gather(
        *(api.post(CHAT, body, key=key, headers={"x-fake-delay": "0.3"}) for _ in range(20))
    )
    ok = sum(r.status == 200 for r in more)
    assert 6 <= ok <= 8, ok
    assert {r.error_code for r in more if r.status != 200} == {"insufficient_balance"}
    assert {r.status for r in await asyncio.gather(*flying)} == {200}
    await settled(api)
    balance, reserved = await api.gw.hot.balance(uid)
    assert reserved == 0  # every hold released, the re-held ones too
    assert balance == await store_balance(api, uid) == 3 * 10**9 - await spent(api, uid)
    assert (await api.gw.ledger.audit(api.gw.store))["ok"]
