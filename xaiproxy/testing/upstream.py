"""A fake upstream provider (OpenAI + Anthropic) on a real port, for tests of the gateway.

`async with start_upstream() as fake:` runs one on 127.0.0.1 (port 0); `fake.url` is
what a provider key points at (`xaiproxy.testing.add_key(api, fake)`), `fake.seen` what
it received. Under pytest, the `upstream` / `make_upstream` fixtures do the same.

Faults are scripted per request: `fake.fail("500", "429:2")` queues them (one per
request, in order), or a client sends `x-fake-fault: reset:2`. Kinds: an HTTP status
("500", "429", "429:<retry-after>", "401", "400"), "leak:<status>" (an error
quoting the key it was sent, whole and masked), "reset:<n>" (cut the connection
after n chunks), "hang" (no headers for a long time), "stall:<n>" (stop after n
chunks), "malformed" (broken SSE framing), "nousage" (answer without usage).
`fake.revoked = True` answers 401 to everything (GET /v1/models, the gateway's key
probe, included); a request carrying an `OpenAI-Organization` other than
`fake.organization` is answered 401, as OpenAI does. `fake.probes` counts the probes.
Other controls: `x-fake-chunks` (content chunks, default 3), `x-fake-delay` (seconds
between chunks), `x-fake-cached` / `x-fake-cache-write` (cached prompt tokens),
`x-fake-usage` (a JSON object merged into the usage: huge, negative or odd counts).
A tiny files and batches API (create, list, get, content, delete; a batch names an
output file) and `GET /v1/responses/{id}` keep objects for the ownership tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

PROMPT_TOKENS = 12  # every fake answer reports this many prompt tokens
JSON_COMPLETION = 5  # completion tokens of a non-stream answer
HANG_SECONDS = 20.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict
    body: bytes
    json: object = None
    form_model: str | None = None


class Fault:
    def __init__(self, text: str) -> None:
        kind, _, arg = text.partition(":")
        self.kind = kind
        self.arg = arg
        self.n = int(arg) if arg.isdigit() else 0


class FakeUpstream:
    """One fake provider: records what it got, answers like OpenAI / Anthropic."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.faults: deque[str] = deque()
        self.cancelled = 0  # requests whose connection the gateway dropped mid-answer
        self.revoked = False  # the key is dead: 401 to everything
        self.organization: str | None = None  # the only OpenAI-Organization accepted
        self.probes = 0  # GET /v1/models calls (the gateway's key probes)
        self.finished = 0  # streams sent to their end
        self.server: TestServer | None = None  # .port, .close()
        self._ids = itertools.count(1)
        self.app = web.Application()
        r = self.app.router
        r.add_post("/v1/chat/completions", self.chat)
        r.add_post("/v1/completions", self.completions)
        r.add_post("/v1/embeddings", self.embeddings)
        r.add_post("/v1/responses", self.responses)
        r.add_post("/v1/moderations", self.moderations)
        for kind in ("generations", "edits", "variations"):
            r.add_post(f"/v1/images/{kind}", self.images)
        r.add_post("/v1/audio/transcriptions", self.transcriptions)
        r.add_post("/v1/audio/speech", self.speech)
        r.add_post("/v1/messages", self.messages)
        r.add_get("/v1/models", self.models)
        self.objects: dict[str, dict] = {}  # a tiny files + batches API, shared by every key
        r.add_post("/v1/files", self.create_file)
        r.add_post("/v1/batches", self.create_batch)
        for kind in ("files", "batches"):
            r.add_get(f"/v1/{kind}", self.list_objects)
            r.add_get(f"/v1/{kind}/{{id}}", self.get_object)
            r.add_delete(f"/v1/{kind}/{{id}}", self.delete_object)
        r.add_get("/v1/files/{id}/content", self.file_content)
        r.add_get("/v1/responses/{id}", self.get_object)

    @classmethod
    async def start(cls) -> FakeUpstream:
        """Start one on 127.0.0.1 (a free port); stop it with `await fake.server.close()`."""
        fake = cls()
        fake.server = TestServer(fake.app, host="127.0.0.1")
        await fake.server.start_server()
        return fake

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def fail(self, *faults: str) -> None:
        self.faults.extend(faults)

    @property
    def last(self) -> Seen:
        return self.seen[-1]

    # -- plumbing ------------------------------------------------------------
    async def _record(self, request: web.Request) -> tuple[Seen, Fault | None]:
        body = await request.read()
        seen = Seen(request.method, request.path_qs, dict(request.headers), body)
        if request.content_type == "application/json" and body:
            seen.json = orjson.loads(body)
        self.seen.append(seen)
        text = request.headers.get("x-fake-fault") or (self.faults.popleft() if self.faults else "")
        org = request.headers.get("OpenAI-Organization")
        if self.revoked or (org is not None and org != self.organization):
            text = "401"
        return seen, Fault(text) if text else None

    async def _status_fault(self, fault: Fault | None, anthropic: bool) -> web.Response | None:
        if fault is None:
            return None
        if fault.kind == "hang":
            await asyncio.sleep(HANG_SECONDS)
        if fault.kind == "leak":
            return self._leak(int(fault.arg))
        if not fault.kind.isdigit():
            return None
        status = int(fault.kind)
        headers = {"Retry-After": fault.arg} if fault.arg else {}
        err = {
            "message": f"fake upstream error {status}",
            "type": "fake_error",
            "code": f"fake_{status}",
        }
        body = {"type": "error", "error": err} if anthropic else {"error": err}
        return web.json_response(body, status=status, headers=headers)

    def _leak(self, status: int) -> web.Response:
        """An error that quotes the key, as some providers do."""
        headers = self.seen[-1].headers
        key = headers.get("x-api-key") or headers.get("Authorization", "")[7:]
        message = f"Incorrect API key provided: {key}; also known as {key[:8]}{'*' * 20}{key[-4:]}"
        return web.json_response({"error": {"message": message, "code": "leak"}}, status=status)

    async def _stream(self, request: web.Request, events: list[bytes], fault: Fault | None):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        delay = float(request.headers.get("x-fake-delay", "0"))
        kind = fault.kind if fault else ""
        try:
            for i, event in enumerate(events):
                if kind in ("reset", "stall") and i == fault.n:
                    if kind == "stall":
                        await asyncio.sleep(HANG_SECONDS)
                    request.transport.close()
                    return resp
                if kind == "malformed" and i == 1:
                    event = b"data: {not json at all\n\n"
                await resp.write(event)
                if delay:
                    await asyncio.sleep(delay)
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise
        self.finished += 1
        await resp.write_eof()
        return resp

    @staticmethod
    def _chunks(request: web.Request) -> int:
        return int(request.headers.get("x-fake-chunks", "3"))

    @staticmethod
    def _cached(request: web.Request) -> tuple[int, int]:
        h = request.headers
        return int(h.get("x-fake-cached", "0")), int(h.get("x-fake-cache-write", "0"))

    # -- OpenAI ----------------------------------------------------------------
    def _openai_usage(self, request, completion: int) -> dict:
        cached, _ = self._cached(request)
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": completion,
            "total_tokens": PROMPT_TOKENS + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        return _usage_override(request, usage)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        seen, fault = await self._record(request)
        if (early := await self._status_fault(fault, False)) is not None:
            return early
        body = seen.json
        model = body.get("model", "")
        nousage = fault is not None and fault.kind == "nousage"
        if not body.get("stream"):
            answer = {
                "id": f"chatcmpl-{next(self._ids)}",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hello from the fake"},
                        "finish_reason": "stop",
                    }
                ],
            }
            if not nousage:
                answer["usage"] = self._openai_usage(request, JSON_COMPLETION)
            return web.json_response(answer)
        n = self._chunks(request)
        with_usage = (body.get("stream_options") or {}).get("include_usage") is True
        return await self._stream(
            request, self._chat_events(request, model, n, with_usage and not nousage), fault
        )

    def _chat_events(self, request, model: str, n: int, with_usage: bool) -> list[bytes]:
        base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": model}

        def chunk(delta: dict, finish=None) -> bytes:
            obj = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if with_usage:
                obj["usage"] = None
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": f"tok{i} "}) for i in range(n)]
        events.append(chunk({}, "stop"))
        if with_usage:
            obj = {**base, "choices": [], "usage": self._openai_usage(request, n)}
            events.append(b"data: " + orjson.dumps(obj) + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return events

    async def completions(self, request: web.Request) -> web.StreamResponse:
        seen, fault = await self._record(request)
        if (early := await self._status_fault(fault, False)) is not None:
            return early
        choice = {"text": "fake text", "index": 0, "logprobs": None, "finish_reason": "stop"}
        return web.json_response(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 1,
                "model": seen.json.get("model"),
                "choices": [choice],
                "usage": self._openai_usage(request, JSON_COMPLETION),
            }
        )

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        seen, fault = await self._record(request)
        if (early := await self._status_fault(fault, False)) is not None:
            return early
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                "model": seen.json.get("model"),
                "usage": {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS},
            }
        )

    async def responses(self, request: web.Request) -> web.StreamResponse:
        seen, fault = await self._record(request)
        if (early := await self._status_fault(fault, False)) is not None:
            return early
        n = self._chunks(request)
        cached, _ = self._cached(request)
        usage = {
            "input_tokens": PROMPT_TOKENS,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": n,
            "total_tokens": PROMPT_TOKENS + n,
        }
        response = {"id": "resp_1", "object": "response", "model": seen.json.get("model")}
        if not seen.json.get("stream"):
            return web.json_response(self._new({**response, "output": [], "usage": usage}))
        events = [
            _event(
                "response.created",
                {"type": "response.created", "response": {**response, "usage": None}},
            )
        ]
        events += [
            _event(
                "response.output_text.delta", {"type": "response.output_text.delta", "delta": "x"}
            )
        ] * n
        done = {"type": "response.completed", "response": {**response, "usage": usage}}
        events.append(_event("response.completed", done))
        return await self._stream(request, events, fault)

    async def moderations(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return web.json_response(
            {"id": "modr-1", "model": "omni-moderation-latest", "results": [{"flagged": False}]}
        )

    async def images(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return web.json_response({"created": 1, "data": [{"url": "https://example.invalid/a.png"}]})

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        seen, _ = await self._record(request)
        form = await _form(seen)
        seen.form_model = form.get("model")
        return web.json_response({"text": f"transcribed {len(form.get('file', b''))} bytes"})

    async def speech(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return web.Response(body=b"ID3" + bytes(2000), content_type="audio/mpeg")

    async def models(self, request: web.Request) -> web.StreamResponse:
        """Answers the key probe; never takes a scripted fault (those are for requests)."""
        self.probes += 1
        self.seen.append(Seen(request.method, request.path_qs, dict(request.headers), b""))
        if self.revoked:
            return web.json_response({"error": {"message": "bad key", "code": "x"}}, status=401)
        return web.json_response({"object": "list", "data": [{"id": "gpt-4o-mini"}]})

    # -- files and batches: stored objects, for the ownership tests ---------------------
    def _new(self, obj: dict) -> dict:
        self.objects[obj["id"]] = obj
        return obj

    async def create_file(self, request: web.Request) -> web.StreamResponse:
        seen, _ = await self._record(request)
        form = await _form(seen)
        data = form.get("file", b"")
        n = next(self._ids)
        obj = {"id": f"file-{n}", "object": "file", "bytes": len(data), "content": data.decode()}
        return web.json_response(self._new({**obj, "purpose": form.get("purpose", "")}))

    async def create_batch(self, request: web.Request) -> web.StreamResponse:
        seen, _ = await self._record(request)
        n = next(self._ids)
        out = self._new({"id": f"file-out{n}", "object": "file", "content": "results"})
        batch = {"id": f"batch_{n}", "object": "batch", "status": "completed"}
        batch |= {"input_file_id": seen.json.get("input_file_id"), "output_file_id": out["id"]}
        return web.json_response(self._new(batch))

    async def list_objects(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        kind = request.path.rsplit("/", 1)[1][:-1]  # files -> file
        data = [o for o in self.objects.values() if o["object"] == kind]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def get_object(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        obj = self.objects.get(request.match_info["id"])
        return web.json_response(obj) if obj else _not_found()

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        obj = self.objects.get(request.match_info["id"])
        return web.Response(body=obj["content"].encode()) if obj else _not_found()

    async def delete_object(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        obj = self.objects.pop(request.match_info["id"], None)
        return web.json_response({"id": obj["id"], "deleted": True}) if obj else _not_found()

    # -- Anthropic ----------------------------------------------------------------
    async def messages(self, request: web.Request) -> web.StreamResponse:
        seen, fault = await self._record(request)
        if (early := await self._status_fault(fault, True)) is not None:
            return early
        body = seen.json
        cached, write = self._cached(request)
        n = self._chunks(request)
        usage = {
            "input_tokens": PROMPT_TOKENS,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": write,
        }
        usage = _usage_override(request, usage)
        message = {
            "id": f"msg_{next(self._ids)}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "stop_reason": None,
            "stop_sequence": None,
        }
        if not body.get("stream"):
            content = [{"type": "text", "text": "hello from the fake"}]
            final = {**message, "content": content, "stop_reason": "end_turn"}
            return web.json_response(
                {**final, "usage": {**usage, "output_tokens": JSON_COMPLETION}}
            )
        start = {
            "type": "message_start",
            "message": {**message, "content": [], "usage": {**usage, "output_tokens": 1}},
        }
        events = [
            _event("message_start", start),
            _event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
        ]
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "tok "},
        }
        events += [_event("content_block_delta", delta)] * n
        events.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        md = {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": n},
        }
        events.append(_event("message_delta", md))
        events.append(_event("message_stop", {"type": "message_stop"}))
        return await self._stream(request, events, fault)


def _usage_override(request: web.Request, usage: dict) -> dict:
    """`x-fake-usage: {"completion_tokens": 18446744073709551615}` sets any usage fields."""
    extra = request.headers.get("x-fake-usage")
    return {**usage, **orjson.loads(extra)} if extra else usage


def _not_found() -> web.Response:
    err = {"message": "no such object", "type": "invalid_request_error", "code": "not_found"}
    return web.json_response({"error": err}, status=404)


def _event(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _form(seen: Seen) -> dict:
    """Parse a recorded multipart body with aiohttp's own reader (what a real server sees)."""
    from aiohttp import MultipartReader
    from multidict import CIMultiDict

    class _Stream:
        def __init__(self, data: bytes) -> None:
            self._data = data

        async def readline(self, **_kw) -> bytes:
            i = self._data.find(b"\n")
            i = len(self._data) if i < 0 else i + 1
            out, self._data = self._data[:i], self._data[i:]
            return out

        async def read(self, n: int = -1, **_kw) -> bytes:
            n = len(self._data) if n < 0 else n
            out, self._data = self._data[:n], self._data[n:]
            return out

        def at_eof(self) -> bool:
            return not self._data

        def unread_data(self, data: bytes) -> None:
            self._data = data + self._data

    headers = CIMultiDict({"Content-Type": seen.headers.get("Content-Type", "")})
    reader = MultipartReader(headers, _Stream(seen.body))
    out = {}
    async for part in reader:
        out[part.name] = (await part.read()) if part.filename else (await part.text())
    return out


@contextlib.asynccontextmanager
async def start_upstream() -> AsyncIterator[FakeUpstream]:
    """A running FakeUpstream on 127.0.0.1 (a free port), closed on exit."""
    fake = await FakeUpstream.start()
    try:
        yield fake
    finally:
        await fake.server.close()
