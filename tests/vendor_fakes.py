"""Fakes of each vendor in its own shape, on real ports: Azure OpenAI, Gemini's OpenAI endpoint.

They reuse `FakeUpstream`'s answers and add what makes the vendor distinct:
- `AzureFake`: `/openai/deployments/{deployment}/...?api-version=...` with an `api-key`
  header; anything else is refused the way Azure refuses it (401 / 404).
- `GeminiFake`: `/v1beta/openai/...` with `Authorization: Bearer`; `/v1/...` is a 404.
- `OpenAIFake`, `AnthropicFake`: each protocol checked strictly, and tool calls answered
  (OpenAI `tool_calls` deltas; Anthropic `tool_use` blocks with `input_json_delta`).
"""

from __future__ import annotations

import orjson
import pytest
from aiohttp import web

from tests.fakes import PROMPT_TOKENS, FakeUpstream, Seen


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


TOOL_ARGS = {"city": "Paris", "days": 2}
ANTHROPIC_FIELDS = {
    "model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p",
    "top_k", "stream", "metadata", "tools", "tool_choice", "thinking",
}  # fmt: skip


def _bad(anthropic: bool, message: str) -> web.Response:
    err = {"type": "invalid_request_error", "message": message}
    body = {"type": "error", "error": err} if anthropic else {"error": {**err, "code": None}}
    return web.json_response(body, status=400)


class OpenAIFake(FakeUpstream):
    """OpenAI's chat shape, strictly: Bearer auth, tool messages after tool_calls, tool_calls
    deltas in streams. A request with `tools` is answered with a call of the first tool."""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.json_response({"error": {"message": "no key", "code": None}}, status=401)
        body = orjson.loads(await request.read())
        problem = _openai_problem(body)
        if problem:
            self.seen.append(
                Seen(request.method, request.path_qs, dict(request.headers), b"", body)
            )
            return _bad(False, problem)
        if not body.get("tools"):
            return await super().chat(request)
        self.seen.append(Seen(request.method, request.path_qs, dict(request.headers), b"", body))
        name = body["tools"][0]["function"]["name"]
        args = orjson.dumps(TOOL_ARGS).decode()
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 7, "total_tokens": 19,
                 "prompt_tokens_details": {"cached_tokens": 4}}  # fmt: skip
        call = {"id": "call_abc", "type": "function", "function": {"name": name, "arguments": args}}
        base = {"id": "chatcmpl-t", "created": 1, "model": body["model"]}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "Let me check.", "tool_calls": [call]}
            choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
            return web.json_response(
                {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            )

        def chunk(delta, finish=None, **extra):
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            obj = {**base, "object": "chat.completion.chunk", "choices": [choice], **extra}
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        head = {"index": 0, "id": "call_abc", "type": "function",
                "function": {"name": name, "arguments": ""}}  # fmt: skip
        events = [
            chunk({"role": "assistant", "content": "Let me "}),
            chunk({"content": "check."}),
            chunk({"tool_calls": [head]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[:9]}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[9:]}}]}),
            chunk({}, "tool_calls"),
            b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n",
            b"data: [DONE]\n\n",
        ]
        return await self._stream(request, events, None)


def _openai_problem(body: dict) -> str:
    pending: set[str] = set()
    for msg in body.get("messages", []):
        role = msg.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            return f"invalid role {role!r}"
        if role == "tool" and msg.get("tool_call_id") not in pending:
            return "messages with role 'tool' must be a response to a preceding tool_calls"
        pending = {c["id"] for c in msg.get("tool_calls") or []} if role == "assistant" else pending
    if "max_tokens" in body and "max_completion_tokens" in body:
        return "max_tokens and max_completion_tokens together"
    return ""


