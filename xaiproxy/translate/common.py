"""What both directions share: the refusal of what cannot be translated, SSE framing, JSON."""

from __future__ import annotations

import orjson

from ..errors import ApiError


def untranslatable(what: str) -> ApiError:
    return ApiError(
        400,
        "untranslatable_request",
        f"{what} cannot be translated for this model's provider; see docs/VENDORS.md, or route"
        " the model to a provider of the client's protocol",
    )


def loads(raw) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def sse_data(obj) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def sse_event(name: str, obj) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def text_of(content) -> str:
    """The text of a content that is a string or a list of text parts/blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def as_int(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class EventReader:
    """Splits an SSE byte stream into (event name, data) pairs as complete events arrive."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        data = self._buf + chunk if self._buf else chunk
        if b"\r" in data:
            keep = data.endswith(b"\r")  # a CRLF may be split across chunks
            data = data[:-1] if keep else data
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (b"\r" if keep else b"")
        parts = data.split(b"\n\n")
        self._buf = parts.pop()
        return [ev for ev in map(_parse, parts) if ev is not None]

    def finish(self) -> list[tuple[str, bytes]]:
        tail, self._buf = self._buf.rstrip(b"\r\n"), b""
        ev = _parse(tail) if tail else None
        return [ev] if ev is not None else []


def _parse(block: bytes) -> tuple[str, bytes] | None:
    name, data = "", []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" "))
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode(errors="replace")
    return (name, b"\n".join(data)) if data else None
