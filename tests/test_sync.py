"""Two gateway instances on one SQLite file and one real Redis (SPEC 12): a management
change on either reaches the other's memory within a second, ids never collide, key
sleeps and Idempotency-Keys are shared."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from tests.fakes import add_key, add_user, chat
from tests.helpers import start_gateway
from xaiproxy import changes, credentials, idempotency, ledger
from xaiproxy.state import Account
from xaiproxy.store import ops as o

pytest_plugins = ["tests.fakes_fixtures"]


async def within(seconds: float, check) -> float:
    """Seconds until `await check()` is true; fails after `seconds`."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
async def pair(redis_url, aiohttp_server, tmp_path):
    """Instances A and B sharing one database and one Redis."""
    db = tmp_path / "shared.db"
    a = await start_gateway(aiohttp_server, db, redis=redis_url)
    b = await start_gateway(aiohttp_server, db, redis=redis_url)
    yield a, b
    await a.close()
    await b.close()


def authenticates(api, key: str):
    async def check():
        return (await api.get("/dashboard/x-user-news", key=key)).status == 200

    return check


async def test_account_created_on_a_authenticates_on_b_within_a_second(pair):
    a, b = pair
    uid, key = await add_user(a, credit=5)
    took = await within(1.0, authenticates(b, key))
    assert took < 1.0
    acc = b.gw.state.accounts[uid]
    assert acc.parent is b.gw.state.root and ledger.balance(acc) == 5  # its grant came along


async def test_config_change_on_b_applies_on_a(pair):
    a, b = pair
    r = await b.put("/x-config", {"MODEL_MAPPER": {"gpt-x": "gpt-4o-mini"}})
    assert r.status == 200, r.body

    async def applied():
        return a.gw.config(1).version == b.gw.config(1).version

    await within(1.0, applied)
    assert (await a.get("/x-config")).body == (await b.get("/x-config")).body


async def test_rotated_key_stops_on_b_and_the_new_one_works(pair):
    a, b = pair
    uid, old = await add_user(a, credit=2)
    await within(1.0, authenticates(b, old))
    confirm = datetime.now(UTC).strftime("%Y-%m-%d") + "-ROTATE-SELF"
    r = await a.post("/x-self", {"confirm": confirm}, key=old)
    assert r.status == 200, r.body
    new = r.body["rotate"]["key"]

    async def rotated():
        return (await b.get("/dashboard/x-user-news", key=old)).status == 401

    await within(1.0, rotated)
    assert (await b.get("/dashboard/x-user-news", key=new)).status == 200
    assert credentials.hash_key(old) not in b.gw.state.by_key


async def test_deleted_account_stops_on_b_and_its_children_move_up(pair):
    a, b = pair
    uid, key = await add_user(a, credit=30)
    child, child_key = await add_user(a, credit=2, key=key)
    await within(1.0, authenticates(b, child_key))
    assert (await a.delete(f"/x-users/{uid}")).status == 200

    async def gone():
        return (await b.get("/dashboard/x-user-news", key=key)).status == 401

    await within(1.0, gone)
    moved = b.gw.state.accounts[child]
    assert moved.parent is b.gw.state.root and moved.dna == f".1.{child}."
    assert (await b.get("/dashboard/x-user-news", key=child_key)).status == 200


async def test_a_missed_event_is_repaired_by_the_version_check(pair):
    a, b = pair
    reloads = b.gw.sync.reloads
    gw = a.gw
    key = credentials.generate_key()

    def work():
        acc = Account(
            id=gw.state.next_id("accounts"),
            name="quiet-user",
            email="quiet@example.com",
            key_hash=credentials.hash_key(key),
            key_prefix=credentials.display_prefix(key),
            dna="",
            level=0,
            parent_id=1,
        )
        return None, gw.changes.create(acc)

    await changes.commit(gw.state, gw.store, work)  # committed, but no event published
    await gw.hot.redis.incr(gw.hot.prefix + "version")  # as if its event got lost
    took = await within(1.0, authenticates(b, key))
    assert b.gw.sync.reloads == reloads + 1, took


