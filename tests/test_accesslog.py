"""The access log: one JSON line per request, a request id echoed as x-request-id, no secret.

The gateway runs behind the production runner with `accesslog.runner_kwargs`, exactly
as `xaiproxy serve` starts it, writing to a file the test reads back.
"""

from __future__ import annotations

import asyncio
import gc
import json

import aiohttp
import pytest
from aiohttp import web

from tests.fakes import (  # noqa: F401 (fixtures)
    PROMPT_TOKENS,
    add_key,
    add_user,
    chat,
    make_upstream,
    upstream,
)
from tests.helpers import ROOT_KEY, Api
from xaiproxy import accesslog, server
from xaiproxy import settings as settings_mod
from xaiproxy.app import create_app
from xaiproxy.context import RequestContext


@pytest.fixture
async def logged(tmp_path):
    """A gateway logging to a file: (Api, path of the log)."""
    path = tmp_path / "access.log"
    settings = settings_mod.load(
        env={},
        db=str(tmp_path / "gw.db"),
        root_key=ROOT_KEY,
        access_log=str(path),
        allow_private_providers=True,
        flush_interval=0.02,
    )
    runner = server.GatewayRunner(
        create_app(settings), handler_cancellation=True, **accesslog.runner_kwargs(settings)
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    session = aiohttp.ClientSession()
    yield Api(runner, f"http://{host}:{port}", ROOT_KEY, session), path
    await session.close()
    await runner.cleanup()
    accesslog.close_logger(str(path))


async def _lines(path, count: int) -> list[dict]:
    """The log's records once `count` are there (aiohttp logs just after the last byte)."""
    for _ in range(200):
        text = path.read_text() if path.exists() else ""
        if text.count("\n") >= count:
            break
        await asyncio.sleep(0.01)
    return [json.loads(line) for line in text.splitlines()]


async def test_every_request_is_one_line_and_no_secret_is_ever_written(logged, upstream):  # noqa: F811
    api, path = logged
    provider_secret = "sk-upstream-provider-" + "Zq9" * 10
    await add_key(api, upstream, SecretKey=provider_secret)
    uid, user_key = await add_user(api, credit=50)
    replies = [
        await api.post("/v1/chat/completions", chat(), key=user_key),
        await api.post("/v1/chat/completions", chat(stream=True), key=user_key),
        await api.post("/v1/chat/completions", chat(), key="sk-Xvs" + "w" * 45),
        await api.request("GET", "/v1/models", headers={"x-api-key": user_key}, key=""),
        await api.get(f"/x-users/{user_key}"),
        await api.get("/healthz", key=""),
        await api.get("/no/such/path"),
    ]
    statuses = [r.status for r in replies]
    assert statuses == [200, 200, 401, 200, 404, 200, 404]
    records = await _lines(path, 2 + len(replies))
    assert len(records) == 2 + len(replies)  # the two setup calls, then the seven above
    text = path.read_text()
    for secret in (ROOT_KEY, user_key, provider_secret, user_key[10:], provider_secret[8:]):
        assert secret not in text
    ids = [r.headers["x-request-id"] for r in replies]
    assert [rec["rid"] for rec in records[2:]] == ids and len(set(ids)) == len(ids)
    assert [rec["status"] for rec in records[2:]] == statuses
    # a key typed into a path is cut to its display prefix, as lists show it
    assert records[6]["path"] == f"/x-users/{user_key[:10]}..."


async def test_data_plane_lines_carry_account_model_tokens_and_cost(logged, upstream):  # noqa: F811
    api, path = logged
    key_id = await add_key(api, upstream)
    uid, user_key = await add_user(api, credit=50)
    plain = await api.post("/v1/chat/completions", chat("gpt-4o-mini"), key=user_key)
    stream = await api.post("/v1/chat/completions", chat("gpt-4o-mini", stream=True), key=user_key)
    assert (plain.status, stream.status) == (200, 200)
    records = await _lines(path, 4)
    setup, (first, second) = records[:2], records[2:]
    assert setup[0]["caller"] == 1 and setup[0]["method"] == "POST"
    for rec in (first, second):
        assert (rec["account"], rec["owner"], rec["key"], rec["level"]) == (uid, 1, key_id, 1)
        assert rec["model"] == "gpt-4o-mini" and rec["prompt_tokens"] == PROMPT_TOKENS
        assert rec["completion_tokens"] > 0 and rec["cost"] > 0 and rec["attempts"] == 1
        assert rec["ms"] >= rec["ttfb_ms"] > 0
    assert (first["stream"], second["stream"]) == (False, True)
    assert first["rid"] == plain.headers["x-request-id"]


async def test_refused_request_names_its_reason(logged):
    api, path = logged
    r = await api.post("/v1/chat/completions", chat(), key="sk-Xvs" + "q" * 45)
    assert r.status == 401
    [rec] = await _lines(path, 1)
    assert rec["error"] == "invalid_api_key" and rec["account"] is None


async def test_request_ids_are_set_even_without_a_log(api):
    a = await api.get("/healthz", key="")
    b = await api.get("/x-users")
    assert a.headers["x-request-id"] != b.headers["x-request-id"]
    assert len(a.headers["x-request-id"]) == 16


def test_off_means_no_logger():
    assert accesslog.runner_kwargs(settings_mod.Settings(access_log="")) == {"access_log": None}
    kwargs = accesslog.runner_kwargs(settings_mod.Settings(access_log="-"))
    assert kwargs["access_log_class"] is accesslog.JsonAccessLogger


def test_timestamp_is_isoformat_in_milliseconds_formatted_once_a_second():
    from datetime import UTC, datetime

    edges = [1157720735.5999994, 1639605672.7769995, 1700000000.0, 1700000000.9999996]
    for now in [*edges, *(1700000000 + i / 7 for i in range(50))]:
        assert accesslog.timestamp(now) == datetime.fromtimestamp(now, UTC).isoformat(
            timespec="milliseconds"
        ), now


def test_paths_are_cut_and_keys_redacted_with_or_without_the_fast_path():
    key = "sk-" + "A" * 40
    assert accesslog._redact("/v1/chat/completions") == "/v1/chat/completions"
    assert accesslog._redact("/x" * 400) == ("/x" * 400)[:300]
    redacted = accesslog._redact(f"/v1/files/{key}/content")
    assert key not in redacted and redacted.startswith("/v1/files/sk-")


async def test_a_sent_and_logged_request_leaves_nothing_to_the_cycle_collector(logged, upstream):  # noqa: F811
    """The context and its request refer to each other until the answer is logged; then
    the link is dropped, so a request's objects go with reference counting, not a GC pass."""
    api, path = logged
    await add_key(api, upstream)
    uid, user_key = await add_user(api, credit=50)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for stream in (False, True):
            reply = await api.post("/v1/chat/completions", chat(stream=stream), key=user_key)
            assert reply.status == 200
        records = await _lines(path, 4)
        assert records[-1]["prompt_tokens"] == PROMPT_TOKENS  # the log still saw the context
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, (RequestContext, web.BaseRequest))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []
