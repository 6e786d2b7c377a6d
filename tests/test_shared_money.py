"""Money and rate limits through Redis (SPEC 12): real gateways on SQLite + a real Redis,
two of them sharing one SQLite file and one Redis where instances matter."""

from __future__ import annotations

import asyncio
import time

from tests.fakes import add_key, add_user, chat, ready
from xaiproxy.hotstate.plane import SharedLimiter
from xaiproxy.testing import start_gateway

pytest_plugins = ["tests.fakes_fixtures"]
CHAT = "/v1/chat/completions"
RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "Retry-After")


async def settled(api) -> None:
    """Every settle so far in Redis and in the store."""
    await api.gw.shared.drain()
    await api.gw.store.flush()


async def store_balance(api, uid: int) -> int:
    held = await api.gw.store.scalar(
        "SELECT COALESCE(SUM(remaining_n), 0) FROM grants WHERE account_id = ?", (uid,)
    )
    return int(held)


async def spent(api, uid: int) -> int:
    return int(
        await api.gw.store.scalar(
            "SELECT COALESCE(SUM(cost_n), 0) FROM usage WHERE account_id = ?", (uid,)
        )
    )


async def refusals(api) -> list:
    """Each refusal of admission steps 8 and 9, as the client sees it."""
    out = []
    _, poor = await add_user(api, credit=2)
    r = await api.post(CHAT, chat("gpt-4o", max_tokens=100_000), key=poor)
    out.append((r.status, r.body))
    _, capped = await add_user(api, credit=50, HardLimit=0.05, AutoQuota=False)
    r = await api.post(CHAT, chat("gpt-4o", max_tokens=10_000), key=capped)
    out.append((r.status, r.body))
    _, limited = await add_user(api, credit=50, RPM=2)
    for _ in range(3):
        r = await api.post(CHAT, chat(), key=limited)
        shown = r.body if r.status != 200 else None  # answers differ only in their ids
        out.append((r.status, shown, {h: r.headers.get(h) for h in RATE_HEADERS}))
    return out


async def test_refusals_and_headers_are_the_same_as_in_memory(make_gateway, upstream, redis_url):
    memory = await refusals(await ready(make_gateway, upstream))
    api = await ready(make_gateway, upstream, redis=redis_url)
    assert isinstance(api.gw.limiter, SharedLimiter)  # `limiter` unset: follows `redis`
    shared = await refusals(api)
    assert shared == memory
    codes = [x[1]["error"]["code"] if x[1] else 200 for x in shared]
    assert codes == ["insufficient_balance", "hard_limit_reached", 200, 200, "rate_limit_exceeded"]
    assert shared[2][2]["x-ratelimit-remaining-requests"] == "1"
    assert shared[4][2]["Retry-After"] == "30"


async def test_a_storm_never_passes_the_floor_and_adds_up(make_gateway, upstream, redis_url):
    api = await ready(make_gateway, upstream, redis=redis_url, account_max_inflight=200)
    uid, key = await add_user(api, credit=3)  # floor 1, ~0.1 held each: about 20 fit at once
    before, _ = await api.gw.hot.balance(uid)
    body = chat("gpt-4o", stream=True, max_tokens=10_000)
    replies = await asyncio.gather(
        *(api.post(CHAT, body, key=key, headers={"x-fake-delay": "0.1"}) for _ in range(100))
    )
    ok = [r for r in replies if r.status == 200]
    assert 10 <= len(ok) <= 20
    assert {r.error_code for r in replies if r.status != 200} == {"insufficient_balance"}
    await settled(api)
    after, reserved = await api.gw.hot.balance(uid)
    assert reserved == 0 and after >= api.gw.ledger.to_n(1.0, 1.0)
    assert before - after == await spent(api, uid) > 0
    assert after == await store_balance(api, uid)
    assert api.gw.ledger.balance_n(api.gw.state.accounts[uid]) == after  # the display copy
    assert (await api.gw.ledger.audit(api.gw.store))["ok"]


