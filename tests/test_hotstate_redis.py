"""The shared hot state against a real Redis, used by two clients as two instances would."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time

import pytest

from tests import servers
from xaiproxy.hotstate import StateUnavailable
from xaiproxy.hotstate.redis import Ask, RedisState, Snapshot

NANO = 1_000_000_000
MONTH = "2031-01"
LATER = time.time() + 30 * 86400
MUCH_LATER = time.time() + 300 * 86400


def usd(x: float) -> int:
    return round(x * NANO)


def snapshot() -> Snapshot:
    """Account 2 (under root 1) holds $50 in two grants; account 3 (under 2) holds $10."""
    return Snapshot(
        grants={
            2: [(11, usd(20), LATER), (12, usd(30), MUCH_LATER), (13, usd(5), time.time() - 1)],
            3: [(14, usd(10), LATER)],
        },
        month=MONTH,
        month_spend={1: usd(7), 2: usd(7)},
    )


def ask(estimate: float = 0.3, account: int = 2, scopes=(), hard=(0, 0), **kw) -> Ask:
    chain = ((1, usd(hard[0])), (2, usd(hard[1])))
    if account == 3:
        chain += ((3, 0),)
    return Ask(account, usd(estimate), usd(1), chain, tuple(scopes), MONTH, **kw)


@pytest.fixture
async def two(redis_url):
    """Two instances' clients on one loaded Redis."""
    a, b = RedisState(redis_url), RedisState(redis_url)
    await a.load(snapshot())
    yield a, b
    await a.close()
    await b.close()


async def test_concurrent_admits_never_pass_the_floor_and_settle_exactly(two):
    a, b = two
    asks = [ask() for _ in range(400)]
    verdicts = await asyncio.gather(*(c.admit(x) for c, x in zip([a, b] * 200, asks, strict=True)))
    ok = [x for x, v in zip(asks, verdicts, strict=True) if v.code == "ok"]
    # $50 live (the expired $5 grant does not count), floor $1, $0.3 each: 163 fit, not 164.
    assert len(ok) == 163
    assert {v.code for v in verdicts} == {"ok", "insufficient_balance"}
    balance, reserved = await a.balance(2)
    assert (balance, reserved) == (usd(50), 163 * usd(0.3))
    assert balance - reserved >= usd(1)

    gen = verdicts[0].generation
    costs = [random.randint(0, usd(0.4)) for _ in ok]  # some above their estimate
    takes = await asyncio.gather(
        *(
            (a if i % 2 else b).settle(x, gen, f"r{i}", cost, 10)
            for i, (x, cost) in enumerate(zip(ok, costs, strict=True))
        )
    )
    assert sum(t for per in takes for _, t in per) == sum(costs)
    assert {g for per in takes for g, _ in per} <= {11, 12}  # never the expired grant
    balance, reserved = await b.balance(2)
    assert (balance, reserved) == (usd(50) - sum(costs), 0)
    assert await a.month_spend(1, MONTH) == usd(7) + sum(costs)
    assert await a.month_spend(2, MONTH) == usd(7) + sum(costs)
    held = await a.redis.mget(a._acc(1, "held"), a._acc(2, "held"))
    assert held == [b"0", b"0"]


async def test_a_burst_queues_on_the_pool_and_rides_out_a_short_stall(redis_server, redis_url):
    """A small pool: 400 admits from two clients share 4 sockets each, and a Redis that
    stalls for 1.5 s (a busy host) delays them instead of failing them."""
    a, b = RedisState(redis_url, connections=4), RedisState(redis_url, connections=4)
    watcher = RedisState(redis_url, connections=1)
    thaw = None
    try:
        await a.load(snapshot())
        redis_server.freeze(True)
        thaw = asyncio.get_running_loop().call_later(1.5, redis_server.freeze, False)
        started = time.monotonic()
        verdicts = await asyncio.gather(*(c.admit(ask()) for c in [a, b] * 200))
        assert time.monotonic() - started >= 1.4  # they waited for the thaw
        assert [v.code for v in verdicts].count("ok") == 163
        clients = await watcher.redis.client_list()
        assert len(clients) <= 4 + 4 + 1  # a's, b's and the watcher's own
    finally:
        if thaw is not None:
            thaw.cancel()
        redis_server.freeze(False)
        for c in (a, b, watcher):
            await c.close()


