"""The data plane's network edge: paths, forwarded headers and queries, slow clients."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.fakes import add_key, add_user, anthropic_body, chat, ready
from tests.helpers import ROOT_KEY
from xaiproxy import credentials
from xaiproxy import settings as settings_mod
from xaiproxy.app import create_app
from xaiproxy.server import GatewayRunner
from xaiproxy.state import ProviderKey

pytest_plugins = ["tests.fakes_fixtures"]

CHAT = "/v1/chat/completions"


async def raw(api, head: bytes, body: bytes = b"") -> tuple[int, dict | None]:
    """One request as raw bytes (clients would normalise the path); (status, JSON body)."""
    port = int(api.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    top, _, payload = data.partition(b"\r\n\r\n")
    return int(top.split()[1]), orjson.loads(payload) if payload.startswith(b"{") else None


def request(method: str, path: str, key: str, body: bytes = b"") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()


async def test_dot_segments_and_encoded_slashes_are_refused(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    _, key = await add_user(api, Resources="/v1/chat/*")
    for path in (
        "/v1/chat/../files",
        "/v1/chat/%2e%2e/files",
        "/v1/chat/%2E%2E/files",
        "/v1/chat/./../files",
        "/v1/chat/%2Ffiles",
        "/v1/chat/%5c..%5cfiles",
        "/v1/chat/%00",
        "/v1/chat/%zz",
    ):
        for caller in (key, api.root):
            status, body = await raw(api, request("GET", path, caller))
            assert (status, body["error"]["code"]) == (400, "invalid_path"), path
    assert upstream.seen == []


async def test_the_normalised_path_is_checked_and_forwarded(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    _, key = await add_user(api, Resources="/v1/chat/*")
    payload = orjson.dumps(chat())
    for path in ("/v1/chat/%63ompletions", "/v1//chat//completions"):
        status, body = await raw(api, request("POST", path, key, payload), payload)
        assert status == 200, body
        assert upstream.last.path == CHAT
    status, body = await raw(api, request("GET", "/v1/%66iles", key))
    assert (status, body["error"]["code"]) == (403, "resource_not_allowed")
    assert len(upstream.seen) == 2


async def test_client_headers_go_upstream_from_the_allowlist_only(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    _, key = await add_user(api)
    sent = {
        "Connection": "keep-alive, x-stainless-hop, Anthropic-Beta",
        "Keep-Alive": "timeout=5",
        "X-Stainless-Hop": "named in Connection",
        "Anthropic-Beta": "named in Connection",
        "Cookie": "session=abc",
        "X-Forwarded-For": "10.0.0.1",
        "Forwarded": "for=10.0.0.1",
        "X-Real-IP": "10.0.0.1",
        "OpenAI-Organization": "org-x",
        "OpenAI-Project": "proj-x",
        "Proxy-Authorization": "Basic eA==",
        "X-Internal-Token": "not for the provider",
        "User-Agent": "OpenAI/Python 1.0",
        "X-Stainless-Lang": "python",
        "OpenAI-Beta": "assistants=v2",
    }
    r = await api.post(CHAT, chat(), key=key, headers=sent)
    assert r.status == 200, r.body
    seen = {k.lower(): v for k, v in upstream.last.headers.items()}
    for name in (
        "keep-alive",
        "x-stainless-hop",
        "anthropic-beta",
        "cookie",
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
        "openai-organization",
        "openai-project",
        "proxy-authorization",
        "x-internal-token",
    ):
        assert name not in seen, name
    assert seen["user-agent"] == "OpenAI/Python 1.0"
    assert seen["x-stainless-lang"] == "python" and seen["openai-beta"] == "assistants=v2"
    assert key not in str(upstream.last.headers)


async def test_upstream_errors_never_carry_the_provider_key(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    (key,) = api.gw.state.keys.values()
    masked = credentials.mask(key.secret)
    for fault in ("leak:400", "leak:401"):  # passed through / last of the failed attempts
        r = await api.post(CHAT, chat(), headers={"x-fake-fault": fault})
        assert r.status == int(fault[5:]) and "Incorrect API key provided" in r.raw.decode()
        assert key.secret.encode() not in r.raw and masked.encode() not in r.raw
        assert key.secret[-4:].encode() not in r.raw, r.raw  # the starred form too
    r = await api.post("/v1/messages", anthropic_body(), headers={"x-fake-fault": "leak:403"})
    assert r.status == 403 and key.secret.encode() not in r.raw


async def test_a_client_key_in_the_query_is_not_forwarded(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    _, key = await add_user(api)
    query = f"?key={key}&api_key=k2&foo=1&X-API-KEY=k3&other={key}&bar=a%20b"
    r = await api.post(CHAT + query, chat(), key=key)
    assert r.status == 200
    assert upstream.last.path == CHAT + "?foo=1&bar=a%20b"


async def test_a_provider_url_yarl_cannot_read(make_gateway, upstream):
    api = await make_gateway()
    for provider in ("http://host:99999", "http://xn--a.com", "http://[::1"):
        r = await api.post(
            "/x-keys", {"SecretKey": "sk-" + "x" * 30, "Level": 1, "Provider": provider}
        )
        assert (r.status, r.error_code) == (400, "invalid_provider"), provider
    # One stored before this check existed: the request fails over, never a 500.
    api.gw.state.put_key(ProviderKey(id=90, owner_id=1, provider="http://[::1", secret="s" * 24))
    r = await api.post(CHAT, chat())
    assert (r.status, r.error_code) == (502, "upstream_unavailable")
    await add_key(api, upstream)
    for _ in range(2):
        assert (await api.post(CHAT, chat())).status == 200


# -- slow clients -------------------------------------------------------------------
async def open_raw(port: int, head: bytes):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    return reader, writer


def port_of(api) -> int:
    return int(api.url.rsplit(":", 1)[1])


@pytest.fixture
async def served(tmp_path, upstream):
    """The gateway behind the real runner (`serve`'s), with short client deadlines."""
    settings = settings_mod.load(
        env={},
        db=str(tmp_path / "served.db"),
        root_key=ROOT_KEY,
        client_header_timeout=0.5,
        allow_private_providers=True,
    )
    runner = GatewayRunner(create_app(settings), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as session:
        body = {"SecretKey": "sk-" + "u" * 30, "Level": 1, "Provider": upstream.url}
        headers = {"Authorization": f"Bearer {ROOT_KEY}"}
        async with session.post(f"http://127.0.0.1:{port}/x-keys", json=body, headers=headers) as r:
            assert r.status == 201
    yield port
    await runner.cleanup()


async def test_a_slowloris_head_gets_408_and_the_connection_closes(served):
    started = time.monotonic()
    reader, writer = await open_raw(served, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    answer = asyncio.create_task(reader.read())
    for c in b"X-Slow: " + b"a" * 40:  # one byte every 50 ms: 2 s in all
        if answer.done():
            break
        writer.write(bytes([c]))
        await asyncio.sleep(0.05)
    got = await asyncio.wait_for(answer, 3)
    writer.close()
    assert got.startswith(b"HTTP/1.1 408 ")
    assert orjson.loads(got.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < 1.5


async def test_an_idle_keep_alive_connection_is_not_a_slow_head(served):
    payload = orjson.dumps(chat())
    reader, writer = await asyncio.open_connection("127.0.0.1", served)
    for _ in range(2):
        writer.write(
            f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ROOT_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        await asyncio.sleep(0.8)  # idle longer than the header deadline
    writer.close()


async def test_a_slow_body_gets_408_and_holds_no_slot_after(make_gateway, upstream):
    api = await ready(make_gateway, upstream, client_body_timeout=0.5)
    _, key = await add_user(api)
    started = time.monotonic()
    reader, writer = await open_raw(port_of(api), request("POST", CHAT, key, b"x" * 100)[:-4])
    writer.write(b"\r\n\r\n{")
    got = await asyncio.wait_for(reader.read(), 3)
    writer.close()
    assert got.startswith(b"HTTP/1.1 408 "), got
    assert orjson.loads(got.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < 1.5
    assert api.gw.relay.inflight == 0 and api.gw.relay.busy == {}
    assert upstream.seen == []


async def test_slots_are_taken_after_the_key_and_counted_per_account(make_gateway, upstream):
    api = await ready(make_gateway, upstream, max_inflight=2, account_max_inflight=1)
    _, slow_key = await add_user(api)
    _, other_key = await add_user(api)
    # A known key with a body that never finishes holds one slot, and only one.
    _, held = await open_raw(port_of(api), request("POST", CHAT, slow_key, b"x" * 100) + b"{")
    for _ in range(50):
        if api.gw.relay.inflight:
            break
        await asyncio.sleep(0.02)
    assert api.gw.relay.inflight == 1
    r = await api.post(CHAT, chat(), key=slow_key)
    assert (r.status, r.error_code) == (429, "too_many_concurrent_requests")
    assert r.headers["Retry-After"] == "1"
    # An unknown key is refused before it could take a slot (never 503 for it).
    bad = asyncio.create_task(raw(api, request("POST", CHAT, "sk-nobody" + "x" * 40, b"{}"), b"{}"))
    assert (await bad)[0] == 401
    assert (await api.post(CHAT, chat(), key=other_key)).status == 200
    held.close()
    for _ in range(100):
        if not api.gw.relay.inflight:
            break
        await asyncio.sleep(0.02)
    assert api.gw.relay.busy == {}
    assert (await api.post(CHAT, chat(), key=slow_key)).status == 200
