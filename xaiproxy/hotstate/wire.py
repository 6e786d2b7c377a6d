"""One pipelined Redis connection for the data plane's two scripts (admit and settle).

redis-py's asyncio client spends far more of the gateway's CPU per command than Redis
spends running it: a connection checked out of the pool and back, retry and telemetry
wrappers, a deep chain of awaits. The data plane sends two commands per request, so
this connection sends each script call as one EVALSHA straight to the socket and matches
the replies in order (Redis answers in order), parsed by hiredis. Calls made in the same
pass of the loop share one write; a script registered with a `lag` (settle: its caller
does not wait for it) waits up to that long for the next write, so the settles of many
requests ride along with admits as one pipeline (fewer syscalls and wakeups).

The guarantees stay those of the pool: nothing is retried (an `admit` sent twice would
hold twice; NOSCRIPT is the one exception, as Redis ran nothing), and every failure (the
connection refused or lost, an error reply, no reply within `timeout`) raises
StateUnavailable for the calls it hits. A timeout drops the connection, so a late reply
never answers another call. TLS URLs (and query options) keep redis-py: `Wire.for_url`
answers None for them.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib

import hiredis
from redis.asyncio.connection import UnixDomainSocketConnection, parse_url

from . import StateUnavailable

PLAIN = {"host", "port", "db", "username", "password", "path", "connection_class"}


pack = hiredis.pack_command  # one command in RESP, packed in C (str, bytes, int arguments)


class Script:
    """A Lua script called by its SHA1 (EVAL of its body when Redis does not know it)."""

    def __init__(self, wire: Wire, body: str, lag: float) -> None:
        self.wire = wire
        self.lag = lag
        self.body = body.encode()
        self.sha = hashlib.sha1(self.body).hexdigest().encode()

    async def __call__(self, keys: list, args: list):
        wire, n = self.wire, str(len(keys))
        reply = await wire.call(pack((b"EVALSHA", self.sha, n, *keys, *args)), self.lag)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            reply = await wire.call(pack((b"EVAL", self.body, n, *keys, *args)), self.lag)
        if isinstance(reply, hiredis.ReplyError):
            raise StateUnavailable(f"redis: ResponseError: {reply}")
        return reply


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.out: list[bytes] = []  # commands not written yet
        self.soon = False  # a write at the end of this loop pass is due
        self.later: asyncio.TimerHandle | None = None  # a write after a lag is due

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                fut = self.waiting.popleft()
                if not fut.done():  # a call that timed out drops the connection instead
                    fut.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            self.fail(StateUnavailable(f"redis: protocol error: {exc}"))

    def push(self, packed: bytes, lag: float) -> None:
        self.out.append(packed)
        if self.soon:
            return
        if not lag:
            self.soon = True
            asyncio.get_running_loop().call_soon(self.flush)
        elif self.later is None:
            self.later = asyncio.get_running_loop().call_later(lag, self.flush)

    def flush(self) -> None:
        if self.later is not None:
            self.later.cancel()
        out, self.out, self.soon, self.later = self.out, [], False, None
        if out and not self.lost:
            self.transport.write(b"".join(out))

    def connection_lost(self, exc) -> None:
        self.fail(StateUnavailable(f"redis: connection lost: {exc or 'closed'}"))

    def fail(self, exc: StateUnavailable) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(exc)


class Wire:
    """The connection: opened on first use, again after a failure (never a call again)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.kw = parse_url(url)
        self.timeout = timeout
        self._proto: _Protocol | None = None
        self._opening: asyncio.Future | None = None

    @classmethod
    def for_url(cls, url: str, timeout: float) -> Wire | None:
        kw = parse_url(url)
        cc = kw.get("connection_class")
        if set(kw) - PLAIN or cc not in (None, UnixDomainSocketConnection):
            return None
        return cls(url, timeout)

    def register_script(self, body: str, lag: float = 0.0) -> Script:
        return Script(self, body, lag)

    async def call(self, packed: bytes, lag: float = 0.0):
        """One command's reply (an error reply is returned, not raised); sent at the end of
        this loop pass, or with the next write within `lag` seconds."""
        proto = self._proto
        if proto is None or proto.lost:
            proto = await self._open()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        proto.waiting.append(fut)
        proto.push(packed, lag)
        timer = loop.call_later(self.timeout, self._expire, proto, fut)
        try:
            return await fut
        finally:
            timer.cancel()

    def _expire(self, proto: _Protocol, fut: asyncio.Future) -> None:
        if not fut.done():
            proto.fail(StateUnavailable(f"redis: TimeoutError: no reply in {self.timeout} s"))

    async def _open(self) -> _Protocol:
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._connect())
        opening = self._opening
        try:
            return await asyncio.shield(opening)
        finally:
            if opening.done() and self._opening is opening:
                self._opening = None

    async def _connect(self) -> _Protocol:
        loop, kw = asyncio.get_running_loop(), self.kw
        try:
            async with asyncio.timeout(self.timeout):
                if "path" in kw:
                    _, proto = await loop.create_unix_connection(_Protocol, kw["path"])
                else:
                    host, port = kw.get("host", "localhost"), kw.get("port", 6379)
                    _, proto = await loop.create_connection(_Protocol, host, port)
                hello = []
                if kw.get("password"):
                    user = [kw["username"]] if kw.get("username") else []
                    hello.append(pack(("AUTH", *user, kw["password"])))
                if kw.get("db"):
                    hello.append(pack(("SELECT", kw["db"])))
                for cmd in hello:
                    fut = loop.create_future()
                    proto.waiting.append(fut)
                    proto.transport.write(cmd)
                    reply = await fut
                    if isinstance(reply, hiredis.ReplyError):
                        proto.transport.abort()
                        raise StateUnavailable(f"redis: AuthenticationError: {reply}")
        except (TimeoutError, OSError) as exc:
            raise StateUnavailable(f"redis: {type(exc).__name__}: {exc}") from None
        self._proto = proto
        return proto

    def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.fail(StateUnavailable("redis: connection closed"))