async def test_rpm_is_global_across_two_instances(tmp_path, upstream, redis_url):
    db = tmp_path / "shared.db"
    a = await start_gateway(db, redis=redis_url)
    try:
        await add_key(a, upstream)
        uid, key = await add_user(a, credit=50, RPM=6)
        b = await start_gateway(db, redis=redis_url)
        try:
            replies = await asyncio.gather(*(x.post(CHAT, chat(), key=key) for x in [a, b] * 6))
            assert sorted(r.status for r in replies) == [200] * 6 + [429] * 6
            assert {r.status for r in replies[0::2]} | {r.status for r in replies[1::2]} >= {200}
            await settled(a)
            await settled(b)
            assert await spent(a, uid) == 50 * 10**9 - (await a.gw.hot.balance(uid))[0]
        finally:
            await b.close()
    finally:
        await a.close()


async def test_a_refund_cannot_take_what_another_instance_holds(tmp_path, upstream, redis_url):
    db = tmp_path / "shared.db"
    a = await start_gateway(db, redis=redis_url, account_max_inflight=100)
    try:
        await add_key(a, upstream)
        uid, key = await add_user(a, credit=5)
        b = await start_gateway(db, redis=redis_url, account_max_inflight=100)
        try:
            body = chat("gpt-4o", stream=True, max_tokens=10_000)  # ~0.1 held each
            slow = {"x-fake-delay": "0.5"}  # between 3 chunks
            flying = [
                asyncio.ensure_future(b.post(CHAT, body, key=key, headers=slow)) for _ in range(30)
            ]
            await asyncio.sleep(0.7)
            _, reserved = await b.gw.hot.balance(uid)
            assert reserved > 2 * 10**9  # B's holds; A's memory knows nothing of them
            r = await a.put(f"/x-users/{uid}", {"CreditGranted": -3})
            assert r.status == 400 and r.error_code == "insufficient_balance", r.body
            r = await a.put(f"/x-users/{uid}", {"CreditGranted": -1})
            assert r.status == 200, r.body
            assert {x.status for x in await asyncio.gather(*flying)} == {200}
            await settled(a)
            await settled(b)
            balance, reserved = await a.gw.hot.balance(uid)
            assert reserved == 0 and balance == await store_balance(a, uid)
            audit = await a.gw.ledger.audit(a.gw.store)
            assert audit["ok"], audit
        finally:
            await b.close()
    finally:
        await a.close()


async def test_redis_down_fails_closed_and_an_empty_one_is_rebuilt(
    make_gateway, upstream, own_redis
):
    api = await ready(make_gateway, upstream, redis=own_redis.url())
    uid, key = await add_user(api, credit=20)
    assert (await api.post(CHAT, chat(), key=key)).status == 200
    # Redis dies while a request is in flight: its settle reaches the store all the same.
    flying = asyncio.ensure_future(api.post(CHAT, chat(), key=key, headers={"x-fake-delay": "0.5"}))
    await asyncio.sleep(0.2)
    own_redis.kill()
    assert (await flying).status == 200
    r = await api.post(CHAT, chat(), key=key)
    assert r.status == 503 and r.error_code == "state_unavailable", r.body
    assert r.headers["Retry-After"] == "1"
    assert (await api.get(f"/x-users/{uid}")).status == 200  # management reads work
    assert (await api.put(f"/x-users/{uid}", {"Name": "renamed"})).status == 200
    r = await api.put(f"/x-users/{uid}", {"CreditGranted": 5})
    assert r.status == 503 and r.error_code == "state_unavailable"
    await api.gw.store.flush()
    assert await spent(api, uid) > 0
    own_redis.start()  # empty: rebuilt from the store
    for _ in range(100):
        r = await api.post(CHAT, chat(), key=key)
        if r.status == 200:
            break
        assert r.error_code == "state_unavailable"
        await asyncio.sleep(0.1)
    assert r.status == 200
    assert api.gw.shared.rebuilder.rebuilds >= 1
    await settled(api)
    balance, reserved = await api.gw.hot.balance(uid)
    assert reserved == 0 and balance == await store_balance(api, uid)
    assert balance == 20 * 10**9 - await spent(api, uid)
    assert (await api.gw.ledger.audit(api.gw.store))["ok"]
    assert (await api.put(f"/x-users/{uid}", {"CreditGranted": 5})).status == 200
    assert (await api.gw.hot.balance(uid))[0] == balance + 5 * 10**9