async def test_settle_draws_soonest_expiry_first_and_runs_into_debt(two):
    a, _ = two
    x = ask(account=3, estimate=1)
    v = await a.admit(x)
    assert v.code == "ok"
    assert await a.settle(x, v.generation, "d1", usd(12), 0) == [(14, usd(10)), (14, usd(2))]
    assert await a.balance(3) == (-usd(2), 0)
    assert (await a.admit(ask(account=3))).code == "insufficient_balance"


async def test_settle_is_idempotent_per_request(two):
    a, b = two
    x = ask()
    v = await a.admit(x)
    first = await a.settle(x, v.generation, "same", usd(1), 0)
    assert await b.settle(x, v.generation, "same", usd(1), 0) == first == [(11, usd(1))]
    assert await a.balance(2) == (usd(49), 0)


async def test_rpm_is_global_across_clients(two):
    a, b = two
    scoped = [("a:2", (6, 0, 0, 0, 0, 0))]
    verdicts = await asyncio.gather(*(c.admit(ask(scopes=scoped)) for c in [a, b] * 10))
    assert [v.code for v in verdicts].count("ok") == 6
    refused = [v for v in verdicts if v.code != "ok"]
    assert {v.code for v in refused} == {"rate_limit_exceeded"}
    assert all(0 < v.wait <= 10.01 for v in refused)  # one request drains in 60/6 s
    assert refused[0].limits["requests"][:2] == (6, 0)
    assert (await b.balance(2))[1] == 6 * usd(0.3)  # the refused held nothing


async def test_token_limits_count_what_settle_charges(two):
    a, b = two
    scoped = [("a:2:owner:gpt-*", (0, 0, 0, 100, 0, 0))]
    x = ask(scopes=scoped)
    v = await a.admit(x)
    assert v.code == "ok" and v.limits["tokens"] == (100, 100, 0)
    await a.settle(x, v.generation, "t1", usd(0.01), 150)
    v = await b.admit(x)
    assert v.code == "rate_limit_exceeded" and 29 < v.wait < 31  # 50 over at 100/60 s
    assert v.limits["tokens"][1] == 0


async def test_hard_limit_counts_month_spend_and_holds_of_the_subtree(two):
    a, b = two
    # Parent 2 has spent $7 this month and a HardLimit of $10: $3 of holds fit.
    verdicts = await asyncio.gather(*(c.admit(ask(1, 3, hard=(0, 10))) for c in [a, b] * 3))
    assert [v.code for v in verdicts].count("ok") == 3
    refused = [v for v in verdicts if v.code != "ok"]
    assert {(v.code, v.over) for v in refused} == {("hard_limit_reached", 1)}


async def test_key_sleeps_are_seen_by_every_client_and_expire(two):
    a, b = two
    await a.sleep_key(7, 0.3, "429 from upstream")
    asleep = await b.sleeping([7, 8])
    assert list(asleep) == [7] and asleep[7][0] == "429 from upstream"
    assert 0 < asleep[7][1] <= 0.3
    await asyncio.sleep(0.35)
    assert await b.sleeping([7, 8]) == {}
    await a.sleep_key(8, 60, "probe failed")
    await b.wake_key(8)
    assert await a.sleeping([8]) == {}


async def test_an_idempotency_lock_is_taken_once(two):
    a, b = two
    tokens = await asyncio.gather(*(c.lock("idem:2:k1", 5) for c in [a, b] * 25))
    won = [t for t in tokens if t]
    assert len(won) == 1
    assert not await b.unlock("idem:2:k1", "not-the-token")
    assert await a.lock("idem:2:k1", 5) is None
    assert await b.unlock("idem:2:k1", won[0])
    assert await a.lock("idem:2:k1", 5)


async def test_change_events_reach_the_other_client_with_their_version(two):
    a, b = two
    seen: list = []
    ready = asyncio.Event()
    task = asyncio.create_task(b.listen(lambda *e: seen.append(e), ready))
    await asyncio.wait_for(ready.wait(), 2)
    v1 = await a.publish("account", 42)
    v2 = await a.publish("config", 1)
    for _ in range(100):
        if len(seen) == 2:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert seen == [(v1, "account", "42"), (v2, "config", "1")]
    assert v2 == v1 + 1 == await b.version()


async def test_scripts_reload_after_script_flush(two):
    a, _ = two
    await a.redis.script_flush()
    assert (await a.admit(ask())).code == "ok"


