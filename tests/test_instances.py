"""SPEC 12 across real processes: three gateways on one PostgreSQL and one Redis.

Each test starts its own three `xaiproxy serve` processes (tests/cluster.py) on a fresh
database; what every instance must know at boot (provider keys, prices, the accounts a
test spends from) is set up through the first one before the other two start, so only
what a test changes later has to travel between instances. The invariants are read
straight from PostgreSQL (the truth) and Redis (the hot copy).
"""

from __future__ import annotations

import asyncio
import itertools
import shutil

import pytest
import redis.asyncio as aioredis

from tests.cluster import Cluster, Truth, eventually, nginx_in_front, redis_balance_n
from xaiproxy.ledger import NANO

pytest_plugins = ["tests.fakes_fixtures"]

# Until the PostgreSQL store is in the checkout there is nothing to run three of.
pytest.importorskip("xaiproxy.store.postgres", reason="the PostgreSQL store is not in this tree")

PROPAGATION = 1.0  # SPEC 12: a change on one instance reaches every instance within 1 s
FLOOR_N = 1 * NANO  # call_floor's default, at Rates 1
# gpt-4o-mini at $0.1 per output token, input free: the fake's answer (5 completion
# tokens) costs 0.5 and a request asking max_tokens=10 holds 1.0.
DEAR = {"PRICING": {"gpt-4o-mini": {"input": 0, "output": 100_000}}}
CHEAP = {"PRICING": {"gpt-4o-mini": {"input": 0, "output": 1_000}}}  # 0.005 a request
_tags = itertools.count(1)


@pytest.fixture
async def make_cluster(pg_url, redis_url, tmp_path):
    """`await make_cluster(setup, redis=url)`: three instances; stopped after the test."""
    started: list[Cluster] = []

    async def make(setup=None, n: int = 3, redis: str | None = None, **env) -> Cluster:
        cluster = await Cluster.start(n, pg_url, redis or redis_url, tmp_path, setup, **env)
        started.append(cluster)
        return cluster

    yield make
    for cluster in started:
        await cluster.close()


@pytest.fixture
async def truth(pg_url):
    t = await Truth.open(pg_url)
    yield t
    await t.close()


def with_key(fake, config: dict | None = None):
    """A setup: one root provider key on `fake`, and owner config."""

    async def setup(c: Cluster) -> None:
        await c.add_key(0, fake, "main")
        if config:
            r = await c.call(0, "PUT", "/x-config", config)
            assert r.status == 200, r.body

    return setup


def tag(fake, value: str):
    """The request the fake saw with `x-fake-tag: value`, or None."""
    return next((s for s in fake.seen if s.headers.get("x-fake-tag") == value), None)


# -- a change on one instance reaches the others within 1 s -------------------------------
async def test_account_created_on_a_authenticates_on_b_and_c(make_cluster, upstream):
    c = await make_cluster(with_key(upstream))
    _, key = await c.add_user(0, 10, "made-on-a")

    async def serves(i: int) -> bool:
        r = await c.chat(i, key)
        assert r.status in (200, 401), r.body  # unknown for a moment, then served
        return r.status == 200

    took = await asyncio.gather(
        *(
            eventually(lambda i=i: serves(i), PROPAGATION, f"the key on instance {i}")
            for i in (1, 2)
        )
    )
    assert max(took) <= PROPAGATION


