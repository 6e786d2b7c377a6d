"""Test helpers: start a gateway on a real port and talk to it over HTTP."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from xaiproxy import settings as settings_mod
from xaiproxy.app import GATEWAY, create_app

ROOT_KEY = "sk-Xvs" + "R00t" * 11 + "x"  # 51 chars


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any
    raw: bytes = b""

    @property
    def error_code(self) -> str | None:
        return (
            (self.body or {}).get("error", {}).get("code") if isinstance(self.body, dict) else None
        )


@dataclass
class Api:
    """A running gateway: `url`, `root` key, the live `gw`, and HTTP helpers."""

    server: Any
    url: str
    root: str
    session: aiohttp.ClientSession
    extra: list = field(default_factory=list)

    @property
    def gw(self):
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


async def start_gateway(aiohttp_server, db_path, **overrides) -> Api:
    overrides.setdefault("root_key", ROOT_KEY)
    overrides.setdefault("allow_private_providers", True)
    overrides.setdefault("access_log", "")
    overrides.setdefault("flush_interval", 0.02)
    overrides.setdefault("forward_headers", ("x-fake-*",))  # the fake upstream's controls
    settings = settings_mod.load(env={}, db=str(db_path), **overrides)
    server = await aiohttp_server(create_app(settings), host="127.0.0.1")
    session = aiohttp.ClientSession()
    return Api(server, f"http://127.0.0.1:{server.port}", ROOT_KEY, session)
