"""Issue 18: however an upstream's HTTP framing breaks mid-stream, the client's stream ends
with one well-formed error event, no `[DONE]`, and what was delivered is billed as an estimate.

The upstream is a raw socket writing bytes by hand. Each case runs many times over one
gateway, to show the end does not depend on how the break surfaces (a parse error while
reading, or the connection closing first).
"""

from __future__ import annotations

import asyncio
import os
import re

import orjson
import pytest

from tests.fakes import BOTH_PROTOCOLS, add_user, anthropic_body, chat
from tests.rawhttp import RawUpstream, chunk, reset, wait_closed_by_peer

RUNS = int(os.environ.get("XAI_FRAMING_RUNS", "50"))
GAP = 0.005  # between the good start and the break, so the break comes mid-stream
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def openai_events(n: int = 6) -> list[bytes]:
    return [
        b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini",'
        b'"choices":[{"index":0,"delta":{"content":"tok%d "}}]}\n\n' % i
        for i in range(n)
    ]


def anthropic_events(n: int = 6) -> list[bytes]:
    start = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m1",'
        b'"type":"message","role":"assistant","model":"claude-haiku-4-5","content":[],'
        b'"usage":{"input_tokens":12,"output_tokens":1}}}\n\n'
    )
    deltas = [
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"tok%d "}}\n\n' % i
        for i in range(n - 1)
    ]
    return [start, *deltas]


async def _start(ev, writer, head: bytes = CHUNKED, framed=chunk) -> None:
    """Headers and two good events, then a pause: the answer has begun when the break comes."""
    writer.write(head + framed(ev[0]) + framed(ev[1]))
    await writer.drain()
    await asyncio.sleep(GAP)


async def _bad_size(ev, reader, writer):
    await _start(ev, writer)
    writer.write(b"zz\r\n" + ev[2] + b"\r\n")
    await wait_closed_by_peer(reader)


async def _short_chunk(ev, reader, writer):
    # Announces 7 bytes more than it sends: the next chunk's header is read as data.
    await _start(ev, writer)
    writer.write(b"%x\r\n" % (len(ev[2]) + 7) + ev[2] + b"\r\n" + chunk(ev[3]) + chunk(ev[4]))
    await wait_closed_by_peer(reader)


async def _long_chunk(ev, reader, writer):
    await _start(ev, writer)
    writer.write(b"%x\r\n" % (len(ev[2]) - 5) + ev[2] + b"\r\n" + chunk(ev[3]))
    await wait_closed_by_peer(reader)


async def _no_final(ev, reader, writer):
    await _start(ev, writer)
    writer.close()


async def _after_final(ev, reader, writer):
    await _start(ev, writer)
    writer.write(b"0\r\n\r\n" + chunk(ev[2]) + chunk(ev[3]))
    await wait_closed_by_peer(reader)


async def _length_short(ev, reader, writer):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 5000\r\n\r\n"
    await _start(ev, writer, head, bytes)
    writer.close()


async def _reset_mid(ev, reader, writer):
    await _start(ev, writer)
    writer.write(b"%x\r\n" % len(ev[2]) + ev[2][: len(ev[2]) // 2])
    await writer.drain()
    reset(writer)


def _split(k: int):
    """An event split across two chunks at byte k, the next cut at byte k, then a bad size line."""

    async def script(ev, reader, writer):
        writer.write(CHUNKED + chunk(ev[0]) + chunk(ev[1][:k]))
        await writer.drain()
        await asyncio.sleep(GAP)
        writer.write(chunk(ev[1][k:]) + chunk(ev[2][:k]))
        await writer.drain()
        writer.write(b"zz\r\n")
        await wait_closed_by_peer(reader)

    return script


CASES = {
    "bad_size": _bad_size,
    "short_chunk": _short_chunk,
    "long_chunk": _long_chunk,
    "no_final": _no_final,
    "after_final": _after_final,
    "length_short": _length_short,
    "reset_mid": _reset_mid,
}
CASE_RE = re.compile(rb"case-([a-z_]+)-(\d+)")


async def _answer(req, reader, writer):
    name, k = CASE_RE.search(req.body).groups()
    anthropic = req.path.startswith("/v1/messages")
    ev = anthropic_events() if anthropic else openai_events()
    script = _split(int(k)) if name == b"split" else CASES[name.decode()]
    await script(ev, reader, writer)
    return False


def check_broken_end(raw: bytes, anthropic: bool) -> int:
    """Assert the stream is whole events then one error event; return how many came before it."""
    ev = anthropic_events() if anthropic else openai_events()
    assert b"[DONE]" not in raw and b"message_stop" not in raw
    assert raw.endswith(b"\n\n"), raw[-200:]
    events = raw[:-2].split(b"\n\n")
    last = events[-1]
    if anthropic:
        assert last.startswith(b"event: error\ndata: "), raw[-300:]
        err = orjson.loads(last.split(b"data: ", 1)[1])
        assert err["type"] == "error"
    else:
        assert last.startswith(b"data: "), raw[-300:]
        err = orjson.loads(last[6:])
    assert err["error"]["code"] == "upstream_broken" and err["error"]["message"]
    before = b"".join(e + b"\n\n" for e in events[:-1])
    n = len(events) - 1
    assert before == b"".join(ev[:n]), raw  # whole events only, in order, no partial one
    return n


async def _gateway(make_gateway, url: str):
    api = await make_gateway(upstream_idle_timeout=3.0)
    key = {
        "SecretKey": "sk-upstream-raw-abcdefghijkl",
        "Level": 1,
        "Provider": url,
        "Config": BOTH_PROTOCOLS,
    }
    assert (await api.post("/x-keys", key)).status == 201
    uid, user_key = await add_user(api, credit=1000)
    return api, uid, user_key


async def _run(api, key: str, anthropic: bool, case: str) -> bytes:
    if anthropic:
        path, body = "/v1/messages", anthropic_body(stream=True, metadata={"user_id": case})
    else:
        path, body = "/v1/chat/completions", chat(stream=True, user=case)
    r = await api.post(path, body, key=key)
    assert r.status == 200, r.raw[:300]
    return r.raw


async def _check_billing(api, uid: int, runs: int, anthropic: bool) -> None:
    await api.gw.store.flush()
    rows = await api.gw.store.fetchall(
        "SELECT prompt_tokens, completion_tokens, estimated, cost_n FROM usage"
        " WHERE account_id = ?",
        (uid,),
    )
    assert len(rows) == runs
    assert all(r["estimated"] == 1 and r["completion_tokens"] >= 1 for r in rows)
    assert all(r["prompt_tokens"] == 12 for r in rows) if anthropic else True
    assert all(r["prompt_tokens"] > 0 and r["cost_n"] > 0 for r in rows)
    assert api.gw.state.accounts[uid].reserved_n == 0
    assert api.gw.streams_open == 0


@pytest.mark.parametrize("anthropic", [False, True], ids=["openai", "anthropic"])
@pytest.mark.parametrize("case", list(CASES))
async def test_broken_framing_ends_with_one_error_event(make_gateway, case, anthropic):
    async with RawUpstream(_answer) as raw:
        api, uid, key = await _gateway(make_gateway, raw.url)
        for _ in range(RUNS):
            check_broken_end(await _run(api, key, anthropic, f"case-{case}-0"), anthropic)
        await _check_billing(api, uid, RUNS, anthropic)
        assert len(raw.requests) == RUNS  # never retried after the first byte


@pytest.mark.parametrize("anthropic", [False, True], ids=["openai", "anthropic"])
async def test_event_split_at_every_byte_then_broken(make_gateway, anthropic):
    ev = anthropic_events() if anthropic else openai_events()
    width = min(len(ev[1]), len(ev[2]))
    async with RawUpstream(_answer) as raw:
        api, uid, key = await _gateway(make_gateway, raw.url)
        for k in range(1, width):
            n = check_broken_end(await _run(api, key, anthropic, f"case-split-{k}"), anthropic)
            assert n == 2  # the event split in two arrived whole, the cut one not at all
        await _check_billing(api, uid, width - 1, anthropic)


async def test_runs_do_not_leak_upstream_connections(make_gateway):
    """Every broken answer's upstream connection is closed by the gateway, none left open."""
    async with RawUpstream(_answer) as raw:
        api, _, key = await _gateway(make_gateway, raw.url)
        for case in CASES:
            await _run(api, key, False, f"case-{case}-0")
        for _ in range(100):
            if not raw._tasks:
                break
            await asyncio.sleep(0.02)
        assert not raw._tasks


@pytest.mark.parametrize("anthropic", [False, True], ids=["openai", "anthropic"])
@pytest.mark.parametrize("case", ["bad_size", "short_chunk", "reset_mid"])
async def test_translated_stream_broken_ends_with_one_error_event(make_gateway, case, anthropic):
    """A client of one protocol on a key of the other (SPEC 13): the translated stream ends
    the same way, with one error event in the client's own shape."""
    async with RawUpstream(_answer) as raw:
        api = await make_gateway(upstream_idle_timeout=3.0)
        key = {
            "SecretKey": "sk-upstream-raw-abcdefghijkl",
            "Level": 1,
            "Provider": raw.url,
            "Type": "openai-compatible" if anthropic else "anthropic",
        }
        assert (await api.post("/x-keys", key)).status == 201
        uid, user_key = await add_user(api, credit=1000)
        runs = max(RUNS // 5, 1)
        for _ in range(runs):
            body = await _run(api, user_key, anthropic, f"case-{case}-0")
            assert b"[DONE]" not in body and b"message_stop" not in body
            assert body.endswith(b"\n\n") and body.count(b"upstream_broken") == 1, body[-300:]
            events = body[:-2].split(b"\n\n")
            for event in events[:-1]:  # whole translated events, each one parseable
                orjson.loads(event.split(b"data: ", 1)[1])
            if anthropic:
                assert events[-1].startswith(b"event: error\ndata: ")
                assert events[0].startswith(b"event: message_start")
            else:
                assert events[-1].startswith(b"data: {") and b"chat.completion.chunk" in body
            err = orjson.loads(events[-1].split(b"data: ", 1)[1])
            assert err["error"]["code"] == "upstream_broken"
        # The upstream spoke the other protocol: the translation, not the client, chose it.
        assert all(r.path.startswith("/v1/messages") != anthropic for r in raw.requests)
        await _check_billing(api, uid, runs, False)
