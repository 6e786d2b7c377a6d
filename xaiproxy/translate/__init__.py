"""Chat Completions <-> Anthropic Messages, per attempt (SPEC 13).

`request_for` builds the upstream body when a request goes to a key of the other
protocol; `Answer` translates that attempt's answer back: a stream event by event as
it arrives (`Translated` wraps the usage scanner, which still reads the upstream's own
bytes and so bills the upstream's counts), a whole JSON answer or error body at its end.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import orjson

from . import to_anthropic, to_openai
from .common import EventReader, loads, untranslatable

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


def request_for(ctx, speaks: str, max_tokens_field: str, default_max_tokens: int):
    """(upstream path, body bytes, Answer) for a key speaking `speaks`; ApiError if impossible."""
    if not isinstance(ctx.payload, dict):
        raise untranslatable(f"a non-JSON body on {ctx.path[:100]}")
    if ctx.path == CHAT and speaks == "anthropic":
        body = to_anthropic.request(ctx.payload, default_max_tokens)
        return MESSAGES, orjson.dumps(body), Answer(to_anthropic, not ctx.strip_usage)
    if ctx.path == MESSAGES and speaks == "openai":
        body = to_openai.request(ctx.payload, max_tokens_field)
        return CHAT, orjson.dumps(body), Answer(to_openai, False)
    raise untranslatable(f"{ctx.path[:100]}")


@dataclass(frozen=True, slots=True)
class Answer:
    """How one translated attempt's answer goes back to the client."""

    module: ModuleType  # to_anthropic or to_openai
    usage_chunk: bool  # an OpenAI client asked for the usage chunk

    def wrap(self, inner, content_type: str, status: int) -> Translated:
        stream = None
        if status < 400 and content_type.startswith("text/event-stream"):
            stream = self.module.Stream(self.usage_chunk)
        return Translated(inner, self.module, stream, status)

    def error(self, status: int, body: bytes) -> bytes:
        return self.module.error(status, body)


class Translated:
    """A usage scanner whose output is translated: same interface as the sse scanners."""

    __slots__ = ("inner", "module", "stream", "status", "_reader", "_body")

    def __init__(self, inner, module: ModuleType, stream, status: int) -> None:
        self.inner = inner
        self.module = module
        self.stream = stream
        self.status = status
        self._reader = EventReader() if stream is not None else None
        self._body = bytearray()

    @property
    def usage(self):
        return self.inner.usage

    @property
    def size(self) -> int:
        return self.inner.size

    def estimate_completion(self) -> int:
        return self.inner.estimate_completion()

    def feed(self, chunk: bytes) -> bytes:
        data = self.inner.feed(chunk)
        if self.stream is None:
            self._body += data
            return b""
        return self._events(self._reader.feed(data)) if data else b""

    def finish(self) -> bytes:
        data = self.inner.finish()
        if self.stream is None:
            self._body += data
            return self._whole(bytes(self._body))
        events = self._reader.feed(data) + self._reader.finish()
        return self._events(events) + self.stream.end()

    def _events(self, events) -> bytes:
        event = self.stream.event
        return b"".join([event(name, data) for name, data in events])

    def _whole(self, body: bytes) -> bytes:
        if self.status >= 400:
            return self.module.error(self.status, body)
        obj = loads(body)
        return orjson.dumps(self.module.answer(obj)) if isinstance(obj, dict) else body