async def test_a_killed_redis_fails_closed_and_is_rebuilt_from_the_snapshot():
    """Its own Redis: killed, the admit raises StateUnavailable at once; restarted empty,
    the same until one rebuild; a hold from before is not released twice."""
    try:
        server = servers.Redis()
    except servers.Unavailable as exc:
        pytest.skip(str(exc))
    server.start()
    a, b = RedisState(server.url()), RedisState(server.url())
    try:
        await a.load(snapshot())
        x = ask()
        before = await a.admit(x)
        assert before.code == "ok"
        await b.loaded()  # b too has seen the generation (as its mirror would have)

        server.kill()
        started = time.monotonic()
        with pytest.raises(StateUnavailable) as err:
            await b.admit(ask())
        assert time.monotonic() - started < 1.5
        api = err.value.api_error()
        assert (api.status, api.code, api.headers) == (
            503,
            "state_unavailable",
            {"Retry-After": "1"},
        )

        server.start()  # same port, empty
        with pytest.raises(StateUnavailable):
            await a.admit(ask())  # the first call may also meet a stale pooled connection
        with pytest.raises(StateUnavailable, match="no state"):
            await a.admit(ask())

        calls = []

        async def from_database() -> Snapshot:
            calls.append(1)
            await asyncio.sleep(0.05)
            return snapshot()

        gens = await asyncio.gather(a.ensure_loaded(from_database), b.ensure_loaded(from_database))
        assert len(calls) == 1 and gens[0] == gens[1] != before.generation
        assert await b.balance(2) == (usd(50), 0)
        # Rebuilt by instances that saw a generation: admits wait while they hold their
        # requests in flight again (here none is: end the wait).
        with pytest.raises(StateUnavailable, match="held again"):
            await b.admit(ask())
        await b.redis.delete(b.settling)

        # The request admitted before the restart ends: its cost is debited, the hold it
        # took in the lost state is not released from the new one.
        assert (await b.admit(ask())).code == "ok"
        await a.settle(x, before.generation, "old", usd(2), 0)
        assert await a.balance(2) == (usd(48), usd(0.3))
        # A late retry of a settle whose usage the database already has: skipped.
        assert await a.settle(x, before.generation, "late", usd(2), 0, late=0.0) is None
        assert await a.balance(2) == (usd(48), usd(0.3))
    finally:
        await a.close()
        await b.close()
        server.stop()


async def test_a_rebuild_holds_requests_in_flight_again_whatever_the_order_of_settles(two):
    a, b = two
    first, second, third = ask(1.0, account=3), ask(1.0, account=3), ask(1.0, account=3)
    old = (await a.admit(first)).generation
    await a.admit(second)
    await a.admit(third)
    # A rebuild by an instance that saw a generation: admits and draws wait meanwhile.
    gen = await b.load(snapshot(), settling=0.3)
    assert gen != old and await b.balance(3) == (usd(10), 0)
    with pytest.raises(StateUnavailable, match="held again"):
        await b.admit(ask(0.1, account=3))
    with pytest.raises(StateUnavailable, match="held again"):
        await b.take(3, usd(1))
    # `first` settles before it is held again: it must not be held after.
    assert await a.settle(first, old, "first", usd(0.5), 0) == [(14, usd(0.5))]
    assert await a.rehold([(x, n) for x, n in ((first, "first"), (second, "second"))], gen) == [
        "done",
        "ok",
    ]
    assert await a.rehold([(second, "second")], gen) == ["done"]  # once
    assert await a.rehold([(third, "third")], "stale") == ["other"]
    assert await a.rehold([(third, "third")], gen) == ["ok"]
    assert await b.balance(3) == (usd(9.5), usd(2))
    assert [int(await b.redis.get(f"xai:a:{i}:held")) for i in (1, 2, 3)] == [usd(2)] * 3
    # `second` settles after: its old generation's settle releases what it holds now, once.
    assert await a.settle(second, old, "second", usd(0.5), 0) == [(14, usd(0.5))]
    assert await a.settle(second, old, "second", usd(0.5), 0) == [(14, usd(0.5))]
    assert await a.settle(third, gen, "third", 0, 0, late=0.0) == []
    assert await b.balance(3) == (usd(9), 0)
    assert [int(await b.redis.get(f"xai:a:{i}:held")) for i in (1, 2, 3)] == [0] * 3
    await asyncio.sleep(0.3)
    assert (await b.admit(ask(0.1, account=3))).code == "ok"


