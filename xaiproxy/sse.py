"""Usage scanners: fed the upstream's raw chunks, they find the usage without re-encoding.

`StreamScanner` reads Server-Sent Events (OpenAI chunks, Anthropic events, Responses
events); `BodyScanner` reads a plain JSON answer. Both count what was delivered so
an answer without usage (or a stream cut short) can be estimated.

Per chunk the stream scanner does two `rfind`s and one regex search; it parses JSON
only for the one or two events that carry a usage object.
"""

from __future__ import annotations

import re

import orjson

from .providers import UsageFields

USAGE_RE = re.compile(rb'"usage"\s*:\s*\{')
EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
BODY_WINDOW = 64 * 1024  # a JSON answer's usage sits at its end
HOLD_CAP = 1024 * 1024  # a partial event held back longer than this goes out as it is


def _last_boundary(data: bytes) -> int:
    """Index just past the last blank line (end of the last complete event), or 0."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _event_start(data: bytes, pos: int) -> int:
    """Index of the start of the event holding `pos` (just past the blank line before it)."""
    lf = data.rfind(b"\n\n", 0, pos)
    crlf = data.rfind(b"\r\n\r\n", 0, pos)
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _data_of(event: bytes) -> bytes:
    lines = [ln[5:].strip() for ln in event.splitlines() if ln.startswith(b"data:")]
    return b"\n".join(lines)


def find_usage(obj, containers: tuple[str, ...]) -> dict | None:
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if isinstance(usage, dict):
        return usage
    for name in containers:
        inner = obj.get(name)
        if isinstance(inner, dict) and isinstance(inner.get("usage"), dict):
            return inner["usage"]
    return None


class StreamScanner:
    """Scans an SSE stream. With `strip`, cuts OpenAI's usage-only chunk from what it returns.

    It passes on whole events only, holding back a partial one until its end arrives: a
    stream cut mid-event then ends with the error event on a fresh line, never glued to
    half an event the client cannot parse.
    """

    __slots__ = ("fields", "strip", "usage", "events", "size", "_tail")

    def __init__(self, fields: UsageFields, strip: bool = False) -> None:
        self.fields = fields
        self.strip = strip
        self.usage: dict | None = None
        self.events = 0  # data events delivered, for estimates
        self.size = 0
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        """Take one upstream chunk; return the bytes the client should get now."""
        data = self._tail + chunk if self._tail else chunk
        end = _last_boundary(data)
        if end == len(data):
            complete, self._tail = data, b""
        elif len(data) - end > HOLD_CAP:
            complete, self._tail = data, b""  # no event boundary in sight: not SSE as we know it
        else:
            complete, self._tail = data[:end], data[end:]
        if complete and USAGE_RE.search(complete):
            complete = self._scan(complete)
        out = complete
        self.events += out.count(b"data:")
        self.size += len(out)
        return out

    def finish(self) -> bytes:
        """The stream ended cleanly: scan an unterminated last event; it goes out now."""
        tail, self._tail = self._tail, b""
        if tail and USAGE_RE.search(tail):
            scanned = self._scan(tail + b"\n\n")
            tail = scanned[:-2] if scanned else b""
        if tail:
            self.events += tail.count(b"data:")
            self.size += len(tail)
        return tail

    def _scan(self, block: bytes) -> bytes:
        """Record usage found in the events of `block`; return it without a cut usage chunk.

        Only the events around a usage match are looked at: O(matches), not O(events).
        """
        cut, done = [], 0
        for m in USAGE_RE.finditer(block):
            if m.start() < done:
                continue  # a second "usage" inside an event already taken
            start = _event_start(block, m.start())
            end_m = EVENT_END.search(block, m.end())
            done = end_m.end() if end_m else len(block)
            if self._take(block[start:done]):
                cut.append((start, done))
        for a, b in reversed(cut):
            block = block[:a] + block[b:]
        return block

    def _take(self, event: bytes) -> bool:
        """Merge the event's usage; True when it is a usage-only chunk the client must not see."""
        try:
            obj = orjson.loads(_data_of(event))
        except orjson.JSONDecodeError:
            return False
        usage = find_usage(obj, self.fields.containers)
        if usage is None:
            return False
        self.usage = {**self.usage, **usage} if self.usage else dict(usage)
        return self.strip and obj.get("choices") == []

    def estimate_completion(self) -> int:
        # One content event is roughly one token; the first and last carry none.
        return max(self.events - 2, 1)


class BodyScanner:
    """Scans a plain JSON answer: keeps only its last BODY_WINDOW bytes."""

    __slots__ = ("fields", "usage", "size", "_buf", "_head")

    def __init__(self, fields: UsageFields) -> None:
        self.fields = fields
        self.usage: dict | None = None
        self.size = 0
        self._buf = bytearray()
        self._head = True  # the window still holds the whole body

    def feed(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        buf = self._buf
        buf += chunk
        if len(buf) > 2 * BODY_WINDOW:
            del buf[:-BODY_WINDOW]
            self._head = False
        return chunk

    def finish(self) -> bytes:
        self.usage = self._whole() if self._head else None
        if self.usage is None:
            self.usage = _last_usage_object(bytes(self._buf))
        return b""

    def _whole(self) -> dict | None:
        try:
            return find_usage(orjson.loads(self._buf), self.fields.containers)
        except orjson.JSONDecodeError:
            return None

    def estimate_completion(self) -> int:
        # Text without the JSON envelope, at ~4 bytes a token.
        return max((self.size - 200) // 4, 1)


class NullScanner:
    """Binary answers (audio, images as bytes): nothing to scan, no completion to estimate."""

    __slots__ = ("usage", "size")

    def __init__(self) -> None:
        self.usage = None
        self.size = 0

    def feed(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        return chunk

    def finish(self) -> bytes:
        return b""

    def estimate_completion(self) -> int:
        return 0


def _last_usage_object(buf: bytes) -> dict | None:
    """The last `"usage": {...}` object in a JSON tail, found by matching braces."""
    matches = list(USAGE_RE.finditer(buf))
    if not matches:
        return None
    start = matches[-1].end() - 1
    depth = 0
    for i in range(start, len(buf)):
        ch = buf[i]
        if ch == 0x7B:
            depth += 1
        elif ch == 0x7D:
            depth -= 1
            if depth == 0:
                try:
                    return orjson.loads(buf[start : i + 1])
                except orjson.JSONDecodeError:
                    return None
    return None


def scanner_for(content_type: str, fields: UsageFields, strip: bool):
    if content_type.startswith("text/event-stream"):
        return StreamScanner(fields, strip)
    if "json" in content_type:
        return BodyScanner(fields)
    return NullScanner()
