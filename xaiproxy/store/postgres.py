"""The PostgreSQL store (SPEC 12): the SQLite store's ops and named reads, for many instances.

Same shape as `store/sqlite.py`: every write is a unit of typed ops queued to one
batched writer per instance, committed in one transaction per flush (each unit in its
own savepoint, the data plane's usage and grant deltas in one multi-row statement
each); reads go through a small connection pool. What changes with many instances on
one database: migrations run under an advisory lock, ids come in blocks from a
sequence per id table (`id_block`), grant deltas lock their rows in id order, and a
batch that loses a deadlock to another instance is retried whole. A raw
`(sql, params)` tuple with `$n` placeholders is accepted, for tests of this backend.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Sequence

import asyncpg

from . import ops as o
from . import postgres_schema as pg
from . import tables
from .writer import GroupCommit

log = logging.getLogger("xaiproxy.store")

GRANT_DELTA_SQL = "UPDATE grants SET remaining_n = remaining_n - $1 WHERE id = $2"
# A batch's summed deltas: its grants locked in id order first (no deadlock between
# instances), then one UPDATE for all of them.
LOCK_GRANTS_SQL = "SELECT id FROM grants WHERE id = ANY($1::int8[]) ORDER BY id FOR UPDATE"
GRANT_DELTAS_SQL = (
    "UPDATE grants g SET remaining_n = g.remaining_n - d.n"
    " FROM unnest($1::int8[], $2::int8[]) AS d(id, n) WHERE g.id = d.id"
)
PLUGIN_SCHEMA_SQL = (
    "CREATE TABLE IF NOT EXISTS plugin_schema (plugin TEXT PRIMARY KEY, version INTEGER NOT NULL)"
)
PLUGIN_LOCK = pg._LOCK_ID + 1  # plugin migrations, one instance at a time
IDS_LOCK = pg._LOCK_ID + 2  # id blocks: the only place a sequence moves
RETRIES = 3  # a batch that lost a deadlock or a serialization race runs again whole
# A unit's own failure (bad data, a constraint): that unit is rolled back alone.
UNIT_ERRORS = (asyncpg.PostgresError, TypeError, ValueError, OverflowError)
# The batch's failure, never one unit's: a deadlock or serialization loss (run again),
# a lost connection or a server shutting down (the batch is requeued or failed).
BATCH_ERRORS = (
    asyncpg.TransactionRollbackError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
)


class PostgresStore(GroupCommit):
    def __init__(self, url: str, flush_interval: float = 0.2) -> None:
        super().__init__(flush_interval)
        self.url = url
        self._conn: asyncpg.Connection | None = None  # the writer's own connection
        self._pool: asyncpg.Pool | None = None  # readers

    # -- lifecycle -------------------------------------------------------
    async def open(self) -> None:
        self._conn = await self._connect()
        await pg.migrate(self._conn)
        self._pool = await self._guard(asyncpg.create_pool(self.url, min_size=1, max_size=4))
        self._start()

    async def _connect(self) -> asyncpg.Connection:
        return await self._guard(asyncpg.connect(self.url, timeout=10))

    async def _guard(self, connecting):
        """A connection, or a one-line StartError naming the database, password masked."""
        from ..errors import StartError
        from ..settings import mask_url

        try:
            return await connecting
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            reason = str(exc) or type(exc).__name__
            password = _password(self.url)
            if password:
                reason = reason.replace(password, "****")
            raise StartError(f"database {mask_url(self.url)}: cannot connect: {reason}") from None

    async def close(self) -> None:
        """Commit everything queued, then disconnect."""
        await self._stop()
        if self._pool:
            await self._pool.close()
        if self._conn:
            await self._conn.close()

    # -- writing ---------------------------------------------------------
    def render(self, op) -> list[Statement]:
        fn = ROW_RENDER.get(type(op))
        return render(op) if fn is None else fn(self.tables, op)

    async def _commit_batch(self, batch: list, usage: list, deltas: dict[int, int]) -> list:
        for attempt in range(RETRIES):
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self.url, timeout=10)
            try:
                return await self._commit(batch, usage, deltas)
            except asyncpg.TransactionRollbackError as exc:  # lost to another instance
                if attempt == RETRIES - 1:
                    raise
                log.warning("batch rolled back (%s); running it again", exc)
            except BaseException:
                # In an unknown state (a lost connection, a cancel): the next flush
                # starts on a new one.
                self._conn.terminate()
                self._conn = None
                raise
        raise AssertionError("unreachable")

    async def _commit(self, batch: list, usage: list, deltas: dict[int, int]) -> list:
        """One transaction: every unit in its own savepoint, then the fast lane in its own."""
        conn = self._conn
        failed = 0
        async with conn.transaction():
            errors = []
            for statements, _ in batch:
                errors.append(await self._unit(conn, statements))
            failed += sum(err is not None for err in errors)
            # After the units, so a grant created in this batch exists before its deltas.
            failed += await self._lane(conn, usage, deltas)
        self.write_errors += failed  # counted once committed (a retried batch fails anew)
        return errors

    @staticmethod
    async def _unit(conn: asyncpg.Connection, statements) -> Exception | None:
        try:
            async with conn.transaction():  # a savepoint inside the batch's transaction
                for sql, params in statements:
                    await conn.execute(sql, *params)
        except BATCH_ERRORS:
            raise
        except UNIT_ERRORS as exc:
            log.error("write unit rolled back: %s", exc)
            return exc
        return None

    async def _lane(self, conn: asyncpg.Connection, usage: list, deltas: dict[int, int]) -> int:
        """Usage rows with their usage_daily fold, and the summed deltas: one statement
        each; on failure, each row alone. Returns how many rows failed."""
        if not (usage or deltas):
            return 0
        ids = sorted(deltas)
        takes = [deltas[i] for i in ids]
        try:
            async with conn.transaction():
                if usage:
                    await conn.execute(pg.USAGE_INSERT_SQL, *pg.usage_args(usage))
                if ids:
                    await conn.execute(LOCK_GRANTS_SQL, ids)
                    await conn.execute(GRANT_DELTAS_SQL, ids, takes)
        except BATCH_ERRORS:
            raise
        except UNIT_ERRORS as exc:
            log.error(
                "usage batch of %d rows failed (%s); writing them one by one", len(usage), exc
            )
            one_by_one = [[(pg.USAGE_INSERT_SQL, pg.usage_args([row]))] for row in usage]
            one_by_one += [[(GRANT_DELTA_SQL, (n, gid))] for gid, n in zip(ids, takes, strict=True)]
            return sum([await self._unit(conn, unit) is not None for unit in one_by_one])
        return 0

    # -- raw reads: tests and tools of this backend only ---------------------
    async def fetchall(self, sql: str, params: Sequence = ()) -> list[asyncpg.Record]:
        return await self._pool.fetch(sql, *params)

    async def fetchone(self, sql: str, params: Sequence = ()) -> asyncpg.Record | None:
        return await self._pool.fetchrow(sql, *params)

    async def scalar(self, sql: str, params: Sequence = ()):
        return await self._pool.fetchval(sql, *params)

    async def _dicts(self, sql: str, params: Sequence = ()) -> list[dict]:
        return [dict(r) for r in await self._pool.fetch(_dollars(sql), *params)]

    async def _tuples(self, sql: str, params: Sequence = ()) -> list[tuple]:
        return [tuple(r) for r in await self._pool.fetch(_dollars(sql), *params)]

    async def _value(self, sql: str, params: Sequence = ()):
        return await self._pool.fetchval(_dollars(sql), *params)

    # -- named reads (start-up and management; the data plane never reads) ----
    async def count_accounts(self) -> int:
        return await self._value("SELECT COUNT(*) FROM accounts")

    async def load_accounts(self) -> list[dict]:
        """Every account row, parents before children."""
        return await self._dicts("SELECT * FROM accounts ORDER BY level, id")

    async def load_grants(self, now: float) -> list[dict]:
        """Grants still worth something (unexpired, or in debt), soonest expiry first."""
        return await self._dicts(
            f"SELECT * FROM grants WHERE {LIVE_GRANT} ORDER BY expires_at", (now,)
        )

    async def load_keys(self) -> list[dict]:
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

    async def load_account(self, account_id: int) -> dict | None:
        rows = await self._dicts("SELECT * FROM accounts WHERE id = ?", (account_id,))
        return rows[0] if rows else None

    async def load_account_grants(self, account_id: int, now: float) -> list[dict]:
        return await self._dicts(
            f"SELECT * FROM grants WHERE account_id = ? AND {LIVE_GRANT} ORDER BY expires_at",
            (account_id, now),
        )

    async def load_key(self, key_id: int) -> dict | None:
        rows = await self._dicts("SELECT * FROM provider_keys WHERE id = ?", (key_id,))
        return rows[0] if rows else None

    async def load_config(self, owner_id: int) -> tuple[int, dict[str, str]]:
        """One owner's (version, {key: JSON text}); (0, {}) when it has none."""
        version = await self._value(
            "SELECT version FROM config_version WHERE owner_id = ?", (owner_id,)
        )
        rows = await self._tuples(
            "SELECT key, value FROM owner_config WHERE owner_id = ?", (owner_id,)
        )
        return version or 0, dict(rows)

    async def spend_since(self, day: int) -> list[tuple[int, int]]:
        return await self._tuples(
            "SELECT account_id, SUM(cost_n)::int8 FROM usage_daily WHERE day >= ?"
            " GROUP BY account_id",
            (day,),
        )

    async def spend_by_dna_since(self, day: int) -> list[tuple[str, int]]:
        return await self._tuples(
            "SELECT dna, SUM(cost_n)::int8 FROM usage_daily WHERE day >= ? GROUP BY dna", (day,)
        )

    async def max_ids(self) -> dict[str, int]:
        """The highest id each table has ever used, including ids only referenced elsewhere."""
        out = {}
        for table, sources in ID_SOURCES.items():
            found = [await self._value(sql) for sql in sources]
            out[table] = max((n for n in found if n is not None), default=0)
        return out

    async def id_block(self, table: str) -> tuple[int, int]:
        """A block of ids (first, last) no other instance is ever given: one nextval of the
        table's sequence `ids_<table>` (it steps by pg.ID_BLOCK), moved past any id the
        table has used (ids written around the blocks: a first root, an import)."""
        if not tables.NAME.fullmatch(table):
            raise ValueError(f"no ids for {table!r}: not a table name")
        seq = f"ids_{table}"
        async with self._pool.acquire() as conn, conn.transaction():
            # Serialised with the other instances' draws, so a setval never moves back.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", IDS_LOCK)
            await conn.execute(f"CREATE SEQUENCE IF NOT EXISTS {seq} INCREMENT BY {pg.ID_BLOCK}")
            first = await conn.fetchval("SELECT nextval($1)", seq)
            high = await _max_used(conn, table)
            if first <= high:
                await conn.execute("SELECT setval($1, $2)", seq, max(high - pg.ID_BLOCK + 1, first))
                first = await conn.fetchval("SELECT nextval($1)", seq)
        return first, first + pg.ID_BLOCK - 1

    async def audit_totals(self) -> dict[str, int]:
        return {name: await self._value(sql) for name, sql in AUDIT_SQL.items()}

    async def usage_by_day(self, scope: o.Scope, first: int, end: int) -> list[tuple]:
        """(day, model, requests, prompt, completion, cached, cost_n) for days [first, end)."""
        where, params = scope_sql(scope)
        return await self._tuples(
            f"SELECT day, model, {SUMS} FROM usage_daily"
            f" WHERE {where} AND day >= ? AND day < ? GROUP BY day, model ORDER BY day, model",
            (*params, first, end),
        )

    async def usage_by_account(self, scope: o.Scope, first: int, end: int) -> list[tuple]:
        """(account_id, requests, cost_n) for days [first, end)."""
        where, params = scope_sql(scope)
        return await self._tuples(
            "SELECT account_id, SUM(requests)::int8, SUM(cost_n)::int8 FROM usage_daily"
            f" WHERE {where} AND day >= ? AND day < ? GROUP BY account_id",
            (*params, first, end),
        )

    async def usage_totals(self, account_id: int, first: int) -> tuple:
        """(requests, prompt, completion, cached, cost_n) of one account from a day on."""
        rows = await self._tuples(
            f"SELECT {TOTALS} FROM usage_daily WHERE account_id = ? AND day >= ?",
            (account_id, first),
        )
        return rows[0]

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
        sql = f"SELECT {cols + ', ' if cols else ''}{TOTALS} FROM usage_daily WHERE {where}"
        if cols:
            sql += f" GROUP BY {cols} ORDER BY {cols}"
        return await self._tuples(sql, params)

    async def migrate_plugin(self, name: str, steps: list) -> list[int]:
        """Declare a plugin's tables; each step past its recorded version runs once, in its
        own transaction with its version, under a lock so instances starting together
        apply it once. A table is created only if absent (a step can adopt one)."""
        items = [tables.step_items(step) for step in steps]
        declared = tables.Tables()
        for step in items:
            declared.declare(step)
        self.tables.known |= declared.known
        done = []
        async with self._pool.acquire() as conn:
            while True:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", PLUGIN_LOCK)
                    await conn.execute(PLUGIN_SCHEMA_SQL)
                    have = await conn.fetchval(
                        "SELECT version FROM plugin_schema WHERE plugin = $1", name
                    )
                    have = have or 0
                    if have > len(steps):
                        raise ValueError(
                            f"the database is at version {have}, the plugin knows {len(steps)}"
                        )
                    if have == len(steps):
                        return done
                    number = have + 1
                    try:
                        async with conn.transaction():
                            for item in items[have]:
                                for sql in pg.plugin_ddl(item):
                                    await conn.execute(sql)
                            await conn.execute(
                                "INSERT INTO plugin_schema (plugin, version) VALUES ($1, $2)"
                                " ON CONFLICT (plugin) DO UPDATE SET version = excluded.version",
                                name,
                                number,
                            )
                    except asyncpg.PostgresError as exc:
                        raise ValueError(f"step {number} failed: {exc}") from None
                done.append(number)

    async def op_logs(
        self, account_id: int, actions: tuple[str, ...], filters: dict, limit: int, offset: int
    ) -> tuple[int, list[dict]]:
        """(total, a page newest first) of the logs an account made, or that were made on it
        by one of `actions`; `filters` narrows by action, target_id and status."""
        where = ["(operator_id = ? OR (target_id = ? AND action = ANY(?::text[])))"]
        params: list = [account_id, account_id, list(actions)]
        for name in ("action", "target_id", "status"):
            if name in filters:
                where.append(f"{name} = ?")
                params.append(filters[name])
        cond = " AND ".join(where)
        total = await self._value(f"SELECT COUNT(*) FROM op_logs WHERE {cond}", params)
        rows = await self._dicts(
            "SELECT id, ts, action, operator_id, target_id, details, status FROM op_logs"
            f" WHERE {cond} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return total, rows

    async def idempotency_get(self, account_id: int, key: str, since: float) -> dict | None:
        rows = await self._dicts(
            "SELECT fingerprint, status, response FROM idempotency"
            " WHERE account_id = ? AND key = ? AND created_at > ?",
            (account_id, key, since),
        )
        return rows[0] if rows else None

    async def meta_get(self, key: str) -> str | None:
        return await self._value("SELECT value FROM meta WHERE key = ?", (key,))

    async def load_objects(self) -> list[tuple]:
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
        cond, params = _where(self.tables, table, where or {})
        return await self._value(f"SELECT COUNT(*) FROM {table} WHERE {cond}", params)


async def _max_used(conn: asyncpg.Connection, table: str) -> int:
    """The highest id `table` has used, counting ids only referenced elsewhere; 0 for a
    table without an id column (or not made yet)."""
    sources = ID_SOURCES.get(table)
    if sources is None:
        has_id = await conn.fetchval(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND table_name = $1 AND column_name = 'id'",
            table,
        )
        sources = (f"SELECT MAX(id) FROM {table}",) if has_id else ()
    found = [await conn.fetchval(sql) for sql in sources]
    return max((n for n in found if n is not None), default=0)


def _password(url: str) -> str:
    from urllib.parse import parse_qsl, urlsplit

    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        return parts.password or query.get("password", "")
    return ""


@functools.lru_cache(maxsize=512)
def _dollars(sql: str) -> str:
    """`?` placeholders numbered as PostgreSQL's `$1, $2, …` (our SQL has no other `?`)."""
    parts = sql.split("?")
    return "".join(p + (f"${i}" if i < len(parts) else "") for i, p in enumerate(parts, 1))


LIVE_GRANT = "remaining_n != 0 AND (expires_at > ? OR remaining_n < 0)"
SUMS = (
    "SUM(requests)::int8, SUM(prompt_tokens)::int8, SUM(completion_tokens)::int8,"
    " SUM(cached_tokens)::int8, SUM(cost_n)::int8"
)
TOTALS = "COALESCE(SUM(requests), 0)::int8" + SUMS.removeprefix("SUM(requests)::int8")
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
AUDIT_SQL = {
    "minted_n": "SELECT COALESCE(SUM(amount_n), 0)::int8 FROM transfers WHERE from_id = 1",
    "returned_n": "SELECT COALESCE(SUM(amount_n), 0)::int8 FROM transfers WHERE to_id = 1",
    "held_n": "SELECT COALESCE(SUM(remaining_n), 0)::int8 FROM grants WHERE account_id != 1",
    "spent_n": "SELECT COALESCE(SUM(cost_n), 0)::int8 FROM usage WHERE account_id != 1",
    "fees_n": "SELECT COALESCE(SUM(fee_n), 0)::int8 FROM transfers",
}
USAGE_GROUPS = {"day": "day", "model": "model", "account_id": "account_id"}


def scope_sql(scope: o.Scope) -> tuple[str, tuple]:
    if scope.account_ids is not None:
        return "account_id = ANY(?::int8[])", (sorted(scope.account_ids),)
    if scope.dna is not None:
        # A DNA range (not LIKE), so an index serves it: ".1.42." -> [".1.42.", ".1.42/").
        upper = scope.dna[:-1] + chr(ord(scope.dna[-1]) + 1)
        return "dna >= ? AND dna < ?", (scope.dna, upper)
    return "TRUE", ()


# -- rendering typed ops into SQL -----------------------------------------------
Statement = tuple[str, Sequence]


def _st(sql: str, params: Sequence) -> Statement:
    return _dollars(sql), params


def _insert(table: str, row: dict, tail: str = "") -> Statement:
    marks = ", ".join("?" * len(row))
    return _st(
        f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks}){tail}", tuple(row.values())
    )


