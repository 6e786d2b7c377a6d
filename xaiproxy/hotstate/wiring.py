"""Money and rate limits in Redis for one gateway (SPEC 12): started once the store is
loaded (Redis may be rebuilt from it), stopped before the store closes (settles in
flight still reach it)."""

from __future__ import annotations

import logging

from . import StateUnavailable
from .mirror import Mirror
from .moves import Moves
from .plane import Plane, SharedLimiter
from .rebuild import Rebuilder

log = logging.getLogger("xaiproxy.hotstate")


class Shared:
    """`gw.shared`: the Redis-mode parts, each plugged where the in-process ones sit."""

    def __init__(self, gw) -> None:
        self.gw = gw
        self.rebuilder = Rebuilder(gw)
        self.plane = Plane(gw, self.rebuilder)
        self.moves = Moves(gw, self.plane)
        self.mirror = Mirror(gw)
        # A new generation seen anywhere: hold this instance's requests in flight again.
        self.rebuilder.on_generation = self.mirror.on_generation = self.plane.notice

    async def start(self) -> None:
        gw = self.gw
        gw.billing.shared = self.plane
        gw.limiter = SharedLimiter(self.plane)
        gw.state.moves = self.moves
        try:
            await self.rebuilder.ensure()
        except StateUnavailable as exc:  # the data plane answers 503 until it is back
            log.warning("redis is not available at start: %s", exc)
        self.mirror.generation = gw.hot.generation
        self.mirror.start()

    async def stop(self) -> None:
        await self.mirror.stop()
        await self.rebuilder.stop()
        await self.plane.drain()

    async def drain(self) -> None:
        """Wait until every settle so far has reached Redis and been queued for the store."""
        await self.plane.drain()
