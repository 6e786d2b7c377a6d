"""The relay end to end: forwarding, headers, usage and billing exactness."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.fakes import (
    PROMPT_TOKENS,
    add_key,
    add_user,
    anthropic_body,
    chat,
    ready,
    set_config,
)
from xaiproxy.errors import ApiError

pytest_plugins = ["tests.fakes_fixtures"]

CHAT = "/v1/chat/completions"


async def test_plain_chat_is_forwarded_and_billed(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api, credit=50)
    acc = api.gw.state.accounts[uid]
    before = api.gw.ledger.balance_n(acc)
    r = await api.post("/v1/chat/completions", chat("gpt-4o-mini"), key=key)
    assert r.status == 200, r.body
    assert r.body["choices"][0]["message"]["content"] == "hello from the fake"
    assert r.headers["x-request-id"].startswith("req_")
    await api.gw.store.flush()
    row = await api.gw.store.fetchone("SELECT * FROM usage WHERE account_id = ?", (uid,))
    price = api.gw.prices("gpt-4o-mini")
    expected = (PROMPT_TOKENS * price.input + 5 * price.output) / 1e6
    assert row["prompt_tokens"] == PROMPT_TOKENS and row["completion_tokens"] == 5
    assert row["cost_n"] == round(expected * 1e9)
    assert before - api.gw.ledger.balance_n(acc) == row["cost_n"]
    assert row["estimated"] == 0 and acc.reserved_n == 0


async def test_upstream_gets_provider_auth_never_the_client_key(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    _, key = await add_user(api)
    headers = {
        "Connection": "keep-alive, x-hop",
        "x-hop": "1",
        "Accept-Encoding": "gzip",
        "OpenAI-Beta": "b1",
    }
    r = await api.post(CHAT, chat(), key=key, headers=headers)
    assert r.status == 200
    seen = {k.lower(): v for k, v in upstream.last.headers.items()}
    assert seen["authorization"].startswith("Bearer sk-upstream-")
    assert key not in str(upstream.last.headers)
    assert seen["accept-encoding"] == "identity" and seen["openai-beta"] == "b1"
    assert "x-api-key" not in seen


async def test_anthropic_auth_and_version(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    _, key = await add_user(api)
    r = await api.post("/v1/messages", anthropic_body(), key="", headers={"x-api-key": key})
    assert r.status == 200 and r.body["usage"]["output_tokens"] == 5
    seen = {k.lower(): v for k, v in upstream.last.headers.items()}
    assert seen["x-api-key"].startswith("sk-upstream-") and "authorization" not in seen
    assert seen["anthropic-version"] == "2023-06-01"
    await api.post("/v1/messages", anthropic_body(), headers={"anthropic-version": "2099-01-01"})
    assert upstream.last.headers["anthropic-version"] == "2099-01-01"


async def test_key_config_overrides_auth_style(make_gateway, upstream):
    api = await make_gateway()
    await add_key(api, upstream, Config={"auth": "x-api-key", "headers": {"x-extra": "1"}})
    assert (await api.post(CHAT, chat())).status == 200
    seen = {k.lower(): v for k, v in upstream.last.headers.items()}
    assert seen["x-api-key"].startswith("sk-upstream-") and "authorization" not in seen
    assert seen["x-extra"] == "1"


async def test_body_forwarded_byte_for_byte_unless_mapped(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    raw = b'{ "model" : "gpt-4o-mini",  "messages": [{"role":"user","content":"hi"}] }'
    r = await api.post(CHAT, data=raw, headers={"Content-Type": "application/json"})
    assert r.status == 200 and upstream.last.body == raw
    await set_config(api, MODEL_MAPPER="gpt-4o-mini=gpt-4.1-nano")
    r = await api.post(CHAT, data=raw, headers={"Content-Type": "application/json"})
    assert upstream.last.json["model"] == "gpt-4.1-nano"
    await api.gw.store.flush()
    row = await api.gw.store.fetchone("SELECT model, upstream_model FROM usage ORDER BY id DESC")
    assert tuple(row) == ("gpt-4o-mini", "gpt-4.1-nano")


async def test_query_string_and_get_pass_through(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    await set_config(api, RESOURCES="/v1/*")  # stateful paths are off by default
    r = await api.get("/v1/files?purpose=batch&limit=2")
    assert r.status == 200 and r.body == {"object": "list", "data": [], "has_more": False}
    assert upstream.last.path == "/v1/files?purpose=batch&limit=2"


async def test_openai_endpoints_bill_their_usage(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api)
    calls = [
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}, (12, 0, 0)),
        ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "x"}, (12, 5, 0)),
        ("/v1/responses", {"model": "gpt-4.1", "input": "x"}, (12, 3, 0)),
        ("/v1/moderations", {"input": "x"}, None),
        ("/v1/images/generations", {"prompt": "a cat"}, None),
    ]
    for path, body, _ in calls:
        r = await api.post(path, body, key=key)
        assert r.status == 200, (path, r.body)
    await api.gw.store.flush()
    rows = await api.gw.store.fetchall(
        "SELECT path, model, prompt_tokens, completion_tokens, estimated FROM usage"
        " WHERE account_id = ? ORDER BY id",
        (uid,),
    )
    assert [r["path"] for r in rows] == [c[0] for c in calls]
    for row, (_, _, tokens) in zip(rows, calls, strict=True):
        if tokens:
            assert (row["prompt_tokens"], row["completion_tokens"], row["estimated"]) == (
                *tokens[:2],
                0,
            )
        else:
            assert row["estimated"] == 1 and row["prompt_tokens"] > 0
    assert rows[3]["model"] == "omni-moderation-latest"


def multipart(model: str, audio: bytes) -> tuple[bytes, str]:
    b = "----fakeboundary42"
    body = (
        (
            f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="name=\\"model\\".mp3"\r\n'
            "Content-Type: audio/mpeg\r\n\r\n"
        ).encode()
        + audio
        + (
            f'\r\n--{b}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n--{b}--\r\n'
        ).encode()
    )
    return body, f"multipart/form-data; boundary={b}"


async def test_multipart_model_read_and_body_forwarded_untouched(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    audio = b'name="model"\r\n\r\nnot-this' + bytes(range(256)) * 40
    body, ctype = multipart("whisper-1", audio)
    _, key = await add_user(api, AllowModels="whisper-1")
    r = await api.post(
        "/v1/audio/transcriptions", data=body, key=key, headers={"Content-Type": ctype}
    )
    assert r.status == 200, r.body
    assert upstream.last.body == body and upstream.last.form_model == "whisper-1"
    body2, ctype2 = multipart("gpt-4o-transcribe", audio)
    r = await api.post(
        "/v1/audio/transcriptions", data=body2, key=key, headers={"Content-Type": ctype2}
    )
    assert r.error_code == "model_not_allowed"
    await set_config(api, MODEL_MAPPER="whisper-1=gpt-4o-mini-transcribe")
    r = await api.post(
        "/v1/audio/transcriptions", data=body, key=key, headers={"Content-Type": ctype}
    )
    assert upstream.last.form_model == "gpt-4o-mini-transcribe"
    assert r.body["text"] == f"transcribed {len(audio)} bytes"
    r = await api.post(
        "/v1/audio/transcriptions", data=multipart("", b"x")[0], headers={"Content-Type": ctype}
    )
    assert (r.status, r.error_code) == (400, "missing_model")


async def test_binary_answers_pass_through(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    r = await api.post("/v1/audio/speech", {"model": "tts-1", "input": "hi", "voice": "alloy"})
    assert r.status == 200 and r.raw == b"ID3" + bytes(2000)
    assert r.headers["Content-Type"] == "audio/mpeg"


async def test_models_list_filtered_by_allow_models(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    await set_config(api, MODEL_MAPPER="my-alias=gpt-4o, gpt-3*=gpt-4o-mini")
    _, key = await add_user(api, AllowModels="gpt-4o*, my-*")
    r = await api.get("/v1/models", key=key)
    assert r.status == 200 and r.body["object"] == "list"
    ids = [m["id"] for m in r.body["data"]]
    assert "gpt-4o" in ids and "my-alias" in ids and "gpt-4o-mini" in ids
    assert "gpt-5" not in ids and not any("*" in i for i in ids)
    r = await api.get("/v1/models", key="")
    assert r.error_code == "invalid_api_key"


async def test_overload_is_a_fast_503(make_gateway, upstream):
    api = await ready(make_gateway, upstream, max_inflight=0)
    r = await api.post(CHAT, chat())
    assert (r.status, r.error_code) == (503, "overloaded") and r.headers["Retry-After"] == "1"
    assert r.headers["x-request-id"]


async def test_hooks_before_upstream_and_on_usage(make_gateway, upstream):
    used, ended = [], []

    async def refuse(ctx):
        if ctx.model == "blocked-model":
            raise ApiError(403, "blocked", "blocked by a plugin")

    def hooks(gw):
        gw.hooks.before_upstream.append(refuse)
        gw.hooks.on_usage.append(used.append)
        gw.hooks.on_request_end.append(ended.append)

    api = await ready(make_gateway, upstream, setup=[hooks])
    uid, key = await add_user(api)
    acc = api.gw.state.accounts[uid]
    r = await api.post(CHAT, chat("blocked-model"), key=key)
    assert (r.status, r.error_code) == (403, "blocked") and acc.reserved_n == 0
    assert (await api.post(CHAT, chat(), key=key)).status == 200
    assert [c.cost_n > 0 for c in used] == [True]
    assert [(c.status, c.error) for c in ended] == [(403, "blocked"), (200, "")]
    assert upstream.seen and all(s.json["model"] != "blocked-model" for s in upstream.seen)


async def test_root_is_served_and_recorded_but_never_debited(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    assert (await api.post(CHAT, chat())).status == 200
    await api.gw.store.flush()
    assert await api.gw.store.scalar("SELECT COUNT(*) FROM usage WHERE account_id = 1") == 1
    assert (await api.gw.ledger.audit(api.gw.store))["ok"]


async def test_plain_answer_cut_mid_body_never_looks_complete(make_gateway):
    """An upstream that promises 1000 bytes and sends 20: the client's read fails, never a short JSON."""

    async def cut(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            b'{"id": "chatcmpl-1",'
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(cut, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        api = await make_gateway()
        key = {
            "SecretKey": "sk-upstream-cut-abcdefghijkl",
            "Level": 1,
            "Provider": f"http://127.0.0.1:{port}",
        }
        assert (await api.post("/x-keys", key)).status == 201
        uid, user_key = await add_user(api)
        with pytest.raises(aiohttp.ClientError):
            await api.post(CHAT, chat(), key=user_key)
        await api.gw.store.flush()
        row = await api.gw.store.fetchone(
            "SELECT estimated FROM usage WHERE account_id = ?", (uid,)
        )
        assert row["estimated"] == 1  # billed as an estimate, marked so
        assert api.gw.state.accounts[uid].reserved_n == 0
    finally:
        server.close()
        await server.wait_closed()