def _replace(table: str, row: dict, key: tuple[str, ...]) -> Statement:
    """INSERT OR REPLACE: the row with the same key has every other column replaced."""
    sets = ", ".join(f"{c} = excluded.{c}" for c in row if c not in key)
    return _insert(table, row, f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}")


def _fields(op) -> dict:
    return {name: getattr(op, name) for name in op.__slots__}


def _set(table: str, id_: int, fields: dict) -> Statement:
    sets = ", ".join(f"{c} = ?" for c in fields)
    return _st(f"UPDATE {table} SET {sets} WHERE id = ?", (*fields.values(), id_))


def _account_move(op: o.AccountMove) -> list[Statement]:
    # Usage rows carry the DNA so billing scopes (x-bill by subtree) follow the move.
    return [
        _set("accounts", op.id, {"parent_id": op.parent_id, "dna": op.dna, "level": op.level}),
        _st("UPDATE usage SET dna = ? WHERE account_id = ?", (op.dna, op.id)),
        _st("UPDATE usage_daily SET dna = ? WHERE account_id = ?", (op.dna, op.id)),
    ]


def _config_set(op: o.ConfigSet) -> list[Statement]:
    out = [_st("DELETE FROM owner_config WHERE owner_id = ?", (op.owner_id,))]
    if op.values:
        out.append(
            _st(
                "INSERT INTO owner_config (owner_id, key, value)"
                " SELECT ?, k, v FROM unnest(?::text[], ?::text[]) AS t(k, v)",
                (op.owner_id, list(op.values), list(op.values.values())),
            )
        )
    out.append(
        _replace("config_version", {"owner_id": op.owner_id, "version": op.version}, ("owner_id",))
    )
    return out


