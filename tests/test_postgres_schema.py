"""The PostgreSQL schema on a real PostgreSQL: the same tables and columns as SQLite's,
the usage rollup without a trigger, idempotency unique, concurrent starts migrate once."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg
import pytest

from xaiproxy.store import postgres_schema as pg
from xaiproxy.store.sqlite import USAGE_COLUMNS
from xaiproxy.store.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS

# SQLite declared type -> the PostgreSQL types that hold it without loss.
COMPATIBLE = {
    "INTEGER": {"bigint", "integer"},
    "REAL": {"double precision"},
    "TEXT": {"text"},
    "BLOB": {"bytea"},
}


def sqlite_columns() -> dict[str, dict[str, str]]:
    con = sqlite3.connect(":memory:")
    for sql in SQLITE_MIGRATIONS:
        con.executescript(sql)
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    out = {t: {r[1]: r[2].upper() for r in con.execute(f"PRAGMA table_info({t})")} for t in tables}
    con.close()
    return out


@pytest.fixture
async def conn(pg_url):
    c = await asyncpg.connect(pg_url)
    await pg.migrate(c)
    yield c
    await c.close()


async def test_every_sqlite_column_has_a_postgresql_twin(conn):
    rows = await conn.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name != 'schema_version'"
    )
    pg_cols: dict[str, dict[str, str]] = {}
    for r in rows:
        pg_cols.setdefault(r["table_name"], {})[r["column_name"]] = r["data_type"]
    lite = sqlite_columns()
    assert set(pg_cols) == set(lite)
    for table, cols in lite.items():
        assert set(pg_cols[table]) == set(cols), table
        for name, decl in cols.items():
            assert pg_cols[table][name] in COMPATIBLE[decl], (table, name, decl)


async def test_concurrent_starts_migrate_once(pg_url):
    conns = [await asyncpg.connect(pg_url) for _ in range(3)]
    try:
        versions = await asyncio.gather(*(pg.migrate(c) for c in conns))
        assert versions == [len(pg.MIGRATIONS)] * 3
        assert await conns[0].fetchval("SELECT count(*) FROM schema_version") == len(pg.MIGRATIONS)
        assert await pg.migrate(conns[1]) == len(pg.MIGRATIONS)  # again: nothing to do
    finally:
        for c in conns:
            await c.close()


def usage_row(ts: float, account: int, model: str, tokens: int, cost_n: int) -> tuple:
    values = dict.fromkeys(USAGE_COLUMNS, 0)
    values.update(
        ts=ts, account_id=account, owner_id=1, dna=f".1.{account}.", model=model,
        upstream_model=model, path="/v1/chat/completions", prompt_tokens=tokens,
        completion_tokens=2 * tokens, cached_tokens=1, cost=cost_n / 1e9, cost_n=cost_n,
        status=200, latency_ms=1.5, request_id=f"r{ts}",
    )  # fmt: skip
    return tuple(values[c] for c in USAGE_COLUMNS)


async def test_usage_batches_roll_up_into_usage_daily_without_a_trigger(conn):
    day = 20_000 * 86400.0
    batches = [
        [usage_row(day + i, 2 + i % 2, "gpt-4o", 10 + i, 1000 + i) for i in range(50)],
        [usage_row(day + 86400 + i, 2, "gpt-4o" if i % 3 else "o3", 7, 3) for i in range(30)],
        [usage_row(day + 5, 3, "gpt-4o", 1, 2 * 10**15)],  # nano sums past 2^32
    ]
    for rows in batches:
        async with conn.transaction():
            await conn.execute(pg.USAGE_INSERT_SQL, *pg.usage_args(rows))
    rolled = await conn.fetch(
        "SELECT day, account_id, model, requests, prompt_tokens, completion_tokens,"
        " cached_tokens, cost_n FROM usage_daily ORDER BY 1, 2, 3"
    )
    raw = await conn.fetch(
        "SELECT floor(ts / 86400)::bigint AS day, account_id, model, count(*) AS requests,"
        " sum(prompt_tokens)::bigint, sum(completion_tokens)::bigint,"
        " sum(cached_tokens)::bigint, sum(cost_n)::bigint"
        " FROM usage GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )
    assert [tuple(r) for r in rolled] == [tuple(r) for r in raw]
    assert len(rolled) == 4 and sum(r["requests"] for r in rolled) == 81
    assert await conn.fetchval("SELECT sum(cost_n) FROM usage_daily") == (
        sum(1000 + i for i in range(50)) + 90 + 2 * 10**15
    )


async def test_an_idempotency_key_is_recorded_once(conn):
    insert = (
        "INSERT INTO idempotency (account_id, key, fingerprint, status, response, created_at)"
        " VALUES ($1, $2, $3, 200, $4, 0) ON CONFLICT DO NOTHING RETURNING key"
    )
    assert await conn.fetchval(insert, 2, "k1", "f", b"{}") == "k1"
    assert await conn.fetchval(insert, 2, "k1", "g", b"[]") is None
    assert await conn.fetchval(insert, 3, "k1", "f", b"{}") == "k1"  # per account
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(
            insert.replace(" ON CONFLICT DO NOTHING RETURNING key", ""), 2, "k1", "f", b""
        )


async def test_names_and_emails_are_unique_ignoring_case_and_ids_come_from_sequences(conn):
    insert = (
        "INSERT INTO accounts (id, name, email, dna, level, key_hash, key_prefix, created_at,"
        " updated_at) VALUES ($1, $2, $3, '.1.', 0, $4, 'sk-Xvs', 0, 0)"
    )
    await conn.execute(insert, 1, "root", "root@example.com", "h1")  # an explicit id loads
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(insert, 2, "ROOT", "other@example.com", "h2")
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(insert, 3, "other", "Root@Example.com", "h3")
    await conn.execute("SELECT setval(pg_get_serial_sequence('grants', 'id'), 41)")
    await conn.execute(
        "INSERT INTO grants (account_id, amount_n, remaining_n, granted_at, expires_at)"
        " VALUES (1, 5, 5, 0, 1)"
    )
    assert await conn.fetchval("SELECT max(id) FROM grants") == 42


async def test_plugin_tables_render_on_postgresql_and_adopt_existing_ones(conn):
    """news and alerts declare the tables the core schema made: rendering them is a no-op,
    and a new declaration creates its table, index and added column."""
    from xaiproxy_plugins import alerts, news

    for table in (news.NEWS, alerts.SENT):
        for sql in pg.plugin_ddl(table):
            await conn.execute(sql)
    notes = pg.Table(
        "notes",
        (pg.Column("id", "int"), pg.Column("extra", "json", default={"a": "it's"})),
        primary_key=("id",),
        indexes=(("extra",),),
    )
    for sql in [*pg.plugin_ddl(notes), *pg.plugin_ddl(notes)]:
        await conn.execute(sql)
    for sql in pg.plugin_ddl(pg.AddColumn("notes", pg.Column("flag", "bool", default=True))):
        await conn.execute(sql)
    await conn.execute("INSERT INTO notes (id) VALUES (1)")
    assert tuple(await conn.fetchrow("SELECT extra, flag FROM notes")) == ('{"a":"it\'s"}', 1)
