"""Shared fixtures: a real gateway on a real socket, with a fresh SQLite file per test."""

from __future__ import annotations

import pytest

from tests.helpers import ROOT_KEY, Api, start_gateway


@pytest.fixture
async def make_gateway(aiohttp_server, tmp_path):
    """Start a gateway: `api = await make_gateway(max_attempts=2, ...)` (settings overrides)."""
    started = []

    async def make(**overrides) -> Api:
        api = await start_gateway(aiohttp_server, tmp_path / f"gw{len(started)}.db", **overrides)
        started.append(api)
        return api

    yield make
    for api in started:
        await api.close()


@pytest.fixture
async def api(make_gateway) -> Api:
    """A running gateway with default settings; `api.root` is the root key."""
    return await make_gateway()


@pytest.fixture
def root_key() -> str:
    return ROOT_KEY