RENDER = {
    o.AccountPut: lambda op: [_insert("accounts", op.row)],
    o.AccountSet: lambda op: [_set("accounts", op.id, op.fields)],
    o.AccountMove: _account_move,
    o.AccountDelete: lambda op: [_st("DELETE FROM accounts WHERE id = ?", (op.id,))],
    o.GrantPut: lambda op: [_insert("grants", _fields(op))],
    o.GrantDelta: lambda op: [(GRANT_DELTA_SQL, (op.take_n, op.grant_id))],
    o.Transfer: lambda op: [_insert("transfers", _fields(op))],
    o.KeyPut: lambda op: [_replace("provider_keys", op.row, ("id",))],
    o.KeySleep: lambda op: [
        _set("provider_keys", op.id, {"sleep_until": op.until, "sleep_reason": op.reason})
    ],
    o.KeyDelete: lambda op: [_st("DELETE FROM provider_keys WHERE id = ?", (op.id,))],
    o.KeySet: lambda op: [_set("provider_keys", op.id, op.fields)],
    o.MetaPut: lambda op: [_replace("meta", _fields(op), ("key",))],
    o.ObjectPut: lambda op: [_insert("objects", _fields(op), " ON CONFLICT DO NOTHING")],
    o.ConfigSet: _config_set,
    o.OpLog: lambda op: [_insert("op_logs", _fields(op))],
    # Unique per (account, key): a second record of a key fails its unit (SPEC 12).
    o.IdempotencyPut: lambda op: [_insert("idempotency", _fields(op))],
    o.IdempotencyPrune: lambda op: [
        _st("DELETE FROM idempotency WHERE created_at <= ?", (op.before,))
    ],
    o.UsageRecord: lambda op: [(pg.USAGE_INSERT_SQL, pg.usage_args([op]))],
}


