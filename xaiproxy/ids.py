"""Ids for new rows when several instances share one database (SPEC 12).

One instance alone allocates ids in memory (State's counters, seeded from the store's
highest ids). Instances sharing a database draw them from blocks the store hands out
(`store.id_block`: no two instances ever get the same block). `next` stays synchronous,
so a management change still picks its ids inside its check-then-mutate step; a block
is topped up in the background once half of it is used, and `ready()` (awaited before a
change runs) waits for a top-up under way when ids run low.
"""

from __future__ import annotations

import asyncio
import logging

from .errors import ApiError

log = logging.getLogger("xaiproxy.ids")


class IdBlocks:
    def __init__(self, store) -> None:
        self.store = store
        self.blocks: dict[str, list[list[int]]] = {}  # table -> [[next, last], ...]
        self.low: dict[str, int] = {}  # table -> top up below this many ids left
        self.tasks: dict[str, asyncio.Task] = {}

    def want(self, table: str) -> None:
        """Start fetching ids for `table` (a table the instance will make rows in)."""
        if table not in self.blocks:
            self.blocks[table] = []
            self._top_up(table)

    def left(self, table: str) -> int:
        return sum(last - first + 1 for first, last in self.blocks.get(table, ()))

    def next(self, table: str) -> int:
        self.want(table)
        blocks = self.blocks[table]
        while blocks and blocks[0][0] > blocks[0][1]:
            blocks.pop(0)
        if not blocks:
            self._top_up(table)
            raise ApiError(503, "ids_unavailable", "new ids are being fetched; retry shortly")
        value = blocks[0][0]
        blocks[0][0] += 1
        if self.left(table) < self.low.get(table, 1):
            self._top_up(table)
        return value

    async def ready(self) -> None:
        """Wait for the top-ups of every table running low (none: returns at once)."""
        for table in self.blocks:
            if self.left(table) < self.low.get(table, 1):
                self._top_up(table)
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    def _top_up(self, table: str) -> None:
        if table not in self.tasks:
            self.tasks[table] = asyncio.get_running_loop().create_task(self._fetch(table))

    async def _fetch(self, table: str) -> None:
        try:
            first, last = await self.store.id_block(table)
        except Exception as exc:  # the next `next` or `ready` tries again
            log.error("could not fetch ids for %s: %s", table, exc)
            return
        finally:
            self.tasks.pop(table, None)
        self.blocks.setdefault(table, []).append([first, last])
        self.low[table] = max((last - first + 1) // 2, 1)
