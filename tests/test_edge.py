"""The data plane's network edge: paths, forwarded headers and queries, slow clients."""

from __future__ import annotations

import asyncio

import orjson

from tests.fakes import add_key, add_user, anthropic_body, chat, ready
from xaiproxy import credentials
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
