"""The data plane's network edge: paths, forwarded headers and queries, slow clients."""

from __future__ import annotations

import asyncio

import orjson

from tests.fakes import add_user, chat, ready

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