def render(op) -> list[Statement]:
    """The statements of one op; a raw (sql, params) tuple is its own statement."""
    fn = RENDER.get(type(op))
    if fn is not None:
        return fn(op)
    if isinstance(op, tuple) and len(op) == 2 and isinstance(op[0], str):
        return [op]
    raise TypeError(f"the PostgreSQL store cannot render {type(op).__name__}")


# -- plugin tables: generic row ops and filters ----------------------------------
def _where(known: tables.Tables, table: str, where: dict) -> tuple[str, tuple]:
    cols = known.columns(table, where)
    conds, params = [], []
    for name, value in where.items():
        if value is None:
            conds.append(f"{name} IS NULL")
        elif isinstance(value, o.In):
            # One array parameter however many values; its type is the column's.
            conds.append(f"{name} = ANY(?::{ARRAY_TYPES[cols[name].type]})")
            params.append([tables.encode(cols[name], v) for v in value.values])
        elif isinstance(value, o.Gt | o.Le):
            conds.append(f"{name} {'>' if isinstance(value, o.Gt) else '<='} ?")
            params.append(tables.encode(cols[name], value.value))
        else:
            conds.append(f"{name} = ?")
            params.append(tables.encode(cols[name], value))
    return " AND ".join(conds) or "TRUE", tuple(params)


ARRAY_TYPES = {
    "int": "int8[]",
    "float": "float8[]",
    "text": "text[]",
    "bool": "int8[]",
    "json": "text[]",
}


def _row_insert(known: tables.Tables, op: o.RowInsert) -> list[Statement]:
    return [_insert(op.table, known.encode(op.table, op.row))]


def _row_upsert(known: tables.Tables, op: o.RowUpsert) -> list[Statement]:
    table = known.table(op.table)
    if not table.primary_key:
        raise ValueError(f"table {op.table} has no primary key to upsert on")
    row = known.encode(op.table, op.row)
    if not [c for c in row if c not in table.primary_key]:
        return [_insert(op.table, row, f" ON CONFLICT ({', '.join(table.primary_key)}) DO NOTHING")]
    return [_replace(op.table, row, table.primary_key)]


def _row_delete(known: tables.Tables, op: o.RowDelete) -> list[Statement]:
    cond, params = _where(known, op.table, op.where)
    return [_st(f"DELETE FROM {op.table} WHERE {cond}", params)]


ROW_RENDER = {o.RowInsert: _row_insert, o.RowUpsert: _row_upsert, o.RowDelete: _row_delete}
