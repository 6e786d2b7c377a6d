"""One upstream HTTP/1.1 connection on an asyncio protocol, parsed by httptools (llhttp, C).

The data plane's answer never passes through a queue: `data_received` feeds the parser,
and the body pieces of that one read go to the relay's callback joined, which scans them
and writes them to the client in one write. Backpressure both ways: the relay pauses this connection while the client's
transport is full and resumes it on drain; nothing is read from the upstream meanwhile.

Timeouts (headers, idle between pieces) use one `loop.call_at` handle per connection,
re-armed lazily: activity only stamps `_last`; when the handle fires it either times the
answer out or re-arms for the remaining time. A pooled connection keeps its handle, so a
busy connection makes a new one about once per idle limit, not per request.

A connection goes back to the pool only after a complete answer it may keep alive.
"""

from __future__ import annotations

import asyncio

import httptools
from multidict import CIMultiDict

from . import heads

IDLE, SENT, BODY, DONE, DEAD = range(5)


class UpstreamError(Exception):
    """The upstream failed; `kind` is what relay and metrics report."""

    kind = "upstream_broken"


class ConnectFailed(UpstreamError):
    """No answer byte arrived: connect failed, or a reused connection died first. Not billed."""

    kind = "connect_error"


class UpstreamTimeout(UpstreamError):
    kind = "timeout"


class ClientGone(Exception):
    """The client's transport closed while we were writing to it."""