async def test_a_dropped_event_connection_reloads_on_reconnect(pair):
    a, b = pair
    reloads = b.gw.sync.reloads
    await b.gw.hot.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    uid, key = await add_user(a, credit=2)  # its event may pass while B reconnects
    await within(2.0, authenticates(b, key))

    async def reloaded():
        return b.gw.sync.reloads > reloads

    await within(2.0, reloaded)


async def test_ids_made_on_both_at_once_never_collide(pair):
    a, b = pair
    made = await asyncio.gather(*(add_user(api, credit=2) for api in (a, b) * 15))
    ids = [uid for uid, _ in made]
    assert len(set(ids)) == 30
    grants = await a.gw.store.fetchall("SELECT id FROM grants")
    assert len({g["id"] for g in grants}) == len(grants) >= 30

    async def both_know():
        return all(i in a.gw.state.accounts and i in b.gw.state.accounts for i in ids)

    await within(1.0, both_know)


async def test_a_key_slept_through_a_is_skipped_by_b(pair, make_upstream):
    a, b = pair
    fake = await make_upstream()
    first = await add_key(a, fake)
    second = await add_key(a, fake)
    uid, key = await add_user(a, credit=10)
    await within(1.0, lambda: _knows_keys(b, first, second))
    fake.fail("429:60")
    assert (await a.post("/v1/chat/completions", chat(), key=key)).status == 200
    slept = next(k for k in a.gw.state.keys.values() if k.sleep_until > time.time())
    awake = second if slept.id == first else first

    async def asleep_on_b():
        return b.gw.state.keys[slept.id].sleep_until > time.time() + 30

    await within(1.0, asleep_on_b)
    seen = len(fake.seen)
    for _ in range(4):
        assert (await b.post("/v1/chat/completions", chat(), key=key)).status == 200
    secret = b.gw.state.keys[awake].secret
    assert [s.headers["Authorization"] for s in fake.seen[seen:]] == [f"Bearer {secret}"] * 4
    assert b.gw.state.keys[slept.id].sleep_reason == "rate_limited"


async def _knows_keys(api, *ids) -> bool:
    return all(i in api.gw.state.keys for i in ids)


async def test_a_starting_instance_reads_the_sleeps(
    redis_url, aiohttp_server, tmp_path, make_upstream
):
    db = tmp_path / "shared.db"
    a = await start_gateway(aiohttp_server, db, redis=redis_url)
    try:
        fake = await make_upstream()
        key_id = await add_key(a, fake)
        await a.gw.hot.sleep_key(key_id, 60, "auth_failed")
        b = await start_gateway(aiohttp_server, db, redis=redis_url)
        try:
            assert b.gw.state.keys[key_id].sleep_reason == "auth_failed"
            assert b.gw.state.keys[key_id].sleep_until > time.time() + 30
        finally:
            await b.close()
    finally:
        await a.close()


async def test_one_idempotency_key_sent_to_both_applies_once(pair):
    a, b = pair
    uid, _ = await add_user(a, credit=10)
    await within(1.0, lambda: _knows(b, uid))
    hdrs = {"headers": {"Idempotency-Key": "both-at-once"}}
    replies = await asyncio.gather(
        *(api.put(f"/x-users/{uid}", {"CreditGranted": 5}, **hdrs) for api in (a, b, a, b))
    )
    assert [r.status for r in replies] == [200] * 4, [r.body for r in replies]
    assert sum(r.headers.get("Idempotent-Replayed") != "true" for r in replies) == 1
    await a.gw.store.flush()
    rows = await a.gw.store.fetchall("SELECT amount_n FROM grants WHERE account_id = ?", (uid,))
    assert sorted(r["amount_n"] for r in rows) == [5 * ledger.NANO, 10 * ledger.NANO]


async def _knows(api, uid: int) -> bool:
    return uid in api.gw.state.accounts


