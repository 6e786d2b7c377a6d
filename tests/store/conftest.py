"""The store contract: every backend runs these tests unchanged.

`make_store` is parametrized over BACKENDS: SQLite (a file in tmp_path) and PostgreSQL
(a fresh database on the session's real server, `pg_url`; skipped with a message where
PostgreSQL is not installed). The tests use only `xaiproxy.store.base.Store`.
"""

from __future__ import annotations

import pytest

from xaiproxy import store as stores

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=BACKENDS)
def backend_db(request, tmp_path):
    """db(n): the `db` setting of the test's n-th fresh store (one database per test on
    PostgreSQL, so the n-th store shares it)."""
    if request.param == "sqlite":
        return lambda n: str(tmp_path / f"contract{n}.db")
    url = request.getfixturevalue("pg_url")
    return lambda n: url


@pytest.fixture
async def make_store(backend_db):
    """`s = await make_store()` opens a fresh store; `make_store(again=s)` reopens its database."""
    opened = []

    async def make(again=None):
        db = again.db if again is not None else backend_db(len(opened))
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