class Connection(asyncio.Protocol):
    """A keep-alive connection to one origin; answers one request at a time."""

    def __init__(self, pool, key: tuple) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.state = IDLE
        self.reused = 0  # answers this connection gave before the current one
        self.idle_since = 0.0
        self.made: asyncio.Future = self.loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._limit = 0.0
        self._last = 0.0
        self._reset_answer()

    def _reset_answer(self) -> None:
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.framed = False  # Content-Length or chunked: the end is known without a close
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.any_byte = False
        self.error: BaseException | None = None
        self._buffer: list[bytes] = []
        self._pieces: list[bytes] = []  # body pieces of the read being parsed, when streaming
        self._on_data = None
        self._waiter: asyncio.Future | None = None
        self._paused = False
        self._pause_pending = False
        self._headers_cache: CIMultiDict | None = None
        self._head_only = False

    # -- asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        if not self.made.done():
            self.made.set_result(None)

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.pool.forget(self)
        if not self.made.done():
            self.made.set_exception(ConnectFailed(str(exc or "connection closed")))
        if self.state in (SENT, BODY):
            if self.headers_done and not self.framed and not self.complete:
                self.complete = True  # an answer delimited by the close itself
                self._settle()
            elif not self.complete:
                if self.any_byte:
                    self._fail(UpstreamError("the upstream closed the connection mid-answer"))
                else:
                    self._fail(ConnectFailed("the upstream closed the connection before answering"))
        self.state = DEAD
        self._cancel_timer()

    def data_received(self, data: bytes) -> None:
        if self.state is not SENT and self.state is not BODY:
            self.close()  # bytes nobody asked for: this connection cannot be trusted again
            return
        self.any_byte = True
        self._last = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._deliver()  # what parsed before the fault still goes out, then the error
            self._fail(UpstreamError(f"the upstream's answer is malformed ({exc})"))
            return
        if self._pieces:
            self._deliver()
            if self.error is not None:
                return
        if self.complete:
            self._settle()

    def pause_writing(self) -> None:  # the upstream reads our request slowly; bodies are small
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks ------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:
            raise httptools.HttpParserError("a second answer to one request")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:
            raise httptools.HttpParserError("interim 1xx answers are not expected")
        for name, value in self.raw_headers:
            low = name.lower()
            if low == b"content-length" or (low == b"transfer-encoding" and b"chunked" in value):
                self.framed = True
        if self.status in (204, 304):
            self.framed = True
        self.headers_done = True
        self.state = BODY
        self._limit = self.pool.idle_timeout
        self._rearm()
        self._wake()
        if self._head_only:
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if self._on_data is None:
            self._buffer.append(body)
            self._wake()  # a bounded `read` may be waiting for this piece
        else:
            self._pieces.append(body)  # handed on once the whole read is parsed

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # cleared once the parser resets

    # -- the request --------------------------------------------------------
    def send(self, data: bytes, head_only: bool = False) -> None:
        """Write the whole request (head and body) in one write; arm the headers timeout."""
        self.state = SENT
        self._head_only = head_only
        self._limit = self.pool.headers_timeout
        self._last = self.loop.time()
        self._rearm()
        self.transport.write(data)

    async def answer(self) -> None:
        """Wait for the answer's headers; raises UpstreamError (or a subclass)."""
        while not self.headers_done and self.error is None:
            await self._wait()
        if self.error is not None and not self.headers_done:
            raise self.error

    def header(self, name: bytes) -> str | None:
        for key, value in self.raw_headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None

    @property
    def headers(self) -> CIMultiDict:
        if self._headers_cache is None:
            self._headers_cache = CIMultiDict(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw_headers
            )
        return self._headers_cache

    def body_so_far(self) -> bytes:
        return b"".join(self._buffer)

    def stream(self, on_data) -> None:
        """From now on, hand body pieces to `on_data` (what arrived before goes first)."""
        buffered, self._buffer = self._buffer, []
        self._on_data = on_data
        if buffered:
            on_data(b"".join(buffered))

    async def wait(self) -> bool:
        """Until the answer ends (True), or the relay asked to pause (False). Raises on failure."""
        while True:
            if self.error is not None:
                raise self.error
            if self.complete and self.state is not BODY:
                return True
            if self._pause_pending:
                self._pause_pending = False
                return False
            await self._wait()

    def pause(self) -> None:
        """Stop reading the upstream until `resume` (the client's transport is full)."""
        if not self._paused and self.transport is not None:
            self._paused = True
            self._pause_pending = True
            self.transport.pause_reading()
            self._wake()

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._last = self.loop.time()  # time spent waiting on the client is not idleness
            if self.transport is not None:
                self.transport.resume_reading()
                self._rearm()

    async def read(self, limit: int) -> bytes:
        """The rest of the answer, up to `limit` bytes (for error bodies)."""
        while not self.complete and self.error is None and sum(map(len, self._buffer)) < limit:
            await self._wait()
        return self.body_so_far()[:limit]

    @property
    def content(self):  # the reading side, as aiohttp's response calls it
        return self

    def release(self) -> None:
        """Done with this answer: back to the pool if it ended cleanly, else closed."""
        if self.state is DONE and self.error is None and self.transport is not None:
            self._reset_answer()
            self.state = IDLE
            self.reused += 1
            self.pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        """Close at once (abort: no lingering on a half-read answer)."""
        self.state = DEAD
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        self.pool.forget(self)

    # -- internals ----------------------------------------------------------
    def _deliver(self) -> None:
        """Hand what one read carried to the relay at once: one scan, one client write,
        however many chunks of the upstream's framing it held."""
        pieces = self._pieces
        if not pieces:
            return
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        try:
            self._on_data(data)
        except ClientGone as exc:
            self._fail(exc)

    def _settle(self) -> None:
        reusable = (
            self.framed and self.keep_alive and not self._head_only and self.transport is not None
        )
        if not reusable:
            self._cancel_timer()  # a pooled one keeps its handle: the next answer re-arms it
        self.state = DONE if reusable else DEAD
        if not reusable and self.transport is not None:
            self.transport.close()
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()
        self.state = DEAD
        self._wake()

    async def _wait(self) -> None:
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _rearm(self) -> None:
        due = self._last + self._limit
        timer = self._timer
        if timer is not None and timer.when() <= due:
            return  # it fires first and re-arms itself for the rest
        if timer is not None:
            timer.cancel()
        # No later than the idle limit: the headers' longer limit is then reached by
        # re-arming from `_tick`, and the switch to the idle limit needs no new handle.
        self._timer = self.loop.call_at(min(due, self._last + self.pool.idle_timeout), self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.state is not SENT and self.state is not BODY:
            return
        if self._paused:
            return  # `resume` re-arms: waiting on a slow client is not the upstream's fault
        due = self._last + self._limit
        if self.loop.time() < due:
            self._timer = self.loop.call_at(due, self._tick)
            return
        if self.headers_done:
            self._fail(UpstreamTimeout("the upstream stalled"))
        else:
            self._fail(UpstreamTimeout("no answer headers in time"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def encode_head(method: str, target: str, host: str, headers, length: int | None) -> bytes:
    """The request head as bytes; `headers` are header lines already (bytes, see heads.py)
    or a mapping, whose lines with CR or LF are dropped, never sent."""
    if not isinstance(headers, bytes):
        headers = heads.header_lines(headers)
    first = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n".encode("latin-1", "replace")
    if length is None:
        return b"%b%b\r\n" % (first, headers)
    return b"%b%bContent-Length: %d\r\n\r\n" % (first, headers, length)
