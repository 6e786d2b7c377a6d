"""SQLite store: migrations, one batched writer (group commit), and a read connection.

Every write in the process goes through `Store.submit`: the data plane queues and
moves on; management calls await the commit of their unit. The in-memory state is
changed first (atomically, on the event loop); the store is its durable log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiosqlite

from .migrations import MIGRATIONS

log = logging.getLogger("xaiproxy.store")

Op = tuple[str, Sequence]
GRANT_DELTA_SQL = "UPDATE grants SET remaining_n = remaining_n - ? WHERE id = ?"
USAGE_COLUMNS = (
    "ts account_id owner_id dna model upstream_model level key_id path prompt_tokens"
    " completion_tokens cached_tokens cost cost_n status latency_ms estimated request_id"
).split()
USAGE_SQL = (
    f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) VALUES ({', '.join('?' * len(USAGE_COLUMNS))})"
)
PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA busy_timeout=5000", "PRAGMA synchronous=NORMAL")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date; return the version now in force."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
        log.info("schema migrated to version %d", number)
    return len(MIGRATIONS)


class Store:
    def __init__(self, path: str, flush_interval: float = 0.2) -> None:
        self.path = path
        self.flush_interval = flush_interval
        self._queue: list[tuple[list[Op], asyncio.Future | None]] = []
        # The data plane's fast lane: usage rows go in one executemany per batch and
        # balance deltas are summed per grant, so a busy second costs a few statements.
        self._usage: list[Sequence] = []
        self._deltas: dict[int, int] = {}
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xaiproxy-writer")
        self._conn: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self.last_flush_seconds = 0.0
        self.flushes = 0
        self.write_errors = 0

    # -- lifecycle -------------------------------------------------------
    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._exec, self._open_writer)
        self._reader = await aiosqlite.connect(self.path)
        self._reader.row_factory = sqlite3.Row
        await self._reader.execute("PRAGMA busy_timeout=5000")
        self._task = asyncio.create_task(self._run(), name="xaiproxy-writer")

    def _open_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in PRAGMAS:
            conn.execute(pragma)
        migrate(conn)
        return conn

    async def close(self) -> None:
        """Flush everything queued, then close both connections."""
        self._closing = True
        self._wake.set()
        self._urgent.set()
        if self._task:
            await self._task
        if self._reader:
            await self._reader.close()
        if self._conn:
            await asyncio.get_running_loop().run_in_executor(self._exec, self._conn.close)
        self._exec.shutdown(wait=True)

    # -- writing ---------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._queue) + len(self._usage)

    def submit_usage(self, row: Sequence, ops: list[Op]) -> None:
        """Queue one usage row and the balance ops of its spend (no wait: group commit)."""
        self._usage.append(row)
        deltas = self._deltas
        for op in ops:
            if op[0] is GRANT_DELTA_SQL:
                take, grant_id = op[1]
                deltas[grant_id] = deltas.get(grant_id, 0) + take
            else:
                self._queue.append(([op], None))
        self._wake.set()

    def submit(self, ops: list[Op], wait: bool = False) -> asyncio.Future | None:
        """Queue one unit (applied all or nothing). With wait, return a future for its commit."""
        if self._closing and self._task is None:
            raise RuntimeError("store is closed")
        fut = asyncio.get_running_loop().create_future() if wait else None
        self._queue.append((ops, fut))
        self._wake.set()
        if wait:
            self._urgent.set()
        return fut

    async def write(self, ops: list[Op]) -> None:
        """Queue a unit and wait until it is committed (management calls)."""
        await self.submit(ops, wait=True)

    async def flush(self) -> None:
        await self.write([])

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not (self._queue or self._usage):
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._urgent.is_set() and not self._closing:
                # Group commit: let a short interval's worth of records gather.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self.flush_interval)
            batch, self._queue = self._queue, []
            usage, self._usage = self._usage, []
            deltas, self._deltas = self._deltas, {}
            self._urgent.clear()
            started = time.perf_counter()
            try:
                errors = await loop.run_in_executor(self._exec, self._commit, batch, usage, deltas)
            except Exception as exc:  # the whole transaction failed (disk, lock)
                log.error("batch of %d units failed: %s", len(batch), exc)
                errors = [exc] * len(batch)
                self._requeue(batch, usage, deltas)
                await asyncio.sleep(self.flush_interval)  # a failing disk is not retried hot
            self.last_flush_seconds = time.perf_counter() - started
            self.flushes += 1
            # Newest first: a waiting caller undoes its memory change, so undo in reverse.
            for (_, fut), err in reversed(list(zip(batch, errors, strict=True))):
                if fut is not None and not fut.done():
                    if err is None:
                        fut.set_result(None)
                    else:
                        fut.set_exception(err)

    def _requeue(self, batch: list, usage: list, deltas: dict[int, int]) -> None:
        """After a failed transaction, keep what the data plane already applied in memory.

        Management units are failed instead (their callers undo); at close nothing is kept.
        """
        if self._closing:
            self.write_errors += len(batch) + len(usage)
            return
        self._queue[:0] = [(ops, None) for ops, fut in batch if fut is None]
        self._usage[:0] = usage
        for gid, n in deltas.items():
            self._deltas[gid] = self._deltas.get(gid, 0) + n
        self.write_errors += sum(1 for _, fut in batch if fut is not None)

    def _commit(self, batch: list, usage: list, deltas: dict[int, int]) -> list:
        """One transaction: every unit in its own savepoint, then the fast lane in its own.

        A unit that raises anything is rolled back alone; nothing else in the batch is.
        """
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            errors = [self._unit(conn, ops) for ops, _ in batch]
            # After the units, so a grant created in this batch exists before its deltas.
            self._lane(conn, usage, deltas)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return errors

    def _unit(self, conn: sqlite3.Connection, ops: list[Op]) -> Exception | None:
        conn.execute("SAVEPOINT unit")
        try:
            for sql, params in ops:
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
        """Usage rows and summed deltas in one savepoint; on failure, each row alone."""
        if not (usage or deltas):
            return
        rows = [(n, gid) for gid, n in deltas.items()]
        conn.execute("SAVEPOINT lane")
        try:
            conn.executemany(USAGE_SQL, usage)
            conn.executemany(GRANT_DELTA_SQL, rows)
        except Exception as exc:
            conn.execute("ROLLBACK TO lane")
            log.error(
                "usage batch of %d rows failed (%s); writing them one by one", len(usage), exc
            )
            for row in usage:
                self._unit(conn, [(USAGE_SQL, row)])
            for row in rows:
                self._unit(conn, [(GRANT_DELTA_SQL, row)])
        conn.execute("RELEASE lane")

    # -- reading (management only; the data plane never reads) -------------
    async def fetchall(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        async with self._reader.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: Sequence = ()) -> sqlite3.Row | None:
        async with self._reader.execute(sql, params) as cur:
            return await cur.fetchone()

    async def scalar(self, sql: str, params: Sequence = ()):
        row = await self.fetchone(sql, params)
        return row[0] if row else None
