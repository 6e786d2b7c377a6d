"""The one way the gateway answers with JSON it built itself (not an upstream's bytes)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


def json(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    """`data` as JSON; dict keys need not be strings (account IDs are ints)."""
    return encoded(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), status, headers)


def encoded(body: bytes, status: int = 200, headers: dict | None = None) -> web.Response:
    """JSON already encoded: a stored answer replayed, a document built once."""
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)
