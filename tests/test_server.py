"""Malformed HTTP gets the error format, never echoes the input, never logs it."""

import asyncio
import logging

import orjson
import pytest
from aiohttp import web

from tests.helpers import ROOT_KEY
from xaiproxy import settings as settings_mod
from xaiproxy.app import create_app
from xaiproxy.server import GatewayRunner

SECRET = "sk-Xvs" + "S" * 45


@pytest.fixture
async def raw_gateway(tmp_path):
    settings = settings_mod.load(env={}, db=str(tmp_path / "raw.db"), root_key=ROOT_KEY)
    runner = GatewayRunner(create_app(settings), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]

    async def send(raw: bytes) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    yield send
    await runner.cleanup()


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /x-config HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET.encode()
        + b"\x01\xff\r\n\r\n",
        b"GET /x-config HTTP/1.1\r\nHost: x\r\nX-Odd: a\x7fb\r\nAuthorization: Bearer "
        + SECRET.encode()
        + b"\r\n\r\n",
        b"GET /x-con\xfffig HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GARBAGE\r\n\r\n",
    ],
)
async def test_malformed_requests_get_json_errors_without_echo(raw_gateway, raw, caplog):
    caplog.set_level(logging.DEBUG)
    status, body = await raw_gateway(raw)
    assert status == 400
    err = orjson.loads(body)["error"]
    assert err["code"] == "malformed_request" and err["type"] == "invalid_request_error"
    assert SECRET.encode() not in body
    assert SECRET not in caplog.text


async def test_latin1_and_utf8_header_values_are_just_bad_keys(raw_gateway):
    for value in (b"caf\xc3\xa9", b"\xe9t\xe9"):
        status, body = await raw_gateway(
            b"GET /x-config HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer "
            + value
            + b"\r\n\r\n"
        )
        assert status in (400, 401)
        assert "error" in orjson.loads(body)


async def test_good_requests_still_work(raw_gateway):
    status, body = await raw_gateway(
        b"GET /x-config HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer "
        + ROOT_KEY.encode()
        + b"\r\n\r\n"
    )
    assert status == 200 and orjson.loads(body)["success"] is True
