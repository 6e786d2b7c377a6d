"""What only PostgreSQL has to get right: many instances on one database.

Each "instance" here is a PostgresStore of its own (its own writer connection and
pool) on one fresh database (`pg_url`); the gateway test runs the whole app on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import asyncpg
import pytest

from tests.fakes import add_key, chat, make_upstream, upstream  # noqa: F401 (fixtures)
from tests.helpers import start_gateway
from tests.test_invariant import build, swarm
from xaiproxy import ledger
from xaiproxy.store import ops as o
from xaiproxy.store import postgres_schema as pg
from xaiproxy.store.postgres import PostgresStore

from .test_contract import account, tree, usage

DAY = 86400


@pytest.fixture
async def store_pg(pg_url):
    s = PostgresStore(pg_url, flush_interval=0.05)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def two(pg_url):
    """Two instances' stores on one database, opened at once."""
    stores = [PostgresStore(pg_url, flush_interval=0.01) for _ in range(2)]
    await asyncio.gather(*(s.open() for s in stores))
    yield stores
    for s in stores:
        await s.close()


async def test_instances_starting_together_migrate_once(pg_url):
    stores = [PostgresStore(pg_url) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        versions = await stores[0].fetchall("SELECT version FROM schema_version ORDER BY 1")
        assert [v[0] for v in versions] == list(range(1, len(pg.MIGRATIONS) + 1))
        steps = [o.Table("notes", (o.Column("id", "int"),), primary_key=("id",))]
        steps.append(o.AddColumn("notes", o.Column("tag", "text", null=True)))
        applied = await asyncio.gather(*(s.migrate_plugin("notes", steps) for s in stores))
        assert sorted(n for done in applied for n in done) == [1, 2]  # each step once
    finally:
        for s in stores:
            await s.close()


async def test_concurrent_writers_keep_usage_and_balances_exact(two):
    """Two instances bill the same accounts and grants at once, batch after batch."""
    a, b = two
    await tree(a)
    now = time.time()
    await a.write(
        [
            o.GrantPut(1, 2, 10**12, 10**12, now, now + DAY),
            o.GrantPut(2, 3, 10**12, 10**12, now, now + DAY),
        ]
    )
    rng = random.Random(3)
    spent = {2: 0, 3: 0}

    async def bill(store, n: int) -> None:
        for i in range(n):
            acc = rng.choice((2, 3))
            cost = rng.randrange(1, 10**6)
            spent[acc] += cost
            dna = ".1.2." if acc == 2 else ".1.2.3."
            rec = usage(acc, dna, now + i * 1e-3, cost, rng.choice(("m1", "m2")))
            # Both grants in every batch, in either order: a deadlock if locks were not ordered.
            store.submit_usage(rec, [o.GrantDelta(acc - 1, cost), o.GrantDelta(4 - acc, 0)])
            if i % 50 == 0:
                await asyncio.sleep(0.005)
        await store.flush()

    await asyncio.gather(bill(a, 600), bill(b, 600))
    day = int(now // DAY)
    rows = await b.usage_by_account(o.ALL, day, day + 2)
    by_account = {acc: (n, cost) for acc, n, cost in rows}
    assert {acc: cost for acc, (_, cost) in by_account.items()} == spent
    assert sum(n for n, _ in by_account.values()) == 1200
    grants = {g["id"]: g["remaining_n"] for g in await a.load_grants(now)}
    assert grants == {1: 10**12 - spent[2], 2: 10**12 - spent[3]}
    assert await a.scalar("SELECT count(*) FROM usage") == 1200
    assert a.write_errors == b.write_errors == 0


async def test_id_blocks_from_two_instances_never_overlap(two):
    a, b = two
    await tree(a)  # ids 1..3 written around the blocks, as a first start's root is
    blocks = await asyncio.gather(*(s.id_block("accounts") for s in (a, b) for _ in range(15)))
    ids = [i for first, last in blocks for i in range(first, last + 1)]
    assert len(ids) == len(set(ids)) == 30 * pg.ID_BLOCK
    assert min(ids) > 3
    assert all(last - first + 1 == pg.ID_BLOCK for first, last in blocks)


async def test_ids_written_around_the_blocks_are_never_handed_out(two):
    a, b = two
    first, _ = await a.id_block("accounts")
    # An import writes explicit ids far ahead; usage and keys' logs name ids too.
    await a.write([o.AccountPut(account(first + 5000, None, ".9."))])
    a.submit_usage(usage(first + 9000, ".1.x.", time.time(), 1), [])
    await a.write([o.OpLog(1.0, 1, 77_777, "add_key", "a deleted key")])
    for store, table, used in ((b, "accounts", first + 9000), (a, "provider_keys", 77_777)):
        got, last = await store.id_block(table)
        assert got > used and last == got + pg.ID_BLOCK - 1
        again, _ = await (a if store is b else b).id_block(table)
        assert again > last  # the other instance's next block follows, never overlaps
    grants = [await a.id_block("grants"), await b.id_block("grants")]
    assert grants[1][0] == grants[0][1] + 1
    # Any table the gateway picks ids for: news, a plugin's table (its own MAX(id)).
    await a.migrate_plugin("notes", [o.Table("notes", (o.Column("id", "int"),), ("id",))])
    await a.write([o.RowInsert("notes", {"id": 4321})])
    assert (await b.id_block("notes"))[0] > 4321 and (await b.id_block("news"))[0] >= 1
    assert await a.id_block("no_table_yet") == (1, pg.ID_BLOCK)
    with pytest.raises(ValueError, match="not a table name"):
        await a.id_block("x; DROP TABLE accounts")


async def test_an_idempotency_key_from_two_instances_applies_once(two):
    a, b = two
    await tree(a)
    now = time.time()

    def unit(grant_id: int) -> list:
        return [
            o.GrantPut(grant_id, 2, 500, 500, now, now + DAY),
            o.Transfer(now, 1, 2, 500, 0, "recharge", 1),
            o.IdempotencyPut(1, "same-key", "fp", 200, b'{"ok":1}', now),
        ]

    results = await asyncio.gather(a.write(unit(10)), b.write(unit(11)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, Exception)]
    assert len(failed) == 1 and isinstance(failed[0], asyncpg.UniqueViolationError), results
    assert len(await a.load_grants(now)) == 1  # the loser's grant rolled back with its key
    assert (await a.audit_totals())["minted_n"] == 500
    assert (await b.idempotency_get(1, "same-key", 0))["response"] == b'{"ok":1}'


async def test_a_bad_unit_in_a_batch_fails_only_itself(store_pg):
    s = store_pg
    await tree(s)
    now = time.time()
    await s.write([o.GrantPut(1, 2, 100, 100, now, now + DAY)])
    futures = [
        s.submit([o.AccountSet(2, {"alias": "first"})], wait=True),
        s.submit([o.AccountSet(3, {"alias": "lost"}), o.AccountSet(2, {"rpm": "many"})], wait=True),
        s.submit([o.OpLog(1.0, 1, 2, "x", "kept")], wait=True),
        s.submit([o.AccountPut(account(2, 1, ".1.2.", "twin"))], wait=True),
        s.submit([o.AccountSet(3, {"alias": "last"})], wait=True),
    ]
    s.submit_usage(usage(2, ".1.2.", now, 7), [o.GrantDelta(1, 7)])
    bad = usage(3, ".1.2.3.", now, 1)._replace(prompt_tokens="many")
    s.submit_usage(bad, [])
    s.submit_usage(usage(3, ".1.2.3.", now, 5), [])
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert [r is None for r in results] == [True, False, True, False, True]
    accounts = {r["id"]: r for r in await s.load_accounts()}
    assert (accounts[2]["alias"], accounts[2]["rpm"], accounts[3]["alias"]) == ("first", 0, "last")
    day = int(now // DAY)
    assert sorted(await s.usage_by_account(o.ALL, day, day + 1)) == [(2, 1, 7), (3, 1, 5)]
    assert [g["remaining_n"] for g in await s.load_grants(now)] == [93]
    assert s.write_errors == 3  # two units and the bad usage row


async def test_a_database_that_cannot_be_reached_is_named_with_its_password_masked(
    postgres_server,
):
    from xaiproxy.errors import StartError

    url = postgres_server.url("no_such_db", password="hunter2-s3cret")
    for bad in (url, url.replace(f":{postgres_server.port}/", ":9/")):
        store = PostgresStore(bad)
        with pytest.raises(StartError) as err:
            await store.open()
        message = str(err.value)
        assert message.startswith(f"database {bad.replace('hunter2-s3cret', '****')}: cannot")
        assert "hunter2" not in message


async def stored_balances(store) -> dict[int, int]:
    """{account: balance_n} as PostgreSQL holds them (not the instance's memory copy)."""
    balances = {r["id"]: 0 for r in await store.load_accounts() if r["parent_id"] is not None}
    for g in await store.load_grants(time.time()):
        if g["account_id"] in balances:
            balances[g["account_id"]] += g["remaining_n"]
    return balances


async def test_a_gateway_on_postgresql_keeps_the_money_invariant(
    aiohttp_server,
    pg_url,
    redis_url,
    upstream,  # noqa: F811
):
    await invariant_and_restart(aiohttp_server, pg_url, redis_url, upstream)


async def test_a_gateway_on_sqlite_and_redis_keeps_the_money_invariant(
    aiohttp_server,
    tmp_path,
    redis_url,
    upstream,  # noqa: F811
):
    await invariant_and_restart(aiohttp_server, tmp_path / "x.db", redis_url, upstream)


async def invariant_and_restart(aiohttp_server, db, redis_url, upstream) -> None:  # noqa: F811
    """Creates, recharges, refunds, deletes (a payer too) and requests at once, with
    Redis: the invariant holds in the store, and a restart loads exactly what it holds.
    (A reload from the store landing amid local changes once brought a deleted payer
    back and stored a child under it: gate.py.)"""
    api = await start_gateway(aiohttp_server, db, redis=redis_url)
    try:
        await add_key(api, upstream)
        payers = await build(api)
        replies = await asyncio.gather(*swarm(api, payers, random.Random(7)))
        statuses = [r.status for r in replies]
        assert 500 not in statuses and statuses.count(200) > 140, statuses
        await api.gw.store.flush()
        report = await ledger.audit(api.gw.store)
        assert report["ok"] and report["spent_n"] > 0, report
        balances = await stored_balances(api.gw.store)
        assert api.gw.store.write_errors == 0
    finally:
        await api.close()
    again = await start_gateway(aiohttp_server, db, redis=redis_url)
    try:
        state = again.gw.state
        assert await stored_balances(again.gw.store) == balances
        assert {a.id: ledger.balance_n(a) for a in state.accounts.values() if not a.is_root} == (
            balances
        )
        assert (await ledger.audit(again.gw.store))["ok"]
    finally:
        await again.close()


async def test_the_writer_reconnects_and_keeps_the_data_planes_records(store_pg):
    s = store_pg
    await tree(s)
    now = time.time()
    await s.scalar("SELECT pg_terminate_backend($1)", (s._conn.get_server_pid(),))
    s.submit_usage(usage(2, ".1.2.", now, 7), [])
    # Whether this batch finds the link dead (it fails: its caller undoes) or asyncpg saw
    # the close first (a new connection at once) depends on timing; both are fine.
    lost = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)
    with contextlib.suppress(*lost):
        await s.write([o.AccountSet(2, {"alias": "maybe"})])
    await s.write([o.AccountSet(2, {"alias": "kept"})])  # a new connection
    assert (await s.load_account(2))["alias"] == "kept"
    day = int(now // DAY)
    assert await s.usage_by_account(o.ALL, day, day + 1) == [(2, 1, 7)]  # once, not lost