async def test_a_settle_that_missed_redis_is_applied_once_when_it_answers(
    make_gateway, upstream, own_redis
):
    """Redis stalls (same generation after): the store gets the usage at once, Redis the
    settle later, once (the hold is released, the cost debited, nothing counted twice)."""
    api = await ready(make_gateway, upstream, redis=own_redis.url())
    uid, key = await add_user(api, credit=20)
    flying = asyncio.ensure_future(
        api.post(CHAT, chat(stream=True), key=key, headers={"x-fake-delay": "0.2"})
    )
    await asyncio.sleep(0.2)
    own_redis.freeze(True)
    try:
        assert (await flying).status == 200
        await asyncio.sleep(6)  # the settle's command times out after 5 s
        await api.gw.store.flush()
        assert await spent(api, uid) > 0  # the store did not wait for Redis
        assert api.gw.shared.plane.late
    finally:
        own_redis.freeze(False)
    await settled(api)
    assert not api.gw.shared.plane.late
    balance, reserved = await api.gw.hot.balance(uid)
    assert reserved == 0  # released: applied in the generation that held it
    assert balance == await store_balance(api, uid) == 20 * 10**9 - await spent(api, uid)
    assert api.gw.shared.rebuilder.rebuilds == 1  # the first start's only
    assert (await api.gw.ledger.audit(api.gw.store))["ok"]


async def test_a_late_settle_committed_after_the_rebuilds_snapshot_is_debited(
    tmp_path, upstream, own_redis
):
    """B's settle misses Redis and its store commit lands after A's rebuild read the
    snapshot: B's late settle is debited in the new generation (it used to be skipped as
    already counted, leaving Redis with more money than the store)."""
    db = tmp_path / "shared.db"
    a = await start_gateway(db, redis=own_redis.url())
    b = None
    try:
        await add_key(a, upstream)
        uid, key = await add_user(a, credit=20)
        b = await start_gateway(db, redis=own_redis.url())
        loop = asyncio.get_running_loop()
        b.gw.shared.rebuilder.tried_at = loop.time() + 1000  # A rebuilds, not B
        flying = asyncio.ensure_future(
            b.post(CHAT, chat(stream=True), key=key, headers={"x-fake-delay": "0.3"})
        )
        await asyncio.sleep(0.2)
        own_redis.kill()
        b.gw.store._exec.submit(time.sleep, 2.5)  # B's disk stalls: its commit comes late
        assert (await flying).status == 200
        for _ in range(100):  # its settle runs in the background
            if b.gw.shared.plane.late:
                break
            await asyncio.sleep(0.01)
        assert b.gw.shared.plane.late
        own_redis.start()  # empty
        for _ in range(50):
            try:
                await a.gw.shared.rebuilder.ensure()
                break
            except Exception:  # a stale pooled connection first
                await asyncio.sleep(0.05)
        assert a.gw.shared.rebuilder.rebuilds == 2 and b.gw.shared.rebuilder.rebuilds == 0
        await settled(b)
        assert not b.gw.shared.plane.late
        await settled(a)
        balance, reserved = await a.gw.hot.balance(uid)
        assert await spent(a, uid) > 0
        assert reserved == 0
        assert balance == await store_balance(a, uid) == 20 * 10**9 - await spent(a, uid)
        assert (await a.gw.ledger.audit(a.gw.store))["ok"]
    finally:
        if b is not None:
            await b.close()
        await a.close()
