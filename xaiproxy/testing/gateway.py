"""A real gateway on a real port with a fresh SQLite file, and an HTTP client for it.

    async with gateway(extra_plugins=["myplugin"]) as api:
        uid, key = await add_user(api, credit=10)
        r = await api.get("/x-mine", key=key)

Writes of the data plane go through the batched writer: they become readable (by
`gw.usage`, `gw.store`) only after its next commit; `await flush(api)` waits for it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from .. import settings as settings_mod
from ..app import GATEWAY, create_app
from ..ledger import NANO
from ..plugins import Gateway
from ..store import UsageRecord
from .upstream import FakeUpstream

ROOT_KEY = "sk-Xvs" + "R00t" * 11 + "x"  # 51 chars: the root key of every test gateway
DEFAULTS = {
    "root_key": ROOT_KEY,
    "allow_private_providers": True,  # the fake upstream listens on 127.0.0.1
    "access_log": "",
    "flush_interval": 0.02,
    "forward_headers": ("x-fake-*",),  # the fake upstream's controls reach it
}
# A fake key's Config: the fake answers both protocols natively, so nothing is translated.
BOTH_PROTOCOLS = {"protocols": ["openai", "anthropic"]}
_names = itertools.count(1)


@dataclass
class Reply:
    status: int
    body: Any  # parsed JSON, else text
    headers: Any
    raw: bytes = b""

    @property
    def error_code(self) -> str | None:
        return (
            (self.body or {}).get("error", {}).get("code") if isinstance(self.body, dict) else None
        )


@dataclass
class Api:
    """A running gateway: `url`, `root` key, the live `gw`, and HTTP helpers.

    Every helper sends `Authorization: Bearer <key>` (root's when `key` is None; none
    when `key=""`) and returns a Reply.
    """

    server: Any  # .port, .app, .close()
    url: str
    root: str
    session: aiohttp.ClientSession
    cleanups: list = field(default_factory=list)  # run by close(), last first

    @property
    def gw(self) -> Gateway:
        return self.server.app[GATEWAY]

    async def request(
        self,
        method: str,
        path: str,
        key: str | None = None,
        json: Any = None,
        data: bytes | None = None,
        headers: dict | None = None,
        params: dict | None = None,
    ) -> Reply:
        hdrs = {"Authorization": f"Bearer {key or self.root}"} if key != "" else {}
        hdrs.update(headers or {})
        if json is not None:
            data = orjson.dumps(json)
            hdrs.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method, self.url + path, data=data, headers=hdrs, params=params
        ) as resp:
            raw = await resp.read()
            try:
                body = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                body = raw.decode(errors="replace")
            return Reply(resp.status, body, resp.headers, raw)

    async def get(self, path: str, key: str | None = None, **kw) -> Reply:
        return await self.request("GET", path, key, **kw)

    async def post(self, path: str, json: Any = None, key: str | None = None, **kw) -> Reply:
        return await self.request("POST", path, key, json=json, **kw)

    async def put(self, path: str, json: Any = None, key: str | None = None, **kw) -> Reply:
        return await self.request("PUT", path, key, json=json, **kw)

    async def delete(self, path: str, json: Any = None, key: str | None = None, **kw) -> Reply:
        return await self.request("DELETE", path, key, json=json, **kw)

    async def close(self) -> None:
        await self.session.close()
        await self.server.close()
        for fn in reversed(self.cleanups):
            fn()


async def _serve(app):
    server = TestServer(app, host="127.0.0.1")
    try:
        await server.start_server()
    except BaseException:
        await server.close()
        raise
    return server


async def start_gateway(
    db: str | Path | None = None,
    *,
    setup: Sequence[Callable[[Gateway], None]] = (),
    serve=None,
    **settings,
) -> Api:
    """Start a gateway; close it with `await api.close()` (or use `gateway(...)`).

    `db`: the SQLite file (default: a new one in a temporary folder). `setup`: extra
    `setup(gw)` functions, run as plugins after the configured ones (hooks and routes
    of a test). `settings`: any setting (`plugins`, `extra_plugins`, `plugin_options=
    {"section": {...}}`, ...). The process environment is not read, except `XAI_CONFIG`
    (a config file to start from). `serve`: an `async fn(app) -> server`, e.g.
    pytest-aiohttp's `aiohttp_server`.
    """
    cleanups = []
    if db is None:
        folder = tempfile.TemporaryDirectory(prefix="xaiproxy-test-")
        cleanups.append(folder.cleanup)
        db = Path(folder.name) / "gateway.db"
    values = {**DEFAULTS, **settings}
    config = values.pop("config", None) or os.environ.get("XAI_CONFIG") or None
    try:
        conf = settings_mod.load(config, env={}, db=str(db), **values)
        server = await (serve or _serve)(create_app(conf, setup=setup))
    except BaseException:
        for fn in cleanups:
            fn()
        raise
    session = aiohttp.ClientSession()
    url = f"http://127.0.0.1:{server.port}"
    return Api(server, url, values["root_key"], session, cleanups)


@contextlib.asynccontextmanager
async def gateway(db: str | Path | None = None, **kw) -> AsyncIterator[Api]:
    """`async with gateway(extra_plugins=[...]) as api:` a started gateway (start_gateway)."""
    api = await start_gateway(db, **kw)
    try:
        yield api
    finally:
        await api.close()


# -- making accounts, keys and usage -----------------------------------------------
async def add_user(api: Api, credit: float = 100.0, key: str | None = None, **fields):
    """A subaccount of root (or of `key`'s account), funded with `credit`: (ID, key).

    `fields` are /x-users fields (`Name`, `Tier`, `Rates`, ...). Needs the built-in
    `users` plugin (loaded by default).
    """
    n = next(_names)
    body = {"Name": f"user-{n}", "Email": f"user{n}@example.com", "CreditGranted": credit, **fields}
    r = await api.post("/x-users", body, key=key)
    assert r.status in (200, 201), r.body
    return r.body["User"]["ID"], r.body["User"]["SecretKey"]


async def update_user(api: Api, uid: int, **fields) -> None:
    r = await api.put(f"/x-users/{uid}", fields)
    assert r.status == 200, r.body


async def add_key(api: Api, fake: FakeUpstream, level: int = 1, **extra) -> int:
    """A provider key of the caller (root unless `key=`) pointing at `fake`: its ID.

    Without a `Type`, the key is openai-compatible (the fake's host) and says in its Config
    that the fake answers both protocols natively, so nothing is translated. Needs the
    built-in `keys` plugin (loaded by default).
    """
    n = next(_names)
    caller = extra.pop("key", None)
    if "Type" not in extra:
        extra["Config"] = {**BOTH_PROTOCOLS, **extra.get("Config", {})}
    body = {
        "SecretKey": f"sk-upstream-{n:04d}-abcdefghijklmnop",
        "Level": level,
        "Provider": fake.url,
    }
    body.update(extra)
    r = await api.post("/x-keys", body, key=caller)
    assert r.status in (200, 201), r.body
    return r.body["Key"]["ID"]


async def set_config(api: Api, key: str | None = None, **values) -> None:
    """PUT /x-config as root (or `key`): owner settings such as MODEL_MAPPER."""
    r = await api.put("/x-config", values, key=key)
    assert r.status == 200, r.body


async def add_usage(
    api: Api,
    account_id: int,
    *,
    model: str = "gpt-4o-mini",
    prompt: int = 100,
    completion: int = 20,
    cached: int = 0,
    cost: float = 0.01,
    day: date | None = None,
    ts: float | None = None,
) -> None:
    """Record one request's usage for an account, as the data plane does, readable at once.

    `cost` is in base worth (USD at Rates 1); `day` (UTC, noon) or `ts` say when
    (default now). It does not touch balances: it is for testing reports.
    """
    acc = api.gw.state.accounts[account_id]
    if ts is None:
        ts = time.time() if day is None else _noon(day)
    record = UsageRecord(
        ts=ts,
        account_id=acc.id,
        owner_id=acc.owner_acc.id,
        dna=acc.dna,
        model=model,
        upstream_model=model,
        level=1,
        key_id=0,
        path="/v1/chat/completions",
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        cost=cost * acc.rates,
        cost_n=round(cost * NANO),
        status=200,
        latency_ms=1.0,
        estimated=0,
        request_id=f"req_test_{next(_names)}",
    )
    api.gw.store.submit_usage(record, [])
    await api.gw.store.flush()


async def flush(api: Api) -> None:
    """Wait until everything queued (usage of answered requests, balances) is committed."""
    await api.gw.store.flush()


def _noon(day: date) -> float:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()


# -- request bodies ---------------------------------------------------------------------
def chat(model: str = "gpt-4o-mini", stream: bool = False, **extra) -> dict:
    """A /v1/chat/completions body."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    if stream:
        body["stream"] = True
    return body


def anthropic_body(model: str = "claude-haiku-4-5", stream: bool = False, **extra) -> dict:
    """A /v1/messages body."""
    body = {
        "model": model,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }
    if stream:
        body["stream"] = True
    return body
