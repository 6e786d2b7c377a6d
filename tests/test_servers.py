"""The real servers the PostgreSQL and Redis tests use: they answer, and PostgreSQL is not root."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import redis.asyncio as aioredis


async def test_postgres_answers(pg_url):
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SHOW fsync") == "off"
        assert await conn.fetchval("SELECT current_database()") != "postgres"
    finally:
        await conn.close()


def test_postgres_runs_unprivileged(postgres_server):
    """PostgreSQL refuses root: as root the fixture runs it as the owner of its temp dir."""
    uid = Path(f"/proc/{postgres_server.proc.pid}").stat().st_uid
    assert uid != 0 and uid == Path(postgres_server.dir).stat().st_uid


async def test_redis_answers_without_persistence(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.config_get("save") == {"save": ""}
        assert await client.dbsize() == 0
    finally:
        await client.aclose()
