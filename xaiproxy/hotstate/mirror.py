"""This instance's memory copy of the balances, kept close to Redis for display.

Management answers, the USER_API_BALANCE gate and the low-balance alerts read balances
from memory (`ledger.balance(acc)`). Redis holds the real ones; this instance applies
its own takes at once (plane.py, moves.py), and `Mirror` picks up everyone else's: each
settle and draw marks its account in a Redis set with Redis's time, and once a second
the mirror reads the grants of the accounts marked since its last look (one pipeline).
After a rebuild (a new generation) it reads every account's once, and tells the plane,
which holds this instance's requests in flight again under it. Money is never
decided from this copy: the scripts decide in Redis.
"""

from __future__ import annotations

import asyncio
import logging

from . import StateUnavailable

log = logging.getLogger("xaiproxy.hotstate")
EVERY = 1.0  # seconds between two looks
OVERLAP = 1.0  # look this far back again: a script's time and its commit may straddle a look
CHUNK = 500  # accounts per pipeline


class Mirror:
    def __init__(self, gw) -> None:
        self.gw = gw
        self.hot = gw.hot
        self.since = 0.0  # Redis time of the last look (0: none yet)
        self.generation = ""
        self.task: asyncio.Task | None = None
        self.on_generation = None  # called with the generation each look sees

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(EVERY)
            try:
                await self.refresh()
            except StateUnavailable:
                pass  # the data plane says so; look again next time
            except Exception:
                log.exception("refreshing balances from redis failed")

    async def refresh(self) -> None:
        """One look: the accounts touched since the last one (all after a rebuild)."""
        now, ids = await self.hot.touched_since(max(self.since - OVERLAP, 0.0))
        if self.on_generation is not None:
            self.on_generation(self.hot.generation)
        state = self.gw.state
        if self.hot.generation != self.generation:
            self.generation = self.hot.generation
            ids = [a.id for a in state.accounts.values() if a.grants]
        self.since = now
        ids = [i for i in ids if i in state.accounts]
        for first in range(0, len(ids), CHUNK):
            found = await self.hot.grants(ids[first : first + CHUNK])
            for acc_id, remaining in found.items():
                acc = state.accounts.get(acc_id)
                for g in acc.grants if acc is not None else ():
                    if g.id in remaining:
                        g.remaining_n = remaining[g.id]
