"""Rebuilding Redis from the store: at start, and whenever Redis reports it holds nothing.

The store is the source of truth; Redis is its hot copy. A rebuild waits first, so the
usage every instance queued before Redis emptied reaches the store (each writer commits
within one flush interval; this instance's own queue is flushed outright), then reads
the snapshot: the grants' remainders and this month's spend of every subtree. One
instance rebuilds, under a lock; the others answer 503 until the marker is back.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .. import months
from . import StateUnavailable
from .redis import Snapshot

log = logging.getLogger("xaiproxy.hotstate")
PATIENCE = 30.0  # the longest one rebuild may take (the lock expires after it)
RETRY_GAP = 0.5  # seconds between two rebuild attempts of one instance


async def snapshot(store, wait: float, clock=None) -> Snapshot:
    """The money state of the store, after `wait` seconds and this instance's flush,
    stamped with `clock()` (Redis's time) just before it is read: a settle whose usage
    another instance committed after that is not in it (plane.py: late settles)."""
    await asyncio.sleep(wait)
    await store.flush()
    taken_at = await clock() if clock is not None else 0.0
    now = time.time()
    grants: dict[int, list[tuple[int, int, float]]] = {}
    for row in await store.load_grants(now):
        grants.setdefault(row["account_id"], []).append(
            (row["id"], row["remaining_n"], row["expires_at"])
        )
    month, start = months.start(now)
    tree: dict[int, int] = {}
    for dna, spent_n in await store.spend_by_dna_since(int(start // 86400)):
        for part in dna.strip(".").split("."):  # a subtree's spend counts for every account above
            if part.isdigit():
                tree[int(part)] = tree.get(int(part), 0) + spent_n
    return Snapshot(grants, month, tree, taken_at)


class Rebuilder:
    """Keeps Redis loaded for one gateway: `ensure()` at start, `kick()` when it is empty."""

    def __init__(self, gw) -> None:
        self.gw = gw
        # Longer than a flush interval plus a commit: every instance's queue is in the store.
        self.wait = max(2 * gw.settings.flush_interval, 0.5)
        self.task: asyncio.Task | None = None
        self.tried_at = 0.0
        self.rebuilds = 0  # rebuilds this instance made (metrics, tests)
        self.on_generation = None  # called with each generation `ensure` returns

    async def ensure(self) -> str:
        """The generation, rebuilding Redis first when it is empty."""
        hot = self.gw.hot
        before = hot.generation
        gen = await hot.ensure_loaded(self._snapshot, PATIENCE)
        if gen != before and before:
            log.warning("redis was rebuilt from the store (generation %s)", gen)
        if self.on_generation is not None:
            self.on_generation(gen)
        return gen

    async def _snapshot(self) -> Snapshot:
        self.rebuilds += 1
        log.warning("redis holds no state: rebuilding it from the store")
        return await snapshot(self.gw.store, self.wait, self.gw.hot.time)

    def kick(self) -> None:
        """Start a rebuild in the background unless one runs or just ran (cheap to call
        on every refusal: while Redis is down each attempt fails at once)."""
        loop = asyncio.get_running_loop()
        if (
            self.task is not None and not self.task.done()
        ) or loop.time() - self.tried_at < RETRY_GAP:
            return
        self.tried_at = loop.time()
        self.task = loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            await self.ensure()
        except StateUnavailable as exc:
            log.info("redis not rebuilt yet: %s", exc)
        except Exception:
            log.exception("rebuilding redis failed")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
