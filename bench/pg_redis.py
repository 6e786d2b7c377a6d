"""A throwaway PostgreSQL and Redis for bench/wrk_cpu.sh, started as the tests start them.

    bench/pg_redis.py [NAME...]   # prints "<db url...> <redis url> <postgres pid> <redis pid>"
                                  # (one database per NAME, default "bench"), then runs
                                  # until SIGTERM or SIGINT, then stops both by PID

tests/servers.py does the work: temp dirs, free ports, fsync off, Redis without
persistence; as root PostgreSQL runs as the `postgres` user. Exit 3 (with the reason on
stderr) when the binaries are missing, so the caller can skip those rows.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import servers  # noqa: E402 (after the path: the checkout's tests package)


async def create_db(pg: servers.Postgres, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(pg.url())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def main() -> int:
    try:
        pg, redis = servers.Postgres(), servers.Redis()
    except servers.Unavailable as exc:
        print(exc, file=sys.stderr)
        return 3
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    try:
        pg.start()
        redis.start()
        names = sys.argv[1:] or ["bench"]
        for name in names:
            asyncio.run(create_db(pg, name))
        urls = [pg.url(name) for name in names]
        print(*urls, redis.url(), pg.proc.pid, redis.proc.pid, flush=True)
        done.wait()
    finally:
        redis.stop()
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
