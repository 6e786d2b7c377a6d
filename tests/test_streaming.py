"""Streams: relayed as they arrive, usage found and billed, cut and stalled streams end well."""

from __future__ import annotations

import asyncio
import time

import orjson

from tests.fakes import (
    PROMPT_TOKENS,
    add_user,
    anthropic_body,
    chat,
    ready,
)

pytest_plugins = ["tests.fakes_fixtures"]

CHAT = "/v1/chat/completions"


def events(raw: bytes) -> list[bytes]:
    return [e for e in raw.split(b"\n\n") if e.strip()]


def data_objects(raw: bytes) -> list:
    out = []
    for e in events(raw):
        for line in e.split(b"\n"):
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                out.append(orjson.loads(line[6:]))
    return out


async def usage_row(api, uid: int):
    await api.gw.store.flush()
    return await api.gw.store.fetchone("SELECT * FROM usage WHERE account_id = ?", (uid,))


async def test_include_usage_added_and_its_chunk_removed(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api)
    r = await api.post(CHAT, chat(stream=True), key=key, headers={"x-fake-chunks": "4"})
    assert r.status == 200
    assert upstream.last.json["stream_options"] == {"include_usage": True}
    objs = data_objects(r.raw)
    assert all(o["choices"] for o in objs)  # no usage-only chunk for the client
    assert r.raw.endswith(b"data: [DONE]\n\n")
    assert (
        "".join(o["choices"][0]["delta"].get("content", "") for o in objs) == "tok0 tok1 tok2 tok3 "
    )
    row = await usage_row(api, uid)
    assert (row["prompt_tokens"], row["completion_tokens"], row["estimated"]) == (
        PROMPT_TOKENS,
        4,
        0,
    )
    price = api.gw.prices("gpt-4o-mini")
    assert row["cost_n"] == round((PROMPT_TOKENS * price.input + 4 * price.output) * 1000)


async def test_client_asking_for_usage_keeps_its_chunk(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    body = chat(stream=True, stream_options={"include_usage": True})
    r = await api.post(CHAT, body)
    assert upstream.last.body == orjson.dumps(body)  # not re-encoded: sent as the client sent it
    assert data_objects(r.raw)[-1]["usage"]["completion_tokens"] == 3


async def test_chunks_reach_the_client_before_the_upstream_ends(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    headers = {"Authorization": f"Bearer {api.root}", "x-fake-delay": "0.2", "x-fake-chunks": "1"}
    started = time.perf_counter()
    async with api.session.post(api.url + CHAT, json=chat(stream=True), headers=headers) as resp:
        first = await resp.content.readany()
        first_at = time.perf_counter() - started
        rest = await resp.read()
    total = time.perf_counter() - started
    assert first.startswith(b"data: ")
    assert total > 0.8 and first_at < total / 2
    assert (first + rest).endswith(b"data: [DONE]\n\n")


async def test_openai_stream_cut_ends_with_error_event(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api)
    r = await api.post(CHAT, chat(stream=True), key=key, headers={"x-fake-fault": "reset:3"})
    assert r.status == 200
    assert b"[DONE]" not in r.raw
    last = data_objects(r.raw)[-1]
    assert last["error"]["code"] == "upstream_broken"
    assert len(upstream.seen) == 1  # no retry after the first byte
    row = await usage_row(api, uid)
    assert row["estimated"] == 1 and row["prompt_tokens"] > 0 and row["completion_tokens"] >= 1


async def test_anthropic_stream_cut_ends_with_error_event(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api)
    r = await api.post(
        "/v1/messages", anthropic_body(stream=True), key=key, headers={"x-fake-fault": "reset:3"}
    )
    last = events(r.raw)[-1]
    assert last.startswith(b"event: error\ndata: ")
    err = orjson.loads(last.split(b"data: ", 1)[1])
    assert err["type"] == "error" and err["error"]["code"] == "upstream_broken"
    assert b"message_stop" not in r.raw
    row = await usage_row(api, uid)
    assert row["prompt_tokens"] == PROMPT_TOKENS  # message_start's count is kept
    assert row["completion_tokens"] >= 1 and row["estimated"] == 1


async def test_stalled_upstream_hits_the_idle_timeout(make_gateway, upstream):
    api = await ready(make_gateway, upstream, upstream_idle_timeout=0.3)
    started = time.perf_counter()
    r = await api.post(CHAT, chat(stream=True), headers={"x-fake-fault": "stall:2"})
    assert time.perf_counter() - started < 3
    assert data_objects(r.raw)[-1]["error"]["code"] == "upstream_timeout"
    await asyncio.sleep(0.1)
    assert upstream.cancelled == 1  # the upstream connection was closed at once


async def test_anthropic_stream_usage_with_cache(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api)
    headers = {"x-fake-cached": "100", "x-fake-cache-write": "50", "x-fake-chunks": "7"}
    r = await api.post("/v1/messages", anthropic_body(stream=True), key=key, headers=headers)
    assert r.raw.rstrip().endswith(b'{"type":"message_stop"}')
    row = await usage_row(api, uid)
    assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == (162, 100, 7)
    p = api.gw.prices("claude-haiku-4-5")
    usd = (12 * p.input + 100 * p.cached_input + 50 * p.cache_write + 7 * p.output) / 1e6
    assert row["cost_n"] == round(usd * 1e9)


async def test_responses_stream_usage(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api)
    r = await api.post(
        "/v1/responses", {"model": "gpt-4.1", "input": "hi", "stream": True}, key=key
    )
    assert b"response.completed" in r.raw
    assert "stream_options" not in upstream.last.json
    row = await usage_row(api, uid)
    assert (row["prompt_tokens"], row["completion_tokens"], row["estimated"]) == (12, 3, 0)


async def test_client_disconnect_bills_delivered_and_cancels_upstream(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api)
    headers = {"Authorization": f"Bearer {key}", "x-fake-delay": "0.05", "x-fake-chunks": "200"}
    resp = await api.session.post(api.url + CHAT, json=chat(stream=True), headers=headers)
    got = b""
    while got.count(b"data: ") < 5:
        got += await resp.content.readany()
    resp.close()  # the client goes away mid-stream
    for _ in range(100):
        if upstream.cancelled:
            break
        await asyncio.sleep(0.05)
    assert upstream.cancelled == 1 and upstream.finished == 0
    row = None
    for _ in range(50):
        row = await usage_row(api, uid)
        if row:
            break
        await asyncio.sleep(0.05)
    assert row["estimated"] == 1
    assert row["prompt_tokens"] > 0
    assert 1 <= row["completion_tokens"] < 200  # what was delivered, never max_tokens
    assert api.gw.state.accounts[uid].reserved_n == 0
    assert api.gw.streams_open == 0


async def test_stream_without_usage_is_estimated(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api)
    r = await api.post(CHAT, chat(stream=True), key=key, headers={"x-fake-fault": "nousage"})
    assert r.status == 200 and r.raw.endswith(b"data: [DONE]\n\n")
    row = await usage_row(api, uid)
    assert row["estimated"] == 1 and row["completion_tokens"] >= 1


async def test_broken_sse_framing_is_relayed_and_usage_still_found(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api)
    r = await api.post(CHAT, chat(stream=True), key=key, headers={"x-fake-fault": "malformed"})
    assert r.status == 200 and b"data: {not json at all" in r.raw
    row = await usage_row(api, uid)
    assert (row["completion_tokens"], row["estimated"]) == (3, 0)
