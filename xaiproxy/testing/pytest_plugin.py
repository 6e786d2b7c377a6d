"""pytest fixtures of the test kit, loaded through the `pytest11` entry point `xaiproxy`.

- `make_gateway`: `api = await make_gateway(extra_plugins=["mine"], ...)` starts a
  gateway (settings as keyword arguments, `setup=[fn]` for test hooks); each is closed
  at the end of the test.
- `upstream`: one running FakeUpstream; `make_upstream`: a factory for more.

The fixtures are async: run them with pytest-asyncio (`asyncio_mode = "auto"`).
"""

from __future__ import annotations

import pytest

from .gateway import Api, start_gateway
from .upstream import FakeUpstream

try:  # strict mode needs pytest_asyncio's marker; auto mode takes either
    from pytest_asyncio import fixture as _async_fixture
except ImportError:  # pragma: no cover - without pytest-asyncio nothing async runs anyway
    _async_fixture = pytest.fixture


@_async_fixture
async def make_gateway(tmp_path):
    """Start gateways: `api = await make_gateway(**settings)`; closed after the test."""
    started: list[Api] = []

    async def make(**settings) -> Api:
        api = await start_gateway(tmp_path / f"gw{len(started)}.db", **settings)
        started.append(api)
        return api

    yield make
    for api in started:
        await api.close()


@_async_fixture
async def make_upstream():
    """Start fake providers: `fake = await make_upstream()`; closed after the test."""
    started: list[FakeUpstream] = []

    async def make() -> FakeUpstream:
        fake = await FakeUpstream.start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        await fake.server.close()


@_async_fixture
async def upstream(make_upstream) -> FakeUpstream:
    """One running fake provider."""
    return await make_upstream()
