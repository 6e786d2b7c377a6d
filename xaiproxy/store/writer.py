"""The batched writer both backends share: one queue of units, the data plane's fast lane
(usage records and per-grant balance deltas), group commit, and what a failed batch does.

A backend supplies `render(op)` (its statements for one op) and `_commit_batch(batch,
usage, deltas)` (one transaction: each unit in its own savepoint, then the lane; returns
one error or None per unit, or raises if the whole transaction failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from . import ops as o
from . import tables

log = logging.getLogger("xaiproxy.store")


class GroupCommit:
    def __init__(self, flush_interval: float) -> None:
        self.flush_interval = flush_interval
        self._queue: list[tuple[list, asyncio.Future | None]] = []
        # The data plane's fast lane: usage rows go in one statement per batch and
        # balance deltas are summed per grant, so a busy second costs a few statements.
        self._usage: list[o.UsageRecord] = []
        self._deltas: dict[int, int] = {}
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self.closed = False
        self.last_flush_seconds = 0.0
        self.flushes = 0
        self.write_errors = 0
        self.tables = tables.Tables()  # plugin tables, as their migrations declare them

    def render(self, op) -> list:
        raise NotImplementedError

    async def _commit_batch(self, batch: list, usage: list, deltas: dict[int, int]) -> list:
        raise NotImplementedError

    def _start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="xaiproxy-writer")

    async def _stop(self) -> None:
        """Commit everything queued, then let the writer end."""
        self.closed = self._closing = True
        self._wake.set()
        self._urgent.set()
        if self._task:
            await self._task

    # -- writing ---------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._queue) + len(self._usage)

    def submit_usage(self, record: o.UsageRecord, ops: list) -> None:
        """Queue one usage record and the balance ops of its spend (no wait: group commit)."""
        self._usage.append(record)
        deltas = self._deltas
        for op in ops:
            if type(op) is o.GrantDelta:
                deltas[op.grant_id] = deltas.get(op.grant_id, 0) + op.take_n
            else:
                self._queue.append((self.render(op), None))
        self._wake.set()

    def submit(self, ops: list, wait: bool = False) -> asyncio.Future | None:
        """Queue one unit (applied all or nothing). With wait, return a future for its commit."""
        if self._closing and self._task is None:
            raise RuntimeError("store is closed")
        # Rendered now, so an op this backend cannot write fails its caller, not a batch.
        statements = [st for op in ops for st in self.render(op)]
        fut = asyncio.get_running_loop().create_future() if wait else None
        self._queue.append((statements, fut))
        self._wake.set()
        if wait:
            self._urgent.set()
        return fut

    async def write(self, ops: list) -> None:
        """Queue a unit and wait until it is committed (management calls)."""
        await self.submit(ops, wait=True)

    async def flush(self) -> None:
        await self.write([])

    async def _run(self) -> None:
        while True:
            if not (self._queue or self._usage or self._deltas):
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
                errors = await self._commit_batch(batch, usage, deltas)
            except Exception as exc:  # the whole transaction failed (disk, lock, connection)
                log.error("batch of %d units failed: %s", len(batch), exc)
                errors = [exc] * len(batch)
                self._requeue(batch, usage, deltas)
                await asyncio.sleep(self.flush_interval)  # a failing store is not retried hot
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
