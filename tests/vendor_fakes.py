"""Fakes of each vendor in its own shape, on real ports: Azure OpenAI, Gemini's OpenAI endpoint.

They reuse `FakeUpstream`'s answers and add what makes the vendor distinct:
- `AzureFake`: `/openai/deployments/{deployment}/...?api-version=...` with an `api-key`
  header; anything else is refused the way Azure refuses it (401 / 404).
- `GeminiFake`: `/v1beta/openai/...` with `Authorization: Bearer`; `/v1/...` is a 404.
"""

from __future__ import annotations

import pytest
from aiohttp import web

from tests.fakes import FakeUpstream


class AzureFake(FakeUpstream):
    def __init__(self) -> None:
        super().__init__()
        self.app = web.Application()  # no OpenAI paths: Azure has only deployment URLs
        r = self.app.router
        r.add_post("/openai/deployments/{deployment}/chat/completions", self._azure(self.chat))
        r.add_post("/openai/deployments/{deployment}/embeddings", self._azure(self.embeddings))
        self.deployments: list[str] = []

    def _azure(self, handler):
        async def check(request: web.Request) -> web.StreamResponse:
            if "authorization" in request.headers or not request.headers.get("api-key"):
                return web.json_response(
                    {"error": {"code": "401", "message": "Access denied due to invalid key."}},
                    status=401,
                )
            if not request.query.get("api-version"):
                return web.json_response(
                    {"error": {"code": "404", "message": "Resource not found"}}, status=404
                )
            self.deployments.append(request.match_info["deployment"])
            return await handler(request)

        return check


class GeminiFake(FakeUpstream):
    def __init__(self) -> None:
        super().__init__()
        self.app = web.Application()
        self.app.router.add_post("/v1beta/openai/chat/completions", self._gemini(self.chat))
        self.app.router.add_post("/v1beta/openai/embeddings", self._gemini(self.embeddings))

    def _gemini(self, handler):
        async def check(request: web.Request) -> web.StreamResponse:
            if not request.headers.get("Authorization", "").startswith("Bearer "):
                body = [{"error": {"code": 401, "message": "no key", "status": "UNAUTHENTICATED"}}]
                return web.json_response(body, status=401)
            return await handler(request)

        return check


@pytest.fixture
async def make_vendor(aiohttp_server):
    """`fake = await make_vendor(AzureFake)`: one vendor fake on port 0."""

    async def make(cls=FakeUpstream):
        fake = cls()
        fake.server = await aiohttp_server(fake.app, host="127.0.0.1")
        return fake

    return make
