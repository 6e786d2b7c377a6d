"""Many real gateway processes on one PostgreSQL and one Redis (SPEC 12), and what the tests read.

`await Cluster.start(n, pg_url, redis_url, tmp, setup=fn)` starts the first instance,
runs `await setup(cluster)` on it (provider keys, config: what every instance should
load at boot), then starts the others at once; each is `python -m xaiproxy serve` on
its own free port (tests/procs.py). `cluster.call(i, ...)` talks to instance i over one
shared client session. `kill9(i)` is a crash; `close()` stops the rest with SIGTERM (by
PID) and expects exit 0. The invariants are read where they live: PostgreSQL with
asyncpg (`Truth`), the hot copy straight from Redis (`redis_balance_n`).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import redis.asyncio as aioredis

from tests.procs import CHECKOUT, Served, free_port, serve
from xaiproxy import ledger
from xaiproxy.ledger import NANO
from xaiproxy.store.postgres import AUDIT_SQL
from xaiproxy.testing import ROOT_KEY, FakeUpstream, Reply

# Every instance: the fake upstream's controls forwarded, a short flush interval (the
# tests wait for the writers), room for a storm on one account.
ENV = {
    "XAI_FLUSH_INTERVAL": "0.05",
    "XAI_FORWARD_HEADERS": "x-fake-*",
    "XAI_ACCOUNT_MAX_INFLIGHT": "1000",
    "XAI_MAX_INFLIGHT": "4000",
}


@dataclass
class Cluster:
    nodes: list[Served]
    db_url: str
    redis_url: str
    tmp: Path
    env: dict
    session: aiohttp.ClientSession
    dead: set[int] = field(default_factory=set)
    closed: bool = False

    @classmethod
    async def start(
        cls,
        n: int,
        db_url: str,
        redis_url: str,
        tmp: Path,
        setup: Callable[[Cluster], Awaitable[None]] | None = None,
        **env: str,
    ) -> Cluster:
        env = {**ENV, "XAI_REDIS": redis_url, **env}
        # No pool limit: a storm's requests must all be in flight at once.
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        cluster = cls([], db_url, redis_url, tmp, env, session)
        try:
            cluster.nodes.append(await serve(CHECKOUT, db_url, tmp, **env))
            if setup is not None:
                await setup(cluster)
            more = [serve(CHECKOUT, db_url, tmp, **env) for _ in range(n - 1)]
            for served in await asyncio.gather(*more, return_exceptions=True):
                if isinstance(served, BaseException):
                    raise served
                cluster.nodes.append(served)
        except BaseException:
            await cluster.close(check=False)
            raise
        return cluster

    # -- HTTP ------------------------------------------------------------------
    async def call(
        self,
        i: int,
        method: str,
        path: str,
        body=None,
        key: str = ROOT_KEY,
        headers: dict | None = None,
    ) -> Reply:
        hdrs = {"Authorization": f"Bearer {key}", **(headers or {})}
        data = None
        if body is not None:
            data = orjson.dumps(body)
            hdrs["Content-Type"] = "application/json"
        url = self.nodes[i].url + path
        async with self.session.request(method, url, data=data, headers=hdrs) as r:
            raw = await r.read()
            try:
                parsed = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                parsed = raw.decode(errors="replace")
            return Reply(r.status, parsed, r.headers, raw)

    async def chat(self, i: int, key: str, model: str = "gpt-4o-mini", **extra) -> Reply:
        headers = extra.pop("headers", None)
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        return await self.call(i, "POST", "/v1/chat/completions", body, key, headers)

    async def add_user(self, i: int, credit: float, name: str, **fields) -> tuple[int, str]:
        body = {"Name": name, "Email": f"{name}@example.com", "CreditGranted": credit, **fields}
        r = await self.call(i, "POST", "/x-users", body)
        assert r.status == 200, r.body
        return r.body["User"]["ID"], r.body["User"]["SecretKey"]

    async def add_key(self, i: int, fake: FakeUpstream, name: str, level: int = 1) -> int:
        body = {
            "SecretKey": f"sk-upstream-{name}-abcdefghijklmnop",
            "Level": level,
            "Provider": fake.url,
            "Config": {"protocols": ["openai", "anthropic"]},  # nothing translated
        }
        r = await self.call(i, "POST", "/x-keys", body)
        assert r.status == 201, r.body
        return r.body["Key"]["ID"]

    # -- processes ----------------------------------------------------------------
    def live(self) -> list[int]:
        return [i for i in range(len(self.nodes)) if i not in self.dead]

    async def kill9(self, i: int) -> None:
        """A crash: SIGKILL to instance i's PID, nothing flushed, nothing released."""
        self.nodes[i].proc.kill()
        await self.nodes[i].proc.wait()
        self.dead.add(i)

    def logs(self) -> str:
        return "\n".join(
            f"--- instance {i}:\n{n.output()[-3000:]}" for i, n in enumerate(self.nodes)
        )

    async def close(self, check: bool = True) -> None:
        """SIGTERM every live instance (by PID); each must exit 0 and none may have logged a
        traceback (when `check`)."""
        if self.closed:
            return
        self.closed = True
        failures = []
        for i in self.live():
            try:
                await self.nodes[i].stop()
            except BaseException as exc:  # keep stopping the others
                if self.nodes[i].proc.returncode is None:
                    self.nodes[i].proc.kill()
                    await self.nodes[i].proc.wait()
                failures.append(f"instance {i}: {exc}")
            self.dead.add(i)
        await self.session.close()
        for i, node in enumerate(self.nodes):  # an unhandled error is a defect, even a logged one
            if "Traceback" in node.output():
                failures.append(f"instance {i} logged a traceback:\n{node.output()[-3000:]}")
        if check and failures:
            raise AssertionError("\n".join(failures))

    async def served(self, i: int, path: str = "/v1/chat/completions") -> int:
        """How many 200s instance i answered on `path` (its /metrics)."""
        r = await self.call(i, "GET", "/metrics")
        pattern = rf'xaiproxy_requests_total{{[^}}]*path="{re.escape(path)}",status="200"}} (\S+)'
        return sum(int(float(n)) for n in re.findall(pattern, r.body))


DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


async def nginx_in_front(cluster: Cluster, tmp: Path) -> tuple[asyncio.subprocess.Process, str]:
    """deploy/nginx.conf as shipped, its one `server` line made one per instance, in a
    minimal main config: (the nginx process, its URL). Stop it by its PID."""
    if shutil.which("nginx") is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx; make test does it)")
    site = (DEPLOY / "nginx.conf").read_text()
    assert "server 127.0.0.1:8080;" in site and "listen 80;" in site
    servers = "\n    ".join(f"server {n.url[len('http://') :]};" for n in cluster.nodes)
    port = free_port()
    site = site.replace("server 127.0.0.1:8080;", servers)
    (tmp / "site.conf").write_text(site.replace("listen 80;", f"listen 127.0.0.1:{port};"))
    temp = " ".join(
        f"{name}_temp_path {tmp / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = tmp / "nginx.conf"
    main.write_text(
        f"daemon off; master_process off; pid {tmp / 'nginx.pid'}; error_log {tmp / 'error.log'};\n"
        f"events {{}}\nhttp {{ access_log off; {temp} include {tmp / 'site.conf'}; }}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        "nginx", "-p", str(tmp), "-c", str(main), "-e", str(tmp / "error.log")
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):  # until it listens
        try:
            async with cluster.session.get(url + "/healthz") as r:
                if r.status == 200:
                    return proc, url
        except aiohttp.ClientError:
            await asyncio.sleep(0.05)
    proc.terminate()
    await proc.wait()
    raise AssertionError(f"nginx did not start: {(tmp / 'error.log').read_text()}")


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Poll `check` until it is true; the seconds it took. Fails after `within` seconds."""
    t0 = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - t0
        if time.monotonic() - t0 > within:
            raise AssertionError(f"{what}: not within {within} s")
        await asyncio.sleep(0.02)


class Truth:
    """Reads of the source of truth: one asyncpg connection to the cluster's database."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, url: str) -> Truth:
        return cls(await asyncpg.connect(url))

    async def close(self) -> None:
        await self.conn.close()

    async def balance_n(self, account_id: int) -> int:
        return await self.conn.fetchval(
            "SELECT COALESCE(SUM(remaining_n), 0)::BIGINT FROM grants WHERE account_id = $1",
            account_id,
        )

    async def usage(self, account_id: int) -> tuple[int, int]:
        """(rows, Σ cost_n) of one account's usage."""
        row = await self.conn.fetchrow(
            "SELECT COUNT(*), COALESCE(SUM(cost_n), 0)::BIGINT FROM usage WHERE account_id = $1",
            account_id,
        )
        return row[0], row[1]

    async def flushed(self, account_id: int, rows: int, within: float = 10.0) -> None:
        """Wait until the writers have committed `rows` usage rows of the account."""

        async def done() -> bool:
            return (await self.usage(account_id))[0] >= rows

        await eventually(done, within, f"{rows} usage rows of account {account_id} committed")

    async def audit_totals(self) -> dict[str, int]:
        """The store's audit queries (store/postgres.py), on this connection."""
        return {name: await self.conn.fetchval(sql) for name, sql in AUDIT_SQL.items()}

    async def audit(self) -> dict:
        """ledger.audit over PostgreSQL itself: held + spent + fees == minted."""
        return await ledger.audit(self)


async def redis_balance_n(url: str, account_id: int, prefix: str = "xai:") -> int | None:
    """The balance the hot copy holds (Σ of its grants hash), None when Redis has no copy."""
    client = aioredis.Redis.from_url(url)
    try:
        values = await client.hvals(f"{prefix}a:{account_id}:grants")
    finally:
        await client.aclose()
    return sum(int(v) for v in values) if values else None


def usd(n: int) -> float:
    return n / NANO
