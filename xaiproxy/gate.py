"""Local management changes against reloads from the store (SPEC 12, many instances).

A change is made to memory first, then stored. A reload reads the store and then sets
memory from it: if it read before a local change was stored and applied after that
change was made, it would undo it in memory (a created account gone for a moment, a
deleted one back, and a child stored under it). So a reload waits until no local
change is between its work() and its commit, and changes wait while a reload runs.
"""

from __future__ import annotations

import asyncio
import contextlib


class Gate:
    def __init__(self) -> None:
        self.changes = 0  # local changes between work() and commit
        self.reloading = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()

    @contextlib.asynccontextmanager
    async def change(self):
        """Around one local change, from before its work() to after its commit."""
        while self.reloading:
            await self._open.wait()
        self.changes += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.changes -= 1
            if not self.changes:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def reload(self):
        """Around one reload, from before its store reads to after memory is set."""
        while self.reloading:  # one reload at a time
            await self._open.wait()
        self.reloading = True
        self._open.clear()
        try:
            while self.changes:  # new changes wait; those under way finish
                await self._idle.wait()
            yield
        finally:
            self.reloading = False
            self._open.set()
