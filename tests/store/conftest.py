"""The store contract: every backend runs these tests unchanged.

A backend joins by adding a `db` factory to BACKENDS (PostgreSQL: a scratch database
URL, skipped where none is configured). The tests use only `xaiproxy.store.base.Store`.
"""

from __future__ import annotations

import pytest

from xaiproxy import store as stores

BACKENDS = {
    "sqlite": lambda tmp_path, n: str(tmp_path / f"contract{n}.db"),
}


@pytest.fixture(params=sorted(BACKENDS))
async def make_store(request, tmp_path):
    """`s = await make_store()` opens a fresh store; `make_store(again=s)` reopens its database."""
    opened = []

    async def make(again=None):
        db = again.db if again is not None else BACKENDS[request.param](tmp_path, len(opened))
        s = stores.create(db, flush_interval=0.01)
        s.db = db
        await s.open()
        opened.append(s)
        return s

    yield make
    for s in opened:
        if not s.closed:
            await s.close()


@pytest.fixture
async def store(make_store):
    return await make_store()