async def test_config_change_on_b_takes_effect_on_a_and_c(make_cluster, upstream):
    ids = {}

    async def setup(c: Cluster) -> None:  # the account is known everywhere from the start
        await with_key(upstream)(c)
        ids["key"] = (await c.add_user(0, 10, "mapped"))[1]

    c = await make_cluster(setup)
    key = ids["key"]
    # before: the alias is sent upstream as it is
    r = await c.chat(2, key, "alias-cluster", headers={"x-fake-tag": "before"})
    assert r.status == 200 and tag(upstream, "before").json["model"] == "alias-cluster"

    r = await c.call(1, "PUT", "/x-config", {"MODEL_MAPPER": {"alias-cluster": "gpt-4o-mini"}})
    assert r.status == 200, r.body

    async def mapped(i: int) -> bool:
        label = f"poll-{next(_tags)}"
        r = await c.chat(i, key, "alias-cluster", headers={"x-fake-tag": label})
        assert r.status == 200, r.body
        return tag(upstream, label).json["model"] == "gpt-4o-mini"

    took = await asyncio.gather(
        *(eventually(lambda i=i: mapped(i), PROPAGATION, f"MODEL_MAPPER on {i}") for i in (0, 2))
    )
    assert max(took) <= PROPAGATION


async def test_three_instances_behind_nginx(make_cluster, upstream, tmp_path):
    """docs/SCALING.md's recipe: deploy/nginx.conf with one `server` line per instance."""
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (apt-get install nginx; make test does it)")
    ids = {}

    async def setup(c: Cluster) -> None:
        await with_key(upstream)(c)
        ids["key"] = (await c.add_user(0, 100, "balanced"))[1]

    c = await make_cluster(setup)
    nginx, url = await nginx_in_front(c, tmp_path)
    headers = {"Authorization": f"Bearer {ids['key']}"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

    async def one() -> int:
        async with c.session.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
            return r.status

    try:
        statuses = await asyncio.gather(*(one() for _ in range(30)))
    finally:
        nginx.terminate()
        await nginx.wait()
    assert statuses == [200] * 30
    served = [await c.served(i) for i in range(3)]
    assert sum(served) == 30 and min(served) > 0, served  # every instance took its share


async def test_changes_to_one_account_on_two_instances_are_both_kept(make_cluster, truth):
    ids = {}

    async def setup(c: Cluster) -> None:
        ids["uid"] = (await c.add_user(0, 10, "shared-target"))[0]

    c = await make_cluster(setup, n=2)
    uid, lost = ids["uid"], []
    for n in range(5):
        alias = f"alias-{n}"
        renamed, topped = await asyncio.gather(
            c.call(0, "PUT", f"/x-users/{uid}", {"Alias": alias}),
            c.call(1, "PUT", f"/x-users/{uid}", {"CreditGranted": 1}),
        )
        assert renamed.status == topped.status == 200, (renamed.body, topped.body)

        async def kept(alias: str = alias) -> bool:
            stored = await truth.conn.fetchval("SELECT alias FROM accounts WHERE id = $1", uid)
            seen = [(await c.call(i, "GET", f"/x-users/{uid}")).body["Alias"] for i in (0, 1)]
            return stored == alias and seen == [alias, alias]

        try:
            await eventually(kept, PROPAGATION, f"round {n}: the rename kept")
        except AssertionError as exc:
            lost.append(str(exc))
    assert lost == []
    assert await truth.balance_n(uid) == 15 * NANO  # every top-up kept too


# -- the promises of sections 4 and 5, across instances ---------------------------------
async def test_300_requests_over_three_instances_never_overspend(make_cluster, upstream, truth):
    ids = {}

    async def setup(c: Cluster) -> None:
        await with_key(upstream, DEAR)(c)
        ids["uid"], ids["key"] = await c.add_user(0, 50, "storm")

    c = await make_cluster(setup)
    uid, key = ids["uid"], ids["key"]
    before = await truth.balance_n(uid)
    assert before == 50 * NANO
    replies = await asyncio.gather(*(c.chat(i % 3, key, max_tokens=10) for i in range(300)))
    codes = {(r.status, r.body["error"]["code"] if r.status != 200 else "") for r in replies}
    assert codes <= {(200, ""), (403, "insufficient_balance")}, codes
    ok = sum(r.status == 200 for r in replies)
    # 49 spendable at 0.5 a request, holding 1.0 each: at least 48 fit, at most 98
    assert 48 <= ok <= 98, ok
    assert ok < 300  # the balance, not the instance count, is what stopped the rest

    await truth.flushed(uid, ok)
    rows, spent = await truth.usage(uid)
    after = await truth.balance_n(uid)
    assert rows == ok
    assert before - after == spent  # Σ usage cost == balance drop, exactly
    assert after >= FLOOR_N
    audit = await truth.audit()
    assert audit["ok"], audit

    async def hot_matches() -> bool:  # settles in Redis, flushes in PostgreSQL
        return await redis_balance_n(c.redis_url, uid) == after

    await eventually(hot_matches, 5, "Redis's balance equal to PostgreSQL's")


async def test_delete_on_a_while_b_streams_for_it(make_cluster, upstream, truth):
    """A refunds the balance less B's holds (Redis's figures); B's last stream out
    settles the rest (or the debt) with the parent, which ends up paying the cost + fee."""
    ids = {}

    async def setup(c: Cluster) -> None:
        await with_key(upstream, DEAR)(c)
        ids["pid"], ids["pkey"] = await c.add_user(0, 300, "heir")
        body = {"Name": "leaver", "Email": "leaver@example.com", "CreditGranted": 50}
        r = await c.call(0, "POST", "/x-users", body, ids["pkey"])
        assert r.status == 200, r.body
        ids["cid"], ids["ckey"] = r.body["User"]["ID"], r.body["User"]["SecretKey"]

    c = await make_cluster(setup, n=2)
    pid, cid = ids["pid"], ids["cid"]
    slow = {"x-fake-delay": "0.15", "x-fake-chunks": "8"}
    flying = [
        asyncio.ensure_future(c.chat(1, ids["ckey"], stream=True, max_tokens=10, headers=slow))
        for _ in range(2)
    ]
    hot = aioredis.Redis.from_url(c.redis_url)
    try:

        async def held() -> bool:  # 1.0 each, on B
            return int(await hot.get(f"xai:a:{cid}:reserved") or 0) == 2 * NANO

        await eventually(held, 5, "both streams held on B")
        r = await c.call(0, "DELETE", f"/x-users/{cid}", None, ids["pkey"])
        assert r.status == 200, r.body  # was 409 requests_in_flight
        assert r.body["User"]["Refunded"] == pytest.approx(50 - 2 - 0.2)
        for reply in await asyncio.gather(*flying):
            assert reply.status == 200 and b"[DONE]" in reply.raw

        async def settled() -> bool:  # on B, after its last stream
            return (await redis_balance_n(c.redis_url, cid) or 0) == 0 == await truth.balance_n(
                cid
            ) and int(await hot.get(f"xai:a:{cid}:reserved") or 0) == 0

        await eventually(settled, 10, "the rest settled with the parent")
    finally:
        await hot.aclose()
    await truth.flushed(cid, 2)
    _, spent = await truth.usage(cid)
    parent_n = 300 * NANO - spent - NANO // 5

    async def parent_paid() -> bool:
        return await truth.balance_n(pid) == parent_n == await redis_balance_n(c.redis_url, pid)

    await eventually(parent_paid, 5, "the parent paid the cost and the fee, nothing more")
    audit = await truth.audit()
    assert audit["ok"], audit


async def test_rpm_6_across_three_instances_admits_6(make_cluster, upstream):
    ids = {}

    async def setup(c: Cluster) -> None:
        await with_key(upstream)(c)
        ids["key"] = (await c.add_user(0, 100, "limited", RPM=6))[1]

    c = await make_cluster(setup)
    replies = await asyncio.gather(*(c.chat(i % 3, ids["key"]) for i in range(18)))
    statuses = sorted(r.status for r in replies)
    assert statuses == [200] * 6 + [429] * 12, statuses
    assert all(r.error_code == "rate_limit_exceeded" for r in replies if r.status == 429)
    assert len(upstream.seen) == 6


async def test_same_idempotency_key_on_two_instances_applies_once(make_cluster, truth):
    ids = {}

    async def setup(c: Cluster) -> None:
        ids["uid"] = (await c.add_user(0, 10, "topped-up"))[0]

    c = await make_cluster(setup)
    uid = ids["uid"]
    headers = {"Idempotency-Key": "top-up-1"}
    calls = [
        c.call(i % 2, "PUT", f"/x-users/{uid}", {"CreditGranted": 5}, headers=headers)
        for i in range(10)
    ]
    replies = await asyncio.gather(*calls)
    assert [r.status for r in replies] == [200] * 10, [r.body for r in replies]
    fresh = [r for r in replies if r.headers.get("Idempotent-Replayed") != "true"]
    assert len(fresh) == 1
    assert all(r.body == fresh[0].body for r in replies)
    assert await truth.balance_n(uid) == 15 * NANO
    assert await truth.conn.fetchval("SELECT COUNT(*) FROM grants WHERE account_id = $1", uid) == 2
    assert (await truth.audit())["ok"]


async def test_key_put_to_sleep_through_a_is_skipped_by_b(make_cluster, make_upstream):
    sleepy, awake = await make_upstream(), await make_upstream()
    ids = {}

    async def setup(c: Cluster) -> None:  # two keys at one level: taken round-robin
        ids["sleepy"] = await c.add_key(0, sleepy, "sleepy")
        await c.add_key(0, awake, "awake")
        ids["key"] = (await c.add_user(0, 100, "router"))[1]

    c = await make_cluster(setup)
    key = ids["key"]
    sleepy.fail("429:60")  # its next answer: rate limited, rest 60 s
    for _ in range(2):  # round-robin: one of two requests through A reaches it
        r = await c.chat(0, key)
        assert r.status == 200, r.body  # A moved on to the awake key
    assert len(sleepy.seen) == 1

    async def asleep_on_b() -> bool:
        r = await c.call(1, "GET", f"/x-keys/{ids['sleepy']}")
        assert r.status == 200, r.body
        return r.body["Sleeping"]

    await eventually(asleep_on_b, PROPAGATION, "the key asleep on B")
    replies = await asyncio.gather(*(c.chat(1, key) for _ in range(6)))
    assert [r.status for r in replies] == [200] * 6
    assert len(sleepy.seen) == 1  # B never tried it
    assert len(awake.seen) == 2 + 6  # both of A's requests ended there, and B's six


# -- failures --------------------------------------------------------------------------
async def test_kill_9_mid_storm(make_cluster, upstream, truth):
    users = []

    async def setup(c: Cluster) -> None:
        await with_key(upstream, CHEAP)(c)
        for n in range(3):
            users.append(await c.add_user(0, 100, f"busy-{n}"))

    c = await make_cluster(setup)
    acked_users: list[tuple[int, str]] = []
    acked_topups: list[tuple[int, int]] = []  # (account, amount_n): each amount unique
    amounts = itertools.count(1)

    async def request(i: int, n: int):
        uid, key = users[n % 3]
        return await c.chat(
            i,
            key,
            max_tokens=10,
            stream=True,
            headers={"x-fake-chunks": "5", "x-fake-delay": "0.05"},
        )

    async def create(i: int, n: int):  # 2: USER_MIN_BALANCE
        body = {"Name": f"new-{n}", "Email": f"n{n}@example.com", "CreditGranted": 2}
        r = await c.call(i, "POST", "/x-users", body)
        if r.status == 200:
            acked_users.append((r.body["User"]["ID"], f"new-{n}"))
        return r

    async def top_up(i: int, n: int):
        uid = users[n % 3][0]
        cents = next(amounts)
        r = await c.call(i, "PUT", f"/x-users/{uid}", {"CreditGranted": cents / 100})
        if r.status == 200:
            acked_topups.append((uid, cents * NANO // 100))
        return r

    async def wave(nodes: list[int], base: int) -> list:
        calls = []
        for n in range(base, base + 30):
            i = nodes[n % len(nodes)]
            calls += [request(i, n), request(i, n + 1)]
            if n % 3 == 0:
                calls += [create(i, n), top_up(i, n)]
        return await asyncio.gather(*calls, return_exceptions=True)

    first = asyncio.ensure_future(wave([0, 1, 2], 0))
    await asyncio.sleep(0.3)  # streams in flight on every instance
    await c.kill9(2)
    after = await wave([0, 1], 100)  # the others keep serving
    before = await first
    bad = [r for r in after if isinstance(r, BaseException) or r.status != 200]
    assert bad == [], bad[:3]
    served = sum(not isinstance(r, BaseException) and r.status == 200 for r in before + after)
    assert served > len(after)

    await c.close()  # A and B flush on SIGTERM: what PostgreSQL holds now is final
    audit = await truth.audit()
    assert audit["ok"], audit  # no money minted, none lost
    for uid, name in acked_users:  # every acknowledged change is in PostgreSQL
        assert await truth.conn.fetchval("SELECT name FROM accounts WHERE id = $1", uid) == name
    for uid, amount_n in acked_topups:
        found = await truth.conn.fetchval(
            "SELECT COUNT(*) FROM grants WHERE account_id = $1 AND amount_n = $2", uid, amount_n
        )
        assert found == 1, (uid, amount_n)
    for uid, _ in users:
        granted = await truth.conn.fetchval(
            "SELECT SUM(amount_n)::BIGINT FROM grants WHERE account_id = $1", uid
        )
        balance = await truth.balance_n(uid)
        assert granted - balance == (await truth.usage(uid))[1]  # every draw is a usage row
        hot = await redis_balance_n(c.redis_url, uid)
        assert hot is not None and hot <= balance  # the hot copy never holds more


async def test_redis_killed_and_restarted_empty(make_cluster, upstream, truth, own_redis):
    ids = {}

    async def setup(c: Cluster) -> None:
        await with_key(upstream, CHEAP)(c)
        ids["uid"], ids["key"] = await c.add_user(0, 20, "steady")

    c = await make_cluster(setup, redis=own_redis.url())
    uid, key = ids["uid"], ids["key"]
    served = 0
    for i in range(6):
        r = await c.chat(i % 3, key, max_tokens=10)
        assert r.status == 200, r.body
        served += 1
    await truth.flushed(uid, served)

    own_redis.kill()
    for i in range(6):  # fails closed: never admitted without a hold
        r = await c.chat(i % 3, key, max_tokens=10)
        assert (r.status, r.error_code) == (503, "state_unavailable"), r.body
        assert int(r.headers["Retry-After"]) >= 1
    for i in range(3):  # management keeps working: reads and non-money writes
        r = await c.call(i, "GET", f"/x-users/{uid}")
        assert r.status == 200, r.body
    r = await c.call(1, "PUT", f"/x-users/{uid}", {"Alias": "while-redis-was-down"})
    assert r.status == 200, r.body
    assert (await truth.usage(uid))[0] == served

    own_redis.start()  # the same port, empty

    async def serves(i: int) -> bool:
        nonlocal served
        r = await c.chat(i, key, max_tokens=10)
        assert r.status in (200, 503), r.body
        served += r.status == 200
        return r.status == 200

    for i in range(3):
        await eventually(lambda i=i: serves(i), 15, f"instance {i} serving after the restart")
    for i in range(6):
        assert (await c.chat(i % 3, key, max_tokens=10)).status == 200
        served += 1

    await truth.flushed(uid, served)
    rows, spent = await truth.usage(uid)
    balance = await truth.balance_n(uid)
    assert rows == served
    assert 20 * NANO - balance == spent
    audit = await truth.audit()
    assert audit["ok"], audit

    async def rebuilt() -> bool:  # the rebuilt copy matches the ledger
        return await redis_balance_n(own_redis.url(), uid) == balance

    await eventually(rebuilt, 5, "Redis's rebuilt balance equal to PostgreSQL's")
    assert await truth.conn.fetchval("SELECT alias FROM accounts WHERE id = $1", uid) == (
        "while-redis-was-down"
    )
