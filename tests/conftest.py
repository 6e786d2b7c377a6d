"""Shared fixtures: a real gateway on a real socket, with a fresh SQLite file per test.

`make_gateway` is the test kit's (`xaiproxy.testing.pytest_plugin`).
"""

from __future__ import annotations

import pytest

from tests.helpers import ROOT_KEY, Api
from xaiproxy.testing import pytest_plugin as kit

make_gateway = kit.make_gateway  # fixture


@pytest.fixture
async def api(make_gateway) -> Api:
    """A running gateway with default settings; `api.root` is the root key."""
    return await make_gateway()


@pytest.fixture
def root_key() -> str:
    return ROOT_KEY


# -- real PostgreSQL and Redis (tests/servers.py), started once per session ------------
@pytest.fixture(scope="session")
def postgres_server():
    from tests import servers

    try:
        pg = servers.Postgres()
    except servers.Unavailable as exc:
        pytest.skip(str(exc))
    try:
        yield pg.start()
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def redis_server():
    from tests import servers

    try:
        r = servers.Redis()
    except servers.Unavailable as exc:
        pytest.skip(str(exc))
    try:
        yield r.start()
    finally:
        r.stop()


@pytest.fixture
async def pg_url(postgres_server, request):
    """A fresh, empty database on the session's PostgreSQL, dropped after the test."""
    import asyncpg

    name = f"t{abs(hash(request.node.nodeid)) % 10**12}_{len(request.node.name)}"
    admin = await asyncpg.connect(postgres_server.url())
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_server.url(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def redis_url(redis_server):
    """The session's Redis, emptied for this test."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url())
    await client.flushall()
    await client.aclose()
    return redis_server.url()


@pytest.fixture
def own_redis():
    """A Redis of this test's own, to kill -9 and restart empty."""
    from tests import servers

    try:
        r = servers.Redis()
    except servers.Unavailable as exc:
        pytest.skip(str(exc))
    try:
        yield r.start()
    finally:
        r.stop()
