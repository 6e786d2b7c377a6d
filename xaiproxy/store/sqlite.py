"""The SQLite store: migrations, one batched writer (group commit), the named reads.

Every write in the process goes through `submit`: the data plane queues and moves
on; management calls await the commit of their unit. The in-memory state is changed
first (atomically, on the event loop); the store is its durable log. Units are lists
of typed ops (`store/ops.py`), rendered into SQL here and nowhere else. A raw
`(sql, params)` tuple is accepted too, for tests and tools of this backend only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiosqlite
import orjson

from . import ops as o
from . import tables
from .rollup import daily_rollup
from .sqlite_schema import MIGRATIONS
from .writer import GroupCommit

log = logging.getLogger("xaiproxy.store")

GRANT_DELTA_SQL = "UPDATE grants SET remaining_n = remaining_n - ? WHERE id = ?"
USAGE_COLUMNS = o.UsageRecord._fields
USAGE_SQL = (
    f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) VALUES ({', '.join('?' * len(USAGE_COLUMNS))})"
)
# The daily rollup, folded per batch in memory: one upsert per (day, account, model).
DAILY_SQL = (
    "INSERT INTO usage_daily VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (day, account_id, model) DO UPDATE SET"
    " requests = requests + excluded.requests,"
    " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
    " completion_tokens = completion_tokens + excluded.completion_tokens,"
    " cached_tokens = cached_tokens + excluded.cached_tokens,"
    " cost_n = cost_n + excluded.cost_n, dna = excluded.dna"
)
# Rebuilds the rollup from raw rows (for rows written around the writer, as benchmarks do).
DAILY_REBUILD_SQL = (
    "INSERT INTO usage_daily SELECT CAST(ts / 86400 AS INTEGER), account_id, model, MAX(dna),"
    " COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens), SUM(cost_n)"
    " FROM usage GROUP BY 1, 2, 3"
)
PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA busy_timeout=5000", "PRAGMA synchronous=NORMAL")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date; return the version now in force."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
        log.info("schema migrated to version %d", number)
    return len(MIGRATIONS)


class SQLiteStore(GroupCommit):
    def __init__(self, path: str, flush_interval: float = 0.2) -> None:
        super().__init__(flush_interval)
        self.path = path
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xaiproxy-writer")
        self._conn: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None

    # -- lifecycle -------------------------------------------------------
    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Readable by its owner only; SQLite gives -wal and -shm the same mode.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._exec, self._open_writer)
        self._reader = await aiosqlite.connect(self.path)
        self._reader.row_factory = sqlite3.Row
        await self._reader.execute("PRAGMA busy_timeout=5000")
        self._start()

    def _open_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in PRAGMAS:
            conn.execute(pragma)
        migrate(conn)
        return conn

    async def close(self) -> None:
        """Flush everything queued, then close both connections."""
        await self._stop()
        if self._reader:
            await self._reader.close()
        if self._conn:
            await asyncio.get_running_loop().run_in_executor(self._exec, self._conn.close)
        self._exec.shutdown(wait=True)

    # -- writing ---------------------------------------------------------
    def render(self, op) -> list[Statement]:
        """One op's statements; plugin-table ops are checked against their declaration."""
        fn = ROW_RENDER.get(type(op))
        return render(op) if fn is None else fn(self.tables, op)

    async def _commit_batch(self, batch: list, usage: list, deltas: dict[int, int]) -> list:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._exec, self._commit, batch, usage, deltas)

    def _commit(self, batch: list, usage: list, deltas: dict[int, int]) -> list:
        """One transaction: every unit in its own savepoint, then the fast lane in its own.

        A unit that raises anything is rolled back alone; nothing else in the batch is.
        """
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            errors = [self._unit(conn, statements) for statements, _ in batch]
            # After the units, so a grant created in this batch exists before its deltas.
            self._lane(conn, usage, deltas)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return errors

    def _unit(self, conn: sqlite3.Connection, statements: Iterable) -> Exception | None:
        conn.execute("SAVEPOINT unit")
        try:
            for sql, params in statements:
                conn.execute(sql, params)
        except Exception as exc:  # OverflowError, TypeError, sqlite3.Error: this unit only
            conn.execute("ROLLBACK TO unit")
            conn.execute("RELEASE unit")
            log.error("write unit rolled back: %s", exc)
            self.write_errors += 1
            return exc
        conn.execute("RELEASE unit")
        return None

    def _lane(self, conn: sqlite3.Connection, usage: list, deltas: dict[int, int]) -> None:
        """Usage rows, their usage_daily fold and summed deltas in one savepoint; on
        failure, each row alone (with its own fold)."""
        if not (usage or deltas):
            return
        rows = [(n, gid) for gid, n in deltas.items()]
        conn.execute("SAVEPOINT lane")
        try:
            conn.executemany(USAGE_SQL, usage)
            conn.executemany(DAILY_SQL, daily_rollup(usage))
            conn.executemany(GRANT_DELTA_SQL, rows)
        except Exception as exc:
            conn.execute("ROLLBACK TO lane")
            log.error(
                "usage batch of %d rows failed (%s); writing them one by one", len(usage), exc
            )
            for row in usage:
                self._unit(conn, _row_ops(row))
            for row in rows:
                self._unit(conn, [(GRANT_DELTA_SQL, row)])
        conn.execute("RELEASE lane")

    # -- raw reads: tests and tools of this backend only ---------------------
    async def fetchall(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        async with self._reader.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: Sequence = ()) -> sqlite3.Row | None:
        async with self._reader.execute(sql, params) as cur:
            return await cur.fetchone()

    async def scalar(self, sql: str, params: Sequence = ()):
        row = await self.fetchone(sql, params)
        return row[0] if row else None

    async def _dicts(self, sql: str, params: Sequence = ()) -> list[dict]:
        return [dict(r) for r in await self.fetchall(sql, params)]

    async def _tuples(self, sql: str, params: Sequence = ()) -> list[tuple]:
        return [tuple(r) for r in await self.fetchall(sql, params)]

    # -- named reads (management and start-up; the data plane never reads) ----
    async def count_accounts(self) -> int:
        return await self.scalar("SELECT COUNT(*) FROM accounts")

    async def load_accounts(self) -> list[dict]:
        """Every account row, parents before children."""
        return await self._dicts("SELECT * FROM accounts ORDER BY level, id")

    async def load_grants(self, now: float) -> list[dict]:
        """Grants still worth something (unexpired, or in debt), soonest expiry first."""
        return await self._dicts(
            "SELECT * FROM grants WHERE remaining_n != 0 AND (expires_at > ? OR remaining_n < 0)"
            " ORDER BY expires_at",
            (now,),
        )

    async def load_keys(self) -> list[dict]:
        """Every provider key row, its secret sealed as stored."""
        return await self._dicts("SELECT * FROM provider_keys")

    async def load_configs(self) -> tuple[dict[int, int], dict[int, dict[str, str]]]:
        """({owner: version}, {owner: {key: JSON text}})."""
        versions = dict(await self._tuples("SELECT owner_id, version FROM config_version"))
        values: dict[int, dict[str, str]] = {}
        for owner_id, key, value in await self._tuples(
            "SELECT owner_id, key, value FROM owner_config"
        ):
            values.setdefault(owner_id, {})[key] = value
        return versions, values

    async def spend_since(self, day: int) -> list[tuple[int, int]]:
        """(account_id, cost_n) summed over UTC days >= day."""
        return await self._tuples(
            "SELECT account_id, SUM(cost_n) FROM usage_daily WHERE day >= ? GROUP BY account_id",
            (day,),
        )

    async def spend_by_dna_since(self, day: int) -> list[tuple[str, int]]:
        """(dna, cost_n) summed over UTC days >= day, per DNA the usage was recorded under."""
        return await self._tuples(
            "SELECT dna, SUM(cost_n) FROM usage_daily WHERE day >= ? GROUP BY dna", (day,)
        )

    async def max_ids(self) -> dict[str, int]:
        """The highest id each table has ever used, including ids only referenced elsewhere."""
        out = {}
        for table, sources in ID_SOURCES.items():
            found = [await self.scalar(sql) for sql in sources]
            out[table] = max((n for n in found if n is not None), default=0)
        return out

    async def load_account(self, account_id: int) -> dict | None:
        rows = await self._dicts("SELECT * FROM accounts WHERE id = ?", (account_id,))
        return rows[0] if rows else None

    async def load_account_grants(self, account_id: int, now: float) -> list[dict]:
        return await self._dicts(
            "SELECT * FROM grants WHERE account_id = ? AND remaining_n != 0"
            " AND (expires_at > ? OR remaining_n < 0) ORDER BY expires_at",
            (account_id, now),
        )

    async def load_key(self, key_id: int) -> dict | None:
        rows = await self._dicts("SELECT * FROM provider_keys WHERE id = ?", (key_id,))
        return rows[0] if rows else None

    async def load_config(self, owner_id: int) -> tuple[int, dict[str, str]]:
        version = await self.scalar(
            "SELECT version FROM config_version WHERE owner_id = ?", (owner_id,)
        )
        rows = await self._tuples(
            "SELECT key, value FROM owner_config WHERE owner_id = ?", (owner_id,)
        )
        return version or 0, dict(rows)

    async def id_block(self, table: str) -> tuple[int, int]:
        """The next ID_BLOCK ids of `table`, from a counter row taken in its own write
        transaction: processes sharing the file never get the same block."""
        if not tables.NAME.fullmatch(table):
            raise ValueError(f"no ids for {table!r}: not a table name")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._exec, self._id_block, table)

    def _id_block(self, table: str) -> tuple[int, int]:
        conn = self._conn
        conn.execute(ID_BLOCKS_SQL)
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT next FROM id_blocks WHERE name = ?", (table,)).fetchone()
            first = max(row[0] if row else 1, self._max_used(conn, table) + 1)
            conn.execute(
                "INSERT OR REPLACE INTO id_blocks (name, next) VALUES (?, ?)",
                (table, first + ID_BLOCK),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return first, first + ID_BLOCK - 1

    def _max_used(self, conn: sqlite3.Connection, table: str) -> int:
        """The highest id `table` has used (ids written without blocks too)."""
        sources = ID_SOURCES.get(table)
        if sources is None:
            known = self.tables.known.get(table)
            if known is None or "id" not in {c.name for c in known.columns}:
                return 0
            sources = (f"SELECT MAX(id) FROM {table}",)
        found = [conn.execute(sql).fetchone()[0] for sql in sources]
        return max((n for n in found if n is not None), default=0)

    async def audit_totals(self) -> dict[str, int]:
        """Base-unit totals for the money invariant (see ledger.audit)."""
        return {name: await self.scalar(sql) for name, sql in AUDIT_SQL.items()}

    async def usage_by_day(self, scope: o.Scope, first: int, end: int) -> list[tuple]:
        """(day, model, requests, prompt, completion, cached, cost_n) for days [first, end)."""
        where, params = scope_sql(scope)
        return await self._tuples(
            "SELECT day, model, SUM(requests), SUM(prompt_tokens), SUM(completion_tokens),"
            " SUM(cached_tokens), SUM(cost_n) FROM usage_daily"
            f" WHERE {where} AND day >= ? AND day < ? GROUP BY day, model ORDER BY day, model",
            (*params, first, end),
        )

    async def usage_by_account(self, scope: o.Scope, first: int, end: int) -> list[tuple]:
        """(account_id, requests, cost_n) for days [first, end)."""
        where, params = scope_sql(scope)
        return await self._tuples(
            "SELECT account_id, SUM(requests), SUM(cost_n) FROM usage_daily"
            f" WHERE {where} AND day >= ? AND day < ? GROUP BY account_id",
            (*params, first, end),
        )

    async def usage_totals(self, account_id: int, first: int) -> tuple:
        """(requests, prompt, completion, cached, cost_n) of one account from a day on."""
        row = await self.fetchone(
            "SELECT COALESCE(SUM(requests), 0), SUM(prompt_tokens), SUM(completion_tokens),"
            " SUM(cached_tokens), SUM(cost_n) FROM usage_daily WHERE account_id = ? AND day >= ?",
            (account_id, first),
        )
        return tuple(row)

    async def usage_grouped(
        self, scope: o.Scope, first: int | None, last: int | None, by: tuple[str, ...]
    ) -> list[tuple]:
        """(*group values, requests, prompt, completion, cached, cost_n) per group of `by`."""
        cols = ", ".join(USAGE_GROUPS[g] for g in by)  # KeyError: not a grouping
        where, params = scope_sql(scope)
        for bound, op in ((first, ">="), (last, "<=")):
            if bound is not None:
                where += f" AND day {op} ?"
                params = (*params, bound)
        sql = (
            f"SELECT {cols + ', ' if cols else ''}COALESCE(SUM(requests), 0), SUM(prompt_tokens),"
            " SUM(completion_tokens), SUM(cached_tokens), SUM(cost_n) FROM usage_daily"
            f" WHERE {where}"
        )
        if cols:
            sql += f" GROUP BY {cols} ORDER BY {cols}"
        return await self._tuples(sql, params)

    async def migrate_plugin(self, name: str, steps: list) -> list[int]:
        """Declare a plugin's tables; each step past its recorded version runs once, as one
        unit with its version. A table is created only if absent, so a step can adopt a
        table an older schema made."""
        items = [tables.step_items(step) for step in steps]
        declared = tables.Tables()
        for step in items:
            declared.declare(step)
        self.tables.known |= declared.known
        await self.write([(PLUGIN_SCHEMA_SQL, ())])
        have = await self.scalar("SELECT version FROM plugin_schema WHERE plugin = ?", (name,))
        have = have or 0
        if have > len(steps):
            raise ValueError(f"the database is at version {have}, the plugin knows {len(steps)}")
        done = []
        for number, step in enumerate(items[have:], start=have + 1):
            unit = [(sql, ()) for item in step for sql in ddl(item)]
            unit.append(
                (
                    "INSERT OR REPLACE INTO plugin_schema (plugin, version) VALUES (?, ?)",
                    (name, number),
                )
            )
            try:
                await self.write(unit)
            except sqlite3.Error as exc:
                raise ValueError(f"step {number} failed: {exc}") from None
            done.append(number)
        return done

    async def op_logs(
        self, account_id: int, actions: tuple[str, ...], filters: dict, limit: int, offset: int
    ) -> tuple[int, list[dict]]:
        """(total, a page newest first) of the logs an account made, or that were made on it
        by one of `actions`; `filters` narrows by action, target_id and status."""
        marks = ", ".join("?" * len(actions))
        where = [f"(operator_id = ? OR (target_id = ? AND action IN ({marks})))"]
        params: list = [account_id, account_id, *actions]
        for name in ("action", "target_id", "status"):
            if name in filters:
                where.append(f"{name} = ?")
                params.append(filters[name])
        cond = " AND ".join(where)
        total = await self.scalar(f"SELECT COUNT(*) FROM op_logs WHERE {cond}", params)
        rows = await self._dicts(
            "SELECT id, ts, action, operator_id, target_id, details, status FROM op_logs"
            f" WHERE {cond} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return total, rows

    async def idempotency_get(self, account_id: int, key: str, since: float) -> dict | None:
        """The record of (account, key) made after `since`: fingerprint, status, response."""
        row = await self.fetchone(
            "SELECT fingerprint, status, response FROM idempotency"
            " WHERE account_id = ? AND key = ? AND created_at > ?",
            (account_id, key, since),
        )
        return None if row is None else dict(row) | {"response": bytes(row["response"])}

    async def meta_get(self, key: str) -> str | None:
        return await self.scalar("SELECT value FROM meta WHERE key = ?", (key,))

    async def load_objects(self) -> list[tuple]:
        """(owner_id, object_id, account_id, dna) of every recorded provider object."""
        return await self._tuples("SELECT owner_id, object_id, account_id, dna FROM objects")

    async def rows(
        self, table: str, where: dict | None = None, order: tuple = (), limit: int | None = None
    ) -> list[dict]:
        """Rows of a plugin table matching `where`, ordered (`-col`: descending), at most `limit`."""
        cols = self.tables.columns(table, [c.lstrip("-") for c in order])
        cond, params = _where(self.tables, table, where or {})
        sql = f"SELECT {', '.join(cols)} FROM {table} WHERE {cond}"
        if order:
            sql += " ORDER BY " + ", ".join(
                f"{c[1:]} DESC" if c.startswith("-") else c for c in order
            )
        if limit is not None:
            sql, params = f"{sql} LIMIT ?", (*params, int(limit))
        return [self.tables.decode(table, r) for r in await self._dicts(sql, params)]

    async def count_rows(self, table: str, where: dict | None = None) -> int:
        """How many rows of a plugin table match `where`."""
        cond, params = _where(self.tables, table, where or {})
        return await self.scalar(f"SELECT COUNT(*) FROM {table} WHERE {cond}", params)


ID_SOURCES = {
    "accounts": (
        "SELECT MAX(id) FROM accounts",
        "SELECT MAX(account_id) FROM grants",
        "SELECT MAX(account_id) FROM usage",  # served by usage_account_ts
        "SELECT MAX(to_id) FROM transfers",
    ),
    "grants": ("SELECT MAX(id) FROM grants",),
    "provider_keys": (
        "SELECT MAX(id) FROM provider_keys",
        "SELECT MAX(target_id) FROM op_logs WHERE action = 'add_key'",
    ),
}
# Blocks of ids for instances sharing the file (store.id_block), created on first use.
ID_BLOCK = 1000
ID_BLOCKS_SQL = (
    "CREATE TABLE IF NOT EXISTS id_blocks (name TEXT PRIMARY KEY, next INTEGER NOT NULL)"
)
AUDIT_SQL = {
    "minted_n": "SELECT COALESCE(SUM(amount_n), 0) FROM transfers WHERE from_id = 1",
    "returned_n": "SELECT COALESCE(SUM(amount_n), 0) FROM transfers WHERE to_id = 1",
    "held_n": "SELECT COALESCE(SUM(remaining_n), 0) FROM grants WHERE account_id != 1",
    "spent_n": "SELECT COALESCE(SUM(cost_n), 0) FROM usage WHERE account_id != 1",
    "fees_n": "SELECT COALESCE(SUM(fee_n), 0) FROM transfers",
}


USAGE_GROUPS = {"day": "day", "model": "model", "account_id": "account_id"}
# Plugin migrations' versions (store.migrate_plugin), created on first use.
PLUGIN_SCHEMA_SQL = (
    "CREATE TABLE IF NOT EXISTS plugin_schema (plugin TEXT PRIMARY KEY, version INTEGER NOT NULL)"
)


def scope_sql(scope: o.Scope) -> tuple[str, tuple]:
    if scope.account_ids is not None:
        # One JSON parameter however many accounts a filter matched (no 999-variable limit).
        return "account_id IN (SELECT value FROM json_each(?))", (str(sorted(scope.account_ids)),)
    if scope.dna is not None:
        # A DNA range (not LIKE), so an index serves it: ".1.42." -> [".1.42.", ".1.42/").
        upper = scope.dna[:-1] + chr(ord(scope.dna[-1]) + 1)
        return "dna >= ? AND dna < ?", (scope.dna, upper)
    return "1", ()


# -- rendering typed ops into SQL -----------------------------------------------
Statement = tuple[str, Sequence]


def _insert(table: str, row: dict, verb: str = "INSERT") -> Statement:
    cols = ", ".join(row)
    return f"{verb} INTO {table} ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())


def _row_ops(row: o.UsageRecord):
    """One usage row and its fold, built lazily so anything they raise stays in the unit."""
    yield USAGE_SQL, row
    for daily in daily_rollup([row]):
        yield DAILY_SQL, daily


def _fields(op) -> dict:
    return {name: getattr(op, name) for name in op.__slots__}


def _account_set(op: o.AccountSet) -> list[Statement]:
    sets = ", ".join(f"{c} = ?" for c in op.fields)
    return [(f"UPDATE accounts SET {sets} WHERE id = ?", (*op.fields.values(), op.id))]


def _account_move(op: o.AccountMove) -> list[Statement]:
    # Usage rows carry the DNA so billing scopes (x-bill by subtree) follow the move.
    return [
        (
            "UPDATE accounts SET parent_id = ?, dna = ?, level = ? WHERE id = ?",
            (op.parent_id, op.dna, op.level, op.id),
        ),
        ("UPDATE usage SET dna = ? WHERE account_id = ?", (op.dna, op.id)),
        ("UPDATE usage_daily SET dna = ? WHERE account_id = ?", (op.dna, op.id)),
    ]


def _key_set(op: o.KeySet) -> Statement:
    sets = ", ".join(f"{k} = ?" for k in op.fields)
    return f"UPDATE provider_keys SET {sets} WHERE id = ?", (*op.fields.values(), op.id)


def _config_set(op: o.ConfigSet) -> list[Statement]:
    out: list[Statement] = [("DELETE FROM owner_config WHERE owner_id = ?", (op.owner_id,))]
    out += [
        ("INSERT INTO owner_config (owner_id, key, value) VALUES (?, ?, ?)", (op.owner_id, k, v))
        for k, v in op.values.items()
    ]
    out.append(
        (
            "INSERT OR REPLACE INTO config_version (owner_id, version) VALUES (?, ?)",
            (op.owner_id, op.version),
        )
    )
    return out


RENDER = {
    o.AccountPut: lambda op: [_insert("accounts", op.row)],
    o.AccountSet: _account_set,
    o.AccountMove: _account_move,
    o.AccountDelete: lambda op: [("DELETE FROM accounts WHERE id = ?", (op.id,))],
    o.GrantPut: lambda op: [_insert("grants", _fields(op))],
    o.GrantDelta: lambda op: [(GRANT_DELTA_SQL, (op.take_n, op.grant_id))],
    o.Transfer: lambda op: [_insert("transfers", _fields(op))],
    o.KeyPut: lambda op: [_insert("provider_keys", op.row, "INSERT OR REPLACE")],
    o.KeySleep: lambda op: [
        (
            "UPDATE provider_keys SET sleep_until = ?, sleep_reason = ? WHERE id = ?",
            (op.until, op.reason, op.id),
        )
    ],
    o.KeyDelete: lambda op: [("DELETE FROM provider_keys WHERE id = ?", (op.id,))],
    o.KeySet: lambda op: [_key_set(op)],
    o.MetaPut: lambda op: [_insert("meta", _fields(op), "INSERT OR REPLACE")],
    o.ObjectPut: lambda op: [_insert("objects", _fields(op), "INSERT OR IGNORE")],
    o.ConfigSet: _config_set,
    o.OpLog: lambda op: [_insert("op_logs", _fields(op))],
    # A plain insert: a second record of a live key fails its unit (the last defence).
    o.IdempotencyPut: lambda op: [_insert("idempotency", _fields(op))],
    o.IdempotencyPrune: lambda op: [
        ("DELETE FROM idempotency WHERE created_at <= ?", (op.before,))
    ],
    o.UsageRecord: lambda op: [(USAGE_SQL, op)],
}


def render(op) -> list[Statement]:
    """The statements of one op; a raw (sql, params) tuple is its own statement."""
    fn = RENDER.get(type(op))
    if fn is not None:
        return fn(op)
    if isinstance(op, tuple) and len(op) == 2 and isinstance(op[0], str):
        return [op]
    raise TypeError(f"the SQLite store cannot render {type(op).__name__}")


# -- plugin tables: declarations and generic row ops --------------------------------
SQL_TYPES = {"int": "INTEGER", "float": "REAL", "text": "TEXT", "bool": "INTEGER", "json": "TEXT"}


def ddl(item: o.Table | o.AddColumn) -> list[str]:
    return tables.ddl(item, SQL_TYPES)


def _where(known: tables.Tables, table: str, where: dict) -> tuple[str, tuple]:
    cols = known.columns(table, where)
    conds, params = [], []
    for name, value in where.items():
        if value is None:
            conds.append(f"{name} IS NULL")
        elif isinstance(value, o.In):
            # One JSON parameter however many values (no 999-variable limit).
            conds.append(f"{name} IN (SELECT value FROM json_each(?))")
            values = [tables.encode(cols[name], v) for v in value.values]
            params.append(orjson.dumps(values).decode())
        elif isinstance(value, o.Gt | o.Le):
            conds.append(f"{name} {'>' if isinstance(value, o.Gt) else '<='} ?")
            params.append(tables.encode(cols[name], value.value))
        else:
            conds.append(f"{name} = ?")
            params.append(tables.encode(cols[name], value))
    return " AND ".join(conds) or "1", tuple(params)


def _row_insert(known: tables.Tables, op: o.RowInsert) -> list[Statement]:
    return [_insert(op.table, known.encode(op.table, op.row))]


def _row_upsert(known: tables.Tables, op: o.RowUpsert) -> list[Statement]:
    table = known.table(op.table)
    if not table.primary_key:
        raise ValueError(f"table {op.table} has no primary key to upsert on")
    sql, params = _insert(op.table, known.encode(op.table, op.row))
    rest = [c for c in op.row if c not in table.primary_key]
    sets = ", ".join(f"{c} = excluded.{c}" for c in rest)
    action = f"UPDATE SET {sets}" if rest else "NOTHING"
    return [(f"{sql} ON CONFLICT ({', '.join(table.primary_key)}) DO {action}", params)]


def _row_delete(known: tables.Tables, op: o.RowDelete) -> list[Statement]:
    cond, params = _where(known, op.table, op.where)
    return [(f"DELETE FROM {op.table} WHERE {cond}", params)]


ROW_RENDER = {o.RowInsert: _row_insert, o.RowUpsert: _row_upsert, o.RowDelete: _row_delete}