async def test_a_late_settle_is_debited_unless_the_rebuilds_snapshot_counted_it(two):
    """A late settle from before a rebuild: skipped if the store committed its usage before
    the snapshot was read (the snapshot counts it), else debited in the new generation."""
    a, b = two
    held = [ask(account=3) for _ in range(3)]
    old = [(await a.admit(x)).generation for x in held][0]
    taken = await b.time()
    gen = await b.load(dataclasses.replace(snapshot(), taken_at=taken))
    assert gen.endswith(f"@{taken:.6f}") and await b.balance(3) == (usd(10), 0)
    await asyncio.sleep(0.05)
    assert await a.settle(held[0], old, "before", usd(1), 0, late=1.0) is None
    assert await a.settle(held[1], old, "after", usd(1), 0, late=0.01) == [(14, usd(1))]
    assert await a.settle(held[2], old, "unknown", usd(2), 0, late=-1.0) == [(14, usd(2))]
    assert await b.balance(3) == (usd(7), 0)  # debited, no hold of the old generation released


async def test_the_data_plane_pipelines_its_scripts_over_one_connection(redis_url):
    """400 admits and their settles at once ride one connection (hotstate/wire.py), not
    a pooled socket each; the answers still match their calls."""
    a, watcher = RedisState(redis_url, connections=16), RedisState(redis_url, connections=1)
    try:
        await a.load(snapshot())
        asks = [ask() for _ in range(400)]
        verdicts = await asyncio.gather(*(a.admit(x) for x in asks))
        ok = [x for x, v in zip(asks, verdicts, strict=True) if v.code == "ok"]
        assert len(ok) == 163
        costs = [random.randint(1, usd(0.4)) for _ in ok]
        takes = await asyncio.gather(
            *(
                a.settle(x, verdicts[0].generation, f"p{i}", cost, 0)
                for i, (x, cost) in enumerate(zip(ok, costs, strict=True))
            )
        )
        assert [sum(t for _, t in per) for per in takes] == costs
        assert await a.balance(2) == (usd(50) - sum(costs), 0)
        clients = await watcher.redis.client_list()
        assert len(clients) <= 3  # a's pool (the load), a's wire, the watcher
    finally:
        await a.close()
        await watcher.close()


async def test_a_stall_past_the_timeout_fails_closed_and_a_new_connection_follows(
    redis_server, redis_url
):
    """No reply within `timeout`: every call waiting fails closed and the connection is
    dropped, so the late replies answer nothing; the next call opens a new one."""
    a = RedisState(redis_url, timeout=0.5)
    try:
        await a.load(snapshot())
        assert (await a.admit(ask())).code == "ok"
        redis_server.freeze(True)
        try:
            started = time.monotonic()
            results = await asyncio.gather(
                *(a.admit(ask()) for _ in range(3)), return_exceptions=True
            )
            assert all(isinstance(r, StateUnavailable) for r in results)
            assert 0.4 < time.monotonic() - started < 2
        finally:
            redis_server.freeze(False)
        x = ask()
        v = await a.admit(x)
        assert v.code == "ok"
        assert await a.settle(x, v.generation, "after", usd(1), 0) == [(11, usd(1))]
    finally:
        await a.close()


async def test_the_data_plane_connection_authenticates_and_selects_its_database():
    """A password and a database number in the URL: the scripts' connection uses both;
    a wrong password fails closed."""
    try:
        server = servers.Redis()
    except servers.Unavailable as exc:
        pytest.skip(str(exc))
    server.start()
    url = server.url("s3cret").replace("/0", "/3")
    a, wrong = RedisState(url), RedisState(server.url("nope"))
    try:
        admin = RedisState(server.url())
        await admin.redis.config_set("requirepass", "s3cret")
        await admin.close()
        await a.load(snapshot())
        x = ask()
        v = await a.admit(x)
        assert v.code == "ok"
        assert await a.settle(x, v.generation, "db3", usd(2), 0) == [(11, usd(2))]
        assert await a.balance(2) == (usd(48), 0)
        assert await a.redis.dbsize() > 0
        with pytest.raises(StateUnavailable):
            await wrong.admit(ask())
    finally:
        await a.close()
        await wrong.close()
        server.stop()