def _racing_route(gw) -> None:
    """POST /x-race: a guarded change during which another instance's record of the same
    Idempotency-Key lands first (queued ahead of it, in the same batch)."""

    async def race(call):
        key = call.request.headers[idempotency.HEADER]
        print_ = idempotency.fingerprint(call.request, call.body)

        def work():
            first = o.IdempotencyPut(call.caller.id, key, print_, 201, b'{"first":1}', time.time())
            gw.store.submit([first])
            gw.race_applied = getattr(gw, "race_applied", 0) + 1
            return {"second": 1}, [], 200

        return await idempotency.guard(gw).run(call.request, call.caller.id, call.body, work)

    gw.route("POST", "/x-race", race, body={"type": "object"})


async def test_a_record_committed_first_elsewhere_is_replayed(aiohttp_server, tmp_path):
    """The database's uniqueness, the last defence (no Redis here): a unit recording a key
    another instance recorded first fails, and the caller answers with the first answer."""
    api = await start_gateway(aiohttp_server, tmp_path / "one.db", setup=[_racing_route])
    try:
        r = await api.post("/x-race", {}, headers={idempotency.HEADER: "k"})
        assert (r.status, r.body, r.headers["Idempotent-Replayed"]) == (201, {"first": 1}, "true")
        rows = await api.gw.store.fetchall("SELECT status FROM idempotency")
        assert [row["status"] for row in rows] == [201]
    finally:
        await api.close()


async def test_an_object_made_through_a_is_its_makers_on_b(pair, make_upstream):
    from tests.test_objects import ENABLED, upload

    a, b = pair
    fake = await make_upstream()
    await add_key(a, fake)
    r = await a.put("/x-config", {"RESOURCES": ENABLED})
    assert r.status == 200, r.body
    uid, key = await add_user(a, credit=10)
    other, other_key = await add_user(a, credit=10)
    await within(1.0, authenticates(b, other_key))
    file_id = await upload(a, key)

    async def known():
        return (await b.get(f"/v1/files/{file_id}", key=key)).status == 200

    await within(1.0, known)
    assert (await b.get(f"/v1/files/{file_id}", key=other_key)).status == 404


async def test_an_update_writes_only_the_fields_it_sets(aiohttp_server, tmp_path):
    """Two instances on one file, B's memory stale (no Redis, no events): B's recharge
    must not write back the name A just changed (a whole-row write did)."""
    db = tmp_path / "shared.db"
    a = await start_gateway(aiohttp_server, db)
    uid, _ = await add_user(a, credit=5)
    b = await start_gateway(aiohttp_server, db)
    try:
        r = await a.put(f"/x-users/{uid}", {"Name": "renamed"})
        assert r.status == 200, r.body
        r = await b.put(f"/x-users/{uid}", {"CreditGranted": 3, "BillingEmail": "b@x.test"})
        assert r.status == 200, r.body
        await a.gw.store.flush()
        await b.gw.store.flush()
        row = await a.gw.store.load_account(uid)
        assert row["name"] == "renamed" and row["billing_email"] == "b@x.test", row
        assert row["credit_granted"] == 8
    finally:
        await a.close()
        await b.close()


async def test_a_reload_never_lands_between_a_local_change_and_its_commit(pair):
    """A full reload that reads the store while a local change waits on its write would
    set memory back: the new account gone (and a deleted one back). It waits instead."""
    import sqlite3

    a, _ = pair
    before = len(a.gw.state.accounts)
    blocker = sqlite3.connect(a.gw.store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the file: A's unit waits
    try:
        created = asyncio.ensure_future(add_user(a, credit=5))
        await asyncio.sleep(0.1)
        assert len(a.gw.state.accounts) == before + 1  # in memory, not yet stored
        a.gw.sync._event(0, "all", "")  # what a missed event or a version check does
        await asyncio.sleep(0.3)
        assert len(a.gw.state.accounts) == before + 1
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    uid, key = await created
    assert (await a.get("/dashboard/x-user-news", key=key)).status == 200
    await within(1.0, lambda: _reloaded(a))
    assert uid in a.gw.state.accounts


async def _reloaded(api) -> bool:
    return api.gw.sync.queue.empty() and not api.gw.state.gate.reloading