class AnthropicFake(FakeUpstream):
    """Anthropic's Messages shape, strictly: x-api-key and anthropic-version, max_tokens
    required, no unknown fields, user/assistant turns only, tool_use blocks answered."""

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.seen.append(Seen(request.method, request.path_qs, dict(request.headers), b"", body))
        if not request.headers.get("x-api-key") or "anthropic-version" not in request.headers:
            err = {"type": "authentication_error", "message": "invalid x-api-key"}
            return web.json_response({"type": "error", "error": err}, status=401)
        problem = _anthropic_problem(body)
        if problem:
            return _bad(True, problem)
        if not body.get("tools"):
            self.seen.pop()
            return await super().messages(request)
        name = body["tools"][0]["name"]
        usage = {"input_tokens": 8, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 0}
        message = {"id": "msg_t", "type": "message", "role": "assistant", "model": body["model"],
                   "stop_sequence": None}  # fmt: skip
        tool = {"type": "tool_use", "id": "toolu_01", "name": name, "input": TOOL_ARGS}
        if not body.get("stream"):
            content = [{"type": "text", "text": "Let me check."}, tool]
            return web.json_response(
                {
                    **message,
                    "content": content,
                    "stop_reason": "tool_use",
                    "usage": {**usage, "output_tokens": 7},
                }  # fmt: skip
            )
        args = orjson.dumps(TOOL_ARGS).decode()
        start = {"type": "message_start",
                 "message": {**message, "content": [], "stop_reason": None,
                             "usage": {**usage, "output_tokens": 1}}}  # fmt: skip
        events = [
            _ev("message_start", start),
            _ev("content_block_start", {"type": "content_block_start", "index": 0,
                                        "content_block": {"type": "text", "text": ""}}),
            _ev("ping", {"type": "ping"}),
            _ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": "Let me check."}}),
            _ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _ev("content_block_start", {"type": "content_block_start", "index": 1,
                                        "content_block": {**tool, "input": {}}}),
            _ev("content_block_delta", {"type": "content_block_delta", "index": 1,
                                        "delta": {"type": "input_json_delta",
                                                  "partial_json": args[:9]}}),
            _ev("content_block_delta", {"type": "content_block_delta", "index": 1,
                                        "delta": {"type": "input_json_delta",
                                                  "partial_json": args[9:]}}),
            _ev("content_block_stop", {"type": "content_block_stop", "index": 1}),
            _ev("message_delta", {"type": "message_delta",
                                  "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                                  "usage": {"output_tokens": 7}}),
            _ev("message_stop", {"type": "message_stop"}),
        ]  # fmt: skip
        return await self._stream(request, events, None)


def _anthropic_problem(body: dict) -> str:
    extra = set(body) - ANTHROPIC_FIELDS
    if extra:
        return f"{sorted(extra)[0]}: Extra inputs are not permitted"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    for msg in body.get("messages", []):
        if msg.get("role") not in ("user", "assistant"):
            return f"messages: Unexpected role {msg.get('role')!r}"
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        return "temperature: Input should be less than or equal to 1"
    return ""


def _ev(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


REALTIME_USAGE = {
    "total_tokens": 30,
    "input_tokens": 20,
    "output_tokens": 10,
    "input_token_details": {"cached_tokens": 5, "text_tokens": 20, "audio_tokens": 0},
    "output_token_details": {"text_tokens": 10, "audio_tokens": 0},
}


BUSY = {"Retry-After": "30"}


class RealtimeFake(FakeUpstream):
    """OpenAI's /v1/realtime WebSocket: session.created, then for each response.create a
    response.created, one text delta and a response.done carrying REALTIME_USAGE."""

    def __init__(self) -> None:
        super().__init__()
        self.app.router.add_get("/v1/realtime", self.realtime)
        self.sessions = 0
        self.closed = 0  # sessions that ended because the gateway closed its side
        self.busy = 0  # handshakes still to refuse with 429 and Retry-After: 30

    async def realtime(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.path_qs, dict(request.headers), b""))
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.json_response({"error": {"message": "no key"}}, status=401)
        if self.busy:
            self.busy -= 1
            return web.json_response({"error": {"message": "busy"}}, status=429, headers=BUSY)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sessions += 1
        await ws.send_json(
            {"type": "session.created", "session": {"model": request.query["model"]}}
        )
        n = 0
        async for msg in ws:
            event = orjson.loads(msg.data)
            if event.get("type") != "response.create":
                continue
            n += 1
            await ws.send_json({"type": "response.created", "response": {"id": f"resp_{n}"}})
            await ws.send_json({"type": "response.output_text.delta", "delta": "hi"})
            done = {"id": f"resp_{n}", "status": "completed", "usage": REALTIME_USAGE}
            await ws.send_json({"type": "response.done", "response": done})
        self.closed += 1
        return ws
