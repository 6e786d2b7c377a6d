"""Test helpers: the test kit's gateway (`xaiproxy.testing`), started by pytest-aiohttp's server."""

from __future__ import annotations

from xaiproxy.testing import ROOT_KEY, Api, Reply  # noqa: F401 (re-exported)
from xaiproxy.testing import start_gateway as _start


async def start_gateway(aiohttp_server, db_path, **overrides) -> Api:
    """A gateway on `db_path` (kept across restarts), served by the `aiohttp_server` fixture."""
    return await _start(
        db_path, serve=lambda app: aiohttp_server(app, host="127.0.0.1"), **overrides
    )
